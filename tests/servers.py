"""Real loopback servers and a real mitmdump process for the tests. Nothing here stands in for a part under test."""

import functools
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import brotli
import echo_upstream  # scripts/ is on the tests' path (pyproject.toml)
from helpers.procfs import peak_rss_kib
from helpers.running import Running
from helpers.waiting import DEADLINE, wait_until
from helpers.zygote import COMMAND, Zygote

__all__ = ["DEADLINE", "peak_rss_kib", "wait_until"]  # the tests import them from here, as before the helpers package

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon" / "header_augment.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"

# How often a test server's loop looks for shutdown(): socketserver's default, 0.5 s, made every test that closes
# servers wait that long for each.
POLL_INTERVAL = 0.02


def serve_in_background(server) -> threading.Thread:
    """Run a socketserver in a daemon thread (a test closes it with shutdown() and server_close())."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True)
    thread.start()
    return thread


class Provider:
    """A header provider on 127.0.0.1 whose next answers the test scripts: status, body, headers, delay, hang."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self.status = 200
        self.body = b"{}"
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.hanging = False
        self._release = threading.Event()
        self.requests: list[dict] = []
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with provider._lock:
                    provider.requests.append(
                        {"at": time.monotonic(), "path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status, body, headers = provider.status, provider.body, dict(provider.headers)
                    delay, hanging = provider.delay, provider.hanging
                if hanging:
                    provider._release.wait(60)
                    return
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                headers.setdefault("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # an OAuth2 token endpoint is asked with POST

            def log_message(self, format, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/headers"
        self._thread = serve_in_background(self.server)

    def answer(
        self,
        headers: dict | None = None,
        *,
        body: bytes | None = None,
        status: int = 200,
        response_headers: dict[str, str] | None = None,
        delay: float = 0.0,
        hang: bool = False,
    ) -> None:
        with self._lock:
            self.body = body if body is not None else json.dumps(headers or {}).encode()
            self.status = status
            self.headers = response_headers or {}
            self.delay = delay
            self.hanging = hang

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_for_requests(self, n: int, timeout: float = DEADLINE) -> None:
        wait_until(lambda: self.count >= n, timeout, what=f"{n} provider requests")

    def paths_asked(self, prefix: str) -> int:
        """How many distinct paths starting with `prefix` have been asked for (an entry each, for many entries)."""
        with self._lock:
            return len({r["path"] for r in self.requests if r["path"].startswith(prefix)})

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


class Upstream:
    """The echo upstream from scripts/, on 127.0.0.1, optionally behind TLS."""

    def __init__(self, ssl_context=None) -> None:
        self.server = echo_upstream.serve("127.0.0.1", 0)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# HEADER_AUGMENT_TESTS_VIA=command runs every test's proxy as the header-augment command instead of mitmdump -s
# (issue 30: the flows behave the same through its lean addon chain): `HEADER_AUGMENT_TESTS_VIA=command scripts/test`.
VIA_COMMAND = os.environ.get("HEADER_AUGMENT_TESTS_VIA") == "command"


class Mitmdump(Running):
    """A real `mitmdump -s addon/header_augment.py` on 127.0.0.1 with an ephemeral port; its output is collected."""

    def __init__(
        self,
        confdir: Path,
        *args: str,
        cwd: Path | None = None,
        wait_listening: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.confdir = confdir
        # Forked from a process that imported mitmproxy already (helpers/zygote.py), unless the test changes what
        # the interpreter imports.
        spawn = None if any(name.startswith("PYTHON") for name in env or {}) else Zygote.get().spawn
        if spawn is not None and VIA_COMMAND:
            # The header-augment command (its lean chain) in place of mitmdump -s: it loads the addon and listens on
            # 127.0.0.1 itself.
            cmd = [COMMAND, "--listen-port", "0", "--set", f"confdir={confdir}", *args]
        else:
            cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}"]
            cmd += ["-s", str(ADDON), *args]
        super().__init__(cmd, cwd=cwd or ROOT, env={**clean_env(), **(env or {})}, new_session=False, spawn=spawn)
        self.port = 0
        if wait_listening:
            try:
                self.port = int(self.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))
            except AssertionError:
                self.proc.kill()  # nobody else holds it yet: a failed start must not leave a proxy running
                self.proc.wait()
                raise

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = DEADLINE) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(5)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return super().wait_exit(timeout)


class TokenEndpoint:
    """An OAuth2 token endpoint on 127.0.0.1 (client-credentials grant) issuing tokens tok-1, tok-2, …"""

    def __init__(self, client_id: str = "proxy", secret: str = "s3cret-client-secret", expires_in=2) -> None:
        import base64
        import urllib.parse

        self.client_id, self.secret, self.expires_in = client_id, secret, expires_in
        self.revoked = False
        self.fail_status = 0
        self.issued = 0
        self.requests: list[dict] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                form = {k: v[0] for k, v in form.items()}
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    user, password = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
                else:
                    user, password = form.get("client_id"), form.get("client_secret")
                endpoint.requests.append({"at": time.monotonic(), "form": form, "basic": auth.startswith("Basic ")})
                if endpoint.fail_status:
                    self._send(endpoint.fail_status, {"error": "server_error"})
                elif form.get("grant_type") != "client_credentials":
                    self._send(400, {"error": "unsupported_grant_type"})
                elif endpoint.revoked or (user, password) != (endpoint.client_id, endpoint.secret):
                    self._send(401, {"error": "invalid_client", "error_description": f"bad secret {password}"})
                else:
                    endpoint.issued += 1
                    body = {"access_token": f"tok-{endpoint.issued}", "token_type": "Bearer"}
                    if endpoint.expires_in is not None:
                        body["expires_in"] = endpoint.expires_in
                    self._send(200, body)

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HeldProvider(Provider):
    """A Provider that holds every request until the test calls `release()`; from then on it answers at once.
    `arrived` is set as soon as a request is being held."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self._gate = threading.Event()
        held, base = self, self.server.RequestHandlerClass

        class Handler(base):
            def do_GET(self) -> None:
                held.arrived.set()
                held._gate.wait(60)
                base.do_GET(self)

            do_POST = do_GET

        self.server.RequestHandlerClass = Handler

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        super().close()


class Upstream6:
    """The echo upstream on the IPv6 loopback [::1]."""

    def __init__(self) -> None:
        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6

        self.server = Server(("::1", 0), echo_upstream.EchoHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://[::1]:{self.port}"
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopbackProxy:
    """A minimal HTTP forward proxy on 127.0.0.1 whose name resolution answers 127.0.0.1 for every host (the port
    is kept): an upstream proxy together with a DNS, so that a request to a name such as api.example.com.attacker.test
    really reaches a loopback server. `targets` lists the authority of every request and CONNECT it was asked for, as
    written, in order; `connect_heads` the lines of each CONNECT request. Plain requests must have no body or a
    Content-Length one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.targets: list[str] = []
        self.connect_heads: list[list[str]] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    self._serve()
                except OSError:
                    pass  # a peer went away: the proxy it was talking to sees that as such

            def _serve(self) -> None:
                while True:
                    head = _read_head(self.rfile)
                    if not head:
                        return
                    method, target, _ = head[0].split(" ", 2)
                    if method == "CONNECT":
                        proxy._note(target, head)
                        return self._tunnel(_port_of(target))
                    self._forward(head, urllib.parse.urlsplit(target))

            def _tunnel(self, port: int) -> None:
                with socket.create_connection(("127.0.0.1", port)) as upstream:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    back = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
                    back.start()
                    while chunk := self.rfile.read1(1 << 16):
                        upstream.sendall(chunk)
                    upstream.shutdown(socket.SHUT_WR)
                    back.join(10)

            def _forward(self, head: list[str], url: urllib.parse.SplitResult) -> None:
                proxy._note(url.netloc)
                length = next((int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")), 0)
                body = self.rfile.read(length)
                # One upstream connection per request, closed by the upstream after its answer: the whole answer is
                # what it sent before closing, and this connection stays open for the next request.
                lines = [h for h in head if not h.lower().startswith(("connection:", "proxy-connection:"))]
                request = "\r\n".join([*lines, "Connection: close", "", ""]).encode() + body
                with socket.create_connection(("127.0.0.1", url.port or 80)) as upstream:
                    upstream.sendall(request)
                    answer = b"".join(iter(lambda: upstream.recv(1 << 16), b""))
                self.wfile.write(answer)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        serve_in_background(self.server)

    def _note(self, target: str, connect_head: list[str] | None = None) -> None:
        with self._lock:
            self.targets.append(target)
            if connect_head is not None:
                self.connect_heads.append(connect_head)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_head(rfile) -> list[str]:
    """An HTTP/1 request's request line and header lines, or [] at the end of the connection."""
    lines = []
    while (line := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
        lines.append(line.decode("latin-1").rstrip("\r\n"))
    return lines


def _port_of(authority: str) -> int:
    return int(authority.rsplit(":", 1)[1])


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class RawProvider:
    """A provider on 127.0.0.1 that writes its answer on the raw socket, for answers no well-behaved server sends
    (a trickled head, a malformed header line, a body compressed against the request's Accept-Encoding).

    Each connection carries one request: its head is kept in `requests` (bytes), then `respond(sock)` writes the
    answer (it may be changed between requests) and the connection is closed.
    """

    def __init__(self, respond) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        provider = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    head += data
                provider.requests.append(head)
                try:
                    provider.respond(self.request)
                except OSError:
                    pass  # the client gave up on the answer (its timeout, or it refused what it read)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/headers"
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_answer(body: bytes, headers: list[tuple[str, str]] = (), status: str = "200 OK") -> bytes:
    """An HTTP/1.1 answer as bytes, with Content-Length, closing the connection."""
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def trickle(data: bytes, gap: float):
    """A `RawProvider` respond function writing `data` one byte every `gap` seconds."""

    def respond(sock) -> None:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
            time.sleep(gap)

    return respond


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros, gzip-compressed to about 1 MB. After a full flush the compressor starts afresh, so each further
    8 MiB of zeros compresses to the same bytes: compressed twice and repeated, not 128 times (that took 3 s of CPU
    in every test process that used it); the trailer's CRC and length are the whole gibibyte's."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros, count = bytes(8 << 20), 128
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-8]  # the last, empty block; its trailer is for 16 MiB
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    trailer = crc.to_bytes(4, "little") + (count * len(zeros) % (1 << 32)).to_bytes(4, "little")
    return first + again * (count - 1) + end + trailer


@functools.cache
def brotli_bomb() -> bytes:
    """1 GiB of zeros, brotli-compressed (quality 1: made in a moment, still about 200 KB)."""
    compressor = brotli.Compressor(quality=1)
    zeros = bytes(1 << 20)
    return b"".join(compressor.process(zeros) for _ in range(1024)) + compressor.finish()


def self_signed(directory: Path, name: str, dns_names=(), ip: str = "127.0.0.1", stem: str | None = None):
    """A self-signed certificate (its own CA) for `dns_names` and `ip`, made with the cryptography package mitmproxy
    uses; writes `<stem>.pem` and `<stem>-combined.pem` (with the key) and returns those two paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), *(x509.DNSName(n) for n in dns_names)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stem = stem or name
    (directory / f"{stem}.pem").write_bytes(cert_pem)
    (directory / f"{stem}-combined.pem").write_bytes(cert_pem + key_pem)
    return directory / f"{stem}.pem", directory / f"{stem}-combined.pem"
