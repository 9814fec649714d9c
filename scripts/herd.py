#!/usr/bin/env python3
"""A fleet of proxies polling one provider, simulated in virtual time: does the fleet poll in waves?

Every proxy is a real `Refresher` (its thread never started) with a real `Schedule` and a simulated provider
client; a heap of (wake time, proxy) steps each refresher at its `wake_at()`. No sockets, threads or sleeping.

    scripts/herd.py restart                      # 10,000 proxies restarted within 5 s, provider always up
    scripts/herd.py outage                       # the fleet in steady state, then a 10-minute provider outage
    scripts/herd.py restart outage --compare     # both, before (no spread) and after (the real Schedule)

The load is every call the provider gets (failed ones too), counted in bins of `--bin` seconds and compared with
the fleet's mean rate, N / interval. See docs/herd.md for the definitions and a recorded run.
"""

import argparse
import contextlib
import heapq
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon"))

from header_augment_core.failures import Failed
from header_augment_core.fetch import Client, FetchResult
from header_augment_core.refresher import Refresher, logger
from header_augment_core.rules import Validated
from header_augment_core.schedule import BACKOFF_CAP, BACKOFF_START, MIN_MAX_AGE, Schedule
from header_augment_core.settings import parse_settings

RESTART_WITHIN = 5.0
SETTLED = 1.5  # a bin above this multiple of the mean rate is a wave
ANSWER = FetchResult(answer=Validated(headers=(("Authorization", "Bearer simulated"),)))


# -- the schedules compared with the real one ---------------------------------------------------------------------


class NoSpread(Schedule):
    """The schedule before the spread: every success is followed by the steady jitter only."""

    def after_success(self, max_age: float | None = None) -> float:
        self.failures = 0
        if max_age is not None and max_age < self.interval:
            return max(self._jittered(max_age), MIN_MAX_AGE)
        return self._jittered(self.interval)


class FullJitter(NoSpread):
    """The usual advice instead of the spread: "full jitter" on the backoff, uniform(0, capped exponential)."""

    def after_failure(self) -> float:
        self.failures += 1
        return self._rng.uniform(0, min(BACKOFF_START * 2 ** min(self.failures - 1, 32), self._backoff_cap()))


class Decorrelated(NoSpread):
    """The other usual advice: "decorrelated jitter", uniform(start, 3 x the previous delay), capped."""

    def __init__(self, interval: float, rng: random.Random | None = None) -> None:
        super().__init__(interval, rng)
        self._delay = BACKOFF_START

    def after_success(self, max_age: float | None = None) -> float:
        self._delay = BACKOFF_START
        return super().after_success(max_age)

    def after_failure(self) -> float:
        self.failures += 1
        self._delay = min(self._backoff_cap(), self._rng.uniform(BACKOFF_START, 3 * self._delay))
        return self._delay


SCHEDULES: dict[str, Callable[[float, random.Random], Schedule]] = {
    "spread": Schedule,
    "no-spread": NoSpread,
    "full-jitter": FullJitter,
    "decorrelated": Decorrelated,
}


# -- the simulated provider -----------------------------------------------------------------------------------------


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Provider:
    """The provider the whole fleet polls. It fails every call in [down_from, down_until) and records every call.

    Staleness is how long a proxy has been without a success, not counting the outage: the clock stops when the
    provider goes down and starts again from zero when it comes back, since no schedule can fetch from a provider
    that is down, but from then on, how soon each proxy is served again is the schedule's doing.
    """

    def __init__(self, clock: VirtualClock, down_from: float = math.inf, down_until: float = math.inf) -> None:
        self.clock = clock
        self.down_from = down_from
        self.down_until = down_until
        self.calls: list[float] = []
        self.worst_staleness = 0.0

    def staleness(self, last_ok: float, now: float) -> float:
        before = min(now, self.down_from) - last_ok
        after = now - max(last_ok, self.down_until)
        return max(before, after, 0.0)


class SimulatedClient(Client):
    """One proxy's connection to the shared `Provider`."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.last_ok: float | None = None

    def _fetch(self) -> FetchResult:
        provider = self.provider
        now = provider.clock.now
        provider.calls.append(now)
        if provider.down_from <= now < provider.down_until:
            raise Failed("HTTP 503 (simulated outage)", "status")
        if self.last_ok is not None:
            provider.worst_staleness = max(provider.worst_staleness, provider.staleness(self.last_ok, now))
        self.last_ok = now
        return ANSWER


# -- a run ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str  # restart | outage
    n: int = 10_000
    interval: float = 360.0
    duration: float = 36_000.0  # simulated after the restart, or after the provider recovers
    bin: float = 10.0
    window: float = 3600.0
    outage: float = 600.0
    warmup: float = 3600.0  # before the outage
    seed: int = 1

    @property
    def mean_rate(self) -> float:
        return self.n / self.interval

    @property
    def down(self) -> tuple[float, float]:
        if self.name == "outage":
            return self.warmup, self.warmup + self.outage
        return math.inf, math.inf

    @property
    def reference(self) -> float:
        """The event: the restart, or the provider's recovery. Settling is measured from here."""
        return 0.0 if self.name == "restart" else self.down[1]

    @property
    def burst_end(self) -> float:
        """Where the analysis window starts: after the calls that no schedule can spread. After a restart, each
        proxy's first fetch (all within the 5 s of the restart); after an outage, the retries already pending when
        the provider recovers, each at most one backoff cap (min(interval, 60 s)) away."""
        if self.name == "restart":
            return RESTART_WITHIN
        return self.reference + min(self.interval, BACKOFF_CAP)

    @property
    def end(self) -> float:
        return self.reference + self.duration


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    schedule: str
    peak: float  # the busiest bin in the analysis window, as a multiple of the mean rate
    average: float  # the whole analysis window, as a multiple of the mean rate
    # Seconds from the reference after which every bin stays <= SETTLED; None: not for the last interval of the run.
    settle: float | None
    staleness: float  # the worst, as a multiple of the interval
    outage_load: float | None  # the calls during the outage, as a multiple of the mean rate
    calls: int
    seconds: float  # wall time of the run


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Thousands of refreshers would log every outage; their logging is not what is measured."""
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def simulate(scenario: Scenario, schedule: str = "spread") -> Result:
    started = time.perf_counter()
    make_schedule = SCHEDULES[schedule]
    clock = VirtualClock()
    provider = Provider(clock, *scenario.down)
    settings = parse_settings({"url": "https://provider.invalid/", "hosts": "*", "interval": scenario.interval}, str)
    rng = random.Random(scenario.seed)
    # A restart brings every proxy up within a few seconds; the outage starts from a fleet already out of step.
    within = RESTART_WITHIN if scenario.name == "restart" else scenario.interval
    refreshers = [
        Refresher(
            SimulatedClient(provider),
            settings,
            schedule=make_schedule(settings.interval, random.Random(scenario.seed * 1_000_003 + i)),
            clock=clock,
        )
        for i in range(scenario.n)
    ]
    heap = [(rng.uniform(0, within), i) for i in range(scenario.n)]
    heapq.heapify(heap)
    end = scenario.end
    loops = [(r.step, r.wake_at) for r in refreshers]  # a million turns: every lookup saved shows
    replace = heapq.heapreplace
    with quiet():
        while heap[0][0] < end:
            at, i = heap[0]
            clock.now = at
            step, wake_at = loops[i]
            step()
            replace(heap, (wake_at(), i))
    clock.now = end
    for refresher in refreshers:
        if refresher.client.last_ok is not None:
            provider.worst_staleness = max(provider.worst_staleness, provider.staleness(refresher.client.last_ok, end))
    return analyse(scenario, schedule, provider, time.perf_counter() - started)


def counts(calls: list[float], start: float, stop: float, width: float) -> list[int]:
    """Calls per bin of `width` seconds from `start`; only whole bins before `stop`."""
    bins = [0] * int((stop - start) // width)
    for at in calls:
        if at >= start:
            k = int((at - start) // width)
            if k < len(bins):
                bins[k] += 1
    return bins


def analyse(scenario: Scenario, schedule: str, provider: Provider, seconds: float) -> Result:
    per_bin = scenario.mean_rate * scenario.bin
    window = counts(provider.calls, scenario.burst_end, scenario.burst_end + scenario.window, scenario.bin)
    # Settling counts the burst bins too after an outage (recovering quickly is the point); after a restart it
    # starts with the window, because the restart burst itself is every proxy's first fetch.
    settle_from = scenario.burst_end if scenario.name == "restart" else scenario.reference
    after = counts(provider.calls, settle_from, scenario.end, scenario.bin)
    waves = [k for k, c in enumerate(after) if c > SETTLED * per_bin]
    settle: float | None = settle_from - scenario.reference + (waves[-1] + 1 if waves else 0) * scenario.bin
    # Waves come back every interval: calm for less than one before the end of the run proves nothing.
    if scenario.reference + settle > scenario.end - scenario.interval:
        settle = None
    down_from, down_until = scenario.down
    outage_load = None
    if scenario.name == "outage":
        during = sum(down_from <= at < down_until for at in provider.calls)
        outage_load = during / (scenario.mean_rate * scenario.outage)
    return Result(
        scenario=scenario,
        schedule=schedule,
        peak=max(window) / per_bin,
        average=sum(window) / (len(window) * per_bin),
        settle=settle,
        staleness=provider.worst_staleness / scenario.interval,
        outage_load=outage_load,
        calls=len(provider.calls),
        seconds=seconds,
    )


# -- the table ------------------------------------------------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def table(results: list[Result]) -> str:
    header = (
        "scenario",
        "schedule",
        "N",
        "interval",
        "mean rate",
        "bin",
        "peak/mean",
        "avg/mean",
        "settled (<=1.5x) after",
        "worst staleness",
        "outage load",
        "calls",
        "run",
    )
    rows = [header]
    for r in results:
        s = r.scenario
        rows.append(
            (
                s.name,
                r.schedule,
                f"{s.n:,}",
                seconds_text(s.interval),
                f"{s.mean_rate:.2f}/s",
                seconds_text(s.bin),
                f"{r.peak:.2f}x",
                f"{r.average:.2f}x",
                seconds_text(r.settle) if r.settle is not None else f"never (> {seconds_text(s.duration)})",
                f"{r.staleness:.3f}x interval",
                "" if r.outage_load is None else f"{r.outage_load:.2f}x",
                f"{r.calls:,}",
                f"{r.seconds:.1f} s",
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Simulate a fleet of proxies polling one provider, in virtual time, with the real Schedule and "
        "Refresher, and report how unevenly the provider is polled.",
        epilog="peak/mean: the busiest bin of the analysis window (one --window from the end of the burst no "
        "schedule can spread: each proxy's first fetch after a restart, the retries pending at recovery after an "
        "outage). settled after: from the restart or the recovery, the time after which every bin stays <= 1.5x the "
        "mean rate. worst staleness: the longest any proxy went without a success, not counting the outage. "
        "outage load: the calls during the outage as a multiple of the mean rate.",
    )
    parser.add_argument(
        "scenarios",
        nargs="+",
        choices=("restart", "outage"),
        metavar="{restart,outage}",
        help="restart: N proxies started within 5 s, the provider always up; outage: N proxies started over one "
        "interval, then after --warmup the provider fails every call for --outage seconds",
    )
    parser.add_argument("-n", type=int, default=10_000, help="proxies in the fleet (default 10000)")
    parser.add_argument("--interval", type=float, default=360.0, help="refresh interval, seconds (default 360)")
    parser.add_argument(
        "--duration",
        type=float,
        default=36_000.0,
        help="virtual seconds simulated after the restart or the recovery (default 36000: 10 h)",
    )
    parser.add_argument("--outage", type=float, default=600.0, help="outage length, seconds (default 600)")
    parser.add_argument("--warmup", type=float, default=3600.0, help="steady state before the outage (default 3600)")
    parser.add_argument("--bin", type=float, default=10.0, help="bin width, seconds (default 10)")
    parser.add_argument("--window", type=float, default=3600.0, help="analysis window for peak/mean (default 3600)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the start times and every proxy's Schedule")
    parser.add_argument(
        "--schedule",
        action="append",
        choices=tuple(SCHEDULES),
        help="spread (the real Schedule, default), no-spread (the schedule before the spread), full-jitter or "
        "decorrelated (no spread, and that jitter on the backoff); repeat to compare",
    )
    parser.add_argument("--compare", action="store_true", help="same as --schedule no-spread --schedule spread")
    args = parser.parse_args(argv)
    if args.n < 1 or min(args.interval, args.bin, args.window, args.outage) <= 0:
        parser.error("-n, --interval, --bin, --window and --outage must be more than 0")
    if args.duration < args.window + max(RESTART_WITHIN, min(args.interval, BACKOFF_CAP)) or args.window < args.bin:
        parser.error("--duration must hold the burst and then --window, which must hold at least one --bin")
    schedules = args.schedule or []
    if args.compare:
        schedules += [s for s in ("no-spread", "spread") if s not in schedules]
    results = []
    for name in args.scenarios:
        scenario = Scenario(
            name, args.n, args.interval, args.duration, args.bin, args.window, args.outage, args.warmup, args.seed
        )
        for schedule in schedules or ["spread"]:
            results.append(simulate(scenario, schedule))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
