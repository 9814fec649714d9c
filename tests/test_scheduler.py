"""The scheduler that turns every refresher: bounded threads, one turn at a time per refresher, hurry, stop, close."""

import asyncio
import json
import math
import threading
import time

import header_augment
import pytest
from mitmproxy.test import taddons, tflow
from servers import DEADLINE, Provider, wait_until

from header_augment_core.refresher import Refresher
from header_augment_core.scheduler import Scheduler
from header_augment_core.settings import parse_settings

SLOW = 2.0  # seconds a slow provider takes to answer


class Job:
    """A refresher's side of the protocol, recording its turns: due at `at`, then never again unless asked."""

    turn_timeout = 60.0  # never stuck here: tests/test_stuck_turns.py has those

    def __init__(self, name, at=0.0, hold: threading.Event | None = None, log=None, gauge=None):
        self.name, self.at, self.hold, self.log, self.gauge = name, at, hold, log, gauge
        self.label = str(name)
        self.stopping = False
        self.turns = 0
        self.ended = threading.Event()
        self.inside = 0

    def wake_at(self):
        return self.at

    def turn(self):
        self.inside += 1
        assert self.inside == 1, "two turns of one refresher at once"
        if self.gauge is not None:
            self.gauge.enter()
        self.at = math.inf  # done until asked again; an ask during the turn (as refresh_now's) is kept
        try:
            if self.log is not None:
                self.log.append(self.name)
            if self.hold is not None:
                assert self.hold.wait(DEADLINE)
            self.turns += 1
        finally:
            if self.gauge is not None:
                self.gauge.leave()
            self.inside -= 1

    def end(self):
        self.ended.set()


class Gauge:
    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0

    def enter(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self):
        with self.lock:
            self.now -= 1


@pytest.fixture
def make():
    made = []

    def scheduler(**kwargs):
        made.append(Scheduler(**kwargs))
        return made[-1]

    yield scheduler
    for s in made:
        s.close()


def test_many_due_at_once_run_at_most_workers_at_a_time(make):
    scheduler = make(workers=4)
    warm = Job("warm")
    scheduler.schedule(warm)
    wait_until(lambda: warm.turns == 1 and scheduler._idle == 1, what="one idle worker")  # as after a first config
    gauge = Gauge()
    release = threading.Event()
    jobs = [Job(i, hold=release, gauge=gauge) for i in range(200)]
    for job in jobs:
        scheduler.schedule(job)
    wait_until(lambda: gauge.now == 4, what="four turns running")
    assert scheduler.threads == 5  # and one watching the heap, which would see a turn get stuck
    release.set()
    wait_until(lambda: all(j.turns == 1 for j in jobs), what="every first turn")
    assert gauge.most == 4 and scheduler.threads == 5


def test_one_refresher_never_turns_twice_at_once_and_a_request_during_its_turn_comes_after(make):
    scheduler = make(workers=8)
    release = threading.Event()
    job = Job("a", hold=release)
    scheduler.schedule(job)
    wait_until(lambda: job.inside == 1, what="the turn to start")
    for _ in range(100):
        job.at = 0.0  # asked again while its turn runs
        scheduler.schedule(job)
    release.set()
    wait_until(lambda: job.turns == 2, what="the turn asked for meanwhile")
    assert scheduler.threads == 1  # the asks during the turn did not start workers for it


def test_a_hurried_refresher_goes_before_every_other_due_one(make):
    scheduler = make(workers=1)
    release, log = threading.Event(), []
    first = Job("first", hold=release, log=log)
    scheduler.schedule(first)
    wait_until(lambda: first.inside == 1, what="the only worker to be busy")
    queued = [Job(i, at=time.monotonic() - 10 + i, log=log) for i in range(5)]
    for job in queued:
        scheduler.schedule(job)
    scheduler.hurry(queued[4])
    release.set()
    wait_until(lambda: len(log) == 6, what="every turn")
    assert log == ["first", 4, 0, 1, 2, 3]


def test_entries_turn_at_their_time_not_before(make):
    scheduler = make(workers=2)
    log = []
    soon, later = Job("soon", at=time.monotonic() + 0.2, log=log), Job("later", at=time.monotonic() + 0.4, log=log)
    scheduler.schedule(later)
    scheduler.schedule(soon)
    start = time.monotonic()
    wait_until(lambda: len(log) == 2, what="both turns")
    assert log == ["soon", "later"] and time.monotonic() - start >= 0.35


def test_removed_while_queued_never_turns_and_while_running_ends_after_its_turn(make):
    scheduler = make(workers=2)
    queued = Job("queued", at=time.monotonic() + 0.2)
    scheduler.schedule(queued)
    queued.stopping = True
    assert scheduler.remove(queued) is True  # the caller ends it
    release = threading.Event()
    running = Job("running", hold=release)
    scheduler.schedule(running)
    wait_until(lambda: running.inside == 1, what="the turn to start")
    running.stopping = True
    assert scheduler.remove(running) is False
    assert not running.ended.is_set()
    release.set()
    assert running.ended.wait(DEADLINE)  # the worker ended it once its turn was over
    time.sleep(0.3)  # past the queued one's time: it stays unturned
    assert queued.turns == 0 and running.turns == 1


def test_a_turn_that_hangs_never_holds_up_the_others(make):
    """Refreshers added one at a time (each start finds a worker idle), then one hangs: the rest go on."""
    scheduler = make(workers=4)
    warm = Job("warm")
    scheduler.schedule(warm)

    def waiting():  # the one worker waits again, not yet notified
        return scheduler._idle == 1 and scheduler._woken == 0

    wait_until(lambda: warm.turns == 1 and waiting(), what="one idle worker")
    release = threading.Event()
    stuck, later = Job("stuck", at=time.monotonic() + 0.3, hold=release), Job("later", at=time.monotonic() + 0.6)
    scheduler.schedule(stuck)
    wait_until(waiting, what="the worker to wait for the next time")
    scheduler.schedule(later)  # found the worker idle: notified, no new worker
    try:
        wait_until(lambda: later.turns == 1, what="the other refresher's turn while one hangs")
    finally:
        release.set()


def test_a_refresher_that_raises_ends_and_the_worker_goes_on(make, caplog):
    class Broken(Job):
        def wake_at(self):
            if self.turns:
                raise RuntimeError("a bug")
            return 0.0

    scheduler = make(workers=1)
    broken, fine = Broken("broken"), Job("fine", at=time.monotonic() + 0.2)
    scheduler.schedule(broken)
    assert broken.ended.wait(DEADLINE)  # ended, not left queued or running
    scheduler.schedule(fine)
    wait_until(lambda: fine.turns == 1, what="the next refresher on the same worker")
    assert scheduler.threads == 1
    assert "could not be scheduled again" in caplog.text


def test_a_nan_time_is_a_look_a_second_later_not_a_spin(make):
    scheduler = make(workers=1)
    odd = Job("odd", at=math.nan)
    fine = Job("fine", at=time.monotonic() + 0.1)
    scheduler.schedule(odd)
    scheduler.schedule(fine)
    wait_until(lambda: fine.turns == 1 and odd.turns == 1, what="both turns")


def test_close_ends_the_workers(make):
    scheduler = make(workers=3)
    jobs = [Job(i) for i in range(3)]
    for job in jobs:
        scheduler.schedule(job)
    wait_until(lambda: all(j.turns for j in jobs), what="the turns")
    workers = [t for t in threading.enumerate() if t.name.startswith("header-augment fetch")]
    assert workers
    scheduler.close()
    for thread in workers:
        thread.join(DEADLINE)
    assert not any(t.is_alive() for t in workers)


def test_real_refreshers_share_the_workers(make, provider):
    provider.answer({"X-Token": "t"})
    scheduler = make(workers=3)
    refreshers = [
        Refresher.for_settings(parse_settings({"url": f"{provider.url}?n={i}", "hosts": "a.example"}, str))
        for i in range(40)
    ]
    for r in refreshers:
        r.start(scheduler)
    try:
        wait_until(lambda: all(r.snapshot.fields == ((b"X-Token", b"t"),) for r in refreshers), what="every answer")
        assert scheduler.threads == 4 and len(provider.requests) == 40  # three turns at a time, and a standby
    finally:
        for r in refreshers:
            r.stop()
    assert all(r.wait_ended(DEADLINE) for r in refreshers)


def test_a_request_waits_for_its_own_entrys_first_fetch_not_for_the_queue(provider, tmp_path):
    """56 slow providers keep the 16 workers busy for four rounds; a request for the last entry's host moves that entry
    to the front, so it waits for one round of slow fetches and its own, not for three more rounds."""
    provider.answer({"X-Slow": "s"}, delay=SLOW)
    fast = Provider()
    fast.answer({"X-Fast": "f"})
    entries = [{"url": f"{provider.url}/{i}", "hosts": f"s{i}.example", "timeout": "30s"} for i in range(56)]
    entries.append({"url": fast.url, "hosts": "target.example", "timeout": "30s"})
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(entries))

    async def scenario():
        addon = header_augment.HeaderAugment()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_providers_file=str(path))
            addon.running()
            try:
                f = tflow.tflow()
                f.request.host = "target.example"
                started = time.monotonic()
                pending = addon.requestheaders(f)
                assert pending is not None  # held for the entry's first answer
                await pending
                return time.monotonic() - started, f.request.headers.get("X-Fast")
            finally:
                addon.done()

    try:
        waited, added = asyncio.run(scenario())
    finally:
        fast.close()
    assert added == "f"
    assert waited < 2 * SLOW, waited  # 3 × SLOW without the hurry: its fetch would start in the fourth round
