"""Websocket messages from an upstream whose handshake carried our values are scrubbed as answers are: the flow's
record lives until the websocket ends. Through a real mitmdump, with a real websocket upstream and client (wsproto,
which mitmproxy itself speaks websockets with); and the hooks in-process."""

import asyncio
import socket
import socketserver
import threading

import header_augment
import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from servers import Mitmdump, Provider, serve_in_background
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import Opcode

from header_augment_core import carried, request_path

TOKEN = "Bearer tok-ws-7c1e93a05b2d4f68"
CREDENTIAL = TOKEN.removeprefix("Bearer ")
MARK = "<header-augment: Authorization>"
TENANT = "production"


class WebsocketUpstream:
    """On 127.0.0.1: a websocket handshake is accepted, and each message is answered with itself, followed by what
    the handshake's X-Tenant and Authorization said ("deploying to ... as ..."), as an upstream's debug echo would;
    a plain request is answered the same sentence as text. `seen`: each request's headers."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
                outer.seen.append(headers)
                said = f"deploying to {headers.get('x-tenant', '')} as {headers.get('authorization', '')}"
                if headers.get("upgrade", "").lower() != "websocket":
                    body = said.encode()
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    sock.sendall(f"{head}Connection: close\r\n\r\n".encode() + body)
                    return
                ws = WSConnection(ConnectionType.SERVER)
                ws.receive_data(data)
                parts: list = []
                while True:
                    for event in ws.events():
                        if isinstance(event, Request):
                            sock.sendall(ws.send(AcceptConnection()))
                        elif isinstance(event, TextMessage | BytesMessage):
                            parts.append(event.data)
                            if event.message_finished:
                                if isinstance(event, TextMessage):
                                    reply = Message(data="".join(parts) + ": " + said)
                                else:
                                    reply = Message(data=b"".join(parts) + b": " + said.encode())
                                parts = []
                                sock.sendall(ws.send(reply))
                        elif isinstance(event, CloseConnection):
                            sock.sendall(ws.send(event.response()))
                            return
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    ws.receive_data(chunk)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exchange(proxy_port: int, upstream_port: int, messages: list[str | bytes]) -> list[str | bytes]:
    """Open a websocket to the upstream through the proxy, send each message and read its reply, close."""
    ws = WSConnection(ConnectionType.CLIENT)
    authority = f"127.0.0.1:{upstream_port}"
    replies: list[str | bytes] = []
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(ws.send(Request(host=authority, target=f"http://{authority}/ws")))

        def next_event(kinds):
            while True:
                for event in ws.events():
                    if isinstance(event, RejectConnection):
                        raise AssertionError(f"handshake refused: {event.status_code}")
                    if isinstance(event, kinds):
                        return event
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError("the proxy closed the connection")
                ws.receive_data(chunk)

        next_event(AcceptConnection)
        for message in messages:
            sock.sendall(ws.send(Message(data=message)))
            parts = []
            while True:
                event = next_event(TextMessage | BytesMessage)
                parts.append(event.data)
                if event.message_finished:
                    break
            replies.append("".join(parts) if isinstance(message, str) else b"".join(parts))
        sock.sendall(ws.send(CloseConnection(code=1000)))
        next_event(CloseConnection)
    return replies


@pytest.fixture(scope="module")
def through(tmp_path_factory):
    """One mitmdump adding Authorization and X-Tenant for the upstream's port: (proxy port, upstream)."""
    provider, upstream = Provider(), WebsocketUpstream()
    provider.answer({"Authorization": TOKEN, "X-Tenant": TENANT})
    proxy = Mitmdump(
        tmp_path_factory.mktemp("websocket") / "confdir",
        "--set",
        f"header_provider_url={provider.url}",
        "--set",
        f"header_hosts=127.0.0.1:{upstream.port}",
    )
    try:
        yield proxy.port, upstream
    finally:
        proxy.stop()
        upstream.close()
        provider.close()


def test_an_upstream_websocket_message_echoing_the_token_reaches_the_client_scrubbed(through):
    port, upstream = through
    replies = exchange(port, upstream.port, ["hello", b"\x00binary", "again"])
    said = f"deploying to {TENANT} as {MARK}"
    assert replies == [f"hello: {said}", b"\x00binary: " + said.encode(), f"again: {said}"]
    assert upstream.seen[-1]["authorization"] == TOKEN  # the upstream got the real value in the handshake


def test_a_plain_answer_keeps_ordinary_words_and_loses_the_credential(through):
    """X-Tenant: production is no credential: "deploying to production" comes back as it was said."""
    port, upstream = through
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET http://127.0.0.1:{upstream.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n\r\n", 1)[1] == f"deploying to {TENANT} as {MARK}".encode()
    assert CREDENTIAL.encode() not in answer


# -- the hooks in-process --------------------------------------------------------------------------------------------


@pytest.fixture
def addon(provider):
    provider.answer({"Authorization": TOKEN, "X-Tenant": TENANT})
    made = header_augment.HeaderAugment()
    with taddons.context(made) as tctx:
        tctx.configure(made, header_provider_url=provider.url, header_hosts=["api.example.com"])
        made.bindings[0].refresher.refresh()
        yield made


def upgraded(addon, stream: bool = False) -> http.HTTPFlow:
    """A flow to api.example.com that got our headers and was answered 101, as mitmproxy runs the hooks."""
    f = tflow.twebsocketflow()
    f.websocket.messages.clear()
    f.request.host = "api.example.com"
    answer, f.response, f.live = f.response, None, True  # the request hooks run before the answer is there
    addon.requestheaders(f)
    addon.check_reroute(f)
    assert f.request.headers["Authorization"] == TOKEN
    f.response = answer
    assert f.response.status_code == 101
    f.response.stream = stream
    addon.responseheaders(f)
    assert addon.response(f) is None
    return f


def from_upstream(addon, f: http.HTTPFlow, content: bytes, from_client: bool = False):
    message = WebSocketMessage(Opcode.TEXT, from_client, content)
    f.websocket.messages.append(message)
    pending = addon.websocket_message(f)
    if pending is not None:
        asyncio.run(pending)
    return message


def test_the_record_lives_until_the_websocket_ends(addon):
    f = upgraded(addon)
    assert f.request.headers["Authorization"] == MARK  # masked once the handshake has left
    assert carried.carried_by(f) is not None
    assert from_upstream(addon, f, f"token {CREDENTIAL}".encode()).content == f"token {MARK}".encode()
    assert from_upstream(addon, f, f"{TENANT} {TOKEN}".encode()).content == f"{TENANT} {MARK}".encode()
    assert f.comment.count("scrubbed our values from websocket messages") == 1
    addon.websocket_end(f)
    assert carried.carried_by(f) is None


def test_a_streamed_handshake_answer_keeps_the_record_too(addon):
    f = upgraded(addon, stream=True)  # an addon may set any answer streamed, a 101 too
    assert from_upstream(addon, f, CREDENTIAL.encode()).content == MARK.encode()


def test_what_the_client_sends_is_passed_as_it_is(addon):
    f = upgraded(addon)
    assert from_upstream(addon, f, CREDENTIAL.encode(), from_client=True).content == CREDENTIAL.encode()


def test_a_large_message_is_scrubbed_off_the_event_loop(addon, monkeypatch):
    f = upgraded(addon)
    threads = []
    original = carried.scrubbed
    monkeypatch.setattr(request_path, "scrubbed", lambda *a: threads.append(threading.get_ident()) or original(*a))
    big = b"x" * (request_path.SCRUB_ON_LOOP + 1) + CREDENTIAL.encode()
    assert from_upstream(addon, f, big).content.endswith(MARK.encode())
    assert threads and threads[0] != threading.get_ident()


def test_a_websocket_that_carried_nothing_is_untouched(addon):
    f = tflow.twebsocketflow()
    f.request.host = "elsewhere.example"
    answer, f.response, f.live = f.response, None, True
    addon.requestheaders(f)
    f.response = answer
    addon.responseheaders(f)
    addon.response(f)
    assert from_upstream(addon, f, CREDENTIAL.encode()).content == CREDENTIAL.encode()
