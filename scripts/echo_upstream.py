#!/usr/bin/env python3
"""An upstream that answers every request with the request it got, as JSON: method, path, headers (in order,
repeats kept) and the number of body bytes. Used by the tests, the benchmark and the compose stack.
Standard library only.

header-augment scrubs the values it added from every answer (a client never holds them), so the echoed `headers`
show `<header-augment: NAME>` where a value of ours arrived; `received` holds the same headers with each value
hex-encoded, for the tests and the demo to see what really arrived (read it with `received()`).
"""

import argparse
import http.server
import json
import ssl


class EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it, http.server caps loopback throughput at a third

    def _echo(self) -> None:
        body_bytes = self._read_body()
        if self.path.startswith("/noecho"):  # for load tests: a short answer, whatever the request carried
            return self._send(b"ok\n", "text/plain")
        payload = {
            "method": self.command,
            "path": self.path,
            "headers": [[name, value] for name, value in self.headers.items()],
            "received": [[name, value.encode("latin-1").hex()] for name, value in self.headers.items()],
            "body_bytes": body_bytes,
        }
        self._send(json.dumps(payload).encode() + b"\n", "application/json")  # a line of its own in a terminal

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total
                total += len(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        return length - remaining

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_TRACE = _echo

    def log_message(self, format: str, *args: object) -> None:
        pass


def received(answer: dict) -> list[tuple[str, str]]:
    """The headers an echo answer says arrived, in order, with their real values."""
    return [(name, bytes.fromhex(value).decode("latin-1")) for name, value in answer["received"]]


def serve(host: str, port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((host, port), EchoHandler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--tls", metavar="PEM", help="serve HTTPS with this certificate and its key (one PEM file)")
    args = parser.parse_args()
    server = serve(args.host, args.port)
    scheme = "http"
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    host, port = server.server_address[:2]
    print(f"echo upstream listening on {scheme}://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
