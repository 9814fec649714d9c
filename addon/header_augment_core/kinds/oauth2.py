"""kind `oauth2`: an OAuth2 token endpoint, asked for a client-credentials grant (RFC 6749 §4.4); the access token
becomes `Authorization: Bearer …`, used at most for its lifetime (`expires_in`, or a JWT's `exp` if sooner)."""

import base64
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, choice, setting, text
from ..formats import bearer_token
from ..http_exchange import Answer, Endpoint, HttpExchange
from .base import Source

CLIENT_AUTH = ("basic", "post")
# RFC 6749 §5.2 error codes are short ASCII words; anything else from a token endpoint is not echoed into logs.
_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")


def read_secret(path: str) -> str:
    """A secret from a file, without its final newline. Read on every use, so a rotated secret is picked up."""
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")


@dataclass(frozen=True)
class OAuth2Source(Endpoint, Source):
    KIND: ClassVar[str] = "oauth2"

    client_id: str = setting("", text)
    client_secret_file: str = setting("", text)
    token_scope: str = setting("", text)  # the grant's `scope` (the field `scope` is the flow filter)
    audience: str = setting("", text)
    client_auth: str = setting("basic", choice(*CLIENT_AUTH))

    def check(self, label, given):
        if not self.url:
            raise SettingsError(f"{label('url')}: required for kind oauth2")
        if not self.client_id:
            raise SettingsError(f"{label('client_id')}: required for kind oauth2")
        if not self.client_secret_file:
            raise SettingsError(f"{label('client_secret_file')}: required for kind oauth2")
        try:
            read_secret(self.client_secret_file)
        except OSError as e:
            raise SettingsError(f"{label('client_secret_file')}: cannot read it ({e.strerror})") from None

    def client(self, timeout: float) -> Client:
        return OAuth2Client(self, timeout)


class OAuth2Client(Client):
    def __init__(self, source: OAuth2Source, timeout: float) -> None:
        self.source = source
        self._exchange = HttpExchange(source, timeout, "application/json")

    def _fetch(self) -> FetchResult:
        source = self.source
        try:
            secret = read_secret(source.client_secret_file)
        except OSError as e:
            raise Failed(f"cannot read client_secret_file ({e.strerror})", "file") from None
        form = {"grant_type": "client_credentials"}
        if source.token_scope:
            form["scope"] = source.token_scope
        if source.audience:
            form["audience"] = source.audience
        headers = {}
        if source.client_auth == "post":
            form |= {"client_id": source.client_id, "client_secret": secret}
        else:  # RFC 6749 §2.3.1: both parts form-encoded, then Basic
            user = urllib.parse.quote_plus(source.client_id)
            password = urllib.parse.quote_plus(secret)
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        answer = self._exchange.send("POST", headers=headers, data=form)
        if answer.status != 200:
            raise Failed(_status_reason(answer), "status")
        return _token_response(answer.body)

    def abort(self) -> None:
        self._exchange.abort()

    def close(self) -> None:
        self._exchange.close()


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
