"""One heap of wake-up times for every refresher, and a bounded pool of threads that run their turns.

A thread per provider meant 2,001 threads for 2,000 providers, and a proxy that died at 10,000: here at most
FETCH_WORKERS turns run at once, however many providers there are, and the first fetches of a large configuration are
made that many at a time rather than all at once.

A turn that has outlived its refresher's timeout by STUCK_GRACE is stuck: blocked somewhere nothing interrupts (a read
of a FIFO, a credential process that never exits, a disk that hangs). Python cannot end a thread, so its worker stays
blocked, but it no longer counts against the pool: another worker runs the turns that are due. The threads are at
most FETCH_WORKERS + 1 + the stuck turns replaced (at most MOST_REPLACED): a worker per turn, one more that watches
the heap while every slot is busy (nothing else would see a turn pass its deadline), and one per stuck turn.
"""

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .durations import format_age
from .http_exchange import THREAD_PREFIX

logger = logging.getLogger("header_augment")

# Turns running at once. A fetch is bounded by its timeout and aborted when its provider is stopped; a request
# waiting for an entry's first answer moves that entry to the front (hurry).
FETCH_WORKERS = 16
# A turn is stuck once it has run this long past its refresher's timeout: twice what a command's last-resort kill may
# add to it (5 s), so that a turn gets there only when it is blocked for good, or nearly.
STUCK_GRACE = 10.0
# Stuck turns replaced by a worker, at most: each one is a thread blocked for good. Past this many, a stuck turn holds
# its slot again, as every turn did before stuck turns were replaced, and the threads stop growing.
MOST_REPLACED = 4 * FETCH_WORKERS
# A worker waits at most this long at a time (a lock's timeout overflows past time_t): a wake-up is only a look.
LONGEST_WAIT = 86400.0


class Turned(Protocol):
    stopping: bool
    label: str  # how the log names it
    turn_timeout: float  # how long a turn may take: its fetch's timeout

    def wake_at(self) -> float: ...

    def turn(self) -> None: ...

    def end(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Running:
    """A turn in progress, in the scheduler's clock."""

    started: float
    timeout_at: float  # started + its refresher's timeout
    deadline: float  # timeout_at + the grace: from then on the turn is stuck


@dataclass(frozen=True, slots=True)
class Load:
    """The scheduler's threads and turns at one moment (counters.SCHEDULER_NUMBERS names and explains each)."""

    workers: int
    turns: int
    stuck_turns: int


class Scheduler:
    """Runs each refresher's `turn()` at its `wake_at()`, at most `workers` turns at once on threads started as they
    are needed: never two turns of one refresher at once, and a refresher that is running is scheduled again when its
    turn ends. A turn running `grace` past its refresher's timeout is stuck and stops counting against `workers`
    (for `most_replaced` stuck turns at most). Every method may be called from any thread."""

    def __init__(
        self,
        workers: int = FETCH_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        grace: float = STUCK_GRACE,
        most_replaced: int = MOST_REPLACED,
    ) -> None:
        self._most = workers
        self._clock = clock
        self._grace = grace
        self._most_replaced = most_replaced
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Turned]] = []
        self._seq = itertools.count()
        self._queued: dict[Turned, tuple[float, int]] = {}  # each refresher's one live heap entry: (at, seq)
        self._running: dict[Turned, Running] = {}
        self._noted: set[Turned] = set()  # the stuck turns logged
        self._threads: set[threading.Thread] = set()
        self._named = itertools.count(1)
        self._idle = 0  # workers waiting
        self._woken = 0  # of those, how many have been notified and not yet woken: not idle any more
        self._closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    def load(self, now: float) -> Load:
        """The worker threads, the turns running and how many of those are stuck at `now` (the scheduler's clock)."""
        with self._cond:
            stuck = sum(now >= running.deadline for running in self._running.values())
            return Load(len(self._threads), len(self._running), stuck)

    def past_timeout(self, refresher: Turned, now: float) -> float | None:
        """How long `refresher`'s turn has run past its timeout, if that turn is stuck at `now`; else None."""
        running = self._running.get(refresher)  # one read of a dict: no lock needed
        return None if running is None or now < running.deadline else now - running.timeout_at

    def schedule(self, refresher: Turned) -> None:
        """Turn `refresher` at its `wake_at()`, or sooner if it is already due sooner (an early turn does nothing)."""
        with self._cond:
            if not self._closed and refresher not in self._running:
                self._push(refresher, refresher.wake_at())

    def hurry(self, refresher: Turned) -> None:
        """Turn `refresher` before every other due one: a request is waiting for its first answer."""
        with self._cond:
            if not self._closed and refresher in self._queued:
                self._push(refresher, -math.inf)

    def remove(self, refresher: Turned) -> bool:
        """Never turn `refresher` again (its `stopping` is set). False if its turn is running now: the worker ends it
        when that turn is over (a stuck one too, if it ever is)."""
        with self._cond:
            self._queued.pop(refresher, None)  # its heap entry is skipped when it comes up
            return refresher not in self._running

    def close(self) -> None:
        """The workers end once their turns have; nothing is turned from now on."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._queued.clear()
            self._cond.notify_all()

    def _push(self, refresher: Turned, at: float, from_worker: bool = False) -> None:
        if at != at:  # NaN: it would stay at the top of the heap and make every wait return at once
            at = self._clock() + 1.0
        queued = self._queued.get(refresher)
        if at == math.inf or (queued is not None and queued[0] <= at):
            return  # nothing to do until asked, or already due as soon: one live entry per refresher
        seq = next(self._seq)
        self._queued[refresher] = (at, seq)
        heapq.heappush(self._heap, (at, seq, refresher))
        if self._idle > self._woken:
            self._woken += 1
            self._cond.notify()  # an idle worker looks at the new earliest entry
        elif not from_worker:  # a worker pushing looks at the heap next
            self._add_worker(self._capacity(self._clock())[2])

    def _capacity(self, now: float) -> tuple[int, float, int]:
        """The slots free for a turn, when the next running turn gets stuck (inf: none does) and how many stuck turns
        are replaced. Logs a turn the first time it is seen stuck."""
        stuck, soonest, seen = 0, math.inf, []
        for refresher, running in self._running.items():
            if now < running.deadline:
                soonest = min(soonest, running.deadline)
                continue
            stuck += 1
            if refresher not in self._noted:
                self._noted.add(refresher)
                seen.append((refresher, running))
        replaced = min(stuck, self._most_replaced)
        for refresher, running in seen:
            logger.warning(
                "header provider %s: a fetch has run %s past its timeout, blocked where it cannot be interrupted; "
                "%d turns stuck, %d of them replaced by another worker",
                refresher.label,
                format_age(now - running.timeout_at),
                stuck,
                replaced,
            )
        return self._most + replaced - len(self._running), soonest, replaced

    def _add_worker(self, replaced: int) -> None:
        """One more worker, below the bound: whenever a turn starts, someone is left watching the heap."""
        if len(self._threads) < self._most + 1 + replaced:
            thread = threading.Thread(target=self._work, name=f"{THREAD_PREFIX} fetch {next(self._named)}", daemon=True)
            self._threads.add(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                refresher = self._take()
                if refresher is None:
                    self._threads.discard(threading.current_thread())
                    return
                started = self._clock()
                timeout_at = started + refresher.turn_timeout
                self._running[refresher] = Running(started, timeout_at, timeout_at + self._grace)
            ended = True
            try:
                refresher.turn()  # it catches and logs its own errors
            except Exception:  # a bug in a refresher ends that refresher, never the worker (nor the others)
                logger.exception("header-augment: a refresher's turn failed; it is stopped")
            finally:
                with self._cond:
                    del self._running[refresher]
                    self._noted.discard(refresher)
                    try:
                        ended = refresher.stopping  # read under the lock that remove() takes: stop() is seen here
                        if not ended and not self._closed:
                            self._push(refresher, refresher.wake_at(), from_worker=True)
                    except Exception:
                        logger.exception("header-augment: a refresher could not be scheduled again; it is stopped")
                        ended = True
            if ended:
                try:
                    refresher.end()
                except Exception:
                    logger.exception("header-augment: a refresher could not be ended cleanly")

    def _take(self) -> Turned | None:
        """The earliest due refresher, waited for until a slot is free for it; None once closed, or when this worker
        is one more than the bound (a stuck turn that was replaced has ended). Called with the lock held."""
        while not self._closed:
            now = self._clock()
            free, soonest, replaced = self._capacity(now)
            if len(self._threads) > self._most + 1 + replaced:
                return None
            heap = self._heap
            while heap and self._queued.get(heap[0][2], (0.0, -1))[1] != heap[0][1]:
                heapq.heappop(heap)  # replaced by an earlier entry, or removed
            wait = None
            if heap:
                wait = heap[0][0] - now
                if wait <= 0 < free:
                    refresher = heapq.heappop(heap)[2]
                    del self._queued[refresher]
                    if heap and self._idle > self._woken:
                        self._woken += 1
                        self._cond.notify()  # the next may be due too
                    elif heap and self._idle == 0:
                        # Nobody else watches the heap while this turn runs: without a standby, a provider that
                        # hangs would hold up every other one until its timeout, and with every slot taken, nobody
                        # would see a turn get stuck.
                        self._add_worker(replaced)
                    return refresher
                if wait <= 0:
                    wait = soonest - now  # every slot taken: a look when the next turn gets stuck, or one ends
                wait = min(wait, LONGEST_WAIT)
            self._idle += 1
            try:
                self._cond.wait(wait)
            finally:
                self._idle -= 1
                self._woken = max(0, self._woken - 1)  # this one, or one whose wait ended as it was notified
        return None
