"""When to ask the provider next: the interval with jitter, max-age, backoff after failures, and a spread that keeps
a fleet of proxies restarted together (or recovering from the same outage) from polling in waves."""

import random

JITTER = 0.1
MIN_MAX_AGE = 1.0
BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
# The delay after the first success following a start (or an outage) is drawn from this share of the period.
SPREAD = (0.05, 1.0)


class Schedule:
    def __init__(self, interval: float, rng: random.Random | None = None) -> None:
        self.interval = interval
        self.failures = 0
        self._rng = rng or random.Random()
        self._succeeded = False  # since the start

    def _jittered(self, seconds: float) -> float:
        # Only ever earlier, by up to 10%: many proxies drift out of step, and none waits past its interval.
        return seconds * (1 - JITTER * self._rng.random())

    def _backoff_cap(self) -> float:
        return min(self.interval, BACKOFF_CAP)

    def after_success(self, max_age: float | None = None) -> float:
        """The delay until the next fetch. Proxies that started together, or that all retried through an outage,
        succeed within moments of each other; the steady 10% jitter alone would keep them in step for hours. So the
        first delay after a start, and after recovering when the period is longer than the backoff (whose retries
        are not spread), is drawn from 5-100% of the period: no later than usual, and spread over all of it."""
        period = self.interval if max_age is None or max_age >= self.interval else max_age
        spread = not self._succeeded or (self.failures > 0 and period > self._backoff_cap())
        self._succeeded = True
        self.failures = 0
        delay = period * self._rng.uniform(*SPREAD) if spread else self._jittered(period)
        return max(delay, MIN_MAX_AGE) if period < self.interval else delay

    def after_failure(self) -> float:
        """Exponential from 1 s, capped at min(interval, 60 s), so an outage never floods the provider."""
        self.failures += 1
        return self._jittered(min(BACKOFF_START * 2 ** min(self.failures - 1, 32), self._backoff_cap()))
