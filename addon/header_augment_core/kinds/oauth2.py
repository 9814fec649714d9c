"""kind `oauth2`: an OAuth2 token endpoint, asked for a client-credentials grant (RFC 6749 §4.4) or a token exchange
(RFC 8693) of a token read from a file; the client authenticates with a secret (Basic or in the form), with a client
assertion read from a file (RFC 7523 §2.2), or not at all (a token exchange). The access token becomes
`Authorization: Bearer …`, used at most for its lifetime (`expires_in`, or a JWT's `exp` if sooner).

What every OAuth2 grant shares (the call to the token endpoint, its answer, the RFC 6749 error code in a reason) is
`token_grant`, also used by the kinds that sign their own assertion (google-service-account)."""

import base64
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, choice, setting, text
from ..files import read_regular
from ..formats import bearer_token
from ..http_exchange import Answer, Endpoint, HttpExchange
from .base import Source

CLIENT_AUTH = ("basic", "post")
GRANTS = ("client-credentials", "token-exchange")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
# The subject token types that are always a JWT: RFC 8693's jwt, and an OpenID Connect ID token (a JWT by definition).
JWT_TOKEN_TYPES = (JWT_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:id_token")
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Only with a token exchange: the settings of the token given in exchange and of the one asked for.
EXCHANGE_ONLY = ("subject_token_file", "subject_token_type", "resource", "requested_token_type")
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

    def check(self, label, given):
        if not self.url:
            raise SettingsError(f"{label('url')}: required for kind oauth2")
        exchange = self.grant == "token-exchange"
        if exchange:
            if not self.subject_token_file:
                raise SettingsError(f"{label('subject_token_file')}: required for grant token-exchange")
        else:
            for name in EXCHANGE_ONLY:
                if name in given:
                    raise SettingsError(f"{label(name)}: only with grant token-exchange")
            if not self.client_id:
                raise SettingsError(f"{label('client_id')}: required for kind oauth2")
            if not self.client_secret_file and not self.client_assertion_file:
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


class OAuth2Client(Client):
    def __init__(self, source: OAuth2Source, timeout: float) -> None:
        self.source = source
        self._exchange = HttpExchange(source, timeout, "application/json")

    def _fetch(self) -> FetchResult:
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
        if source.token_scope:
            form["scope"] = source.token_scope
        if source.audience:
            form["audience"] = source.audience
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
        return token_grant(self._exchange, form, headers)

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
    return _token_response(answer.body)


def _token_response(body: bytes) -> FetchResult:
    try:
        token = json.loads(body)
    except (ValueError, RecursionError):
        raise Failed("token response is not JSON") from None
    if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
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


def _status_reason(answer: Answer) -> str:
    reason = answer.status_reason()
    try:
        error = json.loads(answer.body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return reason
    return f"{reason}: {error}" if isinstance(error, str) and _OAUTH_ERROR.fullmatch(error) else reason
