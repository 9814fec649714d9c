"""No other door: once a request has left, no value header-augment added stays in the flow (saved flows, HAR files,
exports, mitmweb), and no credential comes back to the client in the answer (tests/test_scrub_secrets.py: which
values, in which forms; tests/test_websocket_scrub.py: websocket messages); TRACE gets nothing; an upstream's 401
asks again."""

import gzip
import json
import os
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import brotli
import header_augment
import pytest
from conftest import client_for
from echo_upstream import received
from mitmproxy import http, io
from mitmproxy.test import taddons, tflow
from servers import serve_in_background, wait_until

from header_augment_core import carried, request_path
from header_augment_core.carried import MAX_SCRUBBED_BODY

try:
    from compression import zstd
except ImportError:
    from backports import zstd

TOKEN = "Bearer tok-3f9a1c77e2d54b8a"
CREDENTIAL = TOKEN.removeprefix("Bearer ")
MARK = "<header-augment: Authorization>"


def flow_to(host, **kwargs):
    f = tflow.tflow(**kwargs)
    f.request.host = host
    return f


@pytest.fixture
def configured(provider):
    """An addon with one provider that has fetched TOKEN for api.example.com, in a taddons context."""
    provider.answer({"Authorization": TOKEN, "X-Tenant": "eu"})
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=provider.url, header_hosts=["api.example.com"])
        addon.bindings[0].refresher.refresh()
        yield addon, tctx


def sent(addon, f, response=None):
    """Run the hooks as mitmproxy does for a flow that is sent and answered by `response`."""
    addon.requestheaders(f)
    addon.check_reroute(f)
    assert f.request.headers["Authorization"] == TOKEN  # what leaves for the upstream is the real value
    f.response = response or http.Response.make(200, b"ok")
    addon.responseheaders(f)
    addon.response(f)


def test_the_flow_holds_markers_once_the_request_has_left(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    sent(addon, f)
    assert f.request.headers["Authorization"] == MARK
    assert f.request.headers["X-Tenant"] == "<header-augment: X-Tenant>"  # every value we added
    state = json.dumps(f.get_state(), default=repr)
    assert CREDENTIAL not in state and MARK in state
    assert carried.carried_by(f) is None  # nothing kept once the exchange is over


def test_a_value_is_masked_however_its_name_is_spelled_since(configured):
    """Found as added with one lookup; a name another addon spelled otherwise is still found by its value."""
    addon, _ = configured
    f = flow_to("api.example.com")
    addon.requestheaders(f)
    addon.check_reroute(f)
    f.request.headers.fields = tuple(
        (name.upper() if name == b"Authorization" else name, value) for name, value in f.request.headers.fields
    )
    f.response = http.Response.make(200, b"ok")
    addon.responseheaders(f)
    assert f.request.headers.fields[-2:] == (
        (b"AUTHORIZATION", MARK.encode()),
        (b"X-Tenant", b"<header-augment: X-Tenant>"),
    )


def test_what_a_flow_carries_is_neither_saved_nor_copied(configured):
    """The seam carried.py relies on: an attribute of a flow stays out of its state, its copies and its metadata."""
    addon, _ = configured
    f = flow_to("api.example.com")
    addon.requestheaders(f)
    assert carried.carried_by(f) is not None
    state = f.get_state()  # in flight, the request holds the value, and nothing of ours is beside it
    assert json.dumps(state["metadata"]) == "{}" and "_header_augment_carried" not in json.dumps(state, default=repr)
    assert carried.carried_by(f.copy()) is None


def test_a_failed_flow_is_masked_too(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    addon.requestheaders(f)
    addon.check_reroute(f)
    f.error = tflow.terr()
    addon.error(f)
    assert f.request.headers["Authorization"] == MARK


def test_header_keep_values_keeps_them(configured):
    addon, tctx = configured
    tctx.configure(addon, header_keep_values=True)
    f = flow_to("api.example.com")
    sent(addon, f)
    assert f.request.headers["Authorization"] == TOKEN


def test_the_export_commands_see_markers(configured):
    from mitmproxy.addons import export

    addon, tctx = configured
    tctx.master.addons.add(export.Export())
    f = flow_to("api.example.com")
    sent(addon, f)
    for kind in ("curl", "httpie", "raw_request"):
        text = export.formats[kind](f)
        text = text.decode() if isinstance(text, bytes) else text
        assert CREDENTIAL not in text and MARK in text, kind


def replay_of(addon, host: str = "api.example.com"):
    """A flow that went to api.example.com and was saved, replayed to `host` as mitmproxy's replay.client does."""
    f = flow_to("api.example.com")
    sent(addon, f)
    replay = f.copy()
    replay.response = None
    replay.is_replay = "request"
    replay.live = True
    replay.request.host = host
    addon.requestheaders(replay)
    return replay


@pytest.mark.parametrize("merge", ["replace", "append", "keep"])
def test_a_replayed_flow_gets_the_live_value_and_never_the_marker(configured, merge):
    addon, tctx = configured
    tctx.configure(addon, header_merge=merge)
    replay = replay_of(addon)
    assert replay.request.headers.get_all("Authorization") == [TOKEN]


def test_a_replayed_flow_to_a_host_not_named_sends_no_marker(configured):
    addon, _ = configured
    replay = replay_of(addon, "elsewhere.example")
    assert "Authorization" not in replay.request.headers


def test_trace_gets_no_headers(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    f.request.method = "TRACE"
    addon.requestheaders(f)
    assert "Authorization" not in f.request.headers and "X-Tenant" not in f.request.headers
    assert "no headers for TRACE" in f.comment


def echo_of(value: str, encoding: str = "") -> http.Response:
    body = json.dumps({"headers": {"Authorization": value}}).encode()
    response = http.Response.make(200, body, {"Content-Type": "application/json", "X-Echo": value})
    if encoding:
        response.encode(encoding)
    return response


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate", "br", "zstd"])
def test_an_echo_is_scrubbed_from_headers_and_body(configured, encoding):
    addon, _ = configured
    f = flow_to("api.example.com")
    sent(addon, f, echo_of(TOKEN, encoding))
    assert f.response.headers.get("content-encoding", "") == encoding  # encoded again as it came
    assert f.response.headers["X-Echo"] == MARK
    assert json.loads(f.response.content) == {"headers": {"Authorization": MARK}}
    assert CREDENTIAL.encode() not in f.response.raw_content
    assert int(f.response.headers["content-length"]) == len(f.response.raw_content)
    assert "scrubbed our values from the response body" in f.comment


def test_the_credential_alone_is_scrubbed_too(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    sent(addon, f, http.Response.make(200, f"token={CREDENTIAL}".encode()))
    assert f.response.content == f"token={MARK}".encode()


def test_a_large_body_is_scrubbed_off_the_event_loop(configured):
    import asyncio
    import threading

    addon, _ = configured
    f = flow_to("api.example.com")
    addon.requestheaders(f)
    addon.check_reroute(f)
    f.response = http.Response.make(200, os.urandom(200_000).hex().encode() + TOKEN.encode())
    f.response.encode("gzip")  # still larger than what is scrubbed on the loop
    addon.responseheaders(f)
    threads = []
    original = carried.scrub_body
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(request_path, "scrub_body", lambda *a: threads.append(threading.get_ident()) or original(*a))
        pending = addon.response(f)
        assert pending is not None  # awaited by mitmproxy: this flow waits, the loop goes on
        main = threading.get_ident()
        asyncio.run(pending)
    assert threads and threads[0] != main
    assert f.response.content.endswith(MARK.encode())


def test_a_body_larger_than_the_bound_is_passed_as_it_is(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    big = b"x" * MAX_SCRUBBED_BODY + TOKEN.encode()
    sent(addon, f, http.Response.make(200, big))
    assert f.response.content == big


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_compression_bomb_is_not_expanded(encoding):
    """An answer that decodes to 64 MiB is left as it is, and never more than about the bound is decoded."""
    import tracemalloc

    bomb = http.Response.make(200, b"")
    bomb.headers["content-encoding"] = encoding
    payload = b"\0" * (64 << 20)
    bomb.raw_content = {
        "gzip": gzip.compress,
        "br": brotli.compress,
        "zstd": zstd.compress,
    }[encoding](payload)
    del payload
    secrets = (((CREDENTIAL.encode(), MARK.encode()),), (CREDENTIAL.encode(),))
    tracemalloc.start()
    try:
        assert carried.scrub_body(bomb, secrets) is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_SCRUBBED_BODY


def test_a_body_that_lies_about_its_encoding_is_scrubbed_as_bytes(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    response = http.Response.make(200, TOKEN.encode())
    response.headers["content-encoding"] = "gzip"  # not really gzip: the client may still read it
    sent(addon, f, response)
    assert response.raw_content == MARK.encode()


def test_a_streamed_answer_keeps_nothing_for_the_body(configured):
    addon, _ = configured
    f = flow_to("api.example.com")
    addon.requestheaders(f)
    addon.check_reroute(f)
    f.response = echo_of(TOKEN)
    f.response.stream = True
    addon.responseheaders(f)
    assert f.response.headers["X-Echo"] == MARK  # the headers are still scrubbed
    assert carried.carried_by(f) is None


def test_a_flow_that_carried_nothing_is_untouched(configured):
    addon, _ = configured
    f = flow_to("elsewhere.example")
    f.response = echo_of(TOKEN)
    addon.requestheaders(f)
    addon.responseheaders(f)
    addon.response(f)
    assert f.response.headers["X-Echo"] == TOKEN  # it was never ours: nothing to scrub


def test_a_401_asks_the_provider_again_at_most_once_per_gap(configured, monkeypatch):
    addon, _ = configured
    now = [1000.0]
    monkeypatch.setattr(request_path, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    asked = []
    refresher = addon.bindings[0].refresher
    monkeypatch.setattr(refresher, "refresh_now", lambda: asked.append(now[0]))
    for _ in range(30):  # 30 refused requests over 15 s
        sent(addon, flow_to("api.example.com"), http.Response.make(401, b""))
        now[0] += 0.5
    assert asked == [1000.0, 1010.0]
    counters = addon.bindings[0].counters
    assert (counters.unauthorized, counters.reasked) == (30, 2)
    sent(addon, flow_to("api.example.com"), http.Response.make(403, b""))
    assert counters.unauthorized == 30


# -- end to end, through a real mitmdump ---------------------------------------------------------------------------


def test_saved_flows_and_har_hold_markers_and_the_client_gets_no_echo(mitmdump, provider, upstream, tmp_path):
    provider.answer({"Authorization": TOKEN})
    flows, har = tmp_path / "out.flows", tmp_path / "out.har"
    proxy = mitmdump(
        "-w",
        str(flows),
        "--set",
        f"hardump={har}",
        "--set",
        f"header_provider_url={provider.url}",
        "--set",
        "header_hosts=127.0.0.1",
    )
    with client_for(proxy.proxy) as client:
        echoed = client.get(upstream.url + "/headers").json()
        traced = client.request("TRACE", upstream.url + "/").json()
    assert dict(received(echoed))["Authorization"] == TOKEN  # the upstream got the real value
    assert dict(echoed["headers"])["Authorization"] == MARK  # the client got the marker back
    assert CREDENTIAL not in json.dumps(echoed["headers"])
    assert "Authorization" not in dict(received(traced))
    assert proxy.stop() == 0
    saved = flows.read_bytes()
    assert CREDENTIAL.encode() not in saved
    with flows.open("rb") as f:
        requests = [flow.request for flow in io.FlowReader(f).stream()]
    assert [r.headers.get("Authorization") for r in requests] == [MARK, None]
    text = har.read_text()
    assert CREDENTIAL not in text and MARK in text


class RotatingUpstream:
    """Accepts only the token it is told is current; 401 for any other."""

    def __init__(self) -> None:
        self.accepted = ""
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                value = self.headers.get("Authorization", "")
                outer.seen.append(value)
                status = 200 if value == outer.accepted else 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_revoked_token_is_replaced_at_the_first_401(mitmdump, provider):
    upstream = RotatingUpstream()
    try:
        provider.answer({"Authorization": "Bearer first-token-0001"})
        proxy = mitmdump(
            "--set",
            f"header_provider_url={provider.url}",
            "--set",
            "header_hosts=127.0.0.1",
            "--set",
            "header_refresh_interval=1h",
        )
        with client_for(proxy.proxy) as client:
            provider.wait_for_requests(1)
            upstream.accepted = "Bearer second-token-0002"  # the first one is revoked
            provider.answer({"Authorization": "Bearer second-token-0002"})
            assert client.get(upstream.url).status_code == 401
            provider.wait_for_requests(2)  # asked again at once, not in an hour
            wait_until(lambda: client.get(upstream.url).status_code == 200, what="the new token in use")
            fetches = provider.count
            upstream.accepted = "nobody"
            started = time.monotonic()
            for _ in range(20):
                assert client.get(upstream.url).status_code == 401
            elapsed = time.monotonic() - started
        assert provider.count - fetches <= 1 + int(elapsed // 10)  # coalesced: never a fetch per 401
        assert upstream.seen[0] == "Bearer first-token-0001"
    finally:
        upstream.close()


@pytest.mark.parametrize("merge", ["replace", "keep"])  # keep: the saved marker must not count as "already there"
def test_a_saved_flow_replayed_goes_with_the_live_value(mitmdump, provider, tmp_path, merge):
    """`-w` saves the marker; `-C` replays the flow through the addon, which adds the value in force now."""
    upstream = RotatingUpstream()
    try:
        upstream.accepted = TOKEN
        provider.answer({"Authorization": TOKEN})
        flows = tmp_path / "saved.flows"
        common = ("--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", "--set")
        common += (f"header_merge={merge}",)
        recorder = mitmdump("-w", str(flows), *common)
        with client_for(recorder.proxy) as client:
            assert client.get(upstream.url).status_code == 200
        assert recorder.stop() == 0
        assert CREDENTIAL.encode() not in flows.read_bytes()
        rotated = "Bearer tok-rotated-5e8d21c0aa"
        upstream.accepted = rotated
        provider.answer({"Authorization": rotated})
        mitmdump("-C", str(flows), *common)
        wait_until(lambda: len(upstream.seen) == 2, what="the replayed request")
        assert upstream.seen == [TOKEN, rotated]
    finally:
        upstream.close()
