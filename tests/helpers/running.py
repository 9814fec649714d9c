"""A child process with its output (stdout and stderr merged) collected line by line, waited on by pattern: the one
runner under the tests' mitmdump (tests/servers.py) and every other program they start (tests/processes.py)."""

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.waiting import DEADLINE


class Running:
    """`cmd` started at once; with `new_session`, in a session of its own, so that its process group (`pgid`) holds
    every process it starts."""

    def __init__(
        self,
        cmd: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        new_session: bool = True,
        spawn: Callable[[list[str], dict[str, str], Path], Any] | None = None,
    ) -> None:
        """`spawn`: starts `cmd` in a session of its own some other way than exec (helpers/zygote.py's fork)."""
        self.cmd = cmd
        if spawn is not None:
            self.proc = spawn(cmd, env, cwd)
            new_session = True
        else:
            self.proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=new_session,
            )
        self.pgid = self.proc.pid if new_session else None
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

    def mark(self) -> int:
        """A position in the output, for `wait_for(..., start=mark)`."""
        with self._cond:
            return len(self._lines)

    def wait_for(self, pattern: str, timeout: float = DEADLINE, start: int = 0) -> re.Match:
        """The first output line (from line `start`) matching `pattern`; fails on timeout or when the output ends
        without one."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        name = Path(self.cmd[0]).name
        with self._cond:
            while True:
                for line in self._lines[start:]:
                    if match := regex.search(line):
                        return match
                if self._ended:
                    raise AssertionError(f"{name}'s output ended without {pattern!r}:\n{''.join(self._lines)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} from {name} within {timeout}s:\n{''.join(self._lines)}")
                self._cond.wait(remaining)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.cmd[0]} still running {timeout}s after being told to stop") from None
        finally:
            self._reader.join(5)

    def kill_group(self) -> None:
        """Last resort at the end of a test: SIGKILL whatever is left in the group (the process alone without one)."""
        try:
            if self.pgid is not None:
                os.killpg(self.pgid, signal.SIGKILL)
            elif self.proc.poll() is None:
                self.proc.kill()
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
