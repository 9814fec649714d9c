"""The addon's counters and provider states as Prometheus metrics, read when scraped.

A custom collector reads what the addon keeps anyway (the definitions in counters.py, each refresher's snapshot and
schedule, the scheduler's threads and turns), so there is no second set of counters to keep in step. It is registered
on a registry of its own: the global one lives as long as the process, and a reloaded script would register a second
collector there.

Labels hold a provider entry's name (or its source as status.py shows it, which never has a URL query) and fixed
words; a failure is labelled with its class from failures.REASON_CLASSES, never with its free-text reason.
"""

import math
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .counters import AUDIT_COUNTERS, EGRESS_COUNTERS, REQUEST_EXTRAS, REQUEST_OUTCOMES, SCHEDULER_NUMBERS
from .decision import REASON_CLASSES as DENIAL_CLASSES
from .failures import REASON_CLASSES
from .snapshot import NOTHING
from .status import Entry, Path, past_timeout, scheduler_of

PREFIX = "header_augment_"
# Entries with equal fetch settings share one refresher; each reports its fetch metrics under its own label, so a
# dashboard finds a provider's requests and fetches under one name.
SHARED = " Entries that share one refresher (equal fetch settings) each report its fetches: do not add those up."
SAME = " Entries that share one refresher (equal fetch settings) each report the same."


def provider_labels(entries: Sequence[Entry]) -> list[str]:
    """Each entry's `provider` label: its name, else its source; a repeat gets " #2", " #3" (unnamed entries may
    share a source, and two series with one label set would make the scrape invalid)."""
    labels: list[str] = []
    for entry in entries:
        base = entry.settings.name or entry.settings.source.display
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base} #{n}"
        labels.append(label)
    return labels


class ProviderCollector(Collector):
    """Metrics for the entries `entries()` returns when scraped. `clock` is the refreshers' (monotonic) clock and
    `wall` the wall clock that timestamps are given in."""

    def __init__(
        self,
        entries: Callable[[], Sequence[Entry]],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        path: Path | None = None,
    ) -> None:
        self._entries = entries
        self._clock = clock
        self._wall = wall
        self._path = path  # the request path: the egress policy's and the audit log's counters

    def collect(self) -> Iterator[Metric]:
        entries = self._entries()
        now, wall_now = self._clock(), self._wall()

        def wall_clock(at: float) -> float:
            return wall_now - (now - at) if math.isfinite(at) else 0.0

        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Requests the hook saw, per provider entry, by outcome: "
            + "; ".join(f"{c.attribute}: {c.help}" for c in REQUEST_OUTCOMES)
            + ".",
            labels=("provider", "outcome"),
        )
        extras = {
            c.attribute: CounterMetricFamily(
                f"{PREFIX}requests_{c.attribute}", f"Requests {c.help}.", labels=("provider",)
            )
            for c in REQUEST_EXTRAS
        }
        fetches = CounterMetricFamily(
            PREFIX + "fetches",
            "Fetches from the provider by result; a failed one by reason_class ("
            + ", ".join(REASON_CLASSES)
            + ")."
            + SHARED,
            labels=("provider", "result", "reason_class"),
        )
        gauges = {
            name: GaugeMetricFamily(PREFIX + name, text, labels=("provider",))
            for name, text in (
                (
                    "last_success_timestamp_seconds",
                    "When the last valid answer came, in Unix time (0: none yet)." + SAME,
                ),
                ("usable", "1 while the provider's headers may be added to requests, else 0."),
                ("headers", "How many headers are added to requests (0 while none are usable)."),
                (
                    "next_refresh_timestamp_seconds",
                    "When the next fetch is due, in Unix time (0: not yet known)." + SAME,
                ),
                ("fetch_in_flight_seconds", "How long the fetch in flight has been running (0: none)." + SAME),
                (
                    "stuck_past_timeout_seconds",
                    "How long a stuck turn (running past the timeout and a grace, blocked where nothing interrupts "
                    "it) has run past the provider's timeout (0: none stuck)." + SAME,
                ),
            )
        }
        for entry, provider in zip(entries, provider_labels(entries), strict=True):
            counters, refresher = entry.counters, entry.refresher
            for c in REQUEST_OUTCOMES:
                requests.add_metric((provider, c.attribute), getattr(counters, c.attribute))
            for c in REQUEST_EXTRAS:
                extras[c.attribute].add_metric((provider,), getattr(counters, c.attribute))
            counts = refresher.counts
            fetches.add_metric((provider, "ok", ""), counts.ok)
            for reason_class in REASON_CLASSES:  # looked up, not iterated: the refresher's thread may add a key
                fetches.add_metric((provider, "failed", reason_class), counts.failed_by_class.get(reason_class, 0))
            snapshot, in_flight = refresher.snapshot, refresher.in_flight_since  # each read once
            stuck = past_timeout(refresher, now)
            usable = snapshot.usable(now)
            values = {
                "last_success_timestamp_seconds": 0.0 if snapshot is NOTHING else wall_clock(snapshot.fetched_at),
                "usable": 1.0 if usable else 0.0,
                "headers": float(len(snapshot.fields)) if usable else 0.0,
                "next_refresh_timestamp_seconds": wall_clock(refresher.next_fetch_at),
                "fetch_in_flight_seconds": 0.0 if in_flight is None else max(0.0, now - in_flight),
                "stuck_past_timeout_seconds": 0.0 if stuck is None else stuck,
            }
            for name, value in values.items():
                gauges[name].add_metric((provider,), value)
        yield requests
        yield from extras.values()
        yield fetches
        yield from gauges.values()
        if (scheduler := scheduler_of(entries)) is not None:
            load = scheduler.load(now)
            for c in SCHEDULER_NUMBERS:
                yield GaugeMetricFamily(f"{PREFIX}scheduler_{c.attribute}", c.help, value=getattr(load, c.attribute))
        if self._path is not None:
            yield from _addon_metrics(self._path)


def _addon_metrics(path: Path) -> Iterator[Metric]:
    """The egress policy's counters by reason class, and the audit log's."""
    counts, audit = path.counts, path.audit
    for c in EGRESS_COUNTERS:
        # `reason`, not the fetches' `reason_class`: another set of values (host, address) under another name.
        family = CounterMetricFamily(PREFIX + c.attribute, c.help, labels=("reason",))
        for reason in DENIAL_CLASSES:
            family.add_metric((reason,), getattr(counts, c.attribute)[reason])
        yield family
    for c in AUDIT_COUNTERS:
        yield CounterMetricFamily(PREFIX + c.attribute, c.help, value=getattr(counts, c.attribute))
    if audit is not None:
        yield GaugeMetricFamily(
            PREFIX + "audit_writable",
            "1 while header_audit_log can be written, 0 while it cannot (header_audit_require then refuses requests "
            "that would carry a credential); absent while no audit log is set.",
            value=1.0 if audit.writable else 0.0,
        )


def registry_for(entries: Callable[[], Sequence[Entry]], path: Path | None = None) -> CollectorRegistry:
    """A registry of our own holding only the provider collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProviderCollector(entries, path=path))
    return registry
