"""The status of every provider as data (for `augment.status`, the admin endpoint's /status and the tests), and the
same rendered for people: header names, ages, reasons and counts, never a value."""

from collections.abc import Sequence
from typing import Any, Protocol

from .counters import (
    AUDIT_COUNTERS,
    EGRESS_COUNTERS,
    REQUEST_COUNTERS,
    SCHEDULER_NUMBERS,
    AddonCounters,
    addon_summary,
    request_summary,
    scheduler_summary,
)
from .decision import REASON_CLASSES
from .durations import format_age
from .refresher import Refresher
from .scheduler import Scheduler
from .settings import ProviderSettings
from .snapshot import NOTHING

STATES = {
    "ok": "ok",
    "waiting": "waiting for the first valid answer",
    "waiting-failing": "waiting for the first valid answer (failing)",
    "failing": "failing, keeping the last good headers",
    "stale": "stale: headers dropped",
    "stopped": "stopped",
}


class Entry(Protocol):
    settings: ProviderSettings
    refresher: Refresher
    counters: Any


class Path(Protocol):
    """What the status reads of the request path besides its entries: the addon's own counters, the audit log and
    the egress policy (in its entries)."""

    counts: AddonCounters
    audit: Any
    entries: Any


def state(refresher: Refresher, now: float) -> str:
    """One of STATES."""
    if refresher.stopping:  # broken by an unexpected error (logged), or stopped while still bound
        return "stopped"
    snapshot = refresher.snapshot
    if snapshot is NOTHING:
        return "waiting-failing" if refresher.last_error else "waiting"
    if not snapshot.usable(now):
        return "stale"
    return "failing" if refresher.last_error else "ok"


def _seconds(value: float) -> float:
    return round(value, 3)


def scheduler_of(entries: Sequence[Entry]) -> Scheduler | None:
    """The scheduler that turns the entries' refreshers (an addon has one), once one has started."""
    return next((s for entry in entries if (s := entry.refresher.scheduler) is not None), None)


def past_timeout(refresher: Refresher, now: float) -> float | None:
    """How long the refresher's turn has run past its timeout, if the scheduler counts that turn as stuck."""
    scheduler = refresher.scheduler
    return None if scheduler is None else scheduler.past_timeout(refresher, now)


def provider_status(entry: Entry, now: float) -> dict[str, Any]:
    settings, refresher, counts = entry.settings, entry.refresher, entry.refresher.counts
    snapshot = refresher.snapshot
    in_flight, stuck = refresher.in_flight_since, past_timeout(refresher, now)
    return {
        "name": settings.name,
        "label": settings.label,
        "kind": settings.kind,
        "source": settings.source.display,
        "hosts": list(settings.hosts.patterns),
        "scope": settings.scope,
        "paths": list(settings.paths),
        "clients": list(settings.clients.patterns),
        "merge": settings.merge.value,
        "require": settings.require,
        "state": state(refresher, now),
        "usable": snapshot.usable(now),
        # A placeholder's entry adds no header: its token replaces the placeholder in these places.
        "headers": [] if settings.placeholder else list(snapshot.display_names),
        "replaces_placeholder_in": sorted(settings.substitute) if settings.placeholder else None,
        # A signing kind's credentials: the method botocore reports, the expiry and the access key id, no more.
        "credentials": None if snapshot.signing is None else snapshot.signing.status(),
        "last_success_age": None if snapshot is NOTHING else _seconds(now - snapshot.fetched_at),
        "next_fetch_in": _seconds(refresher.next_fetch_at - now) if refresher.next_fetch_at > now else None,
        "in_flight_for": None if in_flight is None else _seconds(now - in_flight),
        "stuck_past_timeout": None if stuck is None else _seconds(stuck),
        "last_error": refresher.last_error or None,
        "requests": {c.attribute: getattr(entry.counters, c.attribute) for c in REQUEST_COUNTERS},
        "fetches": {
            "ok": counts.ok,
            "failed": counts.failed,
            "failed_by_reason": dict(counts.failed_by_reason),
            "failed_by_class": dict(counts.failed_by_class),
        },
    }


def addon_status(path: Path) -> dict[str, Any]:
    """The egress policy and the audit log: the mode, the allow rules, and the counters of counters.py."""
    counts, audit, policy = path.counts, path.audit, path.entries.egress
    return {
        "egress": {
            **(policy.status() if policy is not None else {"mode": "pass", "allow": []}),
            **{c.attribute: {r: getattr(counts, c.attribute)[r] for r in REASON_CLASSES} for c in EGRESS_COUNTERS},
        },
        "audit": {
            "log": None if audit is None else audit.path,
            "require": audit is not None and audit.require,
            "writable": None if audit is None else audit.writable,
            **{c.attribute: getattr(counts, c.attribute) for c in AUDIT_COUNTERS},
        },
    }


def status(entries: Sequence[Entry], now: float, path: Path | None = None) -> dict[str, Any]:
    """`now` is the refreshers' clock, which their scheduler shares. `path`: the request path, for the egress
    policy and the audit log."""
    scheduler = scheduler_of(entries)
    load = None if scheduler is None else scheduler.load(now)
    return {
        "scheduler": None if load is None else {c.attribute: getattr(load, c.attribute) for c in SCHEDULER_NUMBERS},
        "providers": [provider_status(entry, now) for entry in entries],
        **(addon_status(path) if path is not None else {}),
    }


def addon_report(path: Path) -> str:
    """The report's and the periodic log line's: the egress mode and the audit log, with their counters."""
    policy, audit = path.entries.egress, path.audit
    egress = f"egress: {'pass' if policy is None else policy.mode}"
    log = "off" if audit is None else f"{audit.path}{' (require)' if audit.require else ''}"
    if audit is not None and not audit.writable:
        log += ", cannot be written"
    return f"{egress}; audit log: {log}; {addon_summary(path.counts, REASON_CLASSES)}"


def report(entries: Sequence[Entry], now: float, path: Path | None = None) -> str:
    if not entries:
        idle = (
            "header-augment: idle (no provider configured: set header_provider_url, header_provider_file, "
            "header_provider_command or header_providers_file)"
        )
        return idle if path is None else f"{idle}\n{addon_report(path)}"
    lines = [f"header-augment: {len(entries)} provider{'s' if len(entries) > 1 else ''}"]
    if path is not None:
        lines.append(addon_report(path))
    if (scheduler := scheduler_of(entries)) is not None:
        lines.append(f"scheduler: {scheduler_summary(scheduler.load(now))}")
    for number, entry in enumerate(entries, 1):
        data = provider_status(entry, now)
        hosts = ",".join(data["hosts"]) or "(any)"
        scope = f" scope={data['scope']}" if data["scope"] else ""
        scope += f" paths={','.join(data['paths'])}" if data["paths"] else ""
        scope += f" clients={','.join(data['clients'])}" if data["clients"] else ""
        lines.append(
            f"[{number}] {data['label']}  kind={data['kind']} hosts={hosts}{scope} merge={data['merge']}"
            + (" require" if data["require"] else "")
        )
        lines.append(f"    state: {STATES[data['state']]}")
        if data["last_success_age"] is not None:
            age = f"last good answer {format_age(data['last_success_age'])} ago"
            if data["next_fetch_in"] is not None:
                age += f", next refresh in {format_age(data['next_fetch_in'])}"
            lines.append(f"    {age}")
        if data["in_flight_for"] is not None:
            lines.append(f"    fetch in flight for {format_age(data['in_flight_for'])}")
        if data["stuck_past_timeout"] is not None:
            lines.append(
                f"    stuck: its turn has run {format_age(data['stuck_past_timeout'])} past its timeout, blocked where "
                "nothing interrupts it"
            )
        if (credentials := data["credentials"]) is not None:
            expires = f", expires {credentials['expires']}" if credentials["expires"] else ""
            key = credentials["access_key_id"]
            lines.append(f"    credentials: {credentials['method']}, access key {key}{expires}")
        elif (places := data["replaces_placeholder_in"]) is not None:
            lines.append(f"    its token replaces its placeholder in: {', '.join(places)}")
        else:
            lines.append(f"    headers: {', '.join(data['headers']) or 'none'}")
        lines.append(f"    last error: {data['last_error'] or 'none'}")
        lines.append(f"    requests: {request_summary(entry.counters)}")
        lines.append(f"    fetches: {entry.refresher.counts.summary()}")
    return "\n".join(lines)
