"""The background thread that keeps one provider's snapshot fresh. Request handling never waits on it."""

import collections
import logging
import math
import threading
import time
from collections.abc import Callable

from .durations import format_age
from .provider import THREAD_PREFIX, FetchResult, ProviderClient, client_for
from .schedule import Schedule
from .snapshot import NOTHING, Snapshot

logger = logging.getLogger("header_augment")

STOP_WAIT = 1.0


class Refresher(threading.Thread):
    """Polls the provider and publishes each valid answer as a new immutable `snapshot`, swapped by reference.

    Everything it logs names headers and reasons, never a value.
    """

    def __init__(
        self,
        client: ProviderClient,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name=f"{THREAD_PREFIX} refresher {client.settings.label}", daemon=True)
        self.client = client
        self.settings = client.settings
        self._schedule = schedule or Schedule(self.settings.interval)
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = False
        self.snapshot = NOTHING
        self.last_error = ""
        self.fetches_ok = 0
        self.fetches_failed: collections.Counter[str] = collections.Counter()
        self.next_fetch_at = -math.inf
        self._dropped_logged = False
        self._rejected_logged: tuple = ()

    @classmethod
    def for_settings(cls, settings) -> "Refresher":
        return cls(client_for(settings))

    # -- control, from any thread -------------------------------------------------------------------------------

    def refresh_now(self) -> None:
        self._wake.set()

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Stop polling; a call in flight is aborted, so this returns within `wait` even if the provider hangs."""
        self._stopping = True
        self._wake.set()
        self.client.abort()
        if self.ident is None:
            self.client.close()  # never started: the thread that would close it never will
        elif self.is_alive() and threading.current_thread() is not self:
            self.join(wait)

    # -- the thread ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.next_fetch_at = self._clock()
            while not self._stopping:
                now = self._clock()
                wake_at = self.next_fetch_at
                if not self._dropped_logged and self.snapshot.usable_until > now:
                    wake_at = min(wake_at, self.snapshot.usable_until)
                woken = self._wake.wait(max(0.0, wake_at - now))
                if self._stopping:
                    break
                self._wake.clear()
                if woken or self._clock() >= self.next_fetch_at:
                    self.next_fetch_at = self._clock() + self.refresh()
                self._note_staleness()
        except Exception:
            logger.exception("header provider %s: refresher stopped by an unexpected error", self.settings.label)
        finally:
            self.client.close()

    def refresh(self) -> float:
        """One fetch; returns the delay until the next one."""
        result = self.client.fetch()
        if self._stopping:
            return 0.0  # an aborted call is not the provider's fault, and nothing may be published after stop()
        if result.ok:
            self._accept(result)
            return self._schedule.after_success(result.max_age)
        self._fail(result.reason)
        return self._schedule.after_failure()

    def _accept(self, result: FetchResult) -> None:
        answer = result.answer
        assert answer is not None
        if answer.rejected != self._rejected_logged:
            for rejected in answer.rejected:
                logger.warning(
                    "header provider %s: dropped header %s: %s",
                    self.settings.label,
                    rejected.name,
                    rejected.reason,
                )
            self._rejected_logged = answer.rejected
        previous = self.snapshot
        snapshot = Snapshot.build(answer.headers, self._clock(), self.settings.max_stale, result.expires_in)
        self.snapshot = snapshot
        self.fetches_ok += 1
        if self.last_error:
            logger.info("header provider %s: answering again", self.settings.label)
        self.last_error = ""
        self._dropped_logged = False
        if snapshot.display_names != previous.display_names or not previous.usable(snapshot.fetched_at):
            shown = ", ".join(snapshot.display_names) or "none"
            logger.info("header provider %s: headers in use: %s", self.settings.label, shown)
        else:
            logger.debug("header provider %s: refreshed %d headers", self.settings.label, len(snapshot.fields))

    def _fail(self, reason: str) -> None:
        self.fetches_failed[reason] += 1
        kept = self.snapshot
        if kept is NOTHING:
            consequence = "no headers yet"
        elif kept.usable(self._clock()):
            age = format_age(self._clock() - kept.fetched_at)
            consequence = f"keeping the headers from {age} ago"
        else:
            consequence = "no usable headers"
        log = logger.warning if reason != self.last_error else logger.debug
        log("header provider %s: refresh failed: %s; %s", self.settings.label, reason, consequence)
        self.last_error = reason

    def _note_staleness(self) -> None:
        if not self._dropped_logged and self.snapshot is not NOTHING and not self.snapshot.usable(self._clock()):
            age = format_age(self._clock() - self.snapshot.fetched_at)
            logger.warning(
                "header provider %s: headers dropped: the last valid answer is %s old (past max_stale or the "
                "token's lifetime)",
                self.settings.label,
                age,
            )
            self._dropped_logged = True
