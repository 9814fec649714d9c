"""The supervisor every run of a command runs under (Linux): nothing the command starts outlives the run.

    python -I -S reaper.py STATUS_FD PROXY_PID PROGRAM [ARG...]

It makes itself a child subreaper, so every process the command starts stays its descendant however it detaches
(`setsid`, a double fork: an orphan is handed to the nearest subreaper, not to init). Once the command has exited,
or when the proxy asks (SIGTERM) or dies (the parent-death signal), it kills and reaps every descendant, then writes
`exit <wait status>` on STATUS_FD (`spawn <errno>` when the program could not be started) and exits. With them dies
every copy of the command's standard output: the proxy reads it to its end, which comes when the command exits.

Run by path with `-I -S` so that it starts fast: it imports nothing but the standard library."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class Stop(Exception):
    pass


def _stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: what follows is the same whatever arrives next
    raise Stop


def _children() -> list[int]:
    """Our children, from /proc (every Linux has it; /proc/PID/task/TID/children needs a kernel option)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # it has just gone
            if int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1]) == me:
                found.append(int(entry))
    return found


def _kill_all() -> None:
    """SIGKILL every child and reap it, until none is left: the orphans of each one killed come to us next. A child
    cannot be reaped by anyone else, so its pid is not reused while we kill it."""
    while True:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def main(argv: list[str]) -> None:
    status_fd, proxy, command = int(argv[1]), int(argv[2]), argv[3:]
    os.set_inheritable(status_fd, False)  # the command must not hold it
    signal.signal(signal.SIGTERM, _stop)
    status = ""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for option, value in ((PR_SET_CHILD_SUBREAPER, 1), (PR_SET_PDEATHSIG, signal.SIGTERM)):
            if libc.prctl(option, value, 0, 0, 0) != 0:
                sys.exit(f"prctl: {os.strerror(ctypes.get_errno())}")
        if os.getppid() != proxy:
            raise Stop  # the proxy died before the parent-death signal was set
        try:
            # Python ignores SIGPIPE and SIGXFSZ; the command gets them as any program would.
            pid = os.posix_spawnp(command[0], command, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        except OSError as e:
            status = f"spawn {e.errno}"
        else:
            while True:
                reaped, wait_status = os.waitpid(-1, 0)  # orphans that end on their own are reaped on the way
                if reaped == pid:
                    status = f"exit {wait_status}"
                    break
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except Stop:
        pass
    _kill_all()
    try:
        os.write(status_fd, status.encode())
    except OSError:
        pass  # the proxy has gone


if __name__ == "__main__":
    main(sys.argv)
