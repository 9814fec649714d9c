"""What keeps one provider's snapshot fresh, turned by the scheduler's threads. Request handling never waits on it."""

import logging
import math
import threading
import time
from collections.abc import Callable

from .counters import FetchCounters
from .durations import format_age
from .fetch import Client, FetchResult
from .schedule import Schedule
from .scheduler import Scheduler
from .settings import ProviderSettings
from .snapshot import NOTHING, Snapshot

logger = logging.getLogger("header_augment")

# Refresh a credential with a known lifetime at 80% of it: early enough to ride out a failed attempt or two.
TOKEN_REFRESH_AT = 0.8
# A failure with a new reason is logged at warning at most this often; the same reason again, this often.
FAILURE_LOG_GAP = 10.0
FAILURE_REMINDER = 300.0
# A refresh asked for sooner than this after the last fetch started waits for the end of it, merged with any other
# asked for meanwhile: however many arrive (POST /refresh in a loop), a provider is asked at most once a second.
REFRESH_GAP = 1.0


class Refresher:
    """Asks the provider on schedule and publishes each valid answer as a new immutable `snapshot`, swapped by
    reference. Its turns run on a `Scheduler`'s threads, one at a time. Everything it logs names headers and
    reasons, never a value; it logs a bounded number of lines per fetch, whatever the answer holds.
    """

    def __init__(
        self,
        client: Client,
        settings: ProviderSettings,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: Snapshot = NOTHING,
    ) -> None:
        self.client = client
        self.settings = settings
        self._schedule = schedule or Schedule(settings.interval)
        self._clock = clock
        self._scheduler: Scheduler | None = None
        self.stopping = False
        self.broken = False  # stopped by an unexpected error (logged); a reconfiguration replaces it
        self._ended = threading.Event()
        self._end_lock = threading.Lock()
        self.snapshot = seed.restamped(settings.max_stale) if seed is not NOTHING else NOTHING
        self.counts = FetchCounters()
        self.last_error = ""
        self.next_fetch_at = -math.inf
        self.in_flight_since: float | None = None
        self._asked = False  # refresh_now() was called since the last fetch started
        self._asked_lock = threading.Lock()  # so that each call that returns True is one fetch exactly
        self._started_at = -math.inf  # when the last fetch started
        self._dropped_logged = False
        self._rejections_logged = ""
        self._warned_at = -math.inf
        self._suppressed = 0
        self._watched_at = -math.inf
        self._first_lock = threading.Lock()
        self._first_attempt_done = False
        self._first_attempt_callbacks: list[Callable[[], None]] = []

    @classmethod
    def for_settings(cls, settings: ProviderSettings, seed: Snapshot = NOTHING) -> "Refresher":
        """Raises SettingsError (with `field`) when the client cannot be made, e.g. for an unreadable CA file."""
        return cls(settings.source.client(settings.timeout), settings, seed=seed)

    # -- control, from any thread -------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._scheduler is not None

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler that turns it, once started."""
        return self._scheduler

    @property
    def label(self) -> str:
        return self.settings.label

    @property
    def turn_timeout(self) -> float:
        """A turn makes one fetch at most, and that fetch is bounded by the provider's timeout."""
        return self.settings.timeout

    @property
    def ended(self) -> bool:
        """Stopped (or broken), with its client closed."""
        return self._ended.is_set()

    def wait_ended(self, timeout: float) -> bool:
        return self._ended.wait(timeout)

    def start(self, scheduler: Scheduler) -> None:
        """The first fetch is due at once; each later turn is at `wake_at()`."""
        if self._scheduler is None and not self.stopping:
            self._scheduler = scheduler
            self.next_fetch_at = self._clock()
            scheduler.schedule(self)

    def hurry(self) -> None:
        """A request waits for the first answer: make the first fetch before the other providers' due ones."""
        if self._scheduler is not None and not self._first_attempt_done:
            self._scheduler.hurry(self)

    def refresh_now(self) -> bool:
        """Fetch again at once, or REFRESH_GAP after the last fetch started if that is later; every call until then
        is served by that one fetch (or by any fetch that starts sooner). Returns False when an earlier call is
        already waiting for it."""
        with self._asked_lock:
            new, self._asked = not self._asked, True
        if self._scheduler is not None and not self.stopping:
            self._scheduler.schedule(self)
        return new

    def stop(self) -> None:
        """Stop polling, without waiting: a call in flight is aborted, and its turn, the last, ends the refresher
        (closes its client) as soon as the call returns, even if the provider hangs."""
        self.stopping = True
        self.client.abort()
        if self._scheduler is None or self._scheduler.remove(self):
            self.end()

    def end(self) -> None:
        """Once stopped and no turn is running: close the client and release whoever waits for a first answer."""
        with self._end_lock:
            if self._ended.is_set():
                return
            self._finish_first_attempt()
            self.client.close()
            self._ended.set()

    @property
    def first_attempt_done(self) -> bool:
        return self._first_attempt_done

    def when_first_attempt_done(self, callback: Callable[[], None]) -> bool:
        """Call `callback` (from the thread that makes the fetch) once the first fetch has finished, failed or not,
        or the refresher has stopped. Returns False, without calling it, if that has already happened."""
        with self._first_lock:
            if self._first_attempt_done:
                return False
            self._first_attempt_callbacks.append(callback)
            return True

    def _finish_first_attempt(self) -> None:
        with self._first_lock:
            if self._first_attempt_done:
                return
            self._first_attempt_done = True
            callbacks, self._first_attempt_callbacks = self._first_attempt_callbacks, []
        for callback in callbacks:
            callback()

    # -- a turn, on a scheduler thread --------------------------------------------------------------------------

    def turn(self) -> None:
        """What is due now, if anything. An unexpected error stops this refresher (logged), never the worker."""
        if self.stopping:
            return
        try:
            self.step()
        except Exception:
            logger.exception("header provider %s: refresher stopped by an unexpected error", self.settings.label)
            self.broken = self.stopping = True
            self.client.abort()

    def wake_at(self) -> float:
        """When the refresher has something to do next: a fetch (scheduled or asked for), a change to look for, or
        headers to drop."""
        at = self.next_fetch_at
        if self._asked:
            at = min(at, self._started_at + REFRESH_GAP)
        if not self._dropped_logged and self.snapshot.usable_until > self._clock():
            at = min(at, self.snapshot.usable_until)
        if self.client.watch_interval is not None:
            at = min(at, self._watched_at + self.client.watch_interval)
        return at

    def step(self) -> None:
        """At `wake_at()`, or sooner when `refresh_now()` asked for a fetch: does what is due, if anything."""
        now = self._clock()
        due = now >= self.next_fetch_at or (self._asked and now >= self._started_at + REFRESH_GAP)
        if not due and self.client.watch_interval is not None and now >= self._watched_at + self.client.watch_interval:
            self._watched_at = now
            due = self.client.changed()
        if due:
            self.next_fetch_at = self._clock() + self.refresh()
        self._note_staleness()

    def refresh(self) -> float:
        """One fetch; returns the delay until the next one."""
        with self._asked_lock:
            self._asked = False  # before the fetch: a refresh asked for while it runs gets a fetch of its own
        self.in_flight_since = self._started_at = self._clock()
        try:
            result = self.client.fetch()
        finally:
            self.in_flight_since = None
        if self.stopping:
            return 0.0  # an aborted call is not the provider's fault, and nothing may be published after stop()
        if result.ok:
            self._accept(result)
            delay = self._schedule.after_success(self._max_age(result))
            if result.reason:  # usable, yet something failed that must be seen (a rotated refresh token not saved)
                self._fail(result)
        else:
            self._fail(result)
            delay = self._schedule.after_failure()
        self._finish_first_attempt()
        return delay

    @staticmethod
    def _max_age(result: FetchResult) -> float | None:
        by_lifetime = None if result.lifetime is None else result.lifetime * TOKEN_REFRESH_AT
        ages = [age for age in (result.max_age, by_lifetime) if age is not None]
        return min(ages) if ages else None

    def _accept(self, result: FetchResult) -> None:
        answer = result.answer
        assert answer is not None
        label = self.settings.label
        rejections = answer.rejections() if answer.rejected_count else ""
        if rejections and rejections != self._rejections_logged:
            logger.warning("header provider %s: %s", label, rejections)
        self._rejections_logged = rejections
        previous = self.snapshot
        snapshot = Snapshot.build(
            answer.headers, self._clock(), self.settings.max_stale, result.lifetime, result.signing, previous=previous
        )
        self.snapshot = snapshot
        self.counts.ok += 1
        if self.last_error:
            logger.info("header provider %s: answering again", label)
        self.last_error = ""
        self._dropped_logged = False
        if (signing := snapshot.signing) is not None:  # a signing kind: credentials, no headers
            renewed = previous.signing is not None and previous.signing.access_key != signing.access_key
            if previous.signing is None or not previous.usable(snapshot.fetched_at):
                logger.info("header provider %s: credentials in use (%s)", label, signing.method)
            else:
                logger.debug("header provider %s: credentials %s", label, "renewed" if renewed else "read again")
        elif snapshot.display_names != previous.display_names or not previous.usable(snapshot.fetched_at):
            logger.info("header provider %s: headers in use: %s", label, ", ".join(snapshot.display_names) or "none")
        elif snapshot.fields != previous.fields:
            changed = [
                n
                for n, new, old in zip(snapshot.display_names, snapshot.fields, previous.fields, strict=True)
                if new != old
            ]
            logger.info("header provider %s: new values for %s", label, ", ".join(changed))
        else:
            logger.debug("header provider %s: refreshed %d headers", label, len(snapshot.fields))

    def _fail(self, result: FetchResult) -> None:
        self.counts.count_failure(result.reason, result.reason_class)
        now = self._clock()
        repeated = result.reason == self.last_error
        self.last_error = result.reason
        if now - self._warned_at < (FAILURE_REMINDER if repeated else FAILURE_LOG_GAP):
            self._suppressed += not repeated
            logger.debug("header provider %s: refresh failed: %s", self.settings.label, result.reason)
            return
        kept = self.snapshot
        if kept is NOTHING:
            consequence = "no headers yet"
        elif kept.usable(now):
            consequence = f"keeping the headers from {format_age(now - kept.fetched_at)} ago"
        else:
            consequence = "no usable headers"
        more = f" ({self._suppressed} other failures since the last such line)" if self._suppressed else ""
        logger.warning(
            "header provider %s: refresh failed: %s; %s%s", self.settings.label, result.reason, consequence, more
        )
        self._warned_at = now
        self._suppressed = 0

    def _note_staleness(self) -> None:
        if not self._dropped_logged and self.snapshot is not NOTHING and not self.snapshot.usable(self._clock()):
            age = format_age(self._clock() - self.snapshot.fetched_at)
            logger.warning(
                "header provider %s: headers dropped: the last valid answer is %s old (past max_stale or the "
                "credential's lifetime)",
                self.settings.label,
                age,
            )
            self._dropped_logged = True
