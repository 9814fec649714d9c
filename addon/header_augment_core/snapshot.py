"""The cache the request path reads: one immutable object per provider answer, swapped by reference."""

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote, quote_from_bytes

from .secret_headers import is_credential

Fields = tuple[tuple[bytes, bytes], ...]
Pairs = tuple[tuple[bytes, bytes], ...]  # (a form of a value, the marker that replaces it), longest first
Secrets = tuple[Pairs, tuple[bytes, ...]]  # what to scrub from an answer: the pairs, and the probes searched for

MARKER_PREFIX = b"<header-augment: "
# A credential shorter than this is replaced nowhere: searching an answer for 4 characters would mangle its text.
MIN_SCRUBBED = 8
# "Bearer <token>", "Basic <credentials>": an echo may show the credential without its scheme word.
_SCHEME_AND_CREDENTIALS = re.compile(rb"([A-Za-z][A-Za-z0-9._~+/-]*) +(\S+)")


class TokenForms(NamedTuple):
    """A token written for each place a placeholder is replaced in: as it is (a header, a text body or message),
    percent-encoded (a query, a path, a form: `+`, `/` and `=` too) and JSON-escaped (in a JSON string)."""

    raw: bytes
    url: bytes
    json: bytes

    @classmethod
    def of(cls, token: bytes) -> "TokenForms":
        value = token.decode("ascii")
        return cls(token, quote(value, safe="-._~").encode(), json.dumps(value)[1:-1].encode())


def marker(name: str) -> bytes:
    """What stands in a flow, or in an answer, where one of our values was."""
    return MARKER_PREFIX + name.encode("ascii") + b">"


class Merge(Enum):
    REPLACE = "replace"
    APPEND = "append"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Headers from one valid answer, encoded once the way mitmproxy's `Headers.fields` stores them.

    `usable_until` is a `time.monotonic()` deadline: the earlier of `expires_at` (the credential's own lifetime) and
    `header_max_stale` after `fetched_at`. Past it the headers are never added.
    """

    fields: Fields
    fields_h2: Fields  # the same with lower-case names, as HTTP/2 and HTTP/3 require
    lowered: tuple[bytes, ...]  # the names of `fields`, lower-cased, in order
    names: frozenset[bytes]  # the same as a set, for case-insensitive lookups on the request path
    fetched_at: float
    usable_until: float = math.inf
    expires_at: float = math.inf
    display_names: tuple[str, ...] = field(default=())
    summary: str = ""  # for a flow's comment: "added A, B"
    # Made with the snapshot, on the refresher's thread, so that the event loop only looks them up:
    # (lower-cased name, value) → its marker; and (name as `fields` spells it, value), which finds a field as it
    # was added without lower-casing its name.
    masks: Mapping[tuple[bytes, bytes], bytes] = MappingProxyType({})
    # The forms of the credential headers' values an answer may echo (`_forms`), each with its marker: what answers
    # are scrubbed of. Every added value is masked in the flow; only these are searched for in answers.
    secrets: Pairs = ()
    probes: tuple[bytes, ...] = ()  # the fewest of those forms that any of them contains: what is searched for
    # The other headers' forms by lower-cased name, for an entry whose `secret_headers` names them.
    others: Mapping[str, Pairs] = MappingProxyType({})
    signing: Any = None  # a signing kind's credentials (aws-sigv4): no headers, a signature made per request
    # A snapshot of one `Authorization: Bearer <token>`: the token in the forms a placeholder is replaced with.
    token: TokenForms | None = None
    # The values masked, to pass over a field spelled another way with a set lookup (derived from `masks`).
    mask_values: frozenset[bytes] = field(init=False, repr=False, compare=False)
    # scrubbed()'s answers by secret_headers: entries sharing this snapshot may name different ones.
    _scrubbed: dict[frozenset[str], Secrets] = field(init=False, repr=False, compare=False, default_factory=dict)
    # stand_in()'s answers by placeholder.
    _stand_ins: dict[bytes, "Snapshot"] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_values", frozenset(value for _, value in self.masks))

    @classmethod
    def build(
        cls,
        headers: Sequence[tuple[str, str]],
        fetched_at: float,
        max_stale: float,
        lifetime: float | None = None,
        signing: Any = None,
        secret: Callable[[str], bool] = is_credential,
        previous: "Snapshot | None" = None,
    ) -> "Snapshot":
        """`max_stale` (0: forever) and `lifetime` (the credential's, if known) both bound how long it is usable.
        `secret(name)`: whether a header's value is a credential, scrubbed from answers whatever an entry names in
        its `secret_headers` (by default the names `is_credential` knows; `lambda name: True` makes all of them).
        `previous`: the snapshot this one replaces, built with the same `secret`: headers fetched again unchanged
        (most refreshes) take its forms, markers and masks, and only their times are new."""
        fields = tuple((name.encode("ascii"), value.encode("ascii")) for name, value in headers)
        expires_at = math.inf if lifetime is None else fetched_at + lifetime
        usable_until = _usable_until(fetched_at, max_stale, expires_at)
        unchanged = previous is not None and previous.fields == fields and previous.signing is None
        if fields and unchanged and signing is None:
            return replace(previous, fetched_at=fetched_at, usable_until=usable_until, expires_at=expires_at)
        lowered = tuple(name.lower() for name, _ in fields)
        markers = tuple(marker(name) for name, _ in headers)
        secrets: dict[bytes, bytes] = {}
        others: dict[str, dict[bytes, bytes]] = {}
        for (name, value), low, stand_in in zip(headers, lowered, markers, strict=True):
            into = secrets if secret(name) else others.setdefault(name.lower(), {})
            for form in _forms(low, value.encode("ascii")):
                into.setdefault(form, stand_in)
        return cls(
            fields=fields,
            fields_h2=tuple(zip(lowered, (value for _, value in fields), strict=True)),
            lowered=lowered,
            names=frozenset(lowered),
            fetched_at=fetched_at,
            usable_until=usable_until,
            expires_at=expires_at,
            display_names=tuple(name for name, _ in headers),
            summary=f"added {', '.join(name for name, _ in headers)}",
            masks=MappingProxyType(
                {
                    key: m
                    for low, (name, value), m in zip(lowered, fields, markers, strict=True)
                    for key in ((name, value), (low, value))
                }
            ),
            secrets=_longest_first(secrets.items()),
            probes=probes_of(secrets),
            others=MappingProxyType({name: _longest_first(pairs.items()) for name, pairs in others.items()}),
            signing=signing,
            token=_token_of(fields),
        )

    def stand_in(self, placeholder: bytes) -> "Snapshot":
        """What a flow carries once `placeholder` was replaced by this snapshot's token: no header of its own, and
        every form of the token scrubbed from answers (and masked in the flow) back to the placeholder, so that a
        tool comparing what it sent sees its own value. Made once per snapshot and placeholder."""
        found = self._stand_ins.get(placeholder)
        if found is None:
            forms = self.token
            assert forms is not None
            pairs = {form: placeholder for form in (*forms, *_echoed(forms)) if len(form) >= MIN_SCRUBBED}
            found = Snapshot(
                fields=((b"token", forms.raw),),  # what the audit line's fingerprint is made of
                fields_h2=(),
                lowered=(),
                names=frozenset(),
                fetched_at=self.fetched_at,
                usable_until=self.usable_until,
                expires_at=self.expires_at,
                secrets=_longest_first(pairs.items()),
                probes=probes_of(pairs),
            )
            self._stand_ins[placeholder] = found
        return found

    def scrubbed(self, more: frozenset[str]) -> Secrets:
        """What an answer is scrubbed of: the credentials' forms, and those of the headers named in `more` (an
        entry's lower-cased `secret_headers`)."""
        if not more:
            return self.secrets, self.probes
        found = self._scrubbed.get(more)
        if found is None:
            merged = dict(self.secrets)
            for name, pairs in self.others.items():
                if name in more:
                    for value, stand_in in pairs:
                        merged.setdefault(value, stand_in)
            found = _longest_first(merged.items()), probes_of(merged)
            self._scrubbed[more] = found
        return found

    def restamped(self, max_stale: float) -> "Snapshot":
        """The same headers, usable for as long as `max_stale` (and their own lifetime) allows."""
        return replace(self, usable_until=_usable_until(self.fetched_at, max_stale, self.expires_at))

    def usable(self, now: float) -> bool:
        return now < self.usable_until


def _echoed(forms: TokenForms) -> tuple[bytes, ...]:
    """Other spellings an upstream's echo may give a token that the client's placeholder has the same in all: JSON
    with `/` escaped (PHP's json_encode, and others, by default), and percent-encoding with lower-case hex (.NET's
    HttpUtility.UrlEncode)."""
    return forms.json.replace(b"/", b"\\/"), re.sub(rb"%[0-9A-F]{2}", lambda m: m[0].lower(), forms.url)


def _token_of(fields: Fields) -> TokenForms | None:
    if len(fields) != 1 or fields[0][0].lower() != b"authorization":
        return None
    scheme, _, token = fields[0][1].partition(b" ")
    return TokenForms.of(token) if scheme == b"Bearer" and token else None


def _forms(low: bytes, value: bytes) -> list[bytes]:
    """The forms in which an answer may show a value of the header `low` (lower-cased): the value; the credentials
    without their scheme word; Basic's `user:password` decoded, and the password; each cookie's value; and each of
    these percent-encoded where that differs (a redirect's query). Only forms of MIN_SCRUBBED bytes or more."""
    forms = [value]
    scheme = _SCHEME_AND_CREDENTIALS.fullmatch(value)
    if scheme is not None:
        credentials = scheme[2]
        # Without base64's padding, it is also found where the padding was percent-encoded, or left off.
        forms += [credentials, credentials.rstrip(b"=")]
        if scheme[1].lower() == b"basic":
            try:
                decoded = base64.b64decode(credentials, validate=True)
                # UTF-8 only: found in UTF-8 text (a websocket's), it starts and ends on a character, and the marker
                # in its place leaves the text valid.
                decoded.decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = b""
            if decoded:
                forms += [decoded, decoded.partition(b":")[2]]
    if low == b"cookie":
        forms += [pair.partition(b"=")[2].strip() for pair in value.split(b";")]
    forms += [quoted for form in forms if (quoted := quote_from_bytes(form, safe="").encode()) != form]
    return [form for form in dict.fromkeys(forms) if len(form) >= MIN_SCRUBBED]


def _longest_first(pairs) -> Pairs:
    """Longest first: a form that holds another (`Bearer t`, `t`) is replaced whole."""
    return tuple(sorted(pairs, key=lambda pair: -len(pair[0])))


def probes_of(values) -> tuple[bytes, ...]:
    """The values that contain no other, shortest first: an answer holds one of `values` only if it holds one of
    these, and one shorter than the first holds none."""
    ordered = sorted(set(values), key=len)
    kept: list[bytes] = []
    for value in ordered:
        if not any(shorter in value for shorter in kept):
            kept.append(value)
    return tuple(kept)


def _usable_until(fetched_at: float, max_stale: float, expires_at: float) -> float:
    return min(expires_at, fetched_at + max_stale if max_stale > 0 else math.inf)


# Before the first valid answer: nothing to add, and never usable (so `header_require` refuses).
NOTHING = Snapshot(fields=(), fields_h2=(), lowered=(), names=frozenset(), fetched_at=-math.inf, usable_until=-math.inf)


NO_CLASHES: frozenset[bytes] = frozenset()


def merge(
    existing: Fields, snapshot: Snapshot, mode: Merge, h2: bool = False
) -> tuple[Fields | None, frozenset[bytes] | set[bytes]]:
    """The request's new header fields (None when nothing changes), and our (lower-cased) names it had already.

    `h2`: the request is HTTP/2 or HTTP/3, whose header names are lower-case (mitmproxy would lower-case ours and
    log a line for each, on every request).

    One pass over the request's fields and one tuple built: this runs for every request, so no per-header
    get/set on mitmproxy's `Headers` (each of which scans all fields again).
    """
    if not snapshot.fields:
        return None, NO_CLASHES
    names = snapshot.names
    clashes: set[bytes] | None = None  # our names the request already has (made on the first: it is rare)
    kept = []
    for entry in existing:
        name = entry[0].lower()
        if name in names:
            if clashes is None:
                clashes = set()
            clashes.add(name)
            if mode is Merge.REPLACE:
                continue
        elif name == b"connection" and (b"," in entry[1] or entry[1].strip().lower() in names):
            entry = _unlisted(entry, names)  # the usual `keep-alive` or `close` never gets here
            if entry is None:
                continue
        kept.append(entry)
    added = snapshot.fields_h2 if h2 else snapshot.fields
    if clashes is None:
        return (*kept, *added), NO_CLASHES
    if mode is Merge.KEEP:
        added = tuple(f for f, name in zip(added, snapshot.lowered, strict=True) if name not in clashes)
        if not added:
            return None, clashes
    return (*kept, *added), clashes


def _unlisted(field: tuple[bytes, bytes], names: frozenset[bytes]) -> tuple[bytes, bytes] | None:
    """A Connection header without our names in it (None if nothing is left).

    A client sending `Connection: close, Authorization` would make the next hop treat our Authorization as
    hop-by-hop and strip it (RFC 9110 §7.6.1); the names we add are end-to-end by definition.
    """
    tokens = [t.strip() for t in field[1].split(b",")]
    if names.isdisjoint(t.lower() for t in tokens):
        return field
    keep = [t for t in tokens if t and t.lower() not in names]
    return (field[0], b", ".join(keep)) if keep else None
