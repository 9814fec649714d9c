"""7: aws-sigv4 end to end. The proxy's CPU per request signing S3 PUTs that moto's server verifies (IAM
authentication on) against plain mitmdump carrying the same requests signed by the client, and against the addon
with its entry out of scope of them, in CPU time and (7b) in instructions counted by valgrind; and small requests'
latency while a 64 MiB PUT is signed."""

import http.client
import os
import random
import shutil
import sys
import threading
from pathlib import Path

from helpers.ports import free_port
from servers import clean_env

from benchparts import loadgen
from benchparts.common import (
    EchoUpstream,
    Program,
    addon_args,
    counted_per_request,
    interleaved,
    median,
    percentile,
    start_proxies,
    under_callgrind,
)
from benchparts.end_to_end import paired

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
BUCKET = "bench-bucket"
REGION = "us-east-1"
ADMIN = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
OCTETS = {"Content-Type": "application/octet-stream"}  # moto parses a form-encoded PUT body away


class Moto(Program):
    """moto's server with a user holding an access key and a bucket, then IAM authentication on: it recomputes
    every signature, so a request wrongly signed is answered 403 and the load generator stops."""

    def __init__(self, confdir: Path) -> None:
        import boto3
        import httpx

        self.port = free_port()
        env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
        super().__init__([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)], cwd=confdir, env=env)
        try:
            self.wait_for(rf"Running on http://127\.0\.0\.1:{self.port}")
            self.url = f"http://127.0.0.1:{self.port}"
            setup = {"endpoint_url": self.url, "region_name": REGION}
            setup |= {"aws_access_key_id": "x", "aws_secret_access_key": "x"}
            iam = boto3.client("iam", **setup)
            iam.create_user(UserName="proxy")
            iam.put_user_policy(UserName="proxy", PolicyName="all", PolicyDocument=ADMIN)
            key = iam.create_access_key(UserName="proxy")["AccessKey"]
            self.key, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
            self.prepare(setup)
            httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0", trust_env=False).raise_for_status()
        except BaseException:
            self.close()
            raise

    def prepare(self, setup: dict) -> None:
        """What the part needs in the account, made before IAM authentication is on (`setup`: boto3's arguments)."""
        import boto3

        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)

    def signed(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The headers a client holding the key would send (botocore's S3 signer, as the addon uses)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method=method, url=f"{self.url}{path}", data=body, headers=dict(OCTETS))
        S3SigV4Auth(Credentials(self.key, self.secret), "s3", REGION).add_auth(request)
        return {k: v for k, v in request.headers.items()}


def signing_file(path: Path, hosts: str, scope: str = "") -> Path:
    scoped = f"\n  scope: '{scope}'" if scope else ""
    entry = f"- name: s3\n  kind: aws-sigv4\n  service: s3\n  region: {REGION}\n  hosts: '{hosts}'{scoped}\n"
    path.write_text(entry + "  require: true\n")
    return path


# The three ways part 7 compares: the addon signing (the client holds no credentials), plain mitmdump carrying the
# same request signed by the client with botocore, and the addon with its entry for another host carrying the same.
SIGNING, PLAIN, ELSEWHERE = "addon signing", "plain, client-signed", "addon, out of scope"
PUT_PATH = f"/{BUCKET}/object.bin"


def three_ways(confdir: Path, moto: Moto) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The three proxies' arguments, by name, and the environment they run in (moto's key for the addon's chain)."""
    env = {"AWS_ACCESS_KEY_ID": moto.key, "AWS_SECRET_ACCESS_KEY": moto.secret, "AWS_REGION": REGION}
    env |= {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    signing = signing_file(confdir / "sigv4.yaml", f"127.0.0.1:{moto.port}")
    elsewhere = signing_file(confdir / "sigv4-elsewhere.yaml", "s3.elsewhere.example")
    specs = {
        SIGNING: addon_args(header_providers_file=str(signing)),
        PLAIN: [],
        ELSEWHERE: addon_args(header_providers_file=str(elsewhere)),
    }
    return specs, env


def puts(moto: Moto, name: str, proxy_port: int, size: int, seconds: float, connections: int, **fields) -> dict:
    """PUTs of `size` bytes through one of the three proxies for `seconds` (or `limit` of them)."""
    # Signed afresh for each run: a signature is dated, and moto refuses one 15 minutes old.
    headers = dict(OCTETS) if name == SIGNING else moto.signed("PUT", PUT_PATH, loadgen.body(size))
    headers.pop("Host", None)
    target = f"127.0.0.1:{moto.port}"
    s = loadgen.spec(proxy_port, target, seconds, connections, path=PUT_PATH, method="PUT", **fields)
    s |= {"host": target, "headers": headers, "body": size, "tolerate_5xx": True}
    return loadgen.load(s)


def cpu_per_request(confdir: Path, rounds: int, seconds: float, connections: int, size: int) -> dict:
    """CPU µs per signed PUT of `size` bytes, the three ways, interleaved round by round."""
    moto = Moto(confdir)
    try:
        specs, env = three_ways(confdir, moto)
        proxies = start_proxies(confdir, specs, env=env)
    except BaseException:
        moto.close()
        raise

    def run(name: str, slice_seconds: float) -> dict:
        return puts(moto, name, proxies[name].port, size, slice_seconds, connections)

    try:
        for name in proxies:
            run(name, 0.5)  # warm-up (and the first fetch of the signing entry's credentials)
        cpus, rates, errors = interleaved(proxies, run, rounds, seconds)
        reference = cpus[PLAIN]
        return {
            name: {
                "rate": median(rates[name]),
                "cpu_us": median(v) * 1e6,
                "cpu_vs_plain": paired(v, reference),
                "errors": errors[name],
            }
            for name, v in cpus.items()
        }
    finally:
        for proxy in proxies.values():
            proxy.close()
        moto.close()


def instructions_per_request(confdir: Path, requests: int, size: int, warm: int, idle: float) -> dict | None:
    """Instructions each of the three proxies executes per PUT of `size` bytes (one connection, one request after
    another), counted by valgrind's callgrind (`counted_per_request`): the same count whatever else the machine does,
    where the CPU time of `cpu_per_request` moves by more than signing costs. None when valgrind is not installed."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return None
    moto = Moto(confdir)
    try:
        specs, env = three_ways(confdir, moto)
        out = {name: confdir / f"callgrind-{n}.out" for n, name in enumerate(specs)}
        proxies = start_proxies(confdir, specs, env=env, under=under_callgrind(out), timeout=900)
    except BaseException:
        moto.close()
        raise

    def load(name: str, port: int, limit: int) -> dict:
        return puts(moto, name, port, size, 3600, 1, limit=limit)

    try:
        counts = counted_per_request(proxies, out, load, requests, warm, idle)
    finally:
        for proxy in proxies.values():
            proxy.close()
        moto.close()
    return {
        name: {"instructions": count, "vs_plain": count / counts[PLAIN][0], "errors": errors}
        for name, (count, errors) in counts.items()
    }


def latency_beside_a_large_put(confdir: Path, rounds: int, seconds: float, size: int) -> dict:
    """Small GETs' latency (one connection) through a signing mitmdump, with nothing else going on, while PUTs of
    `size` bytes are signed one after another, and while the same PUTs pass out of the entry's scope (what
    mitmproxy itself spends on so large a body). The PUTs go to the echo upstream, which reads and drops the body:
    the signing is the same whoever verifies it, and moto storing 64 MiB would take the machine's other core."""
    upstream = EchoUpstream(confdir)
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY000001", "AWS_SECRET_ACCESS_KEY": "s" * 40, "AWS_REGION": REGION}
    env |= {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    providers = signing_file(confdir / "sigv4-large.yaml", f"127.0.0.1:{upstream.port}", f"~u ^/{BUCKET}/")
    proxy = start_proxies(confdir, {"proxy": addon_args(header_providers_file=str(providers))}, env=env)["proxy"]
    body = os.urandom(size)
    puts = {"signed": 0, "unsigned": 0}

    def put_until(done: threading.Event, path: str, key: str) -> None:
        while not done.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=120)
            try:
                connection.request("PUT", f"http://127.0.0.1:{upstream.port}{path}", body=body, headers=OCTETS)
                answer = connection.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"the large PUT was answered {answer.status}")
                puts[key] += 1
            finally:
                connection.close()

    # (the PUTs' path, in the entry's scope or not; what they count as)
    cases = {
        "alone": None,
        "beside a signed PUT": (f"/{BUCKET}/large.bin", "signed"),
        "beside an unsigned PUT": ("/large.bin", "unsigned"),
    }
    latencies = {name: [] for name in cases}
    try:
        loadgen.load(loadgen.spec(proxy.port, f"127.0.0.1:{upstream.port}", 0.5, path="/noecho"))  # warm-up
        for _ in range(rounds):
            for name in random.sample(list(cases), len(cases)):
                done = threading.Event()
                putter = None
                if cases[name] is not None:
                    putter = threading.Thread(target=put_until, args=(done, *cases[name]), daemon=True)
                    putter.start()
                try:
                    s = loadgen.spec(proxy.port, f"127.0.0.1:{upstream.port}", seconds, path="/noecho")
                    latencies[name] += loadgen.load(s)["latencies"]
                finally:
                    done.set()
                    if putter is not None:
                        putter.join(120)
        return {
            "puts": puts,
            **{
                name: {"p50_ms": percentile(v, 0.5) * 1e3, "p99_ms": percentile(v, 0.99) * 1e3, "requests": len(v)}
                for name, v in latencies.items()
            },
        }
    finally:
        proxy.close()
        upstream.close()
