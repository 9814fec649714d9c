"""kind `http`: an HTTP endpoint answering GET with the headers to add (or a token, or an ExecCredential)."""

import re
from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..formats import Content, read
from ..http_exchange import Endpoint, HttpExchange
from .base import Source

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


def max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    match = _MAX_AGE.search(cache_control)
    return float(match[1]) if match else None


@dataclass(frozen=True)
class HttpSource(Content, Endpoint, Source):
    KIND: ClassVar[str] = "http"
    LOCATOR: ClassVar[str] = "url"
    DEFAULTS: ClassVar[dict] = {"format": "headers"}

    def check(self, label, given):
        self.check_content(label, given)

    def client(self, timeout: float) -> Client:
        return HttpClient(self, timeout)


class HttpClient(Client):
    def __init__(self, source: HttpSource, timeout: float) -> None:
        self.source = source
        accept = "application/json" if source.format != "token" else "text/plain, */*"
        self._exchange = HttpExchange(source, timeout, accept)

    def _fetch(self) -> FetchResult:
        answer = self._exchange.send("GET")
        if answer.status != 200:
            raise Failed(answer.status_reason(), "status")
        parsed = read(self.source, answer.body)
        return FetchResult(
            answer=parsed.answer, max_age=max_age(answer.headers.get("Cache-Control")), lifetime=parsed.lifetime
        )

    def abort(self) -> None:
        self._exchange.abort()

    def close(self) -> None:
        self._exchange.close()
