"""kind `command`: a program that prints the credential (by default one token), such as `gcloud auth
print-access-token` or `aws eks get-token`. Run at start, at every interval (sooner for a token about to expire) and
on `augment.refresh`; never through a shell, never two at once, and never outliving its run."""

import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

from ..durations import format_duration
from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import Option, SettingsError, setting, shown
from ..formats import Content, read
from ..http_exchange import redact_urls
from ..rules import MAX_BODY_BYTES
from .base import Source

DEFAULT_TIMEOUT = 30.0  # CLI helpers (gcloud, aws) often take seconds to start
# Of stderr only the end is kept: its last line goes into the failure reason, cut to this many characters.
STDERR_TAIL_BYTES = 4096
STDERR_LINE_CHARS = 200
# How often the run checks whether the program has exited while its pipes are still open (a child it started
# may hold them): then its process group is ended, so nothing it started outlives it.
EXIT_POLL = 0.05
# What kubectl tells an exec credential plugin (client-go sets it for every plugin): the ExecCredential version
# we read, and that nobody can answer a prompt. Plugins such as `aws eks get-token` pick their output's apiVersion
# from it; without it some default to a version we might not read, and some would try to prompt on a terminal.
KUBERNETES_EXEC_INFO = json.dumps(
    {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "spec": {"interactive": False}},
    separators=(",", ":"),
)
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _argv(value: object) -> tuple[str, ...]:
    """The program and its arguments. Messages never show them: an argument may be a secret."""
    if isinstance(value, str):
        raise SettingsError(
            "a string is not accepted here: list the program and its arguments, e.g. [gcloud, auth, "
            "print-access-token] (no shell is involved, so nothing would split it)"
        )
    if not isinstance(value, list | tuple) or not value:
        raise SettingsError("expected a non-empty list: the program, then its arguments")
    for number, word in enumerate(value, 1):
        if not isinstance(word, str):
            raise SettingsError(f"item {number} is not a string (quote it)")
        if "\0" in word:
            raise SettingsError(f"item {number} has a NUL character")
    if not value[0]:
        raise SettingsError("the program (item 1) is empty")
    return tuple(value)


def _split(line: str) -> list[str]:
    """The words of a command line, split as a POSIX shell would split them (quotes, backslashes), never run by one."""
    return shlex.split(line)


@dataclass(frozen=True)
class CommandSource(Content, Source):
    KIND: ClassVar[str] = "command"
    LOCATOR: ClassVar[str] = "command"
    DEFAULTS: ClassVar[dict] = {"format": "token", "timeout": DEFAULT_TIMEOUT}

    command: tuple[str, ...] = setting(
        (),
        _argv,
        Option(
            "header_provider_command",
            str,
            "",
            "Command printing the provider's content (by default one token, sent as 'Authorization: Bearer …'), "
            "split into words as a POSIX shell would and run without one. Run at start, at every interval and on "
            "augment.refresh. One of header_provider_url, header_provider_file, header_provider_command.",
            convert=_split,
        ),
    )

    @property
    def program(self) -> str:
        return os.path.basename(self.command[0]) if self.command else ""

    @property
    def display(self) -> str:
        return f"command {self.program}"

    def check(self, label, given):
        if not self.command:
            raise SettingsError(f"{label('command')}: required for kind command")
        program = self.command[0]
        if "/" in program:
            if not os.path.isfile(program) or not os.access(program, os.X_OK):
                raise SettingsError(f"{label('command')}: {shown(program)} is not an executable file")
        elif shutil.which(program) is None:
            raise SettingsError(f"{label('command')}: {shown(program)} is not found on PATH")
        self.check_content(label, given)

    def client(self, timeout: float) -> Client:
        return CommandClient(self, timeout)


class CommandClient(Client):
    def __init__(self, source: CommandSource, timeout: float) -> None:
        self.source = source
        self.timeout = timeout
        self._env = None  # the proxy's own
        if source.format == "exec-credential":
            self._env = {**os.environ, "KUBERNETES_EXEC_INFO": KUBERNETES_EXEC_INFO}
        self._lock = threading.Lock()  # between a run starting and `abort()` from another thread
        self._running: subprocess.Popen | None = None
        self._aborted = False

    def _fetch(self) -> FetchResult:
        program = self.source.program
        with self._lock:
            if self._aborted:
                raise Failed(f"{program}: stopped", "command")
            try:
                proc = subprocess.Popen(
                    self.source.command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=self._env,
                    start_new_session=True,  # its own process group, so all it starts can be ended with it
                )
            except FileNotFoundError:
                raise Failed(f"{program}: not found", "command") from None
            except OSError as e:
                raise Failed(f"{program}: cannot run it ({e.strerror})", "command") from None
            self._running = proc
        try:
            out, err = _collect(proc, time.monotonic() + self.timeout, program, self.timeout)
        finally:
            with self._lock:
                self._running = None
            _end_group(proc)
        if self._aborted:
            raise Failed(f"{program}: stopped", "command")
        line = _last_line(err)
        if proc.returncode < 0:
            raise _failed(program, f"killed by {_signal_name(-proc.returncode)}", line)
        if proc.returncode != 0:
            raise _failed(program, f"exit status {proc.returncode}", line)
        if not out.strip():
            raise _failed(program, "printed nothing", line, "format")
        try:
            parsed = read(self.source, out)
        except Failed as e:
            raise _failed(program, e.reason, line, e.reason_class) from None
        return FetchResult(answer=parsed.answer, lifetime=parsed.lifetime)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._running is not None:
                _kill_group(self._running.pid)


def _collect(proc: subprocess.Popen, deadline: float, program: str, timeout: float) -> tuple[bytes, bytes]:
    """stdout (at most MAX_BODY_BYTES) and the tail of stderr, read together until both end and the program has
    exited, all within `deadline`. Raises Failed (the caller ends the process group)."""
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _failed(program, f"timed out after {format_duration(timeout)}", _last_line(err), "timeout")
            if proc.returncode is None and proc.poll() is not None:
                _kill_group(proc.pid)  # what it left running would hold the pipes open
            for key, _ in selector.select(min(remaining, EXIT_POLL)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = key.data
                buffer += chunk
                if buffer is out and len(out) > MAX_BODY_BYTES:
                    raise _failed(program, f"output larger than {MAX_BODY_BYTES} bytes", "", "size")
                if buffer is err and len(err) > STDERR_TAIL_BYTES:
                    del err[:-STDERR_TAIL_BYTES]
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))  # it closed its output but may still be running
    except subprocess.TimeoutExpired:
        raise _failed(program, f"timed out after {format_duration(timeout)}", _last_line(err), "timeout") from None
    return bytes(out), bytes(err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass  # the group is gone already


def _end_group(proc: subprocess.Popen) -> None:
    """Kill whatever is left of the run's process group, reap the program and close its pipes."""
    _kill_group(proc.pid)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(err: bytes) -> str:
    """The last non-blank line of stderr, made safe to log: no escape sequences or control characters, no URL
    query or userinfo, at most STDERR_LINE_CHARS characters."""
    for raw in reversed(err.splitlines()):
        line = _ESCAPE_SEQUENCE.sub("", raw.decode("utf-8", "replace"))
        line = "".join(c for c in line if c.isprintable()).strip()
        if line:
            return redact_urls(line)[:STDERR_LINE_CHARS]
    return ""


def _failed(program: str, what: str, stderr_line: str, reason_class: str = "command") -> Failed:
    return Failed(f"{program}: {what}: {stderr_line}" if stderr_line else f"{program}: {what}", reason_class)
