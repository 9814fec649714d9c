"""Reading the files we are pointed at (providers file, file providers): regular files only, within a size limit,
and the stamp that tells when one has changed."""

import os
import stat

from .failures import Failed

Stamp = tuple[int, int, int, int]


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

    Opened without blocking and checked before reading: a FIFO or a device would hang the reader.
    """
    try:
        fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise Failed(f"cannot open it ({e.strerror})", "file") from None
    try:
        st = os.fstat(fd)
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
