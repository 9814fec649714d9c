"""The admin endpoint, for running the proxy as a sidecar: readiness, liveness, metrics, status and a refresh
trigger over plain HTTP.

It is served by tornado (which mitmproxy ships for mitmweb) on mitmproxy's own event loop: no thread of its own,
and a handler only reads what the addon keeps. Nothing it answers holds a header value, a secret or a URL query:
states, header names, counts and reasons only (see status.py and metrics.py), and errors are plain status lines.

It has no authentication, so it bounds what a stranger can make it do: it answers only a Host that names it (a
DNS-rebinding page sends its own name), holds a bounded number of connections for a bounded time, and logs a flood
of them, or running out of file descriptors, once a minute rather than once per connection.
"""

import asyncio
import errno
import ipaddress
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from prometheus_client.exposition import choose_encoder
from tornado import httpserver, iostream, netutil, web

from .fields import SettingsError, shown
from .metrics import registry_for
from .placeholders import env_lines
from .status import Entry, Path, state, status

logger = logging.getLogger("header_augment")

OPTION = "header_admin_listen"
READY_STATES = ("ok", "failing")  # usable headers, and a refresher that keeps them fresh
TEXT = "text/plain; charset=utf-8"
MAX_BODY = 4096  # no request here has a body; an unauthenticated endpoint reads none of any size
# A connection is closed when a request's head (or the next one, on a kept-alive connection) or its body takes longer
# than this: probes and scrapers send theirs at once, and reconnect for the next scrape.
IDLE_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
# Open connections at most; a new one beyond it closes the oldest, so that a flood of idle connections cannot keep
# a probe out (it would restart the pod). Probes and scrapers need a handful.
MAX_CONNECTIONS = 64
ACCEPT_BATCH = 128  # connections accepted per turn of the loop, as tornado does: other work runs in between
ACCEPT_PAUSE = 1.0  # after an accept that failed for want of a file descriptor, as asyncio's own servers do
NOTICE_GAP = 60.0  # a flood of connections, or a failing accept, is logged at most this often
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
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


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def host_of(value: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What a Host header names, without its port: an IP address, or a lower-case name; None when it is not
    host[:port]."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        host, _, port = value.partition(":")  # an IPv6 address without brackets leaves a port that is not digits
    if not host or (port and not (port.isascii() and port.isdigit())):
        return None
    address = _ip(host)
    if value.startswith("[") != (address is not None and address.version == 6):
        return None
    return host if address is None else address


class AdminEndpoint:
    """Serves `entries()` (the addon's provider entries, read on each request) and calls `refresh()` for
    POST /refresh. `want()` takes the option's value; `serve()` listens accordingly, on the running loop."""

    def __init__(
        self,
        entries: Callable[[], Sequence[Entry]],
        refresh: Callable[[], None],
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        path: Path | None = None,
    ) -> None:
        self.entries = entries
        self.refresh = refresh
        self.path = path  # the request path: /status and /metrics show its egress policy and audit log
        self._limits = {
            "idle_connection_timeout": idle_timeout,  # tornado's header timeout too: a half-sent head is idle
            "body_timeout": body_timeout,
            "max_connections": max_connections,
        }
        self.registry = registry_for(entries, path)
        routes = {
            "/ready": _Ready,
            "/live": _Live,
            "/metrics": _Metrics,
            "/status": _Status,
            "/refresh": _Refresh,
            "/placeholders.env": _PlaceholdersEnv,
        }
        args = {"admin": self}
        self._app = web.Application(
            [(path, handler, args) for path, handler in routes.items()],
            default_handler_class=_NotFound,
            default_handler_args=args,
            log_function=_log_request,
        )
        self.wanted: Address | None = None
        self._serving: Address | None = None  # the address asked for that the server listens at
        self._server: _Server | None = None
        self._closing: set[asyncio.Task] = set()
        self._addresses: frozenset = frozenset()  # the IP addresses a Host may name, besides the connection's own

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
        self._server = _Server(self._app, max_body_size=MAX_BODY, **self._limits)
        self._server.add_sockets(sockets)
        self._serving = address
        names = [sock.getsockname() for sock in sockets]
        listening = [ipaddress.ip_address(n[0]) for n in names]
        loopback = (
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
            if any(a.is_loopback or a.is_unspecified for a in listening)
            else []
        )
        self._addresses = frozenset(listening + loopback)
        shown = ", ".join(_shown(n) for n in names)
        logger.info("header-augment admin endpoint listening at %s", shown)
        if not all(a.is_loopback for a in listening):
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

    def names_us(self, host: str | None, local: Callable[[], str | None]) -> bool:
        """Whether a request's Host header names this endpoint: `localhost`, the address it listens at (with the
        loopback addresses when that is loopback or a wildcard), or `local()`, the address the connection came in
        at (what a kubelet's probe or a Prometheus scrape of a wildcard bind sends). A page that a DNS-rebinding
        attack points at this endpoint sends its own name, never one of these. The port is not compared: a port
        forward (docker -p, kubectl port-forward) changes it, and it is not what an attacker's page lacks.

        A request without Host (HTTP/1.0), or with an empty one, is answered: a browser always sends the name."""
        if host is None or not host.strip():
            return True
        named = host_of(host)
        if named is None or isinstance(named, str):
            return named == "localhost"
        return named in self._addresses or named == _ip(local() or "")


def _log_request(handler: web.RequestHandler) -> None:
    # Not tornado's access log: it logs a 503 at error level, and an error during start-up stops mitmdump.
    logger.debug(
        "header-augment admin endpoint: %s %s %d", handler.request.method, handler.request.path, handler.get_status()
    )


class _Server(httpserver.HTTPServer):
    """tornado's HTTPServer with a bounded number of connections, and an accept of its own: tornado's lets an accept
    that fails for want of a file descriptor escape to the event loop, which logs a traceback on every turn while
    the listening socket stays readable (30,000 in a minute, the loop spinning)."""

    def initialize(self, *args, max_connections: int, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self._open: dict[iostream.IOStream, None] = {}  # oldest first
        self._full = _Notice()
        self._failing = _Notice()

    def add_sockets(self, sockets) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._listen(sock)

    def _listen(self, sock: socket.socket) -> None:
        if self._stopped:
            return  # a pause that ended after stop()
        loop, fd = asyncio.get_running_loop(), sock.fileno()
        loop.add_reader(fd, self._accept, sock)
        self._handlers[fd] = lambda: loop.remove_reader(fd)  # what stop() calls

    def _pause(self, sock: socket.socket) -> None:
        self._handlers.pop(sock.fileno())()
        self._handlers[sock.fileno()] = lambda: None
        asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._listen, sock)

    def _accept(self, sock: socket.socket) -> None:
        freed = False  # closed a connection for the descriptor the last accept lacked
        for _ in range(ACCEPT_BATCH):
            try:
                connection, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # closed by the client while it waited
            except OSError as e:
                if e.errno in _OUT_OF_DESCRIPTORS and not freed and self._live():
                    self._close_oldest()
                    freed = True
                    self._failing.note("cannot accept a connection (%s): closing its oldest connection", e)
                    continue
                self._failing.note("cannot accept a connection (%s): not accepting any for 1s", e)
                self._pause(sock)
                return
            freed = False
            if len(self._open) >= self.max_connections and len(self._live()) >= self.max_connections:
                self._close_oldest()
                self._full.note("%d connections open, its limit: a new one closes the oldest", self.max_connections)
            stream = iostream.IOStream(
                connection, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size
            )
            self.handle_stream(stream, address)
            self._open[stream] = None

    def _live(self) -> dict[iostream.IOStream, None]:
        """The open connections, oldest first: one that tornado has closed stays listed until its loop ends."""
        self._open = {stream: None for stream in self._open if not stream.closed()}
        return self._open

    def _close_oldest(self) -> None:
        stream = next(iter(self._open))
        del self._open[stream]
        stream.close()  # its file descriptor at once; its connection's loop ends and calls on_close

    def on_close(self, server_conn) -> None:
        super().on_close(server_conn)
        self._open.pop(server_conn.stream, None)


class _Notice:
    """A warning about something that can happen on every connection: logged at most once per NOTICE_GAP, with how
    many times it happened since the last such line."""

    def __init__(self) -> None:
        self._logged_at = -math.inf
        self._since = 0

    def note(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged_at < NOTICE_GAP:
            self._since += 1
            return
        more = f" ({self._since} more since the last such line)" if self._since else ""
        logger.warning(f"header-augment admin endpoint: {message}; logged at most once a minute%s", *args, more)
        self._logged_at, self._since = now, 0


class _Handler(web.RequestHandler):
    def initialize(self, admin: AdminEndpoint) -> None:
        self.admin = admin

    def log_exception(self, typ, value, tb) -> None:
        # tornado logs a warning for every malformed body it answers with 400: a client's mistake, and one line per
        # request anyone can send. The status is in the debug line of each request.
        if not isinstance(value, web.HTTPError):
            super().log_exception(typ, value, tb)

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Type", TEXT)
        self.set_header("Cache-Control", "no-store")

    def compute_etag(self) -> None:
        return None  # every answer is current state, never cached

    def prepare(self) -> None:
        if not self.admin.names_us(self.request.headers.get("Host"), self._local_address):
            raise web.HTTPError(421)
        # Probes, scrapers and curl send no Origin; a web page that makes a browser call this endpoint does.
        if "Origin" in self.request.headers:
            raise web.HTTPError(403)

    def _local_address(self) -> str | None:
        sock = self.request.connection.stream.socket
        return None if sock is None else sock.getsockname()[0]

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", TEXT)
        self.finish(f"{status_code} {HTTPStatus(status_code).phrase}\n")

    def lines(self, status_code: int, lines: Sequence[str]) -> None:
        self.set_status(status_code)
        self.finish("".join(f"{line}\n" for line in lines))


class _NotFound(_Handler):
    def prepare(self) -> None:
        super().prepare()
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
        self.finish(json.dumps(status(self.admin.entries(), time.monotonic(), self.admin.path), indent=2) + "\n")


class _Refresh(_Handler):
    def post(self) -> None:
        self.admin.refresh()
        self.lines(202, ["refresh requested"])


class _PlaceholdersEnv(_Handler):
    """NAME=VALUE for every entry with a placeholder and an env name, for a sandbox launcher: placeholders only,
    never a credential."""

    def get(self) -> None:
        self.finish(env_lines(self.admin.entries()))
