"""The cache the request path reads: one immutable object per provider answer, swapped by reference."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

Fields = tuple[tuple[bytes, bytes], ...]


class Merge(Enum):
    REPLACE = "replace"
    APPEND = "append"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Headers from one valid answer, encoded once the way mitmproxy's `Headers.fields` stores them.

    `usable_until` is a `time.monotonic()` deadline (`header_max_stale`); past it the headers are never added.
    """

    fields: Fields
    names: frozenset[bytes]  # lower-cased, for case-insensitive lookups on the request path
    fetched_at: float
    usable_until: float = math.inf
    display_names: tuple[str, ...] = field(default=())

    @classmethod
    def build(cls, headers: Sequence[tuple[str, str]], fetched_at: float, max_stale: float) -> "Snapshot":
        fields = tuple((name.encode("ascii"), value.encode("ascii")) for name, value in headers)
        return cls(
            fields=fields,
            names=frozenset(name.lower() for name, _ in fields),
            fetched_at=fetched_at,
            usable_until=fetched_at + max_stale if max_stale > 0 else math.inf,
            display_names=tuple(name for name, _ in headers),
        )

    def usable(self, now: float) -> bool:
        return now < self.usable_until


# Before the first valid answer: nothing to add, and never usable (so `header_require` refuses).
NOTHING = Snapshot(fields=(), names=frozenset(), fetched_at=-math.inf, usable_until=-math.inf)


def merge(existing: Fields, snapshot: Snapshot, mode: Merge) -> Fields | None:
    """The request's new header fields, or None when nothing changes. One rebuild, no per-header get/set."""
    if not snapshot.fields:
        return None
    names = snapshot.names
    if mode is Merge.REPLACE:
        kept = tuple(f for f in existing if f[0].lower() not in names)
        fields = kept + snapshot.fields
    elif mode is Merge.APPEND:
        fields = existing + snapshot.fields
    else:
        present = {f[0].lower() for f in existing}
        missing = tuple(f for f in snapshot.fields if f[0].lower() not in present)
        if not missing:
            return None
        fields = existing + missing
    return _unlist_from_connection(fields, names)


def _unlist_from_connection(fields: Fields, names: frozenset[bytes]) -> Fields:
    """Drop our header names from any Connection header.

    A client sending `Connection: close, Authorization` would make the next hop treat our Authorization as
    hop-by-hop and strip it (RFC 9110 §7.6.1); the names we add are end-to-end by definition.
    """
    out = None
    for i, (name, value) in enumerate(fields):
        if name.lower() != b"connection":
            continue
        tokens = [t.strip() for t in value.split(b",")]
        keep = [t for t in tokens if t and t.lower() not in names]
        if len(keep) != len([t for t in tokens if t]):
            if out is None:
                out = list(fields)
            out[i] = (name, b", ".join(keep)) if keep else None
    if out is None:
        return fields
    return tuple(f for f in out if f is not None)
