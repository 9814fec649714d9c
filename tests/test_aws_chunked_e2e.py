"""aws-chunked uploads end to end (issue 29): boto3 ≥ 1.36 and the AWS CLI send S3 uploads over HTTPS as
`Content-Encoding: aws-chunked` with `X-Amz-Content-SHA256: STREAMING-UNSIGNED-PAYLOAD-TRAILER` and a checksum in a
trailer. The proxy must sign that literal and pass the framed body on untouched: signed as a hash of the framed
body, S3 (moto here) stored the framing with the object. The clients speak HTTPS to mitmdump in reverse mode, which
signs for moto's server behind it (IAM authentication on); every object is read back and compared byte for byte."""

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import boto3
import botocore
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from conftest import client_for
from servers import Mitmdump
from test_aws_chunked import SIGNED_CHUNKS, framed
from test_aws_sigv4_e2e import BUCKET, REGION, _providers, moto  # noqa: F401 (moto: the module's moto server)

from header_augment_core.sigv4 import STREAMING_UNSIGNED_TRAILER

MULTIPART = 9_000_000  # two parts of the 5 MiB S3 needs at least (but in the last), the last one smaller
PART = 5 * 1024 * 1024
AWS = str(Path(sys.executable).parent / "aws")  # not tests/helpers/bin/aws, the `aws eks get-token` stand-in


def _reverse(confdir: Path, moto_port: int, providers: Path, env: dict[str, str], *extra: str) -> Mitmdump:
    """mitmdump in reverse mode before moto's server: TLS from the client, signed for moto's address."""
    m = Mitmdump(
        confdir,
        *("--set", f"header_providers_file={providers}", "--mode", f"reverse:http://127.0.0.1:{moto_port}"),
        *extra,
        wait_listening=False,
        env=env,
    )
    m.port = int(m.wait_for(r"reverse proxy to \S+ listening at 127\.0\.0\.1:(\d+)").group(1))
    return m


@pytest.fixture(scope="module")
def front(moto, tmp_path_factory):  # noqa: F811
    """One mitmdump signing with the user's keys: its HTTPS address and the CA that clients verify it with."""
    tmp = tmp_path_factory.mktemp("chunked")
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = _reverse(tmp / "confdir", moto["port"], _providers(tmp / "providers.yaml", moto["port"]), env)
    yield {"url": f"https://127.0.0.1:{m.port}", "ca": str(tmp / "confdir" / "mitmproxy-ca-cert.pem")}
    m.stop()


def _s3(front, unsigned: bool = False):
    """boto3's S3 client with its defaults (request_checksum_calculation when_supported), to the proxy over HTTPS:
    with a placeholder key (its signature is replaced) or signing nothing (signature_version UNSIGNED)."""
    if unsigned:
        keys, config = {}, Config(signature_version=botocore.UNSIGNED)
    else:
        keys, config = {"aws_access_key_id": "AKIDPLACEHOLDER", "aws_secret_access_key": "placeholder"}, None
    return boto3.client("s3", endpoint_url=front["url"], region_name=REGION, verify=front["ca"], config=config, **keys)


@pytest.mark.parametrize("unsigned", [False, True], ids=["placeholder-keys", "unsigned"])
def test_boto3_put_object_is_stored_as_sent(moto, front, unsigned):  # noqa: F811
    s3 = _s3(front, unsigned=unsigned)
    seen = []
    s3.meta.events.register("before-send", lambda request, **_: seen.append(dict(request.headers)))
    body = os.urandom(100)
    key = f"small-{unsigned}.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    # What the issue is about: the SDK framed the body (142 bytes on the wire for these 100).
    assert seen[-1]["X-Amz-Content-SHA256"] == b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert seen[-1]["Content-Encoding"] == b"aws-chunked"
    got = s3.get_object(Bucket=BUCKET, Key=key)
    assert got["ContentLength"] == 100
    assert got["Body"].read() == body


@pytest.mark.parametrize("unsigned", [False, True], ids=["placeholder-keys", "unsigned"])
def test_boto3_multipart_upload_file_is_stored_as_sent(moto, front, tmp_path, unsigned):  # noqa: F811
    s3 = _s3(front, unsigned=unsigned)
    body = os.urandom(MULTIPART)
    (tmp_path / "big.bin").write_bytes(body)
    key = f"multipart-{unsigned}.bin"
    s3.upload_file(
        str(tmp_path / "big.bin"),
        BUCKET,
        key,
        Config=TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, use_threads=False),
    )
    got = s3.get_object(Bucket=BUCKET, Key=key)
    assert got["ContentLength"] == MULTIPART
    assert got["Body"].read() == body


def test_boto3_never_signs_chunks_and_each_of_its_payload_settings_is_stored_as_sent(moto, front):  # noqa: F811
    """What the 400's advice rests on: whatever its payload settings, boto3 sends the unsigned trailer form, a hash
    or UNSIGNED-PAYLOAD (request_checksum_calculation when_required: no aws-chunked at all), never signed chunks."""
    configs = {
        "when_required": Config(request_checksum_calculation="when_required"),
        "payload_signing_enabled": Config(s3={"payload_signing_enabled": True}),
        "payload_signing_disabled": Config(s3={"payload_signing_enabled": False}),
        "both": Config(request_checksum_calculation="when_required", s3={"payload_signing_enabled": False}),
    }
    declared = {}
    for name, config in configs.items():
        s3 = boto3.client(
            "s3",
            endpoint_url=front["url"],
            region_name=REGION,
            verify=front["ca"],
            config=config,
            aws_access_key_id="AKIDPLACEHOLDER",
            aws_secret_access_key="placeholder",
        )

        def record(request, name=name, **_) -> None:  # a handler's answer to before-send would be the response
            declared.setdefault(name, request.headers["X-Amz-Content-SHA256"])  # the first request: the PUT

        s3.meta.events.register("before-send", record)
        body = os.urandom(100)
        s3.put_object(Bucket=BUCKET, Key=f"config-{name}.bin", Body=body)
        assert s3.get_object(Bucket=BUCKET, Key=f"config-{name}.bin")["Body"].read() == body
    assert declared["payload_signing_enabled"] == b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert declared["payload_signing_disabled"] == b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert declared["both"] == b"UNSIGNED-PAYLOAD"
    assert re.fullmatch(rb"[0-9a-f]{64}", declared["when_required"])


def _aws(front, tmp_path: Path, *args: str, unsigned: bool = False) -> str:
    """The AWS CLI (v1, `awscli` from PyPI: its own copy of botocore and s3transfer) with its defaults and no
    configuration but a placeholder key, or none at all with --no-sign-request: what it logged at --debug."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": REGION,
    }
    if unsigned:
        args = (*args, "--no-sign-request")
    else:
        env |= {"AWS_ACCESS_KEY_ID": "AKIDPLACEHOLDER", "AWS_SECRET_ACCESS_KEY": "placeholder-secret"}
    done = subprocess.run(
        [AWS, *args, "--endpoint-url", front["url"], "--ca-bundle", front["ca"], "--debug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.parametrize(("unsigned", "size"), [(False, MULTIPART), (True, 100)], ids=["multipart", "unsigned"])
def test_aws_cli_s3_cp_is_stored_as_sent(moto, front, tmp_path, unsigned, size):  # noqa: F811
    body = os.urandom(size)
    (tmp_path / "up.bin").write_bytes(body)
    key = f"cli-{size}.bin"
    log = _aws(front, tmp_path, "s3", "cp", str(tmp_path / "up.bin"), f"s3://{BUCKET}/{key}", unsigned=unsigned)
    # What it sent (its debug log of each request): the object framed, in two parts or in one request.
    sent = re.findall(r"'X-Amz-Content-SHA256': b'([^']+)'", log)
    assert sent.count("STREAMING-UNSIGNED-PAYLOAD-TRAILER") == (2 if size == MULTIPART else 1), sent
    got = _s3(front).get_object(Bucket=BUCKET, Key=key)
    assert got["ContentLength"] == size
    assert got["Body"].read() == body


def _framed_put(client, url: str, body: bytes, declared: str):
    """A PUT as the SDKs frame it (botocore's own framing), sent with its length, as the AWS SDK for Java does."""
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Encoding": "aws-chunked",
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "X-Amz-Decoded-Content-Length": str(len(body)),
        "X-Amz-Content-SHA256": declared,
    }
    return client.put(url, content=framed(body), headers=headers)


def test_signed_chunk_forms_are_answered_400_and_nothing_is_stored(moto, front):  # noqa: F811
    s3 = _s3(front)
    with httpx.Client(verify=ssl.create_default_context(cafile=front["ca"]), trust_env=False, timeout=10) as client:
        for n, declared in enumerate(SIGNED_CHUNKS):
            answer = _framed_put(client, f"{front['url']}/{BUCKET}/signed-chunks-{n}", b"s" * 100, declared)
            assert answer.status_code == 400, answer.text
            assert f"X-Amz-Content-SHA256 {declared}:" in answer.text
            with pytest.raises(s3.exceptions.NoSuchKey):
                s3.get_object(Bucket=BUCKET, Key=f"signed-chunks-{n}")


def test_a_streamed_framed_upload_is_signed_and_stored_as_sent(moto, mitmdump, tmp_path):  # noqa: F811
    """stream_large_bodies on, no unsigned_payload: an unsigned-trailer upload of a known length is streamed from its
    headers on, signed with the literal (it was killed); a signed-chunk one is killed, never sent."""
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    providers = _providers(tmp_path / "providers.yaml", moto["port"])
    m = mitmdump("--set", f"header_providers_file={providers}", "--set", "stream_large_bodies=64k", env=env)
    body = os.urandom(300 * 1024)
    with client_for(m.proxy) as client:
        answer = _framed_put(client, f"{moto['url']}/{BUCKET}/streamed-framed.bin", body, STREAMING_UNSIGNED_TRAILER)
        assert answer.status_code == 200, answer.text
        m.wait_for(r"Streaming request to 127\.0\.0\.1")
        got = client.get(f"{moto['url']}/{BUCKET}/streamed-framed.bin")
        assert got.status_code == 200 and got.content == body
    # Killed: a streamed request cannot be answered. The client is not told (mitmproxy's close does not reach
    # httpx before its read timeout), so it waits 1 s, not the 10 s of client_for; the proxy's line says killed.
    mark = m.mark()
    brief = httpx.Client(proxy=m.proxy, trust_env=False, timeout=httpx.Timeout(10, read=1))
    with brief, pytest.raises(httpx.TransportError):
        _framed_put(brief, f"{moto['url']}/{BUCKET}/streamed-signed.bin", body, SIGNED_CHUNKS[0])
    m.wait_for(r"PUT http://127\.0\.0\.1:\d+/sigv4-bucket/streamed-signed\.bin$", start=mark)
    m.wait_for(r"<< Connection killed", start=mark)
    with client_for(m.proxy) as client:
        assert client.get(f"{moto['url']}/{BUCKET}/streamed-signed.bin").status_code == 404
