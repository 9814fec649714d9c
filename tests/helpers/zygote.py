"""The tests' mitmdump, forked from a process that has imported mitmproxy once.

Each mitmdump a test starts is mitmproxy's own `mitmdump` entry point (what the `mitmdump` command runs:
`sys.exit(mitmproxy.tools.main.mitmdump())`) in a process of its own, in a session of its own, with the test's
arguments, environment, directory and output pipe, and it ends as a Python process ends (atexit, threads joined, its
exit status). Only the start differs: the process is forked from this server, which imported mitmproxy and the
addon's dependencies once, instead of being exec'd. Importing them is most of a start's CPU time (about 0.8 s of
1.1 s here) and the suite starts well over a hundred proxies on two cores.

The addon itself is not imported here: mitmproxy's script loader imports addon/header_augment.py in the child as it
would in any mitmdump (and the script drops and re-imports its package). A test that changes what the interpreter
imports (PYTHONPATH, a hidden package) gets an exec'd mitmdump instead (tests/servers.py decides).

Run as `python zygote.py SOCKET`: it serves on a Unix socket until its standard input closes (its test process
ended). A request is one datagram (SOCK_SEQPACKET keeps it whole) of JSON {argv, env, cwd} carrying three file
descriptors (stdin, stdout, stderr); the answer is the child's pid, then its exit status when it ends.
"""

import importlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Everything a mitmdump with the addon imports that is not the addon: mitmproxy with its default addons, and the
# libraries the addon's package imports at load.
PRELOAD = (
    "mitmproxy.tools.main",
    "mitmproxy.tools.dump",
    "mitmproxy.tools.cmdline",
    "mitmproxy.test.taddons",
    "httpx",
    "httpcore",
    "idna",
    "jwt",
    "cryptography.hazmat.primitives.serialization",
    "prometheus_client",
    "ruamel.yaml",
    "tornado.httpserver",
    "tornado.web",
    "brotli",
    "botocore.session",
    "botocore.auth",
    "botocore.credentials",
)
_PID = struct.Struct("!i")
_MAX_REQUEST = 1 << 20


def serve(path: str) -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    print("ready", flush=True)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the connection that asked for it)
    while True:
        for key, _ in selector.select():
            if key.data == "parent":
                return  # the test process has ended: its children are its fixtures' to stop, not ours
            if key.data == "accept":
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
                pid = os.fork()
                if pid == 0:
                    for pidfd, (_, asked) in children.items():
                        os.close(pidfd)
                        asked.close()
                    selector.close()
                    listener.close()
                    conn.close()
                    _child(json.loads(message), fds)  # never returns: it raises SystemExit
                for fd in fds:
                    os.close(fd)
                conn.send(_PID.pack(pid))
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
            else:
                pidfd = key.fd
                selector.unregister(pidfd)
                pid, conn = children.pop(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                try:
                    conn.send(_PID.pack(os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass  # the test has let go of it
                conn.close()


def _child(request: dict, fds: list[int]) -> None:
    """Become the test's mitmdump. Ends by raising SystemExit, which unwinds to the top of this interpreter and ends
    it as any Python program ends."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # This interpreter's streams were made for the server's own; the child's are the test's pipe, written through
    # (the tests' environment has PYTHONUNBUFFERED=1, as an exec'd mitmdump would honour).
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
    sys.argv = request["argv"]
    if os.path.basename(sys.argv[0]) == COMMAND:
        sys.exit(_command())
    from mitmproxy.tools.main import mitmdump

    sys.exit(mitmdump())


# -- the header-augment command (issue 30) ------------------------------------------------------------------------
# A request whose argv[0] is named `header-augment` becomes the `header-augment` command that pyproject.toml installs
# (header_augment_core.cli:main), run from the clone: its package is imported in the child, never here, so that the
# script loader's re-import of it in the child is the same as in any other process.
COMMAND = "header-augment"


def _command() -> int | None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addon"))
    from header_augment_core.cli import main

    return main(sys.argv[1:])


class Forked:
    """The part of `subprocess.Popen` the tests use, for a process the zygote forked: its output is `stdout` (stdout
    and stderr together, as text), its exit status comes from the zygote, which reaps it."""

    def __init__(self, zygote: "Zygote", argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args = argv
        self.returncode: int | None = None
        read, write = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._conn.connect(zygote.path)
            socket.send_fds(
                self._conn, [json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()], [devnull, write, write]
            )
            answer = self._conn.recv(_PID.size)
        finally:
            os.close(write)
            os.close(devnull)
        if len(answer) != _PID.size:
            os.close(read)
            raise RuntimeError("the mitmdump zygote did not start a process")
        (self.pid,) = _PID.unpack(answer)
        self.stdout = open(read, encoding="utf-8", errors="replace")

    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                answer = self._conn.recv(_PID.size)
            except (TimeoutError, BlockingIOError):
                return None
            if len(answer) != _PID.size:
                raise RuntimeError("the mitmdump zygote ended before its child")
            (self.returncode,) = _PID.unpack(answer)
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._status(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """One server per test process, started on first use and ended with it."""

    _lock = threading.Lock()
    _one: "Zygote | None" = None

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="zygote-")
        self.path = os.path.join(self._directory.name, "socket")
        self._server = subprocess.Popen(
            [sys.executable, __file__, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if self._server.stdout.readline().strip() != "ready":
            raise RuntimeError("the mitmdump zygote did not start")

    @classmethod
    def get(cls) -> "Zygote":
        with cls._lock:
            if cls._one is None or cls._one._server.poll() is not None:
                cls._one = cls()
            return cls._one

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> Forked:
        return Forked(self, argv, env, cwd)


if __name__ == "__main__":
    serve(sys.argv[1])
