"""What /proc shows of processes: the one reader of /proc/<pid>/stat, cmdline and status in the tests."""

import os
import re
from pathlib import Path


def stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of `pid`, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold anything
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[2])


def processes() -> dict[int, tuple[str, int, int]]:
    """pid → (state, parent pid, process group) for every process /proc shows."""
    seen = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := stat(entry)) is not None:  # None: it has just gone
            seen[int(entry)] = found
    return seen


def cmdline(pid: int) -> str | None:
    """The command line of `pid`, its arguments joined by spaces, or None once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    found = stat(pid)
    return found is not None and found[0] != "Z"


def processes_in_group(pgid: int) -> dict[int, str]:
    """pid → command line of every live (not zombie) process whose process group is `pgid`."""
    found = {}
    for pid, (state, _, group) in processes().items():
        if group == pgid and state != "Z" and (line := cmdline(pid)) is not None:
            found[pid] = line
    return found


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1])


def status_number(pid: int, name: str) -> int:
    """A number from /proc/<pid>/status: `Threads`, `VmRSS` (KiB), …"""
    return int(re.search(rf"^{name}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)[1])
