"""kind `google-service-account`: a Google service-account JSON key, exchanged for an access token with the JWT
bearer grant (RFC 7523 §2.1) at the key's `token_uri`: a JWT signed with the key (RS256, `kid` its
`private_key_id`, an hour long at most) asking for `scopes`, optionally as `subject` (domain-wide delegation). The
access token becomes `Authorization: Bearer …` for its `expires_in`."""

from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, setting, text
from ..http_exchange import Endpoint, HttpExchange
from . import signing
from .base import Source
from .oauth2 import token_grant

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME = 3600  # Google's limit for the assertion


def _scopes(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) and s and " " not in s for s in value):
        raise SettingsError("expected a list of scopes, e.g. [https://www.googleapis.com/auth/cloud-platform]")
    return tuple(value)


def _key(path: str) -> dict[str, str]:
    return signing.service_account_key(signing.read_key_file(path))


@dataclass(frozen=True)
class GoogleServiceAccountSource(Source):
    KIND: ClassVar[str] = "google-service-account"

    key_file: str = setting("", text)
    scopes: tuple[str, ...] = setting((), _scopes)
    subject: str = setting("", text)  # a user to act as (domain-wide delegation)
    ca: str = setting("", text, transport=True)

    @property
    def display(self) -> str:
        return f"google-service-account {self.key_file}"

    def check(self, label, given):
        if not self.key_file:
            raise SettingsError(f"{label('key_file')}: required for kind google-service-account")
        if not self.scopes:
            raise SettingsError(f"{label('scopes')}: required for kind google-service-account")
        try:
            _key(self.key_file)
        except Failed as e:
            raise SettingsError(f"{label('key_file')}: {e.reason}") from None

    def client(self, timeout: float) -> Client:
        return GoogleServiceAccountClient(self, timeout)


class GoogleServiceAccountClient(Client):
    def __init__(self, source: GoogleServiceAccountSource, timeout: float) -> None:
        self.source = source
        self.timeout = timeout
        self._exchange: HttpExchange | None = None  # for the key's token_uri, made again if a new key names another
        self._aborted = False

    def _exchange_for(self, token_uri: str) -> HttpExchange:
        if self._exchange is None or self._exchange.endpoint.url != token_uri:
            if self._exchange is not None:
                self._exchange.close()
            self._exchange = HttpExchange(Endpoint(url=token_uri, ca=self.source.ca), self.timeout, "application/json")
            if self._aborted:
                self._exchange.abort()
        return self._exchange

    def _fetch(self) -> FetchResult:
        source = self.source
        try:
            key = _key(source.key_file)
        except Failed as e:
            raise Failed(f"key_file: {e.reason}", e.reason_class) from None
        issued = signing.now()
        claims = {
            "iss": key["client_email"],
            "scope": " ".join(source.scopes),
            "aud": key["token_uri"],
            "iat": issued,
            "exp": issued + JWT_LIFETIME,
        }
        if source.subject:
            claims["sub"] = source.subject
        assertion = signing.sign(claims, signing.rsa_key(key["private_key"]), kid=key["private_key_id"])
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        return token_grant(self._exchange_for(key["token_uri"]), form, {})

    def abort(self) -> None:
        self._aborted = True
        if self._exchange is not None:
            self._exchange.abort()

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
