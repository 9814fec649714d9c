"""Every counter the addon keeps, defined once. The status report, the periodic log line and /metrics are all
generated from these definitions, so they can never disagree about what a counter means."""

import collections
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CounterDef:
    attribute: str
    text: str  # in the report and the log line: "<n> <text>"
    help: str  # for /metrics


# What the request hook did with a flow, per provider entry. The first four are exclusive outcomes of a flow
# (header_augment_requests_total{outcome=...}); the others count alongside them.
REQUEST_OUTCOMES = (
    CounterDef("given", "given headers", "left with this provider's headers"),
    CounterDef("out_of_scope", "out of scope", "not for this provider (its hosts, scope or clients did not match)"),
    CounterDef("refused", "refused (503)", "answered 503 because no usable headers were there (require)"),
    CounterDef("without", "passed without headers", "in scope, but passed on without headers (none usable)"),
)
REQUEST_EXTRAS = (
    CounterDef("already_present", "with a header already present", "in scope and already had one of the names"),
    CounterDef("waited", "waited for the first answer", "in scope and held until the first fetch had finished"),
    CounterDef("unauthorized", "answered 401", "left with this provider's headers and answered 401 by the upstream"),
    CounterDef("reasked", "made the provider be asked again", "answered 401 and made the provider be asked at once"),
    CounterDef(
        "placeholder_refused",
        "refused for a placeholder",
        "answered 403 (a host, client or place its entry does not cover) or 503 (no valid credential) for carrying "
        "this entry's placeholder",
    ),
)
REQUEST_COUNTERS = REQUEST_OUTCOMES + REQUEST_EXTRAS

_KEPT = tuple(c.attribute for c in REQUEST_COUNTERS if c.attribute != "out_of_scope")


class Seen:
    """How many flows the request hook has looked at, for every entry at once (a reroute looks at one again)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class RequestCounters:
    """One entry's counters. `out_of_scope` is not kept but derived: the flows the hook has looked at since the
    entry was made, less those it found in scope, so that a request costs nothing for the entries it is not for.
    Only the event loop's thread writes these."""

    __slots__ = (*_KEPT, "in_scope", "_seen", "_since")

    def __init__(self, seen: Seen | None = None) -> None:
        for attribute in _KEPT:
            setattr(self, attribute, 0)
        self.in_scope = 0  # matched hosts, scope and clients (counted once per look, not while waiting)
        self._seen = seen if seen is not None else Seen()
        self._since = self._seen.count

    @property
    def out_of_scope(self) -> int:
        return self._seen.count - self._since - self.in_scope

    @out_of_scope.setter
    def out_of_scope(self, value: int) -> None:
        """Settable as the kept counters are: moves where this entry's count of flows seen starts."""
        self._since = self._seen.count - self.in_scope - value


def request_summary(counters) -> str:
    return ", ".join(f"{getattr(counters, c.attribute)} {c.text}" for c in REQUEST_COUNTERS)


# The addon's own decisions, not any one entry's: each counted by reason class (decision.REASON_CLASSES: host,
# address) as header_augment_<attribute>_total{reason=...}.
EGRESS_COUNTERS = (
    CounterDef(
        "denied",
        "denied",
        "Requests, CONNECTs and connections header_egress=deny refused, by reason class: host (nothing names the "
        "destination for the client) or address (a name that resolves to an address no rule names).",
    ),
    CounterDef(
        "reported",
        "reported",
        "Requests, CONNECTs and connections header_egress=report let through that deny would refuse, by reason class.",
    ),
)
# The audit log's figures (header_augment_<attribute>_total).
AUDIT_COUNTERS = (
    CounterDef("audit_written", "audit lines written", "Lines written to header_audit_log."),
    CounterDef(
        "audit_dropped",
        "audit lines dropped",
        "Audit lines dropped because the writer's queue was full (the file is slower than the traffic).",
    ),
    CounterDef(
        "audit_failed",
        "audit lines lost",
        "Audit lines that could not be written: the file could not be opened or written.",
    ),
    CounterDef(
        "audit_refused",
        "refused for the audit log",
        "Requests answered 503 instead of going out with a credential while the log could not be written "
        "(header_audit_require).",
    ),
)


class AddonCounters:
    """The addon's own counters, kept across reconfigurations. The event loop writes the egress ones and
    audit_dropped and audit_refused; the audit writer's thread writes audit_written and audit_failed (each counter
    has one writer)."""

    __slots__ = ("denied", "reported", *(c.attribute for c in AUDIT_COUNTERS))

    def __init__(self) -> None:
        self.denied: collections.Counter = collections.Counter()
        self.reported: collections.Counter = collections.Counter()
        for c in AUDIT_COUNTERS:
            setattr(self, c.attribute, 0)


def addon_summary(counters: AddonCounters, reason_classes: tuple[str, ...]) -> str:
    """The log line's and the report's: "0 denied (host 0, address 0), ...; 3 audit lines written, ..."."""
    egress = ", ".join(
        f"{getattr(counters, c.attribute).total()} {c.text} ("
        + ", ".join(f"{r} {getattr(counters, c.attribute)[r]}" for r in reason_classes)
        + ")"
        for c in EGRESS_COUNTERS
    )
    return egress + "; " + ", ".join(f"{getattr(counters, c.attribute)} {c.text}" for c in AUDIT_COUNTERS)


# The scheduler that turns every refresher, read when asked (scheduler.Load): the status's "scheduler", the report's
# line and the header_augment_scheduler_* gauges.
SCHEDULER_NUMBERS = (
    CounterDef("workers", "worker threads", "Threads of the scheduler that turns the refreshers, stuck ones too."),
    CounterDef("turns", "turns running", "Refreshers' turns running now, stuck ones too."),
    CounterDef(
        "stuck_turns",
        "stuck turns",
        "Turns running past their provider's timeout and a grace, blocked where nothing interrupts them: each keeps "
        "its thread, but no longer takes a worker's place (up to a bound).",
    ),
)


def scheduler_summary(load) -> str:
    return ", ".join(f"{getattr(load, c.attribute)} {c.text}" for c in SCHEDULER_NUMBERS)


# Distinct failure reasons kept by text; the rest are counted together (a command's stderr could vary forever).
MAX_REASONS = 16
OTHER_REASONS = "(other reasons)"


@dataclass
class FetchCounters:
    """What the refresher's fetches came to. Only its thread writes them."""

    ok: int = 0
    failed_by_reason: collections.Counter = field(default_factory=collections.Counter)
    failed_by_class: collections.Counter = field(default_factory=collections.Counter)  # failures.REASON_CLASSES

    @property
    def failed(self) -> int:
        return self.failed_by_class.total()

    def count_failure(self, reason: str, reason_class: str) -> None:
        if reason not in self.failed_by_reason and len(self.failed_by_reason) >= MAX_REASONS:
            reason = OTHER_REASONS
        self.failed_by_reason[reason] += 1
        self.failed_by_class[reason_class] += 1

    def summary(self) -> str:
        text = f"{self.ok} ok, {self.failed} failed"
        if self.failed:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.failed_by_reason.most_common()) + ")"
        return text
