import random

import pytest

from header_augment_core.durations import format_duration, parse_duration
from header_augment_core.schedule import Schedule


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5), ("6m", 360), ("1h", 3600), ("42", 42), ("0.5", 0.5), (" 2s ", 2), ("0s", 0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "-1s", "1d", "5 s s", "1e400", "inf", "nan"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="accepted: 250ms, 5s, 6m, 1h"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (5, "5s"), (360, "6m"), (3600, "1h"), (90, "90s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_interval_has_up_to_ten_percent_jitter_never_later():
    schedule = Schedule(360, random.Random(1))
    schedule.after_success()  # the first is spread (below)
    delays = [schedule.after_success() for _ in range(1000)]
    assert min(delays) >= 324 and max(delays) <= 360
    assert max(delays) - min(delays) > 20  # really jittered


def test_max_age_brings_the_refresh_forward_but_never_under_a_second():
    schedule = Schedule(360, random.Random(2))
    schedule.after_success()
    assert 27 <= schedule.after_success(max_age=30) <= 30
    assert schedule.after_success(max_age=0) == 1.0
    assert 324 <= schedule.after_success(max_age=9999) <= 360


def test_backoff_doubles_from_one_second_capped_and_resets():
    schedule = Schedule(360, random.Random(3))
    delays = [schedule.after_failure() for _ in range(10)]
    for n, delay in enumerate(delays):
        nominal = min(2**n, 60)
        assert 0.9 * nominal <= delay <= nominal
    schedule.after_success()
    assert 0.9 <= schedule.after_failure() <= 1.0


def test_first_success_after_a_start_is_spread_over_the_period():
    """A fleet restarted together must not keep polling together: 5-100% of the period, never later."""
    delays = [Schedule(360, random.Random(seed)).after_success() for seed in range(2000)]
    assert min(delays) >= 0.05 * 360 and max(delays) <= 360
    quarters = [sum(18 + 85.5 * q <= d < 18 + 85.5 * (q + 1) for d in delays) for q in range(4)]
    assert min(quarters) > 400  # about uniform: 500 each
    spread_max_age = [Schedule(360, random.Random(seed)).after_success(max_age=100) for seed in range(200)]
    assert min(spread_max_age) >= 5 and max(spread_max_age) <= 100


def after_failures(interval, seed, succeeded_before=True):
    schedule = Schedule(interval, random.Random(seed))
    if succeeded_before:
        schedule.after_success()
    schedule.after_failure()
    return schedule.after_success()


def test_first_success_after_failures_is_spread_when_the_period_is_longer_than_the_backoff():
    draws = [after_failures(360, seed) for seed in range(500)]
    assert min(draws) < 100 and 0.05 * 360 <= min(draws) and max(draws) <= 360


def test_no_spread_after_failures_when_the_backoff_covers_the_period():
    # The backoff's own retries (capped at the 30 s interval) are spread already: back to the steady jitter.
    draws = [after_failures(30, seed) for seed in range(500)]
    assert min(draws) >= 27 and max(draws) <= 30


def test_the_first_success_after_a_start_is_spread_even_after_failures():
    draws = [after_failures(30, seed, succeeded_before=False) for seed in range(500)]
    assert min(draws) < 10 and max(draws) <= 30
