"""The fleet simulation's figures (scripts/herd.py, docs/herd.md) as assertions, at N = 2,000: the real Schedule and
Refresher, driven in virtual time."""

import functools
from dataclasses import replace

import herd  # scripts/ is on the tests' path (pyproject.toml)
import pytest

# The bin: at N = 2,000 and 360 s the mean rate is 5.6 calls/s, so a 30 s bin holds 167 calls on average, and its
# counting noise (about Poisson) is sqrt(167) = 13 calls, 8% of that. The noisiest of an hour's 120 bins is about
# 3 of those above its mean: the spread fleet's steady 1.05x (jitter only ever brings a fetch forward) reads as
# about 1.3x, well under the 2x bound, and 1.5x is 5 to 6 sd away, so no bin crosses it by chance; while one wave
# of the old schedule is ~8x. 10 s bins would put a bin past 1.5x by noise alone every hour; 60 s bins could not
# tell "settled within 60 s" from "within 120 s".
N = 2000
INTERVAL = 360.0
BIN = 30.0
SEEDS = (1, 2, 3, 4)
# Delays are summed in floating point: a delay of exactly one interval may come out a few ulps longer.
ONE_INTERVAL = 1 + 1e-9

RESTART = herd.Scenario("restart", n=N, interval=INTERVAL, duration=herd.RESTART_WITHIN + 3600, bin=BIN)
# Two intervals of warm-up are enough for the fleet to be out of step: it starts spread over one interval.
OUTAGE = herd.Scenario("outage", n=N, interval=INTERVAL, duration=3600, bin=BIN, outage=600, warmup=2 * INTERVAL)


@functools.cache
def simulate(scenario: herd.Scenario, schedule: str = "spread") -> herd.Result:
    return herd.simulate(scenario, schedule)


def steady(result: herd.Result) -> bool:
    """The calls really happened, at the fleet's steady rate: N / (0.95 x interval) on average."""
    return 1.0 <= result.average <= 1.1


@pytest.mark.parametrize("seed", SEEDS)
def test_a_restarted_fleet_polls_at_under_twice_the_mean_rate_after_the_restart_burst(seed):
    result = simulate(replace(RESTART, seed=seed))
    assert steady(result)
    assert result.peak <= 2.0
    assert result.staleness <= ONE_INTERVAL


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_without_the_spread_a_restarted_fleet_polls_in_waves(seed):
    result = simulate(replace(RESTART, seed=seed), "no-spread")
    assert result.average > 0.9
    assert result.peak > 4.0
    assert result.settle is None  # still in waves an hour later


@pytest.mark.parametrize("seed", SEEDS)
def test_after_an_outage_the_fleet_is_back_under_one_and_a_half_times_the_mean_within_a_minute(seed):
    result = simulate(replace(OUTAGE, seed=seed))
    assert result.outage_load > 1  # the provider really was down, and retried
    assert steady(result)
    assert result.settle is not None and result.settle <= 60
    assert result.staleness <= ONE_INTERVAL


def test_without_the_spread_the_fleet_polls_in_waves_after_an_outage():
    result = simulate(OUTAGE, "no-spread")
    assert result.average > 0.9
    assert result.peak > 2.0
    assert result.settle is None


@pytest.mark.parametrize("schedule", ["full-jitter", "decorrelated"])
def test_jitter_on_the_backoff_raises_the_outage_load_and_leaves_the_waves(schedule):
    capped = simulate(OUTAGE)
    jittered = simulate(OUTAGE, schedule)
    assert jittered.outage_load > 1.3 * capped.outage_load
    assert jittered.settle is None


def test_staleness_does_not_count_the_outage():
    provider = herd.Provider(herd.VirtualClock(), down_from=1000, down_until=1600)
    assert provider.staleness(100, 400) == 300
    assert provider.staleness(700, 1630) == 300  # 300 s stale when the provider went down
    assert provider.staleness(950, 1650) == 50  # 50 s after the provider came back
    assert provider.staleness(1700, 2000) == 300


def test_the_command_prints_one_row_per_scenario_and_schedule(capsys):
    herd.main(["restart", "outage", "-n", "20", "--duration", "400", "--warmup", "400", "--window", "300", "--compare"])
    rows = [line.split("|")[1:3] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(s.strip(), schedule.strip()) for s, schedule in rows] == [
        ("restart", "no-spread"),
        ("restart", "spread"),
        ("outage", "no-spread"),
        ("outage", "spread"),
    ]
