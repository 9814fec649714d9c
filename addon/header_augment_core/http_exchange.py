"""One HTTP exchange with a provider's endpoint (httpx), for the kinds that speak HTTP (http, oauth2): the endpoint's
settings, and a client whose every call is bounded (one deadline, a body read within the size limit however it is
compressed, no cookies kept) and fails every way a call can fail with a short, value-free reason.
"""

import contextlib
import http.cookiejar
import logging
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import certifi  # httpx's own default trust store
import httpcore
import httpx

from .failures import Failed
from .fields import ONE_SOURCE, Option, SettingsError, setting, shown, text
from .rules import MAX_BODY_BYTES

THREAD_PREFIX = "header-augment"


class _NotFromRefreshers(logging.Filter):
    """Drops what httpx and httpcore log on our threads: httpx logs every request URL at INFO (ours may carry a token
    in its query), httpcore's debug trace logs each answer's head (cookies included). We log our own lines."""

    marker = "header-augment"  # survives script reloads, where this class is a new object

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.threadName.startswith(THREAD_PREFIX)


def _filter_provider_records() -> None:
    # A logger's filters do not see its children's records, so each logger needs its own; httpcore has made all of
    # its loggers by now (they are module globals of what `import httpcore` imports).
    names = [name for name in logging.root.manager.loggerDict if name.partition(".")[0] == "httpcore"]
    for name in ["httpx", *names]:
        logger = logging.getLogger(name)
        if not any(getattr(f, "marker", None) == _NotFromRefreshers.marker for f in logger.filters):
            logger.addFilter(_NotFromRefreshers())


_filter_provider_records()


def redact_url(url: str) -> str:
    """`url` without userinfo, query or fragment (which may carry secrets): safe in any message."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(a URL that cannot be parsed)"
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host += f":{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\",\]\)]+")


def redact_urls(text: str) -> str:
    """`text` with every URL in it redacted (see `redact_url`)."""
    return _URL.sub(lambda m: redact_url(m[0]), text)


def _url(value: object) -> str:
    url = text(value)
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError as e:
        raise SettingsError(f"{shown(redact_url(url))} has a bad port ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{shown(redact_url(url))} is not an http:// or https:// URL with a host")
    try:
        httpx.URL(url)
    except httpx.InvalidURL:  # a control character, more than 64 KiB: every fetch would fail
        raise SettingsError(f"{shown(redact_url(url))} is not a URL httpx can send") from None
    return url


def _authority(value: object) -> str:
    authority = text(value)
    if "/" in authority or any(c.isspace() for c in authority):
        raise SettingsError(f"{shown(authority)} is not a host[:port]")
    try:
        httpx.URL(f"//{authority}")  # as the client will read it (a:b:c raised InvalidURL there, unexpected)
    except httpx.InvalidURL:
        raise SettingsError(f"{shown(authority)} is not a host[:port]") from None
    return authority


@dataclass(frozen=True)
class Endpoint:
    """Where an HTTP provider is reached and how (mixed into the settings of the kinds that speak HTTP)."""

    url: str = setting(
        "",
        _url,
        Option(
            "header_provider_url",
            str,
            "",
            "http(s) URL of the header provider (by default it answers with a JSON object of header names to "
            "values). " + ONE_SOURCE,
        ),
    )
    authority: str = setting(
        "",
        _authority,
        Option(
            "header_provider_authority",
            str,
            "",
            "Host (authority) presented to the provider instead of the URL's; for https also the TLS server name.",
        ),
    )
    socket: str = setting(
        "",
        text,
        Option(
            "header_provider_socket",
            str,
            "",
            "Unix socket to reach the provider through; the URL then only gives the path and the authority.",
        ),
    )
    ca: str = setting(
        "",
        text,
        Option(
            "header_provider_ca",
            str,
            "",
            "CA bundle (PEM) to verify an https provider with, instead of the default trust store.",
        ),
        transport=True,
    )
    cert: str = setting(
        "",
        text,
        Option(
            "header_provider_cert",
            str,
            "",
            "Client certificate for mTLS to the provider: a PEM file holding the certificate and its key.",
        ),
        transport=True,
    )

    @property
    def display(self) -> str:
        """The URL without credentials, query or fragment: safe to log and to show in a status report."""
        url = redact_url(self.url)
        return f"{url} via {self.socket}" if self.socket else url

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings for an https provider; raises SettingsError if the CA or certificate is unusable."""
        if _blocks(self.ca):
            raise SettingsError(f"cannot load CA bundle {shown(self.ca)}: not a regular file", field="ca")
        if _blocks(self.cert):
            raise SettingsError(f"cannot load client certificate {shown(self.cert)}: not a regular file", field="cert")
        try:
            # The given bundle replaces the default store (certifi's, as in httpx), so it is all that is trusted.
            context = ssl.create_default_context(cafile=self.ca or certifi.where())
        except (OSError, ssl.SSLError) as e:
            raise SettingsError(f"cannot load CA bundle {shown(self.ca)}: {e}", field="ca") from None
        if self.cert:
            try:
                context.load_cert_chain(self.cert)
            except (OSError, ssl.SSLError) as e:
                raise SettingsError(
                    f"cannot load client certificate {shown(self.cert)} (PEM with key): {e}", field="cert"
                ) from None
        return context


def _blocks(path: str) -> bool:
    """Whether `path` names something that is not a regular file: OpenSSL reading a FIFO waits for a writer, on the
    event loop that configures us. A missing or unreadable file is OpenSSL's to report."""
    try:
        return bool(path) and not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308) and "Location" in self.headers

    def status_reason(self) -> str:
        if self.is_redirect:
            return f"HTTP {self.status} redirect (not followed)"
        return f"HTTP {self.status}"


Resolver = Callable[..., list]
_STOPPED = "provider client stopped"


class _AbortableBackend(httpcore.NetworkBackend):
    """httpcore's blocking backend, plus one deadline per call and `abort()`.

    httpx's timeout bounds each network operation on its own: an answer trickled a byte at a time never reaches
    it. Within `deadline()`, every connect, TLS handshake, read and write gets at most what is left of that one
    deadline, and fails as a timeout once nothing is left. (Each of them is bounded as a whole by the timeout it is
    given, even a TLS handshake or a TLS record that arrives in pieces: CPython's socket and ssl modules keep one
    deadline per call.)

    `abort()` wakes and fails every call in flight, from any thread. A socket closed by another thread does not wake
    a recv() blocked on it; shutdown() does. That is what lets the refresher stop within a moment even while a
    provider hangs mid-answer.
    """

    def __init__(self, resolver: Resolver = socket.getaddrinfo) -> None:
        self._inner = httpcore.SyncBackend()
        self._resolver = resolver
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lookups: set[threading.Event] = set()
        self._aborted = False
        self._deadline: float | None = None  # only the thread making the call sets and reads it

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every network operation in the block, together, ends within `seconds` from now."""
        self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def remaining(self, timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
        """`timeout`, cut to what is left of the deadline; raises `expired` once nothing is left."""
        if self._deadline is None:
            return timeout
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise expired("timed out")
        return left if timeout is None else min(timeout, left)

    def track(self, stream: httpcore.NetworkStream) -> httpcore.NetworkStream:
        sock = stream.get_extra_info("socket")
        with self._lock:
            if self._aborted:
                stream.close()
                raise httpcore.ConnectError(_STOPPED)
            self._sockets.add(sock)
        return _TrackedStream(stream, self)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
            lookups = list(self._lookups)
        for lookup in lookups:
            lookup.set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        # To the resolved addresses in turn, as socket.create_connection() would; httpcore gives start_tls() the
        # origin's host (or the authority) as the TLS server name on its own, so that stays the name, not the address.
        error = httpcore.ConnectError(f"no address found for {host}")
        for address in self._resolve(host, port, self.remaining(timeout, httpcore.ConnectTimeout)):
            try:
                stream = self._inner.connect_tcp(
                    address, port, self.remaining(timeout, httpcore.ConnectTimeout), local_address, socket_options
                )
            except httpcore.ConnectError as e:
                error = e  # refused or unreachable: the next address may answer (a timeout has used up the deadline)
                continue
            return self.track(stream)
        raise error

    def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of `host`. getaddrinfo() takes no timeout and no socket's timeout bounds it, so it runs on a
        helper thread, waited for at most `timeout` (a lookup that outlives it ends on its own; the thread is a
        daemon)."""
        found: list = []
        done = threading.Event()

        def lookup() -> None:
            try:
                found.append(self._resolver(host, port, type=socket.SOCK_STREAM))
            except Exception as e:  # whatever the resolver raises is this call's failure, raised on the caller's thread
                found.append(e)
            done.set()

        with self._lock:
            if self._aborted:
                raise httpcore.ConnectError(_STOPPED)
            self._lookups.add(done)
        try:
            threading.Thread(target=lookup, name=f"{THREAD_PREFIX} resolver", daemon=True).start()
            if not done.wait(timeout):
                raise httpcore.ConnectTimeout("timed out")
        finally:
            with self._lock:
                self._lookups.discard(done)
        if self._aborted:
            raise httpcore.ConnectError(_STOPPED)
        if isinstance(found[0], Exception):
            raise httpcore.ConnectError(str(found[0]) or type(found[0]).__name__) from found[0]
        return list(dict.fromkeys(info[4][0] for info in found[0]))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return self.track(
            self._inner.connect_unix_socket(path, self.remaining(timeout, httpcore.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _TrackedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _AbortableBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes, timeout=None):
        return self._inner.read(max_bytes, self._backend.remaining(timeout, httpcore.ReadTimeout))

    def write(self, buffer, timeout=None):
        self._inner.write(buffer, self._backend.remaining(timeout, httpcore.WriteTimeout))

    def close(self):
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        try:
            timeout = self._backend.remaining(timeout, httpcore.ConnectTimeout)
        except httpcore.ConnectTimeout:
            self.close()  # as httpcore's own start_tls() does when the handshake fails
            raise
        # The TLS socket takes over the descriptor under a new object: track that one too.
        return self._backend.track(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info):
        return self._inner.get_extra_info(info)


# httpcore's exceptions as httpx's (most specific first): what httpx's own transport raises, so that callers see
# httpx's classes and names whichever transport made the call.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(e, core):
                raise mapped(str(e)) from e
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, inner) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._inner

    def close(self) -> None:
        with _as_httpx_errors():
            self._inner.close()


class _PoolTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool built with httpcore's public constructor, whose `network_backend`
    takes ours: httpx.HTTPTransport builds its pool itself and offers no way to give it a backend. What it does
    besides is mirrored here: the request handed over as is (its extensions carry the timeouts and the SNI name),
    httpcore's errors raised as httpx's, httpx's default limits."""

    def __init__(self, backend: httpcore.NetworkBackend, ssl_context: ssl.SSLContext | None, uds: str | None) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,  # httpx.HTTPTransport's default limits (httpx 0.28.1)
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            uds=uds,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            answer = self._pool.handle_request(core)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Body(answer.stream),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()


# gzip and deflate (the zlib format, RFC 9110 §8.4.1) can be decoded a bounded piece at a time; the provider is asked
# for identity, so these are only what some servers send anyway.
_ZLIB_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# The other content codings registered with IANA: a name from this list may be shown in a reason; any other is the
# provider's free text, which is not.
_REGISTERED_CODINGS = frozenset("aes128gcm br compress dcb dcz exi pack200-gzip x-compress zstd".split())


def _too_large() -> Failed:
    return Failed(f"body larger than {MAX_BODY_BYTES} bytes", "size")


def _read_body(response: httpx.Response) -> bytes:
    """The body, read undecoded and decoded here if the provider compressed it anyway: never more than
    MAX_BODY_BYTES + 1 bytes of it in memory, however well it is compressed (httpx decodes a whole read at once,
    brotli a whole answer: an 809-byte brotli body took 2.25 GB)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    codings = [c.strip().lower() for c in response.headers.get_list("Content-Encoding", split_commas=True)]
    decompressor = None
    if len(codings) == 1 and codings[0] in _ZLIB_CODINGS:
        decompressor = zlib.decompressobj(_ZLIB_CODINGS[codings[0]])
    elif codings not in ([], ["identity"]):
        if len(codings) > 1:
            name = "several encodings"
        else:
            name = codings[0] if codings[0] in _REGISTERED_CODINGS else "an unknown encoding"
        raise Failed(f"answer is compressed with {name} (not supported; the provider is asked for identity)", "body")
    received = 0
    body = bytearray()
    for chunk in response.iter_raw():
        received += len(chunk)
        if received > MAX_BODY_BYTES:
            raise _too_large()
        if decompressor is not None:
            try:
                # Input it leaves unread (unconsumed_tail) only means the output has reached the limit.
                chunk = decompressor.decompress(chunk, MAX_BODY_BYTES + 1 - len(body))
            except zlib.error:
                raise Failed(f"answer is not valid {codings[0]}", "body") from None
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    if decompressor is not None and not decompressor.eof:
        raise Failed("compressed answer is cut short", "body")
    return bytes(body)


# h11 quotes the bytes it could not parse (`illegal header line: bytearray(b'...')`): the provider's, so cut off.
_QUOTED = re.compile(r"""\s*:?\s*(?:bytearray\()?b?['"]""")


def _failure(error: httpx.HTTPError) -> Failed:
    """A reason for the log and its class. httpx's messages here never hold the URL; they hold the answer's bytes
    only where h11 could not parse them, and those are cut off."""
    if isinstance(error, httpx.TimeoutException):
        return Failed("timed out", "timeout")
    text = str(error) or type(error).__name__
    causes = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ssl.SSLError) for c in causes):
        reason_class = "tls"  # in the handshake, or after it: a TLS 1.3 server refuses a client certificate then
    elif isinstance(error, httpx.ConnectError | httpx.WriteError):
        reason_class = "connect"
    else:
        reason_class = "body" if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError) else "other"
        text = _QUOTED.split(text, 1)[0]
    return Failed(f"{type(error).__name__}: {text}", reason_class)


class HttpExchange:
    """An httpx client for one endpoint. Used by one thread at a time: the scheduler worker that turns its refresher."""

    def __init__(self, endpoint: Endpoint, timeout: float, accept: str) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._backend = _AbortableBackend()
        self._client = httpx.Client(
            transport=_PoolTransport(
                self._backend,
                endpoint.ssl_context() if endpoint.url.startswith("https:") else None,
                endpoint.socket or None,
            ),
            trust_env=False,  # never through HTTP(S)_PROXY: the proxy must not call itself
            follow_redirects=False,
            timeout=timeout,
            # A provider's cookies are not kept: a jar grows with every answer and sends all of it back. (The jar is
            # given as is; one wrapped in httpx.Cookies would be copied into a jar with the default policy.)
            cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            headers={"Accept": accept, "Accept-Encoding": "identity", "User-Agent": "header-augment"},
        )
        self._extensions = {}
        self._headers = {}
        if endpoint.authority:
            self._headers["Host"] = endpoint.authority
            self._extensions["sni_hostname"] = httpx.URL(f"//{endpoint.authority}").host

    def send(
        self,
        method: str,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        json: object = None,
        content: bytes | None = None,
        url: str | None = None,
    ) -> Answer:
        """One call to the endpoint's URL, or to `url` (a client library's call: vault, the AWS secret kinds), with a
        form `data`, a JSON `json` or a `content` body; its status, headers and body, read within the limits. Raises
        Failed."""
        request = self._client.build_request(
            method,
            self.endpoint.url if url is None else url,
            headers={**self._headers, **(headers or {})},
            data=data,
            json=json,
            content=content,
            extensions=self._extensions,
        )
        try:
            with self._backend.deadline(self.timeout):
                response = self._client.send(request, stream=True)
                try:
                    return Answer(response.status_code, response.headers, _read_body(response))
                finally:
                    response.close()
        except httpx.HTTPError as e:
            raise _failure(e) from None

    def abort(self) -> None:
        """Fail the call in flight (if any) and every later one. Safe from any thread."""
        self._backend.abort()

    def close(self) -> None:
        self._client.close()
