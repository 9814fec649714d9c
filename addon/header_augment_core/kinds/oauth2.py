"""kind `oauth2`: an OAuth2 token endpoint, asked for a client-credentials grant (RFC 6749 §4.4), a token exchange
(RFC 8693) of a token read from a file, or a refresh-token grant (RFC 6749 §6) for a person who signed in once
(`header-augment login`, login.py); the client authenticates with a secret (Basic or in the form), with a client
assertion read from a file (RFC 7523 §2.2), or not at all (a token exchange, a public client). The access token
becomes `Authorization: Bearer …`, used at most for its lifetime (`expires_in`, or a JWT's `exp` if sooner).

A refresh token the server rotates exists nowhere else once the answer is read: it is written to its file
(`files.write_atomic`) before the access token that came with it is used, one refresh at a time per file however
many entries share it (`HeldToken`).

What every OAuth2 grant shares (the call to the token endpoint, its answer, the RFC 6749 error code in a reason) is
`token_grant`, also used by the kinds that sign their own assertion (google-service-account)."""

import base64
import dataclasses
import json
import os
import re
import threading
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, choice, setting, text
from ..files import Stamp, read_regular, stamp, write_atomic
from ..formats import bearer_token
from ..http_exchange import Answer, Endpoint, HttpExchange
from ..http_exchange import _url as url_setting
from .base import Source
from .file import WATCH_INTERVAL

CLIENT_AUTH = ("basic", "post")
GRANTS = ("client-credentials", "token-exchange", "refresh-token")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
# The subject token types that are always a JWT: RFC 8693's jwt, and an OpenID Connect ID token (a JWT by definition).
JWT_TOKEN_TYPES = (JWT_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:id_token")
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Only with a token exchange: the settings of the token given in exchange and of the one asked for.
EXCHANGE_ONLY = ("subject_token_file", "subject_token_type", "resource", "requested_token_type")
# Only with a refresh-token grant: where the person's refresh token is kept, where `login` gets the first one (the
# device grant, or a browser's authorization code) and where `logout` revokes it.
REFRESH_ONLY = ("refresh_token_file", "device_authorization_url", "authorization_url", "revocation_url")
# What every reason about a missing or refused refresh token tells the operator to do.
SIGN_IN = "sign in with header-augment login --providers-file FILE NAME (scripts/run login … from a clone)"
# RFC 6749 §5.2 error codes are short ASCII words; anything else from a token endpoint is not echoed into logs.
_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")
# A client secret, a subject token or an assertion is a few hundred bytes, a JWT with many claims a few KiB: a file
# over this is not one, and is never read into memory.
MAX_SECRET_FILE_BYTES = 16 * 1024
# What a secret or an opaque token may hold: RFC 6749's VSCHAR (client-secret = *VSCHAR), visible ASCII and the
# space. Checked so that a file pointed at something else (a process's environment, a binary) is not sent.
_VSCHARS = re.compile(r"[\x20-\x7e]*")
# A JWS in compact serialization (RFC 7515 §7.1): header, payload and signature, each base64url.
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _read_file(source: "OAuth2Source", field: str) -> str:
    """What the file in `field` holds, at the moment of use (the kubelet and Vault rotate them), checked to be what
    the field is for. Raises Failed, its reason starting with the field and never quoting the file."""
    try:
        data, _ = read_regular(getattr(source, field), MAX_SECRET_FILE_BYTES)
    except Failed as e:
        raise Failed(f"{field}: {e.reason}", e.reason_class) from None
    value = data.decode("latin-1")  # never fails; the checks below take ASCII only
    if field == "client_secret_file":
        value = value.rstrip("\r\n")  # spaces around a secret may be part of it (RFC 6749 allows them)
    else:
        value = value.strip()  # a token or an assertion: white space around it is not part of it
        if not value:
            raise Failed(f"{field}: empty", "file")
    jwt_expected = field == "client_assertion_file" or (
        field == "subject_token_file" and source.subject_token_type in JWT_TOKEN_TYPES
    )
    if jwt_expected:
        if not _JWT.fullmatch(value):
            raise Failed(f"{field}: not a JWT (three base64url parts)", "format")
    elif not _VSCHARS.fullmatch(value):
        raise Failed(f"{field}: has characters other than visible ASCII, or more than one line", "format")
    return value


def basic_credentials(client_id: str, secret: str) -> str:
    """The Basic authorization value of RFC 6749 §2.3.1: both parts encoded, then joined by a colon.

    Percent-encoded with space as %20, not form-encoded (space as +): servers decode with `unquote` (authlib) or
    `unquote_plus`, and only %20 reads back the same with both."""
    user, password = urllib.parse.quote(client_id, safe=""), urllib.parse.quote(secret, safe="")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class OAuth2Source(Endpoint, Source):
    KIND: ClassVar[str] = "oauth2"

    grant: str = setting("client-credentials", choice(*GRANTS))
    client_id: str = setting("", text)
    client_secret_file: str = setting("", text)
    client_assertion_file: str = setting("", text)
    token_scope: str = setting("", text)  # the grant's `scope` (the field `scope` is the flow filter)
    audience: str = setting("", text)
    client_auth: str = setting("basic", choice(*CLIENT_AUTH))
    subject_token_file: str = setting("", text)
    subject_token_type: str = setting(JWT_TOKEN_TYPE, text)
    resource: str = setting("", text)
    requested_token_type: str = setting("", text)
    refresh_token_file: str = setting("", text)
    device_authorization_url: str = setting("", url_setting)
    authorization_url: str = setting("", url_setting)
    revocation_url: str = setting("", url_setting)

    @classmethod
    def check_across(cls, sources):
        # A refresh token belongs to one client at one issuer: another entry's refresh with it would be refused
        # (invalid_grant: "sign in again", which no sign-in cures) or, where the issuer rotates, spend it.
        first: dict[str, tuple[OAuth2Source, Callable[[str], str]]] = {}
        for source, label in sources:
            if source.grant != "refresh-token":
                continue
            other, other_label = first.setdefault(_real_path(source.refresh_token_file), (source, label))
            if (other.url, other.client_id) != (source.url, source.client_id):
                raise SettingsError(
                    f"{label('refresh_token_file')}: also {other_label('refresh_token_file')}, whose url or "
                    "client_id differs: a refresh token belongs to one client at one token endpoint"
                )

    def check(self, label, given):
        if not self.url:
            raise SettingsError(f"{label('url')}: required for kind oauth2")
        exchange = self.grant == "token-exchange"
        refresh = self.grant == "refresh-token"
        if exchange:
            if not self.subject_token_file:
                raise SettingsError(f"{label('subject_token_file')}: required for grant token-exchange")
        else:
            for name in EXCHANGE_ONLY:
                if name in given:
                    raise SettingsError(f"{label(name)}: only with grant token-exchange")
        if refresh:
            # A missing file is not refused: `login` may write it while the proxy runs.
            if not self.refresh_token_file:
                raise SettingsError(f"{label('refresh_token_file')}: required for grant refresh-token")
        else:
            for name in REFRESH_ONLY:
                if name in given:
                    raise SettingsError(f"{label(name)}: only with grant refresh-token")
        if not exchange:
            if not self.client_id:
                raise SettingsError(f"{label('client_id')}: required for kind oauth2")
            if not refresh and not self.client_secret_file and not self.client_assertion_file:
                raise SettingsError(
                    f"{label('client_secret_file')}: required for kind oauth2 (or client_assertion_file)"
                )
        if self.client_secret_file and not self.client_id:
            raise SettingsError(f"{label('client_id')}: required with client_secret_file")
        if self.client_secret_file and self.client_assertion_file:
            raise SettingsError(f"{label('client_assertion_file')}: not with client_secret_file (give one of them)")
        if "client_auth" in given and not self.client_secret_file:
            raise SettingsError(f"{label('client_auth')}: only with client_secret_file")
        for name in ("client_secret_file", "client_assertion_file", "subject_token_file"):
            if getattr(self, name):
                try:
                    _read_file(self, name)
                except Failed as e:
                    raise SettingsError(label(name) + e.reason.removeprefix(name)) from None

    def client(self, timeout: float) -> Client:
        return OAuth2Client(self, timeout)


def client_authentication(source: OAuth2Source, form: dict[str, str]) -> dict[str, str]:
    """Adds the client's authentication to `form` (an assertion, a secret in the form, or a public client's id) and
    returns the headers it needs (Basic). The same at every endpoint of the entry: token, device authorization,
    revocation. Raises Failed."""
    headers = {}
    if source.client_assertion_file:  # RFC 7523 §2.2: the assertion instead of a secret, and no Basic header
        if source.client_id:
            form["client_id"] = source.client_id
        form["client_assertion_type"] = JWT_BEARER_ASSERTION
        form["client_assertion"] = _read_file(source, "client_assertion_file")
    elif source.client_secret_file:
        secret = _read_file(source, "client_secret_file")
        if source.client_auth == "post":
            form |= {"client_id": source.client_id, "client_secret": secret}
        else:
            headers["Authorization"] = basic_credentials(source.client_id, secret)
    elif source.client_id:  # a public client (RFC 6749 §3.2.1) names itself
        form["client_id"] = source.client_id
    return headers


def refresh_token_of(value: str, where: str) -> str:
    """A refresh token as read from a file or an answer, checked (RFC 6749 §A.17: visible ASCII). Raises Failed."""
    value = value.strip()
    if not value:
        raise Failed(f"{where}: empty", "format")
    if not _VSCHARS.fullmatch(value):
        raise Failed(f"{where}: not a refresh token (visible ASCII on one line)", "format")
    # Its file holds it and a newline, and is read back within the limit of a secret file: a longer one would be
    # saved, used, and refused at the next start.
    if len(value) >= MAX_SECRET_FILE_BYTES:
        raise Failed(f"{where}: longer than {MAX_SECRET_FILE_BYTES - 1} characters", "size")
    return value


class HeldToken:
    """The refresh token of one file, shared by every client that names the file: its lock (one refresh at a time),
    the token in use and the stamp of the file it was read from or written to. A new stamp is an outside change (a
    sign-in), read at the next refresh; the proxy's own write is not one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.token: str | None = None
        self.stamp: Stamp | None = None
        self.unsaved = False  # `token` is a rotated one the file could not take: lost at the next restart

    def current(self) -> str:
        """The refresh token to use now: the one held, unless the file has changed since. Called with the lock."""
        now = stamp(self.path)
        if self.token is not None and now == self.stamp:
            return self.token
        try:
            data, read_stamp = read_regular(self.path, MAX_SECRET_FILE_BYTES)
        except Failed as e:
            if self.unsaved and self.token is not None:
                # The newest token exists nowhere but here (its file could not take it, and has now gone or turned
                # unreadable, its directory removed, say): dropping it would lose the person's sign-in. The change is
                # taken as seen, so the file's watch does not refresh (and rotate) again and again.
                self.stamp = now
                return self.token
            self.token, self.stamp = None, now
            raise Failed(f"refresh_token_file: {e.reason}: {SIGN_IN}", e.reason_class) from None
        # What the file holds now (a sign-in, or a sign-out's removal) wins over what was held.
        self.token, self.stamp, self.unsaved = None, read_stamp, False
        self.token = refresh_token_of(data.decode("latin-1"), "refresh_token_file")
        return self.token

    def keep(self, token: str) -> None:
        """Holds `token` (a rotated one, or one not saved yet) and writes it to the file. Called with the lock.
        Raises Failed when it cannot be written: the token is still held, and used until the process ends."""
        self.token = token
        self.unsaved = True
        try:
            self.stamp = write_atomic(self.path, token.encode() + b"\n")
        except Failed as e:
            raise Failed(
                f"refresh_token_file: the rotated refresh token could not be saved: {e.reason}; it is kept in memory "
                "and lost at restart (then sign in again with header-augment login)",
                "file",
            ) from None
        self.unsaved = False


_held: "weakref.WeakValueDictionary[str, HeldToken]" = weakref.WeakValueDictionary()
_held_lock = threading.Lock()


def _real_path(path: str) -> str:
    """What every spelling of a refresh_token_file (relative, `~`, through a symlink) comes to."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def held_token(path: str) -> HeldToken:
    """The one HeldToken of the file at `path` while any client uses it: found by the file's real path, so that
    every spelling of it (relative, through a symlink) shares one; read and watched through the path as given, so
    that a symlink pointed elsewhere (Kubernetes' `..data` swap, a person's) is followed."""
    given = os.path.abspath(os.path.expanduser(path))
    key = _real_path(path)
    with _held_lock:
        held = _held.get(key)
        if held is None:
            held = _held[key] = HeldToken(given)
        return held


class OAuth2Client(Client):
    def __init__(self, source: OAuth2Source, timeout: float) -> None:
        self.source = source
        self.timeout = timeout
        self._exchange = HttpExchange(source, timeout, "application/json")
        self._held: HeldToken | None = None
        if source.grant == "refresh-token":
            self._held = held_token(source.refresh_token_file)
            self.watch_interval = WATCH_INTERVAL
            self._seen: Stamp | None = None  # the stamp the last look saw

    def changed(self) -> bool:
        """A refresh-token file replaced from outside (a sign-in): a stamp other than the one in use, the same on two
        looks in a row. The proxy's own write of a rotated token records its stamp first, so it is not a change."""
        if self._held is None:
            return False
        now = stamp(self._held.path)
        settled = now != self._held.stamp and now == self._seen
        self._seen = now
        return settled

    def _fetch(self) -> FetchResult:
        if self._held is not None:
            return self._refresh(self._held)
        source = self.source
        if source.grant == "token-exchange":
            form = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": _read_file(source, "subject_token_file"),
                "subject_token_type": source.subject_token_type,
            }
            for name in ("requested_token_type", "resource"):
                if getattr(source, name):
                    form[name] = getattr(source, name)
        else:
            form = {"grant_type": "client_credentials"}
        self._scope(form)
        return token_grant(self._exchange, form, client_authentication(source, form))

    def _scope(self, form: dict[str, str]) -> None:
        if self.source.token_scope:
            form["scope"] = self.source.token_scope
        if self.source.audience:
            form["audience"] = self.source.audience

    def _refresh(self, held: HeldToken) -> FetchResult:
        """The refresh-token grant, with the file's lock held from reading the token to saving the one that replaces
        it: another entry of the same file waits, then uses the new one."""
        if not held.lock.acquire(timeout=self.timeout):
            raise Failed("another entry's refresh of the same refresh_token_file is still running", "timeout")
        try:
            form = {"grant_type": "refresh_token", "refresh_token": held.current()}
            self._scope(form)
            answer = self._exchange.send("POST", headers=client_authentication(self.source, form), data=form)
            if answer.status != 200:
                if oauth_error(answer) == "invalid_grant":  # revoked, expired, or used already (RFC 6749 §5.2)
                    raise Failed(f"{_status_reason(answer)}: the refresh token is refused: {SIGN_IN} again", "auth")
                raise Failed(_status_reason(answer), "status")
            token = _json_object(answer.body)
            rotated = token.get("refresh_token")
            if rotated is not None:
                if not isinstance(rotated, str):
                    raise Failed("refresh_token in the token response is not a string")
                rotated = refresh_token_of(rotated, "refresh_token in the token response")
            # Saved before the rest of the answer is looked at: the server has rotated the token it was given, and
            # an access token this proxy cannot use (a token_type or expires_in it refuses) must not lose the new one.
            unsaved = None
            if rotated not in (None, held.token) or held.unsaved:
                try:
                    held.keep(rotated or held.token)
                except Failed as e:
                    unsaved = e
            result = access_token(token)
            if unsaved is not None:  # published all the same, and counted and shown as a failure
                return dataclasses.replace(result, reason=unsaved.reason, reason_class=unsaved.reason_class)
            return result
        finally:
            held.lock.release()

    def abort(self) -> None:
        self._exchange.abort()

    def close(self) -> None:
        self._exchange.close()


def token_grant(exchange: HttpExchange, form: dict[str, str], headers: dict[str, str]) -> FetchResult:
    """One grant at a token endpoint (RFC 6749 §5): its access token as `Authorization: Bearer …`, with the lifetime
    its `expires_in` (or a JWT's `exp`, if sooner) gives it. Raises Failed."""
    answer = exchange.send("POST", headers=headers, data=form)
    if answer.status != 200:
        raise Failed(_status_reason(answer), "status")
    return access_token(token_json(answer.body))


def _json_object(body: bytes) -> dict:
    try:
        token = json.loads(body)
    except (ValueError, RecursionError):
        raise Failed("token response is not JSON") from None
    if not isinstance(token, dict):
        raise Failed("token response has no access_token")
    return token


def token_json(body: bytes) -> dict:
    """A token endpoint's answer (RFC 6749 §5.1), an object with an access_token. Raises Failed."""
    token = _json_object(body)
    if not isinstance(token.get("access_token"), str):
        raise Failed("token response has no access_token")
    return token


def access_token(token: dict) -> FetchResult:
    """The access token of a token response as `Authorization: Bearer …`, with its lifetime. Raises Failed."""
    if not isinstance(token.get("access_token"), str):
        raise Failed("token response has no access_token")
    if str(token.get("token_type", "")).lower() != "bearer":
        raise Failed("token_type is not Bearer")
    expires_in = token.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 1e9
    ):
        raise Failed("expires_in is not a positive number of seconds")
    parsed = bearer_token(token["access_token"])
    lifetimes = [t for t in (parsed.lifetime, expires_in) if t is not None]
    return FetchResult(answer=parsed.answer, lifetime=float(min(lifetimes)) if lifetimes else None)


def oauth_error(answer: Answer) -> str | None:
    """The RFC 6749 §5.2 error code of an answer, if it has one that may be shown."""
    try:
        error = json.loads(answer.body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return None
    return error if isinstance(error, str) and _OAUTH_ERROR.fullmatch(error) else None


def _status_reason(answer: Answer) -> str:
    reason = answer.status_reason()
    error = oauth_error(answer)
    return f"{reason}: {error}" if error else reason
