"""kind aws-sigv4 end to end: a real mitmdump signs for clients that hold no AWS credentials, and moto's server (a
real process on 127.0.0.1, IAM authentication on once it is set up) recomputes every signature and refuses a wrong
one. moto's quirks: its STS checks a signature over a form body only, and its server parses away a PUT body sent as
application/x-www-form-urlencoded, so bodies here are application/octet-stream."""

import base64
import hashlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import boto3
import httpx
import pytest
from conftest import client_for
from helpers.moto import moto_server, require_auth
from helpers.ports import free_port
from servers import Mitmdump, Upstream
from test_clients import readme_blocks

BUCKET = "sigv4-bucket"
REGION = "us-east-1"
ADMIN = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
TRUST = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": "oidc"}, '
    '"Action": "sts:AssumeRoleWithWebIdentity"}]}'
)
IDENTITY_FORM = b"Action=GetCallerIdentity&Version=2011-06-15"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's server with a user holding an access key, a role for web identity and a bucket; then auth on."""
    with moto_server(REGION) as (url, setup):
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="proxy")
        iam.put_user_policy(UserName="proxy", PolicyName="all", PolicyDocument=ADMIN)
        key = iam.create_access_key(UserName="proxy")["AccessKey"]
        role = iam.create_role(RoleName="workload", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
        iam.put_role_policy(RoleName="workload", PolicyName="all", PolicyDocument=ADMIN)
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        require_auth(url)
        port = int(url.rpartition(":")[2])
        yield {"url": url, "port": port, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "role": role}


def _providers(path: Path, port: int, extra: str = "") -> Path:
    path.write_text(
        f"""
- name: s3
  kind: aws-sigv4
  service: s3
  region: {REGION}
  hosts: 127.0.0.1:{port}
  scope: "~u /{BUCKET}"
  require: true
- name: sts
  kind: aws-sigv4
  service: sts
  region: {REGION}
  hosts: 127.0.0.1:{port}
  require: true
{extra}"""
    )
    return path


@pytest.fixture(scope="module")
def signing_proxy(moto, tmp_path_factory):
    """One mitmdump signing with the user's static keys, at debug, for the tests that share it."""
    tmp = tmp_path_factory.mktemp("sigv4")
    providers = _providers(tmp / "providers.yaml", moto["port"])
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = Mitmdump(
        tmp / "confdir",
        *("--set", f"header_providers_file={providers}", "--set", "termlog_verbosity=debug"),
        env=env,
    )
    yield m
    m.stop()


def test_sts_get_caller_identity_by_post_form_without_and_with_headers_of_the_client(moto, signing_proxy):
    with client_for(signing_proxy.proxy) as client:
        plain = client.post(moto["url"] + "/", content=IDENTITY_FORM, headers=FORM)
        own = client.post(
            moto["url"] + "/",
            content=IDENTITY_FORM,
            headers={**FORM, "X-Trace": "a  b", "Accept": "text/xml", "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
        )
    for answer in (plain, own):
        assert answer.status_code == 200, answer.text
        assert "<Arn>arn:aws:iam::123456789012:user/proxy</Arn>" in answer.text


def _curl_out(write: str, *args: str) -> tuple[str, str]:
    """curl with no AWS configuration: the body and what `-w write` printed after it."""
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-w", "\n" + write, *args],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    body, _, written = done.stdout.rpartition("\n")
    return body, written


def _curl(proxy: Mitmdump, *args: str) -> tuple[int, str]:
    """curl through the proxy: its status and body."""
    body, status = _curl_out("%{http_code}", "--noproxy", "", "-x", proxy.proxy, *args)
    return int(status), body


def test_a_date_header_of_the_clients_own_is_sent_and_does_not_change_what_is_signed(moto, signing_proxy):
    """botocore signs a request carrying Date with Date instead of X-Amz-Date: moto (and any verifier that reads the
    signing time from X-Amz-Date) refused it. A stale Date, as a client may send, must not matter either."""
    stale = "Date: Wed, 01 Jan 2020 00:00:00 GMT"
    status, body = _curl(
        signing_proxy,
        "-H",
        stale,
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data-binary",
        IDENTITY_FORM.decode(),
        moto["url"] + "/",
    )
    assert status == 200, body
    assert "user/proxy" in body
    status, body = _curl(
        signing_proxy,
        "-H",
        stale,
        "-H",
        "Content-Type: application/octet-stream",
        "-X",
        "PUT",
        "--data-binary",
        "dated",
        f"{moto['url']}/{BUCKET}/dated.txt",
    )
    assert status == 200, body
    assert _curl(signing_proxy, "-H", stale, f"{moto['url']}/{BUCKET}/dated.txt") == (200, "dated")


def test_a_signature_the_client_sent_is_replaced_not_doubled(moto, signing_proxy):
    forged = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAFORGED/20200101/us-east-1/sts/aws4_request, "
        "SignedHeaders=host, Signature=00",
        "X-Amz-Date": "20200101T000000Z",
        "X-Amz-Security-Token": "forged-token",
        "X-Amz-Content-SHA256": "0" * 64,  # replaced by the body's, and signed
    }
    with client_for(signing_proxy.proxy) as client:
        answer = client.post(moto["url"] + "/", content=IDENTITY_FORM, headers={**FORM, **forged})
    assert answer.status_code == 200, answer.text
    assert "user/proxy" in answer.text


def test_s3_with_headers_of_the_clients_own_hop_by_hop_proxy_expect_content_md5_and_its_own_signature(
    moto, signing_proxy
):
    """Each signed, left out or replaced as it must be for moto to recompute the same signature: the client's own
    X-Amz-Date and payload hash (of another body) are replaced, its X-Amz-Meta and Content-MD5 are signed, the
    hop-by-hop and proxy headers and Expect are not."""
    body = os.urandom(300 * 1024)  # curl asks 100-continue for a body this large on its own as well
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-MD5": md5,
        "Expect": "100-continue",
        "X-Amz-Meta-Colour": "blue",
        "X-Amz-Date": "20200101T000000Z",
        "X-Amz-Content-SHA256": hashlib.sha256(b"another body").hexdigest(),
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAFORGED/20200101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=00",
        "Proxy-Authorization": "Basic eDp5",
        "Proxy-Connection": "keep-alive",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Connection": "TE, Keep-Alive, X-Hop",
        "X-Hop": "1",
    }
    (Path(signing_proxy.confdir) / "body.bin").write_bytes(body)
    args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    url = f"{moto['url']}/{BUCKET}/own-headers.bin"
    status, answer = _curl(
        signing_proxy, *args, "-X", "PUT", "--data-binary", f"@{signing_proxy.confdir}/body.bin", url
    )
    assert status == 200, answer
    with client_for(signing_proxy.proxy) as client:
        got = client.get(url)
    assert got.content == body
    assert got.headers["x-amz-meta-colour"] == "blue"


def test_s3_put_and_get_of_a_large_body_and_a_listing_whose_query_needs_canonical_encoding(moto, signing_proxy):
    body = os.urandom(3 * 1024 * 1024)  # above the size hashed on the event loop
    with client_for(signing_proxy.proxy) as client:
        put = client.put(
            f"{moto['url']}/{BUCKET}/dir a/big.bin", content=body, headers={"Content-Type": "application/octet-stream"}
        )
        assert put.status_code == 200, put.text
        got = client.get(f"{moto['url']}/{BUCKET}/dir a/big.bin")
        assert got.status_code == 200, got.text
        assert got.content == body
        # `+` for a space and a bare `/`, as clients write them: sent and signed as %20 and %2F.
        listing = client.send(
            client.build_request("GET", httpx.URL(f"{moto['url']}/{BUCKET}?list-type=2&prefix=dir+a/&delimiter=/"))
        )
    assert listing.status_code == 200, listing.text
    assert "<Key>dir a/big.bin</Key>" in listing.text


def test_http2_from_the_client_signed_with_its_authority_as_host(moto, mitmdump, tmp_path):
    """curl speaks HTTP/2 over TLS to mitmdump in reverse mode before moto (HTTP/1.1): the :authority the client sent
    (the proxy's address, kept by keep_host_header) is replaced by moto's, signed as `host`, and moto recomputes the
    same signature."""
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = mitmdump(
        *("--set", f"header_providers_file={_providers(tmp_path / 'providers.yaml', moto['port'])}"),
        *("--mode", f"reverse:http://127.0.0.1:{moto['port']}", "--set", "keep_host_header=true"),
        wait_listening=False,
        env=env,
    )
    m.port = int(m.wait_for(r"reverse proxy to \S+ listening at 127\.0\.0\.1:(\d+)").group(1))
    front = f"https://127.0.0.1:{m.port}"

    def h2(*args: str) -> str:
        body, version = _curl_out("%{http_version}", "-k", "--http2", *args)
        assert version == "2"  # the client side was HTTP/2
        return body

    form = ("-H", "Content-Type: application/x-www-form-urlencoded", "--data-binary", IDENTITY_FORM.decode())
    assert "<Arn>arn:aws:iam::123456789012:user/proxy</Arn>" in h2(*form, front + "/")
    body = os.urandom(200 * 1024)  # above the size hashed on the event loop
    (tmp_path / "h2.bin").write_bytes(body)
    octets = ("-H", "Content-Type: application/octet-stream")
    h2("--fail-with-body", *octets, "-T", str(tmp_path / "h2.bin"), f"{front}/{BUCKET}/h2.bin")
    h2("--fail-with-body", "-o", str(tmp_path / "got.bin"), f"{front}/{BUCKET}/h2.bin")
    assert (tmp_path / "got.bin").read_bytes() == body
    m.wait_for(rf"GET http://127\.0\.0\.1:{moto['port']}/{BUCKET}/h2\.bin HTTP/2\.0")


def test_out_of_scope_hosts_are_untouched_and_moto_refuses_them_unsigned(moto, signing_proxy, tmp_path):
    echo = Upstream()
    try:
        with client_for(signing_proxy.proxy) as client:
            seen = client.get(f"http://127.0.0.1:{echo.port}/x", headers={"X-Amz-Date": "20200101T000000Z"})
        names = [name.lower() for name, _ in seen.json()["headers"]]
        assert "authorization" not in names and "x-amz-security-token" not in names
    finally:
        echo.close()


def test_nothing_secret_in_the_output_at_debug(moto, signing_proxy):
    with client_for(signing_proxy.proxy) as client:
        assert client.post(moto["url"] + "/", content=IDENTITY_FORM, headers=FORM).status_code == 200
    signing_proxy.wait_for("signed \\(sigv4 sts us-east-1\\)|GetCallerIdentity|POST", timeout=10)
    output = signing_proxy.output
    assert moto["secret"] not in output
    assert "Signature=" not in output


def test_web_identity_credentials_through_aws_endpoint_url_sts(moto, mitmdump, tmp_path):
    (tmp_path / "token").write_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ3b3JrbG9hZCJ9.")
    env = {
        "AWS_ROLE_ARN": moto["role"],
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"),
        "AWS_ENDPOINT_URL_STS": moto["url"],
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # moto's server answers 500 to an unsigned AssumeRoleWithWebIdentity while authentication is on (AWS takes it
    # unsigned): actions go unauthenticated until both entries have their credentials, and every one after is checked.
    require_auth(moto["url"], after=10)
    try:
        providers = _providers(tmp_path / "providers.yaml", moto["port"])
        m = mitmdump("--set", f"header_providers_file={providers}", "--set", "termlog_verbosity=debug", env=env)
        m.wait_for(r"header provider s3 .*credentials in use \(assume-role-with-web-identity\)")
        m.wait_for(r"header provider sts .*credentials in use \(assume-role-with-web-identity\)")
    finally:
        require_auth(moto["url"])
    with client_for(m.proxy) as client:
        # The client's own session token is replaced by the role's (moto compares it with the one it issued).
        own = {"X-Amz-Security-Token": "FwoGZXIvYXdzEFORGEDTOKEN"}
        answer = client.post(moto["url"] + "/", content=IDENTITY_FORM, headers={**FORM, **own})
        put = client.put(
            f"{moto['url']}/{BUCKET}/from-role", content=b"x" * 100, headers={"Content-Type": "text/plain"}
        )
    assert answer.status_code == 200, m.output
    assert "assumed-role/workload" in answer.text
    assert put.status_code == 200, put.text
    output = m.output.lower()
    assert "x-amz-security-token:" not in output and "canonicalrequest" not in output and "traceback" not in output


def test_no_credentials_anywhere_refuses_in_scope_requests_with_503(moto, mitmdump, tmp_path):
    env = {
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    m = mitmdump("--set", f"header_providers_file={_providers(tmp_path / 'providers.yaml', moto['port'])}", env=env)
    with client_for(m.proxy) as client:
        answer = client.post(moto["url"] + "/", content=IDENTITY_FORM, headers=FORM)
    assert answer.status_code == 503


def test_start_up_without_botocore_says_what_to_install(moto, mitmdump, tmp_path):
    hidden = tmp_path / "hide"
    hidden.mkdir()
    # A sitecustomize that makes `import botocore` fail, as if the extra were not installed.
    (hidden / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'botocore' or name.startswith('botocore.'):\n"
        "            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    providers = _providers(tmp_path / "providers.yaml", moto["port"])
    m = mitmdump("--set", f"header_providers_file={providers}", wait_listening=False, env={"PYTHONPATH": str(hidden)})
    assert m.wait_exit() != 0
    assert "pip install 'header-augment[aws]'" in m.output
    # Every other kind runs without it: the images that do not use the kind do not install botocore.
    other = tmp_path / "other.yaml"
    other.write_text("- kind: file\n  path: /nonexistent\n  hosts: api.example.com\n")
    m = mitmdump("--set", f"header_providers_file={other}", env={"PYTHONPATH": str(hidden)})
    assert m.proc.poll() is None and "botocore" not in m.output


def test_a_streamed_body_is_sent_as_unsigned_payload_to_s3_only_where_the_entry_allows_it(moto, mitmdump, tmp_path):
    unsigned = f"""- name: unsigned
  kind: aws-sigv4
  service: s3
  region: {REGION}
  unsigned_payload: true
  hosts: 127.0.0.1:{moto["port"]}
  scope: "~u /{BUCKET}/streamed/"
"""
    providers = tmp_path / "providers.yaml"
    providers.write_text(unsigned + _providers(tmp_path / "signed.yaml", moto["port"]).read_text())
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = mitmdump("--set", f"header_providers_file={providers}", "--set", "stream_large_bodies=64k", env=env)
    body = os.urandom(2 * 1024 * 1024)
    octets = {"Content-Type": "application/octet-stream"}
    with client_for(m.proxy) as client:
        streamed = client.put(f"{moto['url']}/{BUCKET}/streamed/big.bin", content=body, headers=octets)
        assert streamed.status_code == 200, streamed.text
        assert client.get(f"{moto['url']}/{BUCKET}/streamed/big.bin").content == body
        # Signed at its headers, while the 100-continue mitmproxy answers and takes off is still among them.
        (tmp_path / "big.bin").write_bytes(body[::-1])
        url = f"{moto['url']}/{BUCKET}/streamed/expect.bin"
        status, answer = _curl(
            m,
            "-H",
            "Expect: 100-continue",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(tmp_path / "big.bin"),
            url,
        )
        assert status == 200, answer
        assert client.get(url).content == body[::-1]
        with pytest.raises(httpx.TransportError):  # killed before anything was sent: no answer can be given
            # A short read timeout: httpx may notice the closed connection only then (it waited out 10 s).
            client.put(
                f"{moto['url']}/{BUCKET}/other/big.bin", content=body, headers=octets, timeout=httpx.Timeout(10, read=1)
            )
        m.wait_for(r"header provider s3 .*streamed request body.*unsigned_payload: true")
        assert client.get(f"{moto['url']}/{BUCKET}/other/big.bin").status_code == 404  # never sent
        small = client.put(f"{moto['url']}/{BUCKET}/other/small.bin", content=b"x" * 1000, headers=octets)
        assert small.status_code == 200, small.text  # under stream_large_bodies: hashed and signed


def test_the_readme_recipe_uploads_with_curl_holding_no_aws_configuration(moto, tmp_path):
    """The README's providers file and commands, with its S3 host and URL pointed at moto (path-style, plain HTTP)."""
    section = "S3, signed by the proxy: `kind: aws-sigv4`"
    recipe, commands = [b for b in readme_blocks() if b.subsection == section]
    providers = tmp_path / "aws.yaml"
    hosts = '  hosts: ["*.s3.eu-west-1.amazonaws.com", s3.eu-west-1.amazonaws.com]'
    assert hosts in recipe.text
    providers.write_text(recipe.text.replace(hosts, f"  hosts: 127.0.0.1:{moto['port']}"))
    start, upload = commands.lines
    assert start == "scripts/run --set header_providers_file=aws.yaml"
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = Mitmdump(tmp_path / "confdir", "--set", f"header_providers_file={providers}", env=env)
    try:
        (tmp_path / "report.csv").write_text("region,total\neu-west-1,42\n")
        url = "https://my-bucket.s3.eu-west-1.amazonaws.com/report.csv"
        args = upload.replace("http://127.0.0.1:8080", m.proxy).replace(url, f"{moto['url']}/{BUCKET}/report.csv")
        args = args.replace("~/.mitmproxy/mitmproxy-ca-cert.pem", str(tmp_path / "confdir" / "mitmproxy-ca-cert.pem"))
        done = subprocess.run(
            [*shlex.split(args), "--silent", "--show-error", "--fail-with-body", "--noproxy", ""],
            cwd=tmp_path,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},  # no AWS configuration at all
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with client_for(m.proxy) as client:
            assert client.get(f"{moto['url']}/{BUCKET}/report.csv").text == "region,total\neu-west-1,42\n"
    finally:
        m.stop()


def test_a_flow_rerouted_by_map_remote_is_signed_for_where_it_goes(moto, mitmdump, tmp_path):
    echo = Upstream()
    try:
        env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
        m = mitmdump(
            *("--set", f"header_providers_file={_providers(tmp_path / 'providers.yaml', moto['port'])}"),
            *("--map-remote", f"|//sts.test/|//127.0.0.1:{moto['port']}/"),
            *("--map-remote", f"|//127.0.0.1:{moto['port']}/away|//127.0.0.1:{echo.port}/"),
            env=env,
        )
        with client_for(m.proxy) as client:
            into = client.post("http://sts.test/", content=IDENTITY_FORM, headers=FORM)
            away = client.get(f"{moto['url']}/away")
        assert into.status_code == 200, into.text  # signed for 127.0.0.1:port, where it went
        assert "user/proxy" in into.text
        names = [name.lower() for name, _ in away.json()["headers"]]
        assert "authorization" not in names and "x-amz-date" not in names
    finally:
        echo.close()


def test_a_web_identity_call_that_fails_names_the_chain_step_and_requests_get_503(moto, mitmdump, tmp_path):
    (tmp_path / "token").write_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ3b3JrbG9hZCJ9.")
    env = {
        "AWS_ROLE_ARN": moto["role"],
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"),
        "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    m = mitmdump("--set", f"header_providers_file={_providers(tmp_path / 'providers.yaml', moto['port'])}", env=env)
    m.wait_for(r"header provider sts .*refresh failed: assume-role-with-web-identity: \w+")
    with client_for(m.proxy) as client:
        assert client.post(moto["url"] + "/", content=IDENTITY_FORM, headers=FORM).status_code == 503
    assert "eyJhbGciOiJub25lIn0" not in m.output and "Traceback" not in m.output


def test_the_readme_single_provider_options_sign_as_its_providers_file_does(moto, tmp_path):
    """The README's `--set header_aws_service=…` line, its S3 hosts pointed at moto: the same entry, no file."""
    from test_readme import section_text

    (line,) = re.findall(
        r"`(--set header_aws_service=[^`]+)`",
        section_text("AWS APIs, signed by the proxy: `kind: aws-sigv4`", "docs/aws.md"),
    )
    args = shlex.split(line.replace("\n", " ").replace("*.s3.eu-west-1.amazonaws.com", f"127.0.0.1:{moto['port']}"))
    assert [a.split("=")[0] for a in args if a != "--set"] == [
        "header_aws_service",
        "header_aws_region",
        "header_hosts",
        "header_require",
    ]
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = Mitmdump(tmp_path / "confdir", *args, env=env)
    try:
        octets = {"Content-Type": "application/octet-stream"}
        with client_for(m.proxy) as client:
            put = client.put(f"{moto['url']}/{BUCKET}/options.bin", content=b"by options", headers=octets)
            assert put.status_code == 200, put.text
            assert client.get(f"{moto['url']}/{BUCKET}/options.bin").content == b"by options"
    finally:
        m.stop()
