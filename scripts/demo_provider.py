#!/usr/bin/env python3
"""A demo header provider: answers GET /headers with a JSON object of headers, rotating a fake bearer token.

It stands in for a real sidecar (an identity agent handing out short-lived tokens). It prints its URL once it
listens; GET /healthz answers 200 for container health checks. Standard library only.
"""

import argparse
import http.server
import json
import secrets
import threading
import time


class TokenSource:
    """A fake token that rotates every `lifetime` seconds."""

    def __init__(self, lifetime: float, tenant: str) -> None:
        self.lifetime = lifetime
        self.tenant = tenant
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0

    def current(self) -> tuple[dict[str, str], int]:
        with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                self._token = "demo." + secrets.token_urlsafe(24)
                self._expires = now + self.lifetime
            remaining = max(1, int(self._expires - now))
        return {"Authorization": f"Bearer {self._token}", "X-Tenant": self.tenant}, remaining


def make_handler(tokens: TokenSource) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif self.path.split("?")[0] == "/headers":
                headers, remaining = tokens.current()
                # max-age tells the proxy when this token turns over, so it refreshes then, not at its interval.
                self._send(200, json.dumps(headers).encode(), "application/json", f"max-age={remaining}")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str, cache_control: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache_control)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the proxy logs what matters; a token endpoint should not echo its traffic

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--rotate", type=float, default=60.0, help="token lifetime in seconds")
    parser.add_argument("--tenant", default="demo")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(
        (args.host, args.port), make_handler(TokenSource(args.rotate, args.tenant))
    )
    host, port = server.server_address[:2]
    print(f"demo provider listening on http://{host}:{port}/headers", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
