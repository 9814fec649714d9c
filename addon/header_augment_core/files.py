"""Reading the files we are pointed at (providers file, file providers, key and secret files): regular files only,
never the kernel's, within a size limit, and the stamp that tells when one has changed. And the one way a file is
written (a rotated refresh token): whole or not at all, and on disk before it is used."""

import fcntl
import os
import re
import stat
import tempfile
import time

from .failures import Failed

Stamp = tuple[int, int, int, int]

# The kernel's own file systems. What they hold is the state of the system and its processes (a process's
# environment, its memory maps, ...), read as files that stat calls regular and empty: never a credential or a
# setting meant for us, whatever a symlink says.
KERNEL_FS_TYPES = frozenset(
    {
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "bpf",
        "pstore",
        "efivarfs",
        "binfmt_misc",
        "fusectl",
    }
)
KERNEL_MOUNT_POINTS = ("proc", "sys")  # /proc and /sys, and whatever is mounted below them
MOUNTINFO = "/proc/self/mountinfo"


def _kernel_devices() -> frozenset[int]:
    """The device numbers of every mount of a kernel file system, wherever it is, and of every mount at or under
    /proc and /sys, as this process's mount namespace has them. Read at each use: it is short, and a mount made
    later (with a new device number) is then seen too."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        # No procfs at /proc (so nothing of it can be read there); sysfs may still be mounted at /sys.
        return frozenset(os.stat(f"/{p}").st_dev for p in KERNEL_MOUNT_POINTS if os.path.ismount(f"/{p}"))
    devices = set()
    for line in lines:
        # ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
        fields = line.split(" ")
        fs_type = fields[fields.index("-", 6) + 1]
        major, minor = fields[2].split(":")
        # The mount point's first name: "proc" and "sys" have none of the characters mountinfo escapes (\040).
        if fs_type in KERNEL_FS_TYPES or fields[4].split("/")[1] in KERNEL_MOUNT_POINTS:
            devices.add(os.makedev(int(major), int(minor)))
    return frozenset(devices)


def stamp(path: str) -> Stamp | None:
    """Device, inode, size and mtime of what `path` resolves to (symlinks followed), or None if it cannot be seen.

    An atomic rename and the `..data` symlink swap Kubernetes uses for Secret and ConfigMap volumes both change it.
    """
    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_regular(path: str, limit: int) -> tuple[bytes, Stamp]:
    """The content of a regular file of at most `limit` bytes, and its stamp. Raises Failed (class file or size).

    Opened without blocking and checked before reading: a FIFO or a device would hang the reader or fill memory.
    """
    try:
        fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise Failed(f"cannot open it ({e.strerror})", "file") from None
    try:
        st = os.fstat(fd)
        # What was opened is checked, by its device: a path checked before the open (os.path.realpath) can be
        # swapped for a symlink into /proc between the check and the open, and the name of the opened file
        # (/proc/self/fd/N) misses /proc or /sys mounted or bind-mounted somewhere else (a container's /host/proc).
        # The device of the opened file against those of every kernel mount has neither gap.
        if st.st_dev in _kernel_devices():
            raise Failed("a kernel file (/proc, /sys): not read", "file")
        if not stat.S_ISREG(st.st_mode):
            raise Failed("not a regular file", "file")
        if st.st_size > limit:
            raise Failed(f"larger than {limit} bytes", "size")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Failed(f"larger than {limit} bytes", "size")
    except OSError as e:
        raise Failed(f"cannot read it ({e.strerror})", "file") from None
    finally:
        os.close(fd)
    return b"".join(chunks), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class SettledChange:
    """Tells when a file has changed and then stopped changing: a new stamp, seen the same on two checks in a row.

    A file being written in several steps is never taken half-written (as long as each check sees a step). A file
    that goes away is a change too (its stamp becomes None).
    """

    def __init__(self, path: str, current: Stamp | None) -> None:
        self.path = path
        self.current = current  # the stamp of what is in use (or was last read)
        self.seen = current  # the stamp the last check saw

    def check(self) -> bool:
        """Call once per check: whether a change has settled."""
        now = stamp(self.path)
        settled = now != self.current and now == self.seen
        self.seen = now
        return settled


# Set to a path, it makes `write_atomic` create that file once its temporary file is on disk and wait (at most
# PAUSE_LIMIT seconds) until the file is removed, before the rename: how a test kills the process between the two.
PAUSE_BEFORE_RENAME = "HEADER_AUGMENT_PAUSE_BEFORE_RENAME"
PAUSE_LIMIT = 60.0
# tempfile.mkstemp's names: the prefix, eight of its characters, the suffix.
_TEMPORARY = "[a-z0-9_]{8}\\.tmp"
# A writer locks its temporary file a moment after making it: one younger than this may be in that moment.
STALE_AFTER = 10.0


def write_atomic(path: str, data: bytes) -> Stamp:
    """Replaces `path` (symlinks followed) with a file holding `data`, readable by its owner alone, and returns its
    stamp. A process killed at any point leaves the old content or the new one, never a mix or nothing: a temporary
    file in the same directory, flushed to disk, renamed over the old one, the directory flushed so that the rename
    itself survives a power cut. Only a regular file (or nothing) is replaced. Raises Failed (class file); the
    temporary file does not outlive a failure, and one a killed writer left is removed by the next write."""
    target = os.path.realpath(os.path.expanduser(path))
    directory, name = os.path.split(target)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise Failed(f"cannot write it ({e.strerror})", "file") from None
    else:
        # A symlink to /dev/zero, a FIFO or a directory is not replaced by a file (as root, /dev/zero would be).
        if not stat.S_ISREG(st.st_mode) or st.st_dev in _kernel_devices():
            raise Failed("not a regular file: not replaced", "file")
    _remove_stale(directory, name)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)  # mode 0600
    except OSError as e:
        raise Failed(f"cannot write it ({e.strerror})", "file") from None
    try:
        try:
            # Held until the rename: a temporary nobody holds a lock on is a dead writer's (`_remove_stale`).
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            st = os.fstat(fd)
            if marker := os.environ.get(PAUSE_BEFORE_RENAME):
                _pause(marker)
            os.replace(temporary, target)
        finally:
            os.close(fd)
    except OSError as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise Failed(f"cannot write it ({e.strerror})", "file") from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise Failed(f"written, but its directory could not be flushed to disk ({e.strerror})", "file") from None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _remove_stale(directory: str, name: str) -> None:
    """Removes the temporary files of `name` that a writer killed before its rename left (each holds a token).

    A live writer holds a lock on its own until the rename (another process's `login`, another thread), so only
    the dead's are taken: unlocked, and older than the moment between making one and locking it. Whatever cannot be
    looked at or removed is left: the write goes on all the same."""
    pattern = re.compile(re.escape(f".{name}.") + _TEMPORARY)
    try:
        names = [n for n in os.listdir(directory) if pattern.fullmatch(n)]
    except OSError:
        return
    for stale in names:
        stale_path = os.path.join(directory, stale)
        try:
            fd = os.open(stale_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone already (renamed into place, or removed), or a symlink: not ours
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > STALE_AFTER:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Its writer is gone. Only this name is removed: if the writer had renamed it, it is not there.
                os.unlink(stale_path)
        except OSError:
            pass  # locked: a writer at work
        finally:
            os.close(fd)


def _pause(marker: str) -> None:
    with open(marker, "x"):
        pass
    deadline = time.monotonic() + PAUSE_LIMIT
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
