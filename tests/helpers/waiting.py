"""Waiting on a condition with a deadline, never a fixed sleep."""

import time

# Deadlines that only guard against a hang: far above what anything takes, even with both cores busy and a test file
# starting a dozen proxies beside this one (a mitmdump then takes up to ten times its usual 1.5 s to start).
DEADLINE = 30.0


def wait_until(predicate, timeout: float = DEADLINE, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def settled(read, what: str = "a settled value", timeout: float = DEADLINE, interval: float = 0.2):
    """`read()`'s value once it has not changed for four intervals (threads still starting, memory still growing)."""
    seen = [read()]

    def steady():
        seen.append(read())
        return len(seen) >= 5 and len(set(seen[-5:])) == 1

    wait_until(steady, timeout, interval, what)
    return seen[-1]
