"""aws-chunked uploads in-process (issue 29): an unsigned-trailer upload is signed with the literal
STREAMING-UNSIGNED-PAYLOAD-TRAILER and sent untouched; the forms whose chunks the client signed are refused with a 400
that names them; a framed body the signature would not describe is never sent."""

import io

import pytest
from botocore.auth import STREAMING_UNSIGNED_PAYLOAD_TRAILER, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from test_aws_sigv4 import KEY, SECRET, _flow, _settings, _verify, signing_addon

from header_augment_core.kinds.aws_sigv4 import Frozen, Signer
from header_augment_core.sigv4 import HASH_ON_LOOP, STREAMING_UNSIGNED_TRAILER, prepare, sign

SIGNED_CHUNKS = (
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
)


def framed(body: bytes) -> bytes:
    """The body as botocore frames it for a trailing checksum: hex-length chunks, a last empty one, the trailer."""
    return AwsChunkedWrapper(io.BytesIO(body), Crc32Checksum, "x-amz-checksum-crc32").read()


def _upload(body: bytes, own_signature: bool, declared: str = STREAMING_UNSIGNED_TRAILER, **flow):
    """What boto3 sends for put_object over HTTPS by default: with its own signature (placeholder keys), or
    without one (signature_version UNSIGNED), which still declares the framing."""
    headers = [
        ("Content-Encoding", "aws-chunked"),
        ("X-Amz-Trailer", "x-amz-checksum-crc32"),
        ("X-Amz-Decoded-Content-Length", str(len(body))),
        ("X-Amz-Sdk-Checksum-Algorithm", "CRC32"),
        ("X-Amz-Content-SHA256", declared),
        ("Transfer-Encoding", "chunked"),
    ]
    if own_signature:
        headers += [
            ("X-Amz-Date", "20200101T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDPLACEHOLDER/20200101/eu-west-1/s3/aws4_request, "
                "SignedHeaders=host, Signature=00",
            ),
        ]
    f = _flow(**flow)
    for name, value in headers:
        f.request.headers.add(name, value)
    # raw: mitmproxy's `content` setter would encode it for its Content-Encoding, and drop one it does not know
    f.request.raw_content = framed(body)
    return f


def test_the_literal_is_botocores():
    assert STREAMING_UNSIGNED_TRAILER == STREAMING_UNSIGNED_PAYLOAD_TRAILER


@pytest.mark.parametrize("own_signature", [True, False], ids=["placeholder-keys", "unsigned"])
def test_an_unsigned_trailer_upload_is_signed_as_the_literal_and_sent_untouched(tmp_path, monkeypatch, own_signature):
    """It was signed as the hash of the framed body, which S3 then stored as the object: 142 bytes for 100."""
    body = bytes(range(100))
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _upload(body, own_signature)
        sent = f.request.raw_content
        assert len(sent) == 142
        addon.requestheaders(f)
        assert addon.check_reroute(f) is None
        request = f.request
        assert request.headers.get_all("x-amz-content-sha256") == [STREAMING_UNSIGNED_PAYLOAD_TRAILER]
        assert request.headers["content-encoding"] == "aws-chunked"
        assert request.headers["x-amz-decoded-content-length"] == "100"
        assert request.headers["x-amz-trailer"] == "x-amz-checksum-crc32"
        assert request.raw_content == sent
        signed = request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert {"content-encoding", "x-amz-content-sha256", "x-amz-decoded-content-length", "x-amz-trailer"} <= set(
            signed
        )
        assert request.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
        _verify(f)  # botocore's canonical request reads the payload from X-Amz-Content-SHA256, as S3 does
        assert f.response is None and addon.bindings[0].counters.given == 1


def test_a_large_framed_body_is_never_hashed(tmp_path, monkeypatch):
    """Nothing in its signature depends on the body: signed on the loop at once, however large."""
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _upload(b"x" * (4 * HASH_ON_LOOP), own_signature=True)
        addon.requestheaders(f)
        assert addon.check_reroute(f) is None  # a hash would have been a coroutine for a worker thread
        assert f.request.headers["x-amz-content-sha256"] == STREAMING_UNSIGNED_PAYLOAD_TRAILER
        _verify(f)


def test_a_streamed_unsigned_trailer_upload_is_signed_without_unsigned_payload(tmp_path, monkeypatch):
    """stream_large_bodies: the entry has no unsigned_payload, and such a body used to be killed; it needs no hash."""
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _upload(b"y" * 1000, own_signature=False)
        f.request.stream = True
        assert addon.sign_streamed(f) is None
        assert f.error is None and f.response is None
        assert f.request.headers["x-amz-content-sha256"] == STREAMING_UNSIGNED_PAYLOAD_TRAILER
        _verify(f)


@pytest.mark.parametrize("declared", SIGNED_CHUNKS)
def test_signed_chunks_are_refused_with_400_naming_the_form(tmp_path, monkeypatch, declared):
    """Our signature replaces the client's, so the chunk signatures chained from it would not verify."""
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _upload(b"z" * 100, own_signature=True, declared=declared)
        addon.requestheaders(f)
        addon.check_reroute(f)
        assert f.response.status_code == 400
        text = f.response.get_text()
        assert f"X-Amz-Content-SHA256 {declared}:" in text and "chunkedEncodingEnabled(false)" in text
        assert addon.bindings[0].counters.refused == 1 and addon.bindings[0].counters.given == 0
        assert declared in f.comment

        streamed = _upload(b"z" * 100, own_signature=True, declared=declared)
        streamed.request.stream = True
        addon.sign_streamed(streamed)
        assert streamed.error is not None and streamed.response is None  # killed: a streamed one cannot be answered
        assert "AKIDPLACEHOLDER" in streamed.request.headers["authorization"]  # never signed by us


def test_another_streaming_form_is_refused_without_being_repeated(tmp_path, monkeypatch):
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _upload(b"z" * 100, own_signature=False, declared="STREAMING-SOMETHING-NEW<script>")
        addon.requestheaders(f)
        addon.check_reroute(f)
        assert f.response.status_code == 400
        assert "another STREAMING- form" in f.response.get_text()
        assert "SOMETHING-NEW" not in f.response.get_text() and "SOMETHING-NEW" not in f.comment


@pytest.mark.parametrize(
    "declared", [None, "UNSIGNED-PAYLOAD", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]
)
def test_an_aws_chunked_body_declared_otherwise_is_refused(tmp_path, monkeypatch, declared):
    """Signed as a hash of the framed body (or UNSIGNED-PAYLOAD), S3 would store the framing with the object."""
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _upload(b"w" * 100, own_signature=False, declared=declared or "")
        if declared is None:
            del f.request.headers["x-amz-content-sha256"]
        f.request.headers["Content-Encoding"] = "gzip, AWS-Chunked"
        addon.requestheaders(f)
        addon.check_reroute(f)
        assert f.response.status_code == 400
        assert "aws-chunked" in f.response.get_text()


def test_the_literal_to_a_service_other_than_s3_is_signed_as_sent():
    """SigV4Auth (not S3's) signs the payload hash the header holds: the literal is put there, never a body hash."""
    signer = Signer(_settings(service="execute-api", hosts=["api.example.com"]).source)
    f = _upload(b"v" * 100, own_signature=True, host="api.example.com")
    copy = Frozen(KEY, SECRET, None, "env", None)
    fields, _ = sign(signer, copy, prepare(f.request, False))
    f.request.headers.fields = fields
    sent = {name.lower(): value for name, value in f.request.headers.items()}
    assert f.request.headers.get_all("x-amz-content-sha256") == [STREAMING_UNSIGNED_PAYLOAD_TRAILER]
    names = sent["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "x-amz-content-sha256" in names
    again = AWSRequest(method="PUT", url=f"https://api.example.com{f.request.path}", data=b"not the body")
    for name in names:
        again.headers[name] = sent[name]
    again.context["timestamp"] = sent["x-amz-date"]
    auth = SigV4Auth(copy, "execute-api", "eu-west-1")
    signature = auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again)
    assert sent["authorization"].endswith("Signature=" + signature)
