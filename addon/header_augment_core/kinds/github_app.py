"""kind `github-app`: a GitHub App's installation access token, asked for with a JWT the proxy signs with the app's
private key (RS256, `iat` 60 s in the past for clock drift, at most 10 minutes long, as GitHub requires). The token
becomes `Authorization: Bearer …`, renewed before its `expires_at` (an hour) and never sent after it."""

import datetime
import json
import time
from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, setting, text
from ..formats import bearer_token
from ..http_exchange import Endpoint, HttpExchange, _url, redact_url
from . import signing
from .base import Source

DEFAULT_API_URL = "https://api.github.com"
# GitHub refuses an app JWT issued in the future or living over 10 minutes: backdated for clock drift, as its docs
# advise, and ending 10 minutes after that.
BACKDATE = 60
JWT_LIFETIME = 600
API_VERSION = "2022-11-28"


def _app_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a YAML number
    return text(value)


def _installation_id(value: object) -> str:
    number = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(number, str) or not number.isdigit():
        raise SettingsError(f"{value!r} is not an installation id (a number)")
    return number


def _repositories(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(name, str) and name for name in value):
        raise SettingsError("expected a list of repository names")
    return tuple(value)


def _permissions(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SettingsError("expected a mapping of permission names to levels, e.g. {contents: read}")
    return tuple(sorted(value.items()))  # hashable, as equal settings share one refresher


@dataclass(frozen=True)
class GitHubAppSource(Source):
    KIND: ClassVar[str] = "github-app"

    app_id: str = setting("", _app_id)  # the app's id or its client id: GitHub takes either as the JWT's issuer
    installation_id: str = setting("", _installation_id)
    private_key_file: str = setting("", text)
    api_url: str = setting(DEFAULT_API_URL, _url)
    repositories: tuple[str, ...] = setting((), _repositories)
    permissions: tuple[tuple[str, str], ...] = setting((), _permissions)
    ca: str = setting("", text, transport=True)

    @property
    def display(self) -> str:
        return f"github-app {self.app_id} installation {self.installation_id} at {redact_url(self.api_url)}"

    @property
    def endpoint(self) -> Endpoint:
        url = f"{self.api_url.rstrip('/')}/app/installations/{self.installation_id}/access_tokens"
        return Endpoint(url=url, ca=self.ca)

    def check(self, label, given):
        for name in ("app_id", "installation_id", "private_key_file"):
            if not getattr(self, name):
                raise SettingsError(f"{label(name)}: required for kind github-app")
        try:
            signing.rsa_key(signing.read_key_file(self.private_key_file))
        except Failed as e:
            raise SettingsError(f"{label('private_key_file')}: {e.reason}") from None

    def client(self, timeout: float) -> Client:
        return GitHubAppClient(self, timeout)


class GitHubAppClient(Client):
    def __init__(self, source: GitHubAppSource, timeout: float) -> None:
        self.source = source
        self._exchange = HttpExchange(source.endpoint, timeout, "application/vnd.github+json")

    def _fetch(self) -> FetchResult:
        source = self.source
        try:
            key = signing.rsa_key(signing.read_key_file(source.private_key_file))
        except Failed as e:
            raise Failed(f"private_key_file: {e.reason}", e.reason_class) from None
        issued = signing.now() - BACKDATE
        app_jwt = signing.sign({"iat": issued, "exp": issued + JWT_LIFETIME, "iss": source.app_id}, key)
        body = {}
        if source.repositories:
            body["repositories"] = list(source.repositories)
        if source.permissions:
            body["permissions"] = dict(source.permissions)
        headers = {"Authorization": f"Bearer {app_jwt}", "X-GitHub-Api-Version": API_VERSION}
        answer = self._exchange.send("POST", headers=headers, json=body or None)
        if answer.status != 201:
            raise Failed(answer.status_reason(), "status")  # GitHub's `message` is free text: not echoed
        return _installation_token(answer.body)

    def abort(self) -> None:
        self._exchange.abort()

    def close(self) -> None:
        self._exchange.close()


def _installation_token(body: bytes) -> FetchResult:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise Failed("answer is not JSON") from None
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise Failed("answer has no token")
    stamp = document.get("expires_at")
    try:
        expires = datetime.datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        expires = None
    if expires is None or expires.tzinfo is None:
        raise Failed("answer has no expires_at time")
    parsed = bearer_token(token)
    lifetime = expires.timestamp() - time.time()
    if lifetime <= 0:
        raise Failed("token already expired when issued", "expired")
    if parsed.lifetime is not None:
        lifetime = min(lifetime, parsed.lifetime)
    return FetchResult(answer=parsed.answer, lifetime=lifetime)
