"""A hostile client against placeholders, through one real mitmdump: it tries to get the real token sent somewhere
its entry does not name (a Host header or an absolute-form URL inside a tunnel to another host), or kept in a saved
flow (an upstream that never answers, a request in flight when the proxy stops): the -w flow file is read last."""

import base64
import json
import socket
import socketserver
import threading

import pytest
from servers import Mitmdump, serve_in_background, wait_until

REAL = "ghs_Hostile+Real/Token=="
PH = "ghp_" + "H" * 12 + "ostilePlaceholder0123456"


class Hostile:
    """An upstream on 127.0.0.1 that keeps each request head as it arrived and answers by its path: `/close`
    closes without an answer, `/hold` holds the request unanswered until `release` is set; anything else: 204."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.release = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0]
                outer.heads.append(head)
                target = head.split(b" ", 2)[1]
                if target == b"/close":
                    return
                if target == b"/hold":
                    outer.release.wait(30)
                    return
                self.request.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        serve_in_background(self.server)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    here = tmp_path_factory.mktemp("hostile")
    covered, elsewhere = Hostile(), Hostile()
    entries = [
        {
            "name": "gh",
            "command": ["printf", "%s", REAL],
            "placeholder": PH,
            "hosts": f"127.0.0.1:{covered.port}",
        }
    ]
    (here / "providers.json").write_text(json.dumps({"providers": entries}))
    flows = here / "flows.mitm"
    proxy = Mitmdump(here / "confdir", *("--set", f"header_providers_file={here / 'providers.json'}", "-w", str(flows)))
    try:
        yield proxy, covered, elsewhere, flows
    finally:
        proxy.stop()
        covered.close()
        elsewhere.close()


def exchange(proxy, *messages: bytes) -> bytes:
    """Sends each message in turn on one connection to the proxy, reading an answer's head after each but the last,
    then reads until the proxy closes; what came back."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        got = b""
        for message in messages[:-1]:
            sock.sendall(message)
            while b"\r\n\r\n" not in got:
                got += sock.recv(65536)
        sock.sendall(messages[-1])
        while chunk := sock.recv(65536):
            got += chunk
    return got


def bearer(target: str, host: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {PH}\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize("spelling", ["Host header", "absolute-form URL"])
def test_inside_a_tunnel_to_another_host_the_covered_host_spelled_in_the_request_gets_nothing(setup, spelling):
    proxy, covered, elsewhere, _ = setup
    before = len(covered.heads), len(elsewhere.heads)
    other, named = f"127.0.0.1:{elsewhere.port}", f"127.0.0.1:{covered.port}"
    target = "/x" if spelling == "Host header" else f"http://{named}/x"
    got = exchange(proxy, f"CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n".encode(), bearer(target, named))
    answer = got.split(b"\r\n\r\n", 1)[1]  # after the CONNECT's 200
    assert answer.startswith(b"HTTP/1.1 403") and b"placeholder of gh refused" in answer
    assert (len(covered.heads), len(elsewhere.heads)) == before  # nothing sent anywhere
    assert REAL.encode() not in got


def test_toward_the_covered_address_with_another_site_s_host_header_nothing_is_sent(setup):
    """A shared front (virtual hosts, a CDN) routes by the Host header: the token would reach the other site."""
    proxy, covered, *_ = setup
    before = len(covered.heads)
    got = exchange(proxy, bearer(f"http://127.0.0.1:{covered.port}/x", "evil.example"))
    assert got.startswith(b"HTTP/1.1 403") and b"Host header" in got
    assert len(covered.heads) == before


def test_a_request_the_upstream_never_answers_is_saved_with_the_placeholder(setup):
    """Last: an unanswered request when the proxy fails it, and one in flight when the proxy stops."""
    proxy, covered, _, flows = setup
    named = f"127.0.0.1:{covered.port}"
    got = exchange(proxy, bearer(f"http://{named}/close", named))
    assert got.startswith(b"HTTP/1.1 502")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as held:
        held.sendall(bearer(f"http://{named}/hold", named))
        wait_until(lambda: covered.heads and covered.heads[-1].startswith(b"GET /hold"))
        assert f"Authorization: Bearer {REAL}\r\n".encode() in covered.heads[-1]
        proxy.stop()
    saved = flows.read_bytes()
    assert PH.encode() in saved
    for form in (REAL, base64.b64encode(REAL.encode()).decode()):
        assert form.encode() not in saved
