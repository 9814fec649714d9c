"""Turns blocked where nothing interrupts them (issue 28: sixteen secret files swapped to FIFOs blocked all sixteen
fetch workers, and a healthy provider's token expired for every client). Real refreshers on a real scheduler, whose
fetches really block on an event; the healthy provider is a real HTTP server. Time is the injected clock: the
scheduler's timed waits come from it, so the tests move it and never sleep."""

import threading
import types

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import DEADLINE, Provider, wait_until

from header_augment_core.counters import RequestCounters
from header_augment_core.fetch import Client, FetchResult
from header_augment_core.metrics import ProviderCollector
from header_augment_core.refresher import REFRESH_GAP, Refresher
from header_augment_core.rules import Validated
from header_augment_core.scheduler import FETCH_WORKERS, Load, Scheduler
from header_augment_core.settings import parse_settings
from header_augment_core.status import report, status

T0 = 1000.0
TIMEOUT = 1.0  # the blocked providers' timeout
GRACE = 0.5  # kept short: while the clock stands still, a worker waiting for a deadline looks again this often
STUCK_AT = T0 + TIMEOUT + GRACE  # every blocked turn starts at T0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Blocked(Client):
    """A read that nothing interrupts, as a FIFO's open or a credential process that never exits: `abort()` (a stop)
    leaves it blocked; it returns when the test sets `release`."""

    def __init__(self, release: threading.Event, entered: list) -> None:
        self.release, self.entered = release, entered
        self.inside = 0

    def _fetch(self) -> FetchResult:
        self.inside += 1
        assert self.inside == 1, "two turns of one refresher at once"
        self.entered.append(self)
        try:
            self.release.wait()  # for good, unless the test releases it (it always does, at its end)
        finally:
            self.inside -= 1
        return FetchResult(answer=Validated(headers=(("X-Blocked", "b"),)))


def settings(url: str, timeout: float = TIMEOUT):
    return parse_settings({"url": url, "hosts": "a.example", "timeout": str(timeout), "interval": "1h"}, str)


def blocked(n: int, release: threading.Event, entered: list, clock: FakeClock, timeout: float = TIMEOUT) -> list:
    return [
        Refresher(Blocked(release, entered), settings(f"http://127.0.0.1:9/blocked/{i}", timeout), clock=clock)
        for i in range(n)
    ]


def healthy_refresher(provider: Provider, clock: FakeClock) -> Refresher:
    s = settings(provider.url, timeout=5.0)
    return Refresher(s.source.client(s.timeout), s, clock=clock)


def entry(refresher: Refresher):
    return types.SimpleNamespace(settings=refresher.settings, refresher=refresher, counters=RequestCounters())


def looked(scheduler: Scheduler):
    """The one worker out of a turn has looked at the heap and waits again, not yet notified."""
    return lambda: scheduler._idle == 1 and scheduler._woken == 0


@pytest.fixture
def healthy_provider():
    provider = Provider()
    provider.answer({"X-Token": "t0ken-never-shown"})
    yield provider
    provider.close()


def test_sixteen_stuck_turns_leave_the_pool_to_a_healthy_provider(healthy_provider):
    clock = FakeClock()
    scheduler = Scheduler(clock=clock, grace=GRACE)
    release, entered = threading.Event(), []
    healthy = healthy_refresher(healthy_provider, clock)
    stuck = blocked(FETCH_WORKERS, release, entered, clock)
    hold, held = threading.Event(), []
    slow = blocked(4, hold, held, clock, timeout=60.0)  # blocked too, but well within their timeout
    kept = stuck[:8]  # the other eight are removed from the configuration while stuck
    entries = [entry(r) for r in (healthy, *kept)]
    try:
        healthy.start(scheduler)
        wait_until(lambda: healthy.counts.ok == 1, what="the healthy provider's first fetch")
        for r in stuck:
            r.start(scheduler)
        wait_until(lambda: len(entered) == FETCH_WORKERS, what="sixteen blocked fetches")
        # Every slot is taken; one more worker watches the heap, where the healthy provider waits.
        wait_until(lambda: scheduler.threads == FETCH_WORKERS + 1, what="the standby worker")

        # Before the deadline: the healthy provider is due, and waits, with no replacement worker.
        clock.now = STUCK_AT - 0.3
        assert clock.now >= T0 + REFRESH_GAP and healthy.refresh_now()
        wait_until(looked(scheduler), what="the standby to look")
        assert healthy.counts.ok == 1 and scheduler.threads == FETCH_WORKERS + 1
        before = status(entries, clock.now)
        assert before["scheduler"] == {"workers": FETCH_WORKERS + 1, "turns": FETCH_WORKERS, "stuck_turns": 0}
        assert [p["stuck_past_timeout"] for p in before["providers"]] == [None] * 9

        for r in stuck[8:]:
            r.stop()  # its abort() cannot reach the blocked read: the turn goes on
        # Past the deadline: the standby's wait ends and it turns the healthy provider.
        clock.now = STUCK_AT + 1.0
        wait_until(lambda: healthy.counts.ok == 2, what="the healthy provider turned beside sixteen stuck turns")
        assert kept[0].refresh_now()  # a stuck refresher is not turned again while its turn runs
        for n in range(3, 6):
            clock.now += REFRESH_GAP
            assert healthy.refresh_now()
            wait_until(lambda n=n: healthy.counts.ok == n, what="each refresh of the healthy provider")
        assert len(healthy_provider.requests) == 5 and len(entered) == FETCH_WORKERS

        wait_until(lambda: scheduler.load(clock.now).turns == FETCH_WORKERS, what="the healthy turn's end")
        data = status(entries, clock.now)
        # A refresh asked for just as a turn ended may have started a worker more (as it could before).
        threads = scheduler.threads
        assert data["scheduler"] == {"workers": threads, "turns": FETCH_WORKERS, "stuck_turns": FETCH_WORKERS}
        past = clock.now - (T0 + TIMEOUT)
        assert [p["stuck_past_timeout"] for p in data["providers"]] == [None] + [round(past, 3)] * 8
        assert [p["state"] for p in data["providers"]] == ["ok"] + ["waiting"] * 8
        text = report(entries, clock.now)
        assert sum(line.startswith("    stuck: ") for line in text.splitlines()) == 8
        registry = CollectorRegistry()
        registry.register(ProviderCollector(lambda: entries, clock=clock, wall=lambda: 0.0))
        scraped = generate_latest(registry).decode()
        values = {
            (s.name, s.labels.get("provider")): s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
        }
        assert values[("header_augment_scheduler_stuck_turns", None)] == 16
        assert values[("header_augment_scheduler_workers", None)] == threads
        stuck_seconds = [
            values[("header_augment_stuck_past_timeout_seconds", e.settings.source.display)] for e in entries
        ]
        assert stuck_seconds == [0.0] + [pytest.approx(past)] * 8
        assert "t0ken-never-shown" not in repr(data) + text + scraped

        # Stuck turns do not count against the pool: four more turns run, beyond sixteen.
        for r in slow:
            r.start(scheduler)
        wait_until(lambda: len(held) == 4, what="four more turns beside the stuck ones")
        assert scheduler.load(clock.now) == Load(scheduler.threads, FETCH_WORKERS + 4, FETCH_WORKERS)
        assert FETCH_WORKERS + 4 < scheduler.threads <= 2 * FETCH_WORKERS + 1

        # The blocked reads return: the extra threads end, and everything resumes.
        release.set()
        wait_until(lambda: scheduler.threads == FETCH_WORKERS + 1, what="the threads to settle back")
        assert all(r.wait_ended(DEADLINE) for r in stuck[8:])  # the removed ones end once their turn is over
        # The refresh asked for while it was stuck comes after its turn.
        wait_until(lambda: [r.counts.ok for r in kept] == [2] + [1] * 7, what="the kept ones' answers")
        hold.set()
        wait_until(lambda: all(r.counts.ok == 1 for r in slow), what="the slow ones' answers")
        wait_until(lambda: scheduler.load(clock.now) == Load(FETCH_WORKERS + 1, 0, 0), what="every turn's end")
        assert all(p["stuck_past_timeout"] is None for p in status(entries, clock.now)["providers"])
        clock.now += REFRESH_GAP
        assert healthy.refresh_now()
        wait_until(lambda: healthy.counts.ok == 6, what="the healthy provider's next refresh")
    finally:
        release.set()
        hold.set()
        for r in (healthy, *stuck, *slow):
            r.stop()
        scheduler.close()


def test_past_the_bound_a_stuck_turn_keeps_its_slot(healthy_provider):
    """One slot, one stuck turn replaced at most: the second stuck turn holds the slot, and the threads stay at
    1 + 1 + 1."""
    clock = FakeClock()
    scheduler = Scheduler(workers=1, clock=clock, grace=GRACE, most_replaced=1)
    first, second = threading.Event(), threading.Event()
    entered = []
    (a,) = blocked(1, first, entered, clock)
    (b,) = blocked(1, second, entered, clock)
    healthy = healthy_refresher(healthy_provider, clock)
    try:
        a.start(scheduler)
        wait_until(lambda: len(entered) == 1, what="the first blocked fetch")
        clock.now = STUCK_AT  # a is stuck: b gets a worker of its own
        b.start(scheduler)
        wait_until(lambda: len(entered) == 2, what="the second blocked fetch, in the stuck one's place")
        clock.now = STUCK_AT + TIMEOUT + GRACE  # b is stuck too
        healthy.start(scheduler)
        healthy.hurry()  # a request waits for its first answer: the idle worker looks at once
        wait_until(looked(scheduler), what="the waiting worker to look")
        assert healthy.counts.ok == 0 and scheduler.threads == 3
        assert scheduler.load(clock.now) == Load(3, 2, 2)

        first.set()  # a returns: its worker turns the healthy provider
        wait_until(lambda: healthy.counts.ok == 1, what="the healthy provider's turn")
        second.set()
        wait_until(lambda: scheduler.threads == 2, what="the threads back to one slot and its standby")
    finally:
        first.set()
        second.set()
        for r in (a, b, healthy):
            r.stop()
        scheduler.close()
