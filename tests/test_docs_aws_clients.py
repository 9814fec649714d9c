"""docs/aws.md, "SDK clients and the AWS CLI", run as written: the AWS CLI with --no-sign-request, boto3 with
signature_version UNSIGNED and the CLI with placeholder keys, each holding no AWS credentials, upload through the
README's S3 entry, which signs for moto's server (IAM authentication on: an unsigned request or a placeholder's
signature is refused there). Every object is read back with the real keys and compared.

The only liberties taken with the blocks' text: 8080 is the test proxy's port, and HOME a scratch home whose
~/.mitmproxy is that proxy's confdir. The proxy (the README's entry, its hosts pointed at moto) routes what the
clients send to my-bucket.s3.eu-west-1.amazonaws.com and s3.eu-west-1.amazonaws.com to moto with map_remote, path
style: the clients speak HTTPS to those names through the proxy, as they would to AWS, and nothing resolves them
(connection_strategy lazy: mitmproxy connects only where the request goes)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from servers import Mitmdump
from test_aws_sigv4_e2e import moto  # noqa: F401 (the module's moto server)
from test_clients import readme_blocks

PAGE, SECTION = "docs/aws.md", "SDK clients and the AWS CLI"
RECIPE = "S3, signed by the proxy: `kind: aws-sigv4`"  # the README's entry
BUCKET, REGION = "my-bucket", "eu-west-1"
VIRTUAL_HOST, PATH_HOST = f"{BUCKET}.s3.{REGION}.amazonaws.com", f"s3.{REGION}.amazonaws.com"
CONTENT = b"region,total\neu-west-1,42\n"
VENV_BIN = Path(sys.executable).parent  # the AWS CLI (awscli from PyPI) and python with boto3


def blocks() -> list:
    return [b for b in readme_blocks(PAGE) if b.section == SECTION]


def real_s3(moto):  # noqa: F811
    return boto3.client(
        "s3",
        endpoint_url=moto["url"],
        region_name=REGION,
        aws_access_key_id=moto["key"],
        aws_secret_access_key=moto["secret"],
    )


@pytest.fixture(scope="module")
def world(moto, tmp_path_factory):  # noqa: F811
    """The README's S3 entry in a proxy holding moto's keys, the bucket, and a client's directory and home."""
    base = tmp_path_factory.mktemp("aws-clients")
    real_s3(moto).create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    (entry,) = [b for b in readme_blocks() if b.subsection == RECIPE and b.language == "yaml"]
    hosts = f'  hosts: ["*.s3.{REGION}.amazonaws.com", {PATH_HOST}]'
    assert hosts in entry.text
    (base / "aws.yaml").write_text(entry.text.replace(hosts, f"  hosts: 127.0.0.1:{moto['port']}"))
    home, work = base / "home", base / "work"
    work.mkdir()
    (work / "report.csv").write_bytes(CONTENT)
    proxy = Mitmdump(
        home / ".mitmproxy",
        *("--set", f"header_providers_file={base / 'aws.yaml'}", "--set", "connection_strategy=lazy"),
        *("--map-remote", f"|https://{VIRTUAL_HOST}/|{moto['url']}/{BUCKET}/"),
        *("--map-remote", f"|https://{PATH_HOST}/|{moto['url']}/"),
        env={"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]},
    )
    try:
        proxy.wait_for(r"header provider s3 .*credentials in use \(env\)")
        yield {"proxy": proxy, "home": home, "work": work, "s3": real_s3(moto)}
    finally:
        proxy.stop()


def client_env(world) -> dict[str, str]:
    """A client's terminal: no AWS configuration or credentials at all, no proxy until the block sets it."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    return keep | {
        "HOME": str(world["home"]),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "AWS_CONFIG_FILE": str(world["home"] / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(world["home"] / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def run(world, script: str) -> subprocess.CompletedProcess:
    script = re.sub(r"(?<![\w.])8080(?![\w.])", str(world["proxy"].port), script)
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        cwd=world["work"],
        env=client_env(world),
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored(world, key: str) -> bytes:
    return world["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_the_section_shows_the_cli_boto3_and_placeholder_keys():
    assert [b.language for b in blocks()] == ["sh", "python", "sh"]
    terminal, _, placeholder = blocks()
    assert re.fullmatch(r"export HTTPS_PROXY=\S+ AWS_CA_BUNDLE=\S+", terminal.lines[0])
    assert "--no-sign-request" in terminal.lines[1]
    assert "AWS_ACCESS_KEY_ID=" in placeholder.text and "--no-sign-request" not in placeholder.text


def test_the_cli_without_signing_uploads_through_the_proxy(world):
    terminal = blocks()[0]
    done = run(world, terminal.text)
    assert done.returncode == 0, done.stderr
    assert stored(world, "report.csv") == CONTENT


def test_boto3_unsigned_uploads_through_the_proxy(world):
    """The python block, from the terminal the first block set up (its export line)."""
    terminal, code, _ = blocks()
    done = run(world, f"{terminal.lines[0]}\npython - <<'EOF'\n{code.text}EOF")
    assert done.returncode == 0, done.stderr
    assert stored(world, "report.csv") == CONTENT


def test_the_cli_with_placeholder_keys_uploads_through_the_proxy(world):
    terminal, _, placeholder = blocks()
    done = run(world, f"{terminal.lines[0]}\n{placeholder.text}")
    assert done.returncode == 0, done.stderr
    assert stored(world, "report-2.csv") == CONTENT


def test_without_the_proxy_moto_refuses_what_the_clients_send(world):
    """What makes the uploads above proof of the proxy's signature: sent straight to moto, unsigned or signed with
    placeholder keys, they are refused."""
    for config, keys in ((Config(signature_version=UNSIGNED), {}), (None, {"aws_access_key_id": "placeholder"})):
        keys = keys | ({"aws_secret_access_key": "placeholder"} if keys else {})
        s3 = boto3.client("s3", endpoint_url=world["s3"].meta.endpoint_url, region_name=REGION, config=config, **keys)
        with pytest.raises(s3.exceptions.ClientError):  # 403, and 500 for the unsigned one (moto's way)
            s3.put_object(Bucket=BUCKET, Key="straight.csv", Body=CONTENT)
    assert world["s3"].list_objects_v2(Bucket=BUCKET, Prefix="straight")["KeyCount"] == 0


@pytest.mark.parametrize(
    ("bucket", "config", "host"),
    [
        (BUCKET, None, VIRTUAL_HOST),
        ("my.bucket", None, PATH_HOST),
        (BUCKET, Config(s3={"addressing_style": "path"}), PATH_HOST),
    ],
    ids=["virtual-hosted", "dotted-name", "addressing-style-path"],
)
def test_which_host_boto3_sends_to(bucket, config, host):
    """The page's "Which hosts": where boto3 sends an upload, virtual-hosted or path-style (nothing is sent)."""

    class Sent(Exception):
        pass

    def stop(request, **_):
        raise Sent(request.url)

    unsigned = Config(signature_version=UNSIGNED).merge(config or Config())
    s3 = boto3.client("s3", region_name=REGION, config=unsigned)
    s3.meta.events.register("before-send", stop)
    with pytest.raises(Sent) as sent:
        s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert str(sent.value).startswith(f"https://{host}/")
