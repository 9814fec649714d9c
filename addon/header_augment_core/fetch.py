"""What every kind's client offers the refresher: one fetch at a time, turned into a value (never an exception)."""

from dataclasses import dataclass
from typing import Any

from .failures import Failed
from .rules import Validated


@dataclass(frozen=True)
class FetchResult:
    """Either `answer` (a valid answer) or `reason` and `reason_class` (why the refresh failed) are set; or both, when
    the answer is used but something failed that must be counted and shown (a rotated refresh token not saved)."""

    answer: Validated | None = None
    reason: str = ""
    reason_class: str = ""
    max_age: float | None = None  # the source asks to be asked again after this many seconds (Cache-Control)
    lifetime: float | None = None  # the credentials must not be used after this many seconds (token expiry)
    signing: Any = None  # what a signing kind signs with (aws-sigv4's frozen credentials) instead of headers

    @property
    def ok(self) -> bool:
        return self.answer is not None

    @classmethod
    def failed(cls, failure: Failed) -> "FetchResult":
        return cls(reason=failure.reason, reason_class=failure.reason_class)


class Client:
    """Fetches one provider's answer. Used by one thread at a time (the worker turning its refresher), but
    `abort()`, from any thread."""

    # How often the refresher asks `changed()` (a file's stamp); None: never, the schedule alone decides.
    watch_interval: float | None = None

    def fetch(self) -> FetchResult:
        try:
            return self._fetch()
        except Failed as failure:
            return FetchResult.failed(failure)

    def _fetch(self) -> FetchResult:
        raise NotImplementedError

    def changed(self) -> bool:
        """Whether the source changed since the last fetch, so that it is worth fetching now (cheap to call)."""
        return False

    def abort(self) -> None:
        """Fail the fetch in flight, if any, and every later one, within a moment. Safe from any thread."""

    def close(self) -> None:
        """Release what the client holds; called once, when its refresher ends."""
