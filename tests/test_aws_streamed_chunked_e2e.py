"""aws-sigv4 and a body of unknown length (`Transfer-Encoding: chunked`) while `stream_large_bodies` is set: mitmproxy
buffers such a body until it outgrows the limit, then sends the headers as they are, with no hook in between, and
streams the rest. The proxy decides at the headers: signed with what needs no body (UNSIGNED-PAYLOAD where the entry
allows it, an aws-chunked upload's STREAMING-UNSIGNED-PAYLOAD-TRAILER) and streamed, or killed before anything is
sent. Before, it left with the client's own signature (a placeholder's, or none). moto's server (IAM authentication
on) checks the signatures; an echo upstream stands for a service other than S3."""

import os

import boto3
import httpx
import pytest
from conftest import client_for, values_of
from helpers.ports import free_port
from servers import Mitmdump, Upstream
from test_aws_sigv4_e2e import BUCKET, REGION, _providers, moto  # noqa: F401 (moto: the module's moto server)

LIMIT = 64 * 1024
OCTETS = {"Content-Type": "application/octet-stream"}


def _chunks(body: bytes, size: int = 16 * 1024):
    """httpx sends a generator's body with Transfer-Encoding: chunked, a chunk per item."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.fixture(scope="module")
def api():
    upstream = Upstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def proxy(moto, api, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("streamed-chunked")
    extra = f"""- name: api
  kind: aws-sigv4
  service: execute-api
  region: {REGION}
  hosts: 127.0.0.1:{api.port}
"""
    providers = tmp / "providers.yaml"
    unsigned = f"""- name: unsigned
  kind: aws-sigv4
  service: s3
  region: {REGION}
  unsigned_payload: true
  hosts: 127.0.0.1:{moto["port"]}
  scope: "~u /{BUCKET}/unsigned/"
"""
    providers.write_text(unsigned + _providers(tmp / "rest.yaml", moto["port"], extra).read_text())
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    reverse = free_port()  # boto3 frames uploads over HTTPS only: it speaks TLS to this front, before moto
    m = Mitmdump(
        tmp / "confdir",
        *("--set", f"header_providers_file={providers}", "--set", f"stream_large_bodies={LIMIT}"),
        *("--mode", "regular", "--mode", f"reverse:http://127.0.0.1:{moto['port']}@{reverse}"),
        env=env,
    )
    m.wait_for(rf"reverse proxy to \S+ listening at 127\.0\.0\.1:{reverse}")
    m.front = f"https://127.0.0.1:{reverse}"
    m.ca = str(tmp / "confdir" / "mitmproxy-ca-cert.pem")
    m.key = moto["key"]
    yield m
    m.stop()


def _killed(m: Mitmdump, method: str, url: str, body: bytes) -> None:
    """A request the proxy kills at its headers: the client gets no answer (mitmproxy closes the connection, which
    httpx may only notice at its read timeout, kept short), and the proxy's line says killed."""
    mark = m.mark()
    brief = httpx.Client(proxy=m.proxy, trust_env=False, timeout=httpx.Timeout(10, read=1))
    with brief, pytest.raises(httpx.TransportError):
        brief.request(method, url, content=_chunks(body), headers=OCTETS)
    m.wait_for(r"<< Connection killed", start=mark)


def test_a_chunked_upload_past_the_limit_goes_as_unsigned_payload_where_the_entry_allows_it(moto, proxy):  # noqa: F811
    body = os.urandom(LIMIT + 8 * 1024)
    url = f"{moto['url']}/{BUCKET}/unsigned/chunked.bin"
    with client_for(proxy.proxy) as client:
        answer = client.put(url, content=_chunks(body), headers=OCTETS)
        assert answer.status_code == 200, answer.text
        assert client.get(url).content == body
        small = client.put(f"{moto['url']}/{BUCKET}/unsigned/small.bin", content=_chunks(b"s" * 100), headers=OCTETS)
        assert small.status_code == 200, small.text  # streamed from its headers on too: the size is not known there
        assert client.get(f"{moto['url']}/{BUCKET}/unsigned/small.bin").content == b"s" * 100


def test_boto3_put_object_past_the_limit_is_signed_with_the_trailer_literal(moto, proxy):  # noqa: F811
    """boto3 ≥ 1.36 frames an upload (aws-chunked) and sends it without a length: signed at its headers with the
    literal, by the entry without unsigned_payload."""
    s3 = boto3.client(
        "s3",
        endpoint_url=proxy.front,
        region_name=REGION,
        verify=proxy.ca,
        aws_access_key_id="AKIDPLACEHOLDER",
        aws_secret_access_key="placeholder",
    )
    sent = []
    s3.meta.events.register("before-send", lambda request, **_: sent.append(dict(request.headers)))
    body = os.urandom(LIMIT + 8 * 1024)
    s3.put_object(Bucket=BUCKET, Key="boto3-chunked.bin", Body=body)
    assert sent[-1]["Transfer-Encoding"] == b"chunked" and "Content-Length" not in sent[-1]
    assert s3.get_object(Bucket=BUCKET, Key="boto3-chunked.bin")["Body"].read() == body


def test_a_chunked_upload_the_entry_cannot_sign_unhashed_is_killed_and_never_sent(moto, proxy):  # noqa: F811
    url = f"{moto['url']}/{BUCKET}/hashed/chunked.bin"
    mark = proxy.mark()
    _killed(proxy, "PUT", url, os.urandom(LIMIT + 8 * 1024))
    proxy.wait_for(r"header provider s3 .*body of unknown length.*unsigned_payload: true", start=mark)
    with client_for(proxy.proxy) as client:
        assert client.get(url).status_code == 404


def test_a_chunked_body_to_a_service_other_than_s3_is_killed_not_sent_unsigned(proxy, api):
    _killed(proxy, "POST", f"{api.url}/chunked", os.urandom(LIMIT + 8 * 1024))
    proxy.wait_for(r"header provider api .*body of unknown length")
    with client_for(proxy.proxy) as client:  # one with its length is hashed and signed
        answer = client.post(f"{api.url}/sized", content=b"x" * 100, headers=OCTETS)
        assert values_of(answer, "Authorization")[0].startswith(f"AWS4-HMAC-SHA256 Credential={proxy.key}/")
        assert values_of(answer, "X-Amz-Content-SHA256") == []  # execute-api: the hash is signed, not sent
