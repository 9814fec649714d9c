"""kind `command`: a program that prints the credential (by default one token), such as `gcloud auth
print-access-token` or `aws eks get-token`. Run at start, at every interval (sooner for a token about to expire) and
on `augment.refresh`; never through a shell, never two at once, and never outliving its run."""

import errno
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..durations import format_duration
from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import ONE_SOURCE, Option, SettingsError, setting, shown
from ..formats import Content, read
from ..http_exchange import redact_urls
from ..rules import MAX_BODY_BYTES
from .base import Source

DEFAULT_TIMEOUT = 30.0  # CLI helpers (gcloud, aws) often take seconds to start
# Of stderr only the end is kept: its last line goes into the failure reason, cut to this many characters.
STDERR_TAIL_BYTES = 4096
STDERR_LINE_CHARS = 200
# Every run is under this supervisor (see it): it kills whatever the command started, however detached. Run by path,
# isolated and without `site`, so that it starts fast.
REAPER = str(Path(__file__).with_name("reaper.py"))
# How long the supervisor has to kill what is left once it is asked to; then its process group is killed (the
# command is in it, and every child that has not left it).
KILL_GRACE = 5.0
# What kubectl tells an exec credential plugin (client-go sets it for every plugin): the ExecCredential version
# we read, and that nobody can answer a prompt. Plugins such as `aws eks get-token` pick their output's apiVersion
# from it; without it some default to a version we might not read, and some would try to prompt on a terminal.
KUBERNETES_EXEC_INFO = json.dumps(
    {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "spec": {"interactive": False}},
    separators=(",", ":"),
)
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# What in a line of stderr looks like a credential, masked before the line goes into a reason (the log, the status and
# the admin endpoint show it): an Authorization value (a token68 of 8 or more characters: "Bearer token required"
# stays as it is), a JWT (or what is left of one), and a run of 20 or more base64 or hex characters with a digit in
# it. The digit keeps words, names and flags (print-access-token, application_default_credentials) readable: 20
# random base64 characters lack one once in about 30.
_CREDENTIAL_SHAPED = re.compile(
    r"(?i:\b(bearer|basic)\s+)[A-Za-z0-9._~+/-]{8,}=*"
    r"|\beyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"
    r"|(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+/_-]*[0-9])[A-Za-z0-9+/_-]{20,}=*"
)
MASK = "***"


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
            "augment.refresh. " + ONE_SOURCE,
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
        if not sys.platform.startswith("linux"):
            raise SettingsError(
                f"{label('command')}: commands are run on Linux only (where a child subreaper can find and kill "
                "every process a command starts)"
            )
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
            status_read, status_write = os.pipe()
            # The supervisor's parent-death signal comes when the thread that started it ends: this one, which
            # waits for it below whatever happens.
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", REAPER, str(status_write), str(os.getpid()), *self.source.command],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=self._env,
                    start_new_session=True,  # its own process group: the last resort if the supervisor is stuck
                    pass_fds=(status_write,),
                )
            except OSError as e:
                os.close(status_read)
                raise Failed(f"{program}: cannot start its supervisor ({e.strerror})", "command") from None
            finally:
                os.close(status_write)
            self._running = proc
        try:
            try:
                out, err = _collect(proc, time.monotonic() + self.timeout, program, self.timeout)
            finally:
                with self._lock:
                    self._running = None
                _end(proc)
            status = _read_all(status_read)  # the supervisor has exited: nothing else holds the pipe
        finally:
            os.close(status_read)
        if self._aborted:
            raise Failed(f"{program}: stopped", "command")
        what, _, number = status.partition(" ")
        if what == "spawn":
            if int(number) == errno.ENOENT:
                raise Failed(f"{program}: not found", "command")
            raise Failed(f"{program}: cannot run it ({os.strerror(int(number))})", "command")
        line = _last_line(err)
        if what != "exit":
            raise _failed(program, "its supervisor failed", line)
        returncode = os.waitstatus_to_exitcode(int(number))
        if returncode < 0:
            raise _failed(program, f"killed by {_signal_name(-returncode)}", line)
        if returncode != 0:
            raise _failed(program, f"exit status {returncode}", line)
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
                self._running.send_signal(signal.SIGTERM)  # the supervisor kills all the command started


def _collect(proc: subprocess.Popen, deadline: float, program: str, timeout: float) -> tuple[bytes, bytes]:
    """stdout (at most MAX_BODY_BYTES) and the tail of stderr, read together until both end and the supervisor has
    exited, all within `deadline`. They end when the command exits: the supervisor then kills every other process
    holding them. Raises Failed (the caller ends the run)."""
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _failed(program, f"timed out after {format_duration(timeout)}", _last_line(err), "timeout")
            for key, _ in selector.select(remaining):
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
        proc.wait(max(0.0, deadline - time.monotonic()))  # the command closed its output but may still be running
    except subprocess.TimeoutExpired:
        raise _failed(program, f"timed out after {format_duration(timeout)}", _last_line(err), "timeout") from None
    return bytes(out), bytes(err)


def _end(proc: subprocess.Popen) -> None:
    """Have the supervisor kill what is left of the run (nothing once it has exited by itself) and reap it, then kill
    its process group: the last resort, should it have been killed itself or not have finished within KILL_GRACE,
    for the command and every child that has not left the group. Then close the pipes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass  # the group is empty: the supervisor did its work
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 256):
        chunks.append(chunk)
    return b"".join(chunks).decode("ascii", "replace")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(err: bytes) -> str:
    """The last non-blank line of stderr, made safe to log: no escape sequences or control characters, no URL
    query or userinfo, nothing credential-shaped, at most STDERR_LINE_CHARS characters. The one way a command's
    words reach a reason."""
    for raw in reversed(err.splitlines()):
        line = _ESCAPE_SEQUENCE.sub("", raw.decode("utf-8", "replace"))
        line = "".join(c for c in line if c.isprintable()).strip()
        if line:
            return mask_credentials(redact_urls(line))[:STDERR_LINE_CHARS]
    return ""


def mask_credentials(line: str) -> str:
    """`line` with everything credential-shaped in it replaced by MASK (an Authorization scheme is kept)."""
    return _CREDENTIAL_SHAPED.sub(lambda m: f"{m[1]} {MASK}" if m[1] else MASK, line)


def _failed(program: str, what: str, stderr_line: str, reason_class: str = "command") -> Failed:
    return Failed(f"{program}: {what}: {stderr_line}" if stderr_line else f"{program}: {what}", reason_class)
