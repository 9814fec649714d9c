"""A command run in its own process group with its output collected, and what is left of it after it stops.

For the tests of commands that start other processes (scripts/run, the installed `header-augment`): the group
started with `start_new_session=True` holds every process the command started, so /proc shows what remains.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from servers import DEADLINE, wait_until


class Running:
    """`cmd` in a new session (its own process group), stdout and stderr merged and collected line by line."""

    def __init__(self, cmd: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self._lines: list[str] = []
        self._ended = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """The first output line matching `pattern`; fails on timeout or when the output ends without one."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if match := regex.search(line):
                        return match
                if self._ended:
                    raise AssertionError(f"output ended without {pattern!r}:\n{''.join(self._lines)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s:\n{''.join(self._lines)}")
                self._cond.wait(remaining)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.cmd[0]} still running {timeout}s after being told to stop") from None
        finally:
            self._reader.join(5)

    def kill_group(self) -> None:
        """Last resort at the end of a test: SIGKILL whatever is left in the group."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)


def processes_in_group(pgid: int) -> dict[int, str]:
    """pid → command line of every live (not zombie) process whose process group is `pgid`, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port`: a connection is refused and a new listener can bind it."""
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return False
    except OSError:
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from closed connections is no listener
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def wait_all_gone(pids, timeout: float = DEADLINE) -> None:
    pids = set(pids)
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout, 0.05, f"processes {sorted(pids)} to end")
