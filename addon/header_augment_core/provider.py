"""One HTTP call to a header provider, with every way it can fail turned into a short, value-free reason."""

import base64
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass

import httpcore
import httpx

from .rules import MAX_BODY_BYTES, InvalidAnswer, Validated, parse_answer, validate_entries
from .settings import ProviderSettings, read_secret

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
    expires_in: float | None = None  # the answer is unusable after this many seconds (an OAuth2 token's lifetime)

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


class _Failed(Exception):
    """A failed fetch, with its reason (never a header value or a secret)."""


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


def client_for(settings: ProviderSettings) -> "ProviderClient":
    """The client for the provider's kind."""
    return OAuth2Client(settings) if settings.kind == "oauth2" else ProviderClient(settings)


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
        try:
            request = self._request()
            response, body = self._exchange(request)
        except _Failed as e:
            return FetchResult(reason=str(e))
        except httpx.HTTPError as e:
            return FetchResult(reason=_describe(e))
        if response.status_code != 200:
            return FetchResult(reason=self._status_reason(response, body))
        try:
            return self._interpret(response, body)
        except InvalidAnswer as e:
            return FetchResult(reason=str(e))

    def _request(self) -> httpx.Request:
        return self._client.build_request("GET", self.settings.url, headers=self._headers, extensions=self._extensions)

    def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        """Send `request`; the response and its body, read within the timeout and the size limit."""
        deadline = time.monotonic() + self.settings.timeout
        response = self._client.send(request, stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise _Failed(f"body larger than {MAX_BODY_BYTES} bytes")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise _Failed(f"body larger than {MAX_BODY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise _Failed("timed out")
            return response, bytes(body)
        finally:
            response.close()

    def _interpret(self, response: httpx.Response, body: bytes) -> FetchResult:
        return FetchResult(answer=parse_answer(body), max_age=_max_age(response.headers.get("Cache-Control")))

    def _status_reason(self, response: httpx.Response, body: bytes) -> str:
        if response.is_redirect:
            return f"HTTP {response.status_code} redirect (not followed)"
        return f"HTTP {response.status_code}"

    def abort(self) -> None:
        """Fail the call in flight (if any) and every later one. Safe from any thread."""
        self._backend.abort()

    def close(self) -> None:
        self._client.close()


# RFC 6749 §5.2 error codes are short ASCII words; anything else from a token endpoint is not echoed into logs.
_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")
# Refresh at 80% of the token's lifetime: early enough to ride out a failed attempt or two before it expires.
TOKEN_REFRESH_AT = 0.8


class OAuth2Client(ProviderClient):
    """An OAuth2 token endpoint as a provider: client-credentials grant (RFC 6749 §4.4), token as a Bearer header."""

    def _request(self) -> httpx.Request:
        settings = self.settings
        try:
            secret = read_secret(settings.client_secret_file)
        except OSError as e:
            raise _Failed(f"cannot read client_secret_file ({e.strerror})") from None
        form = {"grant_type": "client_credentials"}
        if settings.token_scope:
            form["scope"] = settings.token_scope
        if settings.audience:
            form["audience"] = settings.audience
        headers = dict(self._headers)
        if settings.client_auth == "post":
            form |= {"client_id": settings.client_id, "client_secret": secret}
        else:  # RFC 6749 §2.3.1: both parts form-encoded, then Basic
            user = urllib.parse.quote_plus(settings.client_id)
            password = urllib.parse.quote_plus(secret)
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return self._client.build_request("POST", settings.url, data=form, headers=headers, extensions=self._extensions)

    def _interpret(self, response: httpx.Response, body: bytes) -> FetchResult:
        try:
            token = json.loads(body)
        except ValueError:
            raise InvalidAnswer("token response is not JSON") from None
        if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
            raise InvalidAnswer("token response has no access_token")
        if str(token.get("token_type", "")).lower() != "bearer":
            raise InvalidAnswer("token_type is not Bearer")
        expires_in = token.get("expires_in")
        if expires_in is not None and (
            isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 1e9
        ):
            raise InvalidAnswer("expires_in is not a positive number of seconds")
        answer = validate_entries([("Authorization", f"Bearer {token['access_token']}")])
        if not answer.headers:
            raise InvalidAnswer(f"access_token unusable: {answer.rejected[0].reason}")
        if expires_in is None:
            return FetchResult(answer=answer)
        return FetchResult(answer=answer, max_age=expires_in * TOKEN_REFRESH_AT, expires_in=float(expires_in))

    def _status_reason(self, response: httpx.Response, body: bytes) -> str:
        reason = super()._status_reason(response, body)
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            return reason
        return f"{reason}: {error}" if isinstance(error, str) and _OAUTH_ERROR.fullmatch(error) else reason
