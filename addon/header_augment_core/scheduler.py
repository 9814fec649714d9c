"""One heap of wake-up times for every refresher, and a bounded pool of threads that run their turns.

A thread per provider meant 2,001 threads for 2,000 providers, and a proxy that died at 10,000: here the threads are
at most FETCH_WORKERS, however many providers there are, and the first fetches of a large configuration are made that
many at a time rather than all at once.
"""

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .http_exchange import THREAD_PREFIX

logger = logging.getLogger("header_augment")

# Fetches in flight at once. A fetch is bounded by its timeout and aborted when its provider is stopped, so a few
# hanging providers delay the others' turns by at most their timeout; a request waiting for an entry's first answer
# moves that entry to the front (hurry).
FETCH_WORKERS = 16
# A worker waits at most this long at a time (a lock's timeout overflows past time_t): a wake-up is only a look.
LONGEST_WAIT = 86400.0


class Turned(Protocol):
    stopping: bool

    def wake_at(self) -> float: ...

    def turn(self) -> None: ...

    def end(self) -> None: ...


class Scheduler:
    """Runs each refresher's `turn()` at its `wake_at()`, on one of at most `workers` threads (started as they are
    needed): never two turns of one refresher at once, and a refresher that is running is scheduled again when its
    turn ends. Every method may be called from any thread."""

    def __init__(self, workers: int = FETCH_WORKERS, clock: Callable[[], float] = time.monotonic) -> None:
        self._most = workers
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Turned]] = []
        self._seq = itertools.count()
        self._queued: dict[Turned, tuple[float, int]] = {}  # each refresher's one live heap entry: (at, seq)
        self._running: set[Turned] = set()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting
        self._woken = 0  # of those, how many have been notified and not yet woken: not idle any more
        self._closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

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
        when that turn is over."""
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
            self._add_worker()

    def _add_worker(self) -> None:
        """One more worker, below the cap: whenever a turn starts, someone is left watching the heap."""
        if len(self._threads) < self._most:
            thread = threading.Thread(
                target=self._work, name=f"{THREAD_PREFIX} fetch {len(self._threads) + 1}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                refresher = self._take()
                if refresher is None:
                    return
                self._running.add(refresher)
            ended = True
            try:
                refresher.turn()  # it catches and logs its own errors
            except Exception:  # a bug in a refresher ends that refresher, never the worker (nor the others)
                logger.exception("header-augment: a refresher's turn failed; it is stopped")
            finally:
                with self._cond:
                    self._running.discard(refresher)
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
        """The earliest due refresher, waited for; None once closed. Called with the lock held."""
        while not self._closed:
            heap = self._heap
            while heap and self._queued.get(heap[0][2], (0.0, -1))[1] != heap[0][1]:
                heapq.heappop(heap)  # replaced by an earlier entry, or removed
            wait = None
            if heap:
                wait = min(heap[0][0] - self._clock(), LONGEST_WAIT)
                if wait <= 0:
                    refresher = heapq.heappop(heap)[2]
                    del self._queued[refresher]
                    if heap and self._idle > self._woken:
                        self._woken += 1
                        self._cond.notify()  # the next may be due too
                    elif heap and self._idle == 0:
                        # Nobody else watches the heap while this turn runs: without a standby, a provider that
                        # hangs would hold up every other one until its timeout.
                        self._add_worker()
                    return refresher
            self._idle += 1
            try:
                self._cond.wait(wait)
            finally:
                self._idle -= 1
                self._woken = max(0, self._woken - 1)  # this one, or one whose wait ended as it was notified
        return None
