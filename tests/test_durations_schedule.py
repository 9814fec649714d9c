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
    delays = [schedule.after_success() for _ in range(1000)]
    assert min(delays) >= 324 and max(delays) <= 360
    assert max(delays) - min(delays) > 20  # really jittered


def test_max_age_brings_the_refresh_forward_but_never_under_a_second():
    schedule = Schedule(360, random.Random(2))
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


def test_backoff_cap_is_the_interval_when_shorter():
    schedule = Schedule(5, random.Random(4))
    delays = [schedule.after_failure() for _ in range(6)]
    assert max(delays) <= 5 and delays[-1] >= 4.5


def test_backoff_survives_very_long_outages():
    schedule = Schedule(360, random.Random(5))
    for _ in range(5000):
        delay = schedule.after_failure()
    assert 54 <= delay <= 60
