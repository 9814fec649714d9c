"""No process a command starts outlives its run, however it detaches (`setsid`, a double fork), and a run ends when
the command exits even if a daemon it left still holds its output: the client, the refresher and a real mitmdump
with the processes checked in /proc."""

import signal
import sys
import threading
import time
from urllib.parse import quote

import pytest
from conftest import client_for, values_of
from helpers.support import DAEMONS, pid_lines, processes, zombie_children
from servers import DEADLINE, ROOT, Upstream, wait_until

from header_augment_core.fields import SettingsError
from header_augment_core.kinds import command as command_kind
from header_augment_core.refresher import Refresher
from header_augment_core.settings import parse_settings

CONSOLE = str(ROOT / "tests" / "console_set.py")


def settings(**values):
    return parse_settings({"hosts": "*", "format": "headers", **values}, str)


def client(**values):
    s = settings(**values)
    return s.source.client(s.timeout)


def pids_in(path) -> list[int]:
    return [pid for line in pid_lines(path) for pid in line]


def none_left(pids) -> bool:
    """Not one of `pids` is in /proc, not even as a zombie: killed and reaped."""
    return not set(pids) & processes().keys()


def session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[3])


@pytest.mark.parametrize("mode", ["held", "closed", "double"])
def test_a_run_ends_with_the_command_and_its_daemon_with_it(tmp_path, mode):
    """`held`: the daemon holds stdout open, so a run that waited for the end of the output would last until its
    timeout. Whatever the daemon does, it is gone (reaped, not merely killed) by the time the fetch returns."""
    pidfile = tmp_path / "pids"
    started = time.monotonic()
    result = client(command=[DAEMONS, mode, str(pidfile)], timeout="20s").fetch()
    elapsed = time.monotonic() - started
    assert result.ok, result.reason
    assert dict(result.answer.headers) == {"X-Daemon": mode}
    assert elapsed < 10  # it ended with the command, not at the timeout
    [daemon] = pids_in(pidfile)
    assert none_left([daemon])
    assert zombie_children() == []


def test_the_daemon_was_in_a_session_of_its_own(tmp_path):
    """What the tests above stand on: `setsid` puts the daemon out of the command's session and process group, which
    a process-group kill would miss."""
    pidfile = tmp_path / "pids"
    c = client(command=[DAEMONS, "hang", str(pidfile)], timeout="20s")
    results = []
    thread = threading.Thread(target=lambda: results.append(c.fetch()))
    thread.start()
    [[daemon], [command]] = pid_lines(pidfile, 2)
    assert session_of(daemon) == daemon != session_of(command)
    c.abort()
    thread.join(10)
    assert results[0].reason == "daemons.sh: stopped"
    assert none_left([daemon, command])


def test_the_refresher_publishes_the_headers_and_leaves_no_daemon(tmp_path):
    pidfile = tmp_path / "pids"
    s = settings(command=[DAEMONS, "held", str(pidfile)], interval="1h", timeout="20s")
    r = Refresher.for_settings(s)
    for run in (1, 2):
        r.refresh()
        assert (r.last_error, r.snapshot.fields) == ("", ((b"X-Daemon", b"held"),))
        assert len(pids_in(pidfile)) == run and none_left(pids_in(pidfile))


def test_the_timeout_kills_the_command_and_its_daemon(tmp_path):
    pidfile = tmp_path / "pids"
    started = time.monotonic()
    result = client(command=[DAEMONS, "hang", str(pidfile)], timeout="1s").fetch()
    assert (result.reason, result.reason_class) == ("daemons.sh: timed out after 1s", "timeout")
    assert time.monotonic() - started < 1 + command_kind.KILL_GRACE
    assert len(pids_in(pidfile)) == 2 and none_left(pids_in(pidfile))
    assert zombie_children() == []


def test_stopping_the_refresher_kills_the_command_and_its_daemon(tmp_path, scheduler):
    pidfile = tmp_path / "pids"
    r = Refresher.for_settings(settings(command=[DAEMONS, "hang", str(pidfile)], timeout="60s"))
    r.start(scheduler)
    pid_lines(pidfile, 2)  # the daemon and the command have started
    pids = pids_in(pidfile)
    r.stop()
    assert r.wait_ended(DEADLINE)
    assert r.counts.failed == 0
    # The fetch's thread has reaped the supervisor, which reaped the rest first.
    assert none_left(pids) and zombie_children() == []


def test_a_killed_supervisor_is_a_failure_and_its_group_is_killed(tmp_path):
    """The last resort: should the supervisor itself be killed, the command (still in its process group) is killed
    with the group, and the run says the supervisor failed rather than reading a status that never came."""
    pidfile = tmp_path / "pid"
    script = 'echo $$ > "$1"; kill -KILL $PPID; exec sleep 300'
    result = client(command=["sh", "-c", script, "sh", str(pidfile)], timeout="1s").fetch()
    assert result.reason == "sh: timed out after 1s"  # the orphaned command holds stdout
    [[orphan]] = pid_lines(pidfile)
    wait_until(lambda: processes().get(orphan, ("Z",))[0] == "Z", what="the orphaned command killed")
    quick = client(command=["sh", "-c", "kill -KILL $PPID"]).fetch()
    assert (quick.reason, quick.reason_class) == ("sh: its supervisor failed", "command")


def test_commands_need_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(SettingsError) as e:
        settings(command=[DAEMONS, "held", "/dev/null"])
    assert str(e.value).startswith("command: commands are run on Linux only")


def test_through_mitmdump_no_daemon_outlives_its_run_nor_the_proxy(mitmdump, tmp_path):
    """The finding, end to end: daemons left by every run (one holding stdout, which made every fetch time out),
    and one run hanging with its daemon when the proxy stops."""
    upstreams = [Upstream() for _ in range(3)]
    held, closed, hanging = (tmp_path / name for name in ("held", "closed", "hanging"))
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "".join(
            f"""
- name: {name}
  command: [{DAEMONS}, {mode}, {pidfile}]
  format: headers
  interval: 1s
  timeout: {timeout}
  hosts: 127.0.0.1:{upstream.port}
"""
            for name, mode, pidfile, timeout, upstream in (
                ("held", "held", held, "20s", upstreams[0]),
                ("closed", "closed", closed, "20s", upstreams[1]),
                ("hanging", "hang", hanging, "60s", upstreams[2]),
            )
        )
    )
    try:
        m = mitmdump("--set", f"header_providers_file={providers}")
        with client_for(m.proxy) as c:
            assert values_of(c.get(upstreams[0].url), "X-Daemon") == ["held"]
            assert values_of(c.get(upstreams[1].url), "X-Daemon") == ["closed"]
        # Runs every second, each leaving a daemon: each is gone once its run has ended (the last one may be going).
        for pidfile in (held, closed):
            wait_until(lambda p=pidfile: len(pids_in(p)) >= 3, what=f"three runs of {pidfile.name}")
            assert none_left(pids_in(pidfile)[:-1])
        [[daemon], [command]] = pid_lines(hanging, 2)
        assert session_of(daemon) == daemon
        assert "refresh failed" not in m.output
        assert m.stop() == 0
    finally:
        for u in upstreams:
            u.close()
    everything = pids_in(held) + pids_in(closed) + pids_in(hanging)
    wait_until(lambda: none_left(everything), what="every command and daemon gone")


def test_a_killed_proxy_leaves_no_command_nor_daemon(mitmdump, tmp_path):
    """SIGKILL gives the proxy no chance to stop anything: the supervisor's parent-death signal does it."""
    pidfile = tmp_path / "pids"
    m = mitmdump("--set", "header_hosts=*", "--set", f"header_provider_command={DAEMONS} hang {pidfile}")
    pid_lines(pidfile, 2)  # the daemon and the command have started
    pids = pids_in(pidfile)
    m.proc.kill()
    m.wait_exit()
    wait_until(lambda: none_left(pids), what="the hanging command and its daemon gone")


def test_the_command_gets_sigpipe_and_sigxfsz_as_any_program_does():
    """The supervisor is Python, which ignores both: a command must not inherit that (a writer to a closed pipe
    would go on writing, failing with EPIPE, instead of ending)."""
    script = "sed -n 's/^SigIgn:[[:space:]]*//p' /proc/self/status"
    result = client(command=["sh", "-c", script], format="token").fetch()
    ignored = int(dict(result.answer.headers)["Authorization"].removeprefix("Bearer "), 16)
    assert ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)) == 0


def test_a_reconfiguration_kills_the_running_command_and_its_daemon(mitmdump, tmp_path):
    hung, held = tmp_path / "hung", tmp_path / "held"
    m = mitmdump(
        *("-s", CONSOLE, "--set", "header_hosts=127.0.0.1"),
        *("--set", "header_provider_timeout=60s", "--set", f"header_provider_command={DAEMONS} hang {hung}"),
    )
    pid_lines(hung, 2)  # the daemon and the command have started
    pids = pids_in(hung)
    with client_for(m.proxy) as c:
        answer = c.get("http://console.test/" + quote(f"set header_provider_command '{DAEMONS} held {held}'"))
    assert answer.status_code == 200, answer.text
    wait_until(lambda: none_left(pids), what="the replaced provider's command and daemon gone")
    wait_until(lambda: held.exists() and none_left(pids_in(held)), what="the new provider's run, its daemon gone")
