"""aws-sigv4 at a request's headers when its body has no length (HTTP/1's Transfer-Encoding) and stream_large_bodies
is set: mitmproxy would send the headers as they are once the body outgrows the limit, with no hook in between, so
the entry that signs the request streams it from its headers: signed with what needs no body, or killed.
End to end, against moto: tests/test_aws_streamed_chunked_e2e.py."""

from mitmproxy import ctx
from mitmproxy.addons.proxyserver import Proxyserver
from test_aws_sigv4 import _flow, _verify, signing_addon

from header_augment_core.sigv4 import STREAMING_UNSIGNED_TRAILER

CHUNKED = ("Transfer-Encoding", "chunked")


def _stream_large_bodies(size: str) -> None:
    """Sets the option as mitmdump has it: declared by mitmproxy's proxy server addon (loaded, not started)."""
    if "stream_large_bodies" not in ctx.options:
        ctx.master.addons.add(Proxyserver())
    ctx.options.update(stream_large_bodies=size)


def test_an_unsized_body_is_streamed_from_its_headers_as_unsigned_payload_where_the_entry_allows_it(
    tmp_path, monkeypatch
):
    with signing_addon(tmp_path, monkeypatch, unsigned_payload="true") as addon:
        _stream_large_bodies("64k")
        f = _flow(headers=[CHUNKED])
        addon.requestheaders(f)
        assert addon.sign_streamed(f) is None
        assert f.request.stream is True and f.response is None and f.error is None
        assert f.request.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert "transfer-encoding" not in f.request.headers["authorization"]  # hop-by-hop: never signed
        before = f.request.headers.fields
        addon.check_reroute(f)  # its `request` hook, once the body has been streamed: not signed again
        assert f.request.headers.fields == before
        assert addon.bindings[0].counters.given == 1


def test_an_unsized_framed_upload_is_signed_with_its_literal_without_unsigned_payload(tmp_path, monkeypatch):
    with signing_addon(tmp_path, monkeypatch) as addon:
        _stream_large_bodies("64k")
        declared = [("Content-Encoding", "aws-chunked"), ("X-Amz-Content-SHA256", STREAMING_UNSIGNED_TRAILER)]
        f = _flow(headers=[CHUNKED, *declared])
        addon.requestheaders(f)
        addon.sign_streamed(f)
        assert f.request.stream is True and f.error is None
        assert f.request.headers["x-amz-content-sha256"] == STREAMING_UNSIGNED_TRAILER
        _verify(f)


def test_an_unsized_body_the_entry_must_hash_is_killed_at_its_headers(tmp_path, monkeypatch):
    with signing_addon(tmp_path, monkeypatch) as addon:
        _stream_large_bodies("64k")
        f = _flow(headers=[CHUNKED])
        addon.requestheaders(f)
        addon.sign_streamed(f)
        assert f.killable is False and f.error is not None and f.response is None  # killed: nothing is sent
        assert "unknown length" in f.comment and "unsigned_payload not set" in f.comment
        assert "authorization" not in f.request.headers
        assert addon.bindings[0].counters.refused == 1


def test_an_unsized_body_is_left_to_its_request_hook_without_stream_large_bodies_or_an_entry_that_signs_it(
    tmp_path, monkeypatch
):
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _flow(headers=[CHUNKED], content=b"body")
        addon.requestheaders(f)
        addon.sign_streamed(f)  # mitmproxy buffers the whole body: hashed in the `request` hook
        assert not f.request.stream and "authorization" not in f.request.headers
        addon.check_reroute(f)
        assert f.request.headers["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"
        _verify(f)

        _stream_large_bodies("64k")
        elsewhere = _flow(host="example.org", headers=[CHUNKED])
        addon.requestheaders(elsewhere)
        addon.sign_streamed(elsewhere)
        assert not elsewhere.request.stream and elsewhere.error is None  # not ours: mitmproxy's to stream or not
