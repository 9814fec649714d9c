"""Placeholders through a real mitmdump: real clients (curl, httpx, a wsproto websocket) hold placeholders, a
recording upstream sees what really arrives, the client and the -w flow file see only the placeholders; each refusal
is the proxy's own answer and the upstream receives nothing."""

import http.server
import json
import socket
import socketserver
import subprocess

import httpx
import pytest
from mitmproxy import io
from servers import Mitmdump, serve_in_background
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

REAL = "ghs_Real+Value/With=Padding=="  # `+`, `/` and `=`: written otherwise in a query, a path, a form
REAL_URL = "ghs_Real%2BValue%2FWith%3DPadding%3D%3D"
PH = "ghp_" + "P" * 12 + "laceholder0123456789abcd"
AI_REAL = 'sk-real-"quoted"\\key'
AI_PH = "sk-proj-PLACEHOLDERforOpenAI0123456789"
ALICE, BOB = "alice-placeholder-0123456789", "bob-placeholder-0123456789ab"
DOWN = "down-placeholder-0123456789abc"
WS_REAL, WS_PH = "ws-real-token-42", "ws-placeholder-0123456789abc"


class Recorder:
    """An upstream on 127.0.0.1 that keeps each request as it arrived (target, headers, body) and answers it back
    as JSON (what the client then gets is what the proxy let through of it)."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = {"target": self.path, "headers": dict(self.headers.items()), "body": body.decode("latin-1")}
                outer.got.append(seen)
                answer = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebsocketRecorder:
    """A websocket upstream that keeps each text message as it arrived and sends it back."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                ws = WSConnection(ConnectionType.SERVER)
                while True:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    ws.receive_data(chunk)
                    for event in ws.events():
                        if isinstance(event, Request):
                            self.request.sendall(ws.send(AcceptConnection()))
                        elif isinstance(event, TextMessage):
                            outer.messages.append(event.data)
                            self.request.sendall(ws.send(Message(data=event.data)))
                        elif isinstance(event, CloseConnection):
                            self.request.sendall(ws.send(event.response()))
                            return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    here = tmp_path_factory.mktemp("placeholders")
    upstream, elsewhere, ws = Recorder(), Recorder(), WebsocketRecorder()
    to = f"127.0.0.1:{upstream.port}"

    def token(name, value, placeholder, hosts=to, **more):
        return {"name": name, "command": ["printf", "%s", value], "placeholder": placeholder, "hosts": hosts, **more}

    entries = [
        token("github", REAL, PH, substitute="header,query,path,body", env="GH_TOKEN", clients="127.0.0.1"),
        token("openai", AI_REAL, AI_PH, substitute="body", env="OPENAI_API_KEY"),
        token("alice", "alice-real-token", ALICE, clients="127.0.0.2"),
        token("bob", "bob-real-token", BOB, clients="127.0.0.3"),
        {"name": "down", "command": ["false"], "placeholder": DOWN, "hosts": to},
        token("ws", WS_REAL, WS_PH, hosts=f"127.0.0.1:{ws.port}", substitute="header,websocket"),
    ]
    (here / "providers.json").write_text(json.dumps({"providers": entries}))
    flows = here / "flows.mitm"
    proxy = Mitmdump(
        here / "confdir",
        *("--set", f"header_providers_file={here / 'providers.json'}", "-w", str(flows)),
        *("--set", "header_admin_listen=127.0.0.1:0"),
    )
    try:
        yield proxy, upstream, elsewhere, ws, flows
    finally:
        proxy.stop()
        for server in (upstream, elsewhere, ws):
            server.close()


def curl(proxy, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-s", "--noproxy", "", "-x", proxy.proxy, "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PATH": "/usr/bin:/bin"},
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_curl_with_a_bearer_placeholder(setup):
    proxy, upstream, *_ = setup
    status, body = curl(proxy, "-H", f"Authorization: Bearer {PH}", f"http://127.0.0.1:{upstream.port}/user")
    assert status == 200
    assert upstream.got[-1]["headers"]["Authorization"] == f"Bearer {REAL}"
    assert json.loads(body)["headers"]["Authorization"] == f"Bearer {PH}"  # the echo: the placeholder
    assert REAL not in body


def test_git_style_basic(setup):
    proxy, upstream, *_ = setup
    import base64

    status, body = curl(proxy, "-u", f"x-access-token:{PH}", f"http://127.0.0.1:{upstream.port}/repo.git/info/refs")
    assert status == 200
    sent = upstream.got[-1]["headers"]["Authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")) == f"x-access-token:{REAL}".encode()
    echoed = json.loads(body)["headers"]["Authorization"]
    assert base64.b64decode(echoed.removeprefix("Basic ")) == f"x-access-token:{PH}".encode()


def test_query_and_path_placeholders_arrive_percent_encoded(setup):
    proxy, upstream, *_ = setup
    status, body = curl(proxy, f"http://127.0.0.1:{upstream.port}/v1/{PH}/items?key={PH}&x=1")
    assert status == 200
    assert upstream.got[-1]["target"] == f"/v1/{REAL_URL}/items?key={REAL_URL}&x=1"
    assert json.loads(body)["target"] == f"/v1/{PH}/items?key={PH}&x=1"


def test_a_json_body_and_a_form_body(setup):
    proxy, upstream, *_ = setup
    url = f"http://127.0.0.1:{upstream.port}/v1/chat"
    document = json.dumps({"model": "m", "api_key": AI_PH, "messages": [PH]})
    status, body = curl(proxy, "-H", "Content-Type: application/json", "--data-binary", document, url)
    assert status == 200
    arrived = upstream.got[-1]
    assert json.loads(arrived["body"]) == {"model": "m", "api_key": AI_REAL, "messages": [REAL]}
    assert int(arrived["headers"]["Content-Length"]) == len(arrived["body"].encode("latin-1"))
    assert AI_REAL not in body and REAL not in body
    status, body = curl(proxy, "--data-binary", f"token={PH}&a=b", url)  # curl's default: a form
    assert status == 200
    assert upstream.got[-1]["body"] == f"token={REAL_URL}&a=b"
    assert json.loads(body)["body"] == f"token={PH}&a=b"


def test_per_client_placeholders(setup):
    proxy, upstream, *_ = setup
    url = f"http://127.0.0.1:{upstream.port}/me"
    for address, placeholder, real in (("127.0.0.2", ALICE, "alice-real-token"), ("127.0.0.3", BOB, "bob-real-token")):
        status, _ = curl(proxy, "--interface", address, "-H", f"Authorization: Bearer {placeholder}", url)
        assert status == 200
        assert upstream.got[-1]["headers"]["Authorization"] == f"Bearer {real}"
    before = len(upstream.got)
    status, body = curl(proxy, "--interface", "127.0.0.2", "-H", f"Authorization: Bearer {BOB}", url)
    assert status == 403 and "bob" in body.splitlines()[0]  # alice with bob's placeholder
    assert len(upstream.got) == before


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("another host", 403, "github"),
        ("a place not allowed", 403, "openai"),
        ("no credential", 503, "down"),
    ],
)
def test_refusals_send_nothing_upstream(setup, case, status, words):
    proxy, upstream, elsewhere, *_ = setup
    if case == "another host":
        target, sent = elsewhere, ["-H", f"Authorization: Bearer {PH}"]
    elif case == "a place not allowed":
        target, sent = upstream, ["-H", f"Authorization: Bearer {AI_PH}"]
    else:
        target, sent = upstream, ["-H", f"X-Key: {DOWN}"]
    before = len(target.got)
    got, body = curl(proxy, *sent, f"http://127.0.0.1:{target.port}/x")
    first = body.splitlines()[0]
    assert got == status and first.startswith("header-augment:") and words in first
    assert len(target.got) == before


def test_a_websocket_message_gets_the_token_and_comes_back_with_the_placeholder(setup):
    proxy, _, _, ws, _ = setup
    conn = WSConnection(ConnectionType.CLIENT)
    authority = f"127.0.0.1:{ws.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(conn.send(Request(host=authority, target=f"http://{authority}/ws")))
        replies: list[str] = []

        def wait(kind):
            while True:
                for event in conn.events():
                    if isinstance(event, kind):
                        return event
                conn.receive_data(sock.recv(65536))

        wait(AcceptConnection)
        sock.sendall(conn.send(Message(data=json.dumps({"auth": WS_PH}))))
        replies.append(wait(TextMessage).data)
        sock.sendall(conn.send(CloseConnection(code=1000)))
        wait(CloseConnection)
    assert ws.messages[-1] == json.dumps({"auth": WS_REAL})
    assert replies == [json.dumps({"auth": WS_PH})]


def test_the_admin_endpoint_lists_the_placeholders_for_a_sandbox_launcher(setup):
    proxy = setup[0]
    port = int(proxy.wait_for(r"admin endpoint listening at 127\.0\.0\.1:(\d+)").group(1))
    answer = httpx.get(f"http://127.0.0.1:{port}/placeholders.env", trust_env=False, timeout=10)
    assert answer.status_code == 200
    assert answer.text == f"GH_TOKEN={PH}\nOPENAI_API_KEY={AI_PH}\n"


def test_the_flow_file_holds_placeholders_never_values(setup):
    """Last: stops the proxy, so that every flow is written."""
    proxy, *_, flows = setup
    proxy.stop()
    data = flows.read_bytes()
    for real in (REAL, REAL_URL, "alice-real-token", WS_REAL):
        assert real.encode() not in data
    with flows.open("rb") as f:
        saved = list(io.FlowReader(f).stream())
    assert any(PH in (s.request.headers.get("authorization") or "") for s in saved)
    assert any(s.websocket and any(WS_PH.encode() in m.content for m in s.websocket.messages) for s in saved)
