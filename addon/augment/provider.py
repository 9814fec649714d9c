"""One HTTP call to a header provider, with every way it can fail turned into a short, value-free reason."""

import logging
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass

import httpcore
import httpx

from .rules import MAX_BODY_BYTES, InvalidAnswer, Validated, parse_answer
from .settings import ProviderSettings

THREAD_PREFIX = "header-augment"


class _NotFromRefreshers(logging.Filter):
    """httpx logs every request URL at INFO; ours may carry a token in its query, and we log our own lines."""

    marker = "header-augment"  # survives script reloads, where this class is a new object

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.threadName.startswith(THREAD_PREFIX)


_httpx_logger = logging.getLogger("httpx")
if not any(getattr(f, "marker", None) == _NotFromRefreshers.marker for f in _httpx_logger.filters):
    _httpx_logger.addFilter(_NotFromRefreshers())

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True)
class FetchResult:
    """Either `answer` (a valid answer) or `reason` (why the refresh failed) is set."""

    answer: Validated | None = None
    reason: str = ""
    max_age: float | None = None

    @property
    def ok(self) -> bool:
        return self.answer is not None


class _AbortableBackend(httpcore.NetworkBackend):
    """httpcore's blocking backend, plus `abort()`: wake and fail every call in flight, from any thread.

    A socket closed by another thread does not wake a recv() blocked on it; shutdown() does. That is what lets
    the refresher stop within a moment even while a provider hangs mid-answer.
    """

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._aborted = False

    def track(self, stream: httpcore.NetworkStream) -> httpcore.NetworkStream:
        sock = stream.get_extra_info("socket")
        with self._lock:
            if self._aborted:
                stream.close()
                raise httpcore.ConnectError("provider client stopped")
            self._sockets.add(sock)
        return _TrackedStream(stream, self)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return self.track(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return self.track(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _TrackedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _AbortableBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes, timeout=None):
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer, timeout=None):
        self._inner.write(buffer, timeout)

    def close(self):
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        # The TLS socket takes over the descriptor under a new object: track that one too.
        return self._backend.track(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info):
        return self._inner.get_extra_info(info)


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    match = _MAX_AGE.search(cache_control)
    return float(match[1]) if match else None


def _describe(error: httpx.HTTPError) -> str:
    """A reason for the log. httpx messages carry no header values; the URL is never part of them here."""
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    cause = error.__context__ or error
    text = str(error) or type(error).__name__
    if isinstance(error, httpx.ConnectError) and isinstance(cause, httpcore.ConnectError):
        text = str(cause) or text
    return f"{type(error).__name__}: {text}"


class ProviderClient:
    """Fetches one provider's answer. Thread-affine: used by the one refresher thread that owns it."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self._backend = _AbortableBackend()
        transport = httpx.HTTPTransport(
            verify=settings.ssl_context() if settings.url.startswith("https:") else False,
            uds=settings.socket or None,
        )
        # httpx offers no hook for the network backend; the pool's own attribute is the one seam (httpx 0.28).
        transport._pool._network_backend = self._backend
        self._client = httpx.Client(
            transport=transport,
            trust_env=False,  # never through HTTP(S)_PROXY: the proxy must not call itself
            follow_redirects=False,
            timeout=settings.timeout,
            headers={"Accept": "application/json", "User-Agent": "header-augment"},
        )
        self._extensions = {}
        self._headers = {}
        if settings.authority:
            self._headers["Host"] = settings.authority
            self._extensions["sni_hostname"] = httpx.URL(f"//{settings.authority}").host

    def fetch(self) -> FetchResult:
        deadline = time.monotonic() + self.settings.timeout
        try:
            with self._client.stream(
                "GET", self.settings.url, headers=self._headers, extensions=self._extensions
            ) as response:
                if response.status_code != 200:
                    return FetchResult(reason=self._status_reason(response))
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                    return FetchResult(reason=f"body larger than {MAX_BODY_BYTES} bytes")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        return FetchResult(reason=f"body larger than {MAX_BODY_BYTES} bytes")
                    if time.monotonic() > deadline:
                        return FetchResult(reason="timed out")
                max_age = _max_age(response.headers.get("Cache-Control"))
        except httpx.HTTPError as e:
            return FetchResult(reason=_describe(e))
        try:
            return FetchResult(answer=parse_answer(bytes(body)), max_age=max_age)
        except InvalidAnswer as e:
            return FetchResult(reason=str(e))

    @staticmethod
    def _status_reason(response: httpx.Response) -> str:
        if response.is_redirect:
            return f"HTTP {response.status_code} redirect (not followed)"
        return f"HTTP {response.status_code}"

    def abort(self) -> None:
        """Fail the call in flight (if any) and every later one. Safe from any thread."""
        self._backend.abort()

    def close(self) -> None:
        self._client.close()
