"""Counters and the human-readable status report: header names, ages, reasons and counts — never a value."""

from dataclasses import dataclass

from .durations import format_age
from .refresher import Refresher
from .settings import ProviderSettings
from .snapshot import NOTHING


@dataclass(slots=True)
class RequestCounters:
    """What the request hook did, per provider. Only the event loop's thread writes them."""

    given: int = 0  # requests that left with this provider's headers
    out_of_scope: int = 0
    already_present: int = 0  # the request had at least one of the names already (any merge mode)
    refused: int = 0  # answered 503 (header_require)
    without: int = 0  # in scope, but no usable headers to give

    def summary(self) -> str:
        return (
            f"{self.given} given headers, {self.out_of_scope} out of scope, {self.already_present} with a header "
            f"already present, {self.refused} refused (503), {self.without} passed without headers"
        )


def state(refresher: Refresher, now: float) -> str:
    snapshot = refresher.snapshot
    if not refresher.is_alive() and refresher.ident is not None:
        return "stopped"
    if snapshot is NOTHING:
        return "waiting for the first valid answer" + (" (failing)" if refresher.last_error else "")
    if not snapshot.usable(now):
        return "stale: headers dropped"
    return "failing, keeping the last good headers" if refresher.last_error else "ok"


def fetch_summary(refresher: Refresher) -> str:
    failed = sum(refresher.fetches_failed.values())
    text = f"{refresher.fetches_ok} ok, {failed} failed"
    if failed:
        text += " (" + ", ".join(f"{reason}: {n}" for reason, n in refresher.fetches_failed.most_common()) + ")"
    return text


def report(entries: list[tuple[ProviderSettings, Refresher, RequestCounters]], now: float) -> str:
    if not entries:
        return "header-augment: idle (no provider configured: set header_provider_url or header_providers_file)"
    lines = [f"header-augment: {len(entries)} provider{'s' if len(entries) > 1 else ''}"]
    for number, (settings, refresher, counters) in enumerate(entries, 1):
        snapshot = refresher.snapshot
        lines.append(
            f"[{number}] {settings.label}  kind={settings.kind} merge={settings.merge.value} "
            f"scope={settings.scope or '(every request)'}{' require' if settings.require else ''}"
        )
        lines.append(f"    state: {state(refresher, now)}")
        if snapshot is not NOTHING:
            age = f"last good answer {format_age(now - snapshot.fetched_at)} ago"
            if refresher.next_fetch_at > now:
                age += f", next refresh in {format_age(refresher.next_fetch_at - now)}"
            lines.append(f"    {age}")
        lines.append(f"    headers: {', '.join(snapshot.display_names) or 'none'}")
        lines.append(f"    last error: {refresher.last_error or 'none'}")
        lines.append(f"    requests: {counters.summary()}")
        lines.append(f"    fetches: {fetch_summary(refresher)}")
    return "\n".join(lines)
