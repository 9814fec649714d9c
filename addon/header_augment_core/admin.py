"""The admin endpoint, for running the proxy as a sidecar: readiness, liveness, metrics, status and a refresh
trigger over plain HTTP.

It is served by tornado (which mitmproxy ships for mitmweb) on mitmproxy's own event loop: no thread of its own,
and a handler only reads what the addon keeps. Nothing it answers holds a header value, a secret or a URL query:
states, header names, counts and reasons only (see status.py and metrics.py), and errors are plain status lines.
"""

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from prometheus_client.exposition import choose_encoder
from tornado import httpserver, netutil, web

from .fields import SettingsError, shown
from .metrics import registry_for
from .status import Entry, state, status

logger = logging.getLogger("header_augment")

OPTION = "header_admin_listen"
READY_STATES = ("ok", "failing")  # usable headers, and a refresher that keeps them fresh
TEXT = "text/plain; charset=utf-8"
MAX_BODY = 4096  # no request here has a body; an unauthenticated endpoint reads none of any size
_ACCEPTED = (
    "accepted: an IP address or localhost, a colon and a port from 0 to 65535 (0 picks a free one), e.g. "
    "127.0.0.1:9901, [::1]:9901, 0.0.0.0:9901; empty: off"
)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> Address | None:
    """The address `header_admin_listen` asks for (None: off). Names are not resolved, as that could block the
    event loop: an IP address, or localhost (from the hosts file)."""
    value = value.strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        if not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise ValueError
        # An IPv6 address needs its brackets, and only an IPv6 address has them.
        if bracketed != (host != "localhost" and ipaddress.ip_address(host).version == 6):
            raise ValueError
    except ValueError:
        raise SettingsError(f"{OPTION}: {shown(value)} is not host:port ({_ACCEPTED})") from None
    return Address(host, int(port))


def _shown(sockname: tuple) -> str:
    return str(Address(sockname[0], sockname[1]))


class AdminEndpoint:
    """Serves `entries()` (the addon's provider entries, read on each request) and calls `refresh()` for
    POST /refresh. `want()` takes the option's value; `serve()` listens accordingly, on the running loop."""

    def __init__(self, entries: Callable[[], Sequence[Entry]], refresh: Callable[[], None]) -> None:
        self.entries = entries
        self.refresh = refresh
        self.registry = registry_for(entries)
        routes = {"/ready": _Ready, "/live": _Live, "/metrics": _Metrics, "/status": _Status, "/refresh": _Refresh}
        args = {"admin": self}
        self._app = web.Application(
            [(path, handler, args) for path, handler in routes.items()],
            default_handler_class=_NotFound,
            default_handler_args=args,
            log_function=_log_request,
        )
        self.wanted: Address | None = None
        self._serving: Address | None = None  # the address asked for that the server listens at
        self._server: httpserver.HTTPServer | None = None
        self._closing: set[asyncio.Task] = set()

    def want(self, value: str) -> None:
        """Raises SettingsError, naming the option, for a value that is not an address."""
        self.wanted = parse_listen(value)

    def serve(self) -> None:
        """Listen at the wanted address, or nowhere; nothing changes when it listens there already. Raises
        SettingsError when it cannot listen (a runtime change is then rolled back by mitmproxy, which serves the
        previous value again)."""
        if self.wanted == self._serving:
            return
        self.close()  # first: a new address may have the same port
        if self.wanted is None:
            return
        address = self.wanted
        flags = None if address.host == "localhost" else socket.AI_NUMERICHOST
        try:
            sockets = netutil.bind_sockets(address.port, address.host, flags=flags)
        except OSError as e:
            raise SettingsError(f"{OPTION}: cannot listen at {address} ({e.strerror or e})") from None
        self._server = httpserver.HTTPServer(self._app, max_body_size=MAX_BODY)
        self._server.add_sockets(sockets)
        self._serving = address
        names = [sock.getsockname() for sock in sockets]
        shown = ", ".join(_shown(n) for n in names)
        logger.info("header-augment admin endpoint listening at %s", shown)
        if not all(ipaddress.ip_address(n[0]).is_loopback for n in names):
            logger.warning(
                "header-augment admin endpoint at %s is reachable from other hosts and has no authentication: anyone "
                "who reaches it can read the providers' status and trigger refreshes",
                shown,
            )

    def close(self) -> None:
        """Stop listening and close open connections (a scraper's keep-alive connection would otherwise go on
        being answered by an addon that a script reload has retired)."""
        server, self._server, self._serving = self._server, None, None
        if server is None:
            return
        server.stop()  # closes the listening sockets now
        task = asyncio.get_running_loop().create_task(server.close_all_connections())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _log_request(handler: web.RequestHandler) -> None:
    # Not tornado's access log: it logs a 503 at error level, and an error during start-up stops mitmdump.
    logger.debug(
        "header-augment admin endpoint: %s %s %d", handler.request.method, handler.request.path, handler.get_status()
    )


class _Handler(web.RequestHandler):
    def initialize(self, admin: AdminEndpoint) -> None:
        self.admin = admin

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Type", TEXT)
        self.set_header("Cache-Control", "no-store")

    def compute_etag(self) -> None:
        return None  # every answer is current state, never cached

    def prepare(self) -> None:
        # Probes, scrapers and curl send no Origin; a web page that makes a browser call this endpoint does.
        if "Origin" in self.request.headers:
            raise web.HTTPError(403)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", TEXT)
        self.finish(f"{status_code} {HTTPStatus(status_code).phrase}\n")

    def lines(self, status_code: int, lines: Sequence[str]) -> None:
        self.set_status(status_code)
        self.finish("".join(f"{line}\n" for line in lines))


class _NotFound(_Handler):
    def prepare(self) -> None:
        raise web.HTTPError(404)


class _Ready(_Handler):
    """200 when every provider entry has usable headers and a running refresher; else 503 naming the others."""

    def get(self) -> None:
        entries, now = self.admin.entries(), time.monotonic()
        if not entries:
            self.lines(503, ["no header provider configured"])
            return
        states = [(entry.settings.label, state(entry.refresher, now)) for entry in entries]
        waiting = [f"{label}: {s}" for label, s in states if s not in READY_STATES]
        self.lines(503 if waiting else 200, waiting or ["ready"])


class _Live(_Handler):
    """200 while every refresher runs (or has yet to start); 503 naming one that died."""

    def get(self) -> None:
        entries, now = self.admin.entries(), time.monotonic()
        dead = [f"{entry.settings.label}: stopped" for entry in entries if state(entry.refresher, now) == "stopped"]
        self.lines(503 if dead else 200, dead or ["live"])


class _Metrics(_Handler):
    def get(self) -> None:
        encode, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encode(self.admin.registry))


class _Status(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(status(self.admin.entries(), time.monotonic()), indent=2) + "\n")


class _Refresh(_Handler):
    def post(self) -> None:
        self.admin.refresh()
        self.lines(202, ["refresh requested"])
