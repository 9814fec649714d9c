"""When to ask the provider next: interval with jitter, max-age, and backoff after failures."""

import random

JITTER = 0.1
MIN_MAX_AGE = 1.0
BACKOFF_START = 1.0
BACKOFF_CAP = 60.0


class Schedule:
    def __init__(self, interval: float, rng: random.Random | None = None) -> None:
        self.interval = interval
        self.failures = 0
        self._rng = rng or random.Random()

    def _jittered(self, seconds: float) -> float:
        # Only ever earlier, by up to 10%: many proxies drift out of step, and none waits past its interval.
        return seconds * (1 - JITTER * self._rng.random())

    def after_success(self, max_age: float | None = None) -> float:
        self.failures = 0
        if max_age is not None and max_age < self.interval:
            return max(self._jittered(max_age), MIN_MAX_AGE)
        return self._jittered(self.interval)

    def after_failure(self) -> float:
        """Exponential from 1 s, capped at min(interval, 60 s), so an outage never floods the provider."""
        self.failures += 1
        cap = min(self.interval, BACKOFF_CAP)
        return self._jittered(min(BACKOFF_START * 2 ** min(self.failures - 1, 32), cap))
