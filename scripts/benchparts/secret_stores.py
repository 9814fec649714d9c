"""9: what a refresh costs the proxy, by kind: the CPU time of one client fetch on the thread that makes it
(time.thread_time: the HTTP provider's server runs in this process on threads of its own, and is not counted) of an
HTTP provider answering a JSON object of headers, of kind vault reading a KV 2 secret from a real OpenBao dev server
(a token from a file), and of kinds aws-secrets-manager and aws-ssm-parameter reading from moto's server (IAM
authentication on). Rounds interleave the kinds; each figure is the median of the rounds' means. Run alone:
.venv/bin/python scripts/benchparts/secret_stores.py [--quick|--smoke]."""

import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the paths scripts/bench.py gives its parts
    ROOT = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "addon"), str(ROOT / "scripts")]

from helpers.ports import free_port
from servers import Provider

from benchparts import sigv4
from benchparts.common import Program, median

BAO = Path(sys.executable).parent / "bao"
REGION = sigv4.REGION


class Bao(Program):
    def __init__(self, confdir: Path) -> None:
        import httpx
        import hvac

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = "bench-root"
        env = {"HOME": str(confdir), "PATH": os.environ["PATH"]}
        argv = [str(BAO), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}"]
        super().__init__([*argv, f"-dev-root-token-id={self.root}"], cwd=confdir, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/v1/sys/health", trust_env=False, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"bao did not start:\n{self.output}")
            time.sleep(0.05)
        api = hvac.Client(url=self.url, token=self.root)
        api.secrets.kv.v2.create_or_update_secret(path="github", secret={"token": "gh-bench"})
        api.sys.create_or_update_policy("reader", 'path "secret/data/github" { capabilities = ["read"] }')
        self.token = api.auth.token.create(policies=["reader"], ttl="1h")["auth"]["client_token"]


class Moto(sigv4.Moto):
    """moto's server with IAM authentication on, holding the secret and the parameter the kinds read."""

    def prepare(self, setup: dict) -> None:
        import boto3

        boto3.client("secretsmanager", **setup).create_secret(Name="github", SecretString="gh-bench")
        boto3.client("ssm", **setup).put_parameter(Name="/bench/token", Value="gh-bench", Type="SecureString")


def _settings(values: dict):
    from header_augment_core.settings import parse_settings

    return parse_settings({"hosts": "api.example", "timeout": "10s"} | values, lambda name: name)


def fetch_cost(confdir: Path, rounds: int, fetches: int) -> dict[str, float]:
    """CPU µs per fetch by kind (median over `rounds` interleaved rounds of `fetches` fetches each)."""
    provider = Provider()
    bao = Bao(confdir)
    moto = Moto(confdir)
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    try:
        os.environ |= {"AWS_ACCESS_KEY_ID": moto.key, "AWS_SECRET_ACCESS_KEY": moto.secret}
        os.environ["AWS_ENDPOINT_URL"] = moto.url
        provider.answer({"Authorization": "Bearer gh-bench"})
        token_file = confdir / "vault-token"
        token_file.write_text(bao.token)
        kinds = {
            "http": _settings({"url": provider.url}),
            "vault": _settings(
                {"kind": "vault", "url": bao.url, "secret": "secret/data/github", "field": "token"}
                | {"auth": {"token_file": str(token_file)}}
            ),
            "aws-secrets-manager": _settings({"kind": "aws-secrets-manager", "secret_id": "github", "region": REGION}),
            "aws-ssm-parameter": _settings(
                {"kind": "aws-ssm-parameter", "parameter": "/bench/token", "region": REGION}
            ),
        }
        clients = {name: s.source.client(s.timeout) for name, s in kinds.items()}
        for name, client in clients.items():  # the first fetch makes sessions, logs in, loads models
            result = client.fetch()
            assert result.ok and result.answer.headers == (("Authorization", "Bearer gh-bench"),), (name, result)
        means: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(rounds):
            for name, client in clients.items():
                start = time.thread_time()
                for _ in range(fetches):
                    client.fetch()
                means[name].append((time.thread_time() - start) / fetches * 1e6)
        for client in clients.values():
            client.close()
        return {name: median(values) for name, values in means.items()}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        provider.close()
        bao.close()
        moto.close()


def report(costs: dict[str, float]) -> None:
    http = costs["http"]
    for name, us in costs.items():
        print(f"   {name:>20}: {us:>8.0f} µs CPU per refresh   {us / http:>5.2f}× http")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "--full"
    rounds, fetches = {"--full": (9, 100), "--quick": (5, 50), "--smoke": (1, 2)}[mode]
    with tempfile.TemporaryDirectory() as tmp:
        print("9. CPU per refresh by kind, on the fetching thread only (the servers' own time excluded)")
        report(fetch_cost(Path(tmp), rounds, fetches))
