"""What a flow carries from us, from the moment headers are added until its exchange is over.

That record lets the addon take the headers back if the flow is rerouted after the match, mask the values in the
flow once the request has left (so that saved flows, HAR files, exports and mitmweb never hold them), and scrub them
from what the upstream answers: an in-scope upstream that echoes request headers (httpbin's /headers, a debug
endpoint) must not hand the credential to a client that was never meant to hold it.
"""

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import brotli  # mitmproxy's own dependency for `br`
from mitmproxy import http

try:
    from compression import zstd  # Python 3.14
except ImportError:  # pragma: no cover - the Python mitmproxy 12 runs on here is 3.12 or 3.13
    from backports import zstd  # what mitmproxy itself imports for `zstd` before 3.14

from .snapshot import Fields, Snapshot

MARKER_PREFIX = b"<header-augment: "
# Values shorter than this (`X-Tenant: eu`) are no secret, and replacing them would mangle unrelated text in bodies.
MIN_SCRUBBED = 8
# Bodies are scrubbed up to this size once decoded; a streamed body is never held, so never scrubbed.
MAX_SCRUBBED_BODY = 1024 * 1024
# "Bearer <token>", "Basic <credentials>": an echo may show the credential without its scheme word.
_SCHEME_AND_CREDENTIALS = re.compile(rb"[A-Za-z][A-Za-z0-9._~+/-]* +(\S+)")
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def marker(name: str) -> bytes:
    """What stands in a flow, or in an answer, where one of our values was."""
    return MARKER_PREFIX + name.encode("ascii") + b">"


@dataclass(slots=True)
class Carried:
    """Our part of one flow. `original`, `host` and `port` are the request before the first entry added anything."""

    original: Fields
    host: str
    port: int
    names: frozenset[bytes]  # lower-cased names every entry added (or replaced)
    given: list[tuple[Any, Snapshot]]  # (binding, the snapshot it added), in the order they were applied
    _secrets: tuple[tuple[bytes, bytes], ...] | None = field(default=None)

    def add(self, binding: Any, snapshot: Snapshot) -> None:
        self.names |= snapshot.names
        self.given.append((binding, snapshot))

    def secrets(self) -> tuple[tuple[bytes, bytes], ...]:
        """(value, marker) for each value worth scrubbing, longest first (a value before the credential in it)."""
        if self._secrets is None:
            found: dict[bytes, bytes] = {}
            for _, snapshot in self.given:
                for name, (_, value) in zip(snapshot.display_names, snapshot.fields, strict=True):
                    stand_in = marker(name)
                    credentials = _SCHEME_AND_CREDENTIALS.fullmatch(value)
                    for needle in (value, credentials and credentials[1]):
                        if needle and len(needle) >= MIN_SCRUBBED:
                            found.setdefault(needle, stand_in)
            self._secrets = tuple(sorted(found.items(), key=lambda item: -len(item[0])))
        return self._secrets


def masked(fields: Fields, given: Iterable[tuple[Any, Snapshot]]) -> Fields | None:
    """The request's fields with each value we added replaced by its marker (None if there was none)."""
    ours: dict[tuple[bytes, bytes], bytes] = {}
    for _, snapshot in given:
        for name, low, (_, value) in zip(snapshot.display_names, snapshot.lowered, snapshot.fields, strict=True):
            ours[(low, value)] = marker(name)
    out, changed = [], False
    for name, value in fields:
        stand_in = ours.get((name.lower(), value))
        if stand_in is not None:
            out.append((name, stand_in))
            changed = True
        else:
            out.append((name, value))
    return tuple(out) if changed else None


def without_markers(fields: Fields) -> Fields | None:
    """A replayed flow's fields without the markers a saved flow holds (None if it has none): the live values are
    added again by the entries whose hosts it goes to, and a marker is never sent anywhere."""
    kept = tuple(f for f in fields if not f[1].startswith(MARKER_PREFIX))
    return kept if len(kept) != len(fields) else None


def _scrubbed(data: bytes, secrets: tuple[tuple[bytes, bytes], ...]) -> bytes | None:
    """`data` with every secret replaced by its marker, or None if it holds none."""
    found = False
    for needle, stand_in in secrets:
        if needle in data:
            data = data.replace(needle, stand_in)
            found = True
    return data if found else None


def scrub_headers(message: http.Message, secrets: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Replace our values in `message`'s header values; whether any was there."""
    changed = False
    fields = []
    for name, value in message.headers.fields:
        clean = _scrubbed(value, secrets)
        if clean is not None:
            value, changed = clean, True
        fields.append((name, value))
    if changed:
        message.headers.fields = tuple(fields)
    return changed


def scrub_body(message: http.Message, secrets: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Replace our values in `message`'s body, decoded as mitmproxy decodes it (gzip, deflate, br, zstd), if it is at
    most MAX_SCRUBBED_BODY decoded; whether any was there. The body is encoded again as it was."""
    raw = message.raw_content
    if not raw or len(raw) > MAX_SCRUBBED_BODY:
        return False
    coding = message.headers.get("content-encoding", "").strip().lower()
    decoded = _decoded(raw, coding) if coding not in ("", "identity", "none") else raw
    if decoded is not None:
        clean = _scrubbed(decoded, secrets)
        if clean is not None:
            message.content = clean  # encoded again with the same Content-Encoding; Content-Length follows
            return True
    # Not decodable within the bound (or not really encoded): what the client gets is these bytes as they are.
    clean = _scrubbed(raw, secrets)
    if clean is None:
        return False
    message.raw_content = clean
    if "content-length" in message.headers:
        message.headers["content-length"] = str(len(clean))
    return True


def _decoded(raw: bytes, coding: str) -> bytes | None:
    """`raw` decoded, or None if it is larger than MAX_SCRUBBED_BODY decoded, incomplete or not decodable: never
    more than the bound is held, whatever the compression ratio."""
    limit = MAX_SCRUBBED_BODY + 1
    try:
        if coding in _ZLIB_WBITS or coding == "deflateraw":
            wbits = _ZLIB_WBITS.get(coding, -zlib.MAX_WBITS)
            try:
                decompressor = zlib.decompressobj(wbits)
                out = decompressor.decompress(raw, limit)
            except zlib.error:
                if coding != "deflate":
                    return None
                decompressor = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate without the zlib header, as mitmproxy
                out = decompressor.decompress(raw, limit)
            complete = decompressor.eof and not decompressor.unused_data
        elif coding == "br":
            brotli_decompressor = brotli.Decompressor()
            out = brotli_decompressor.process(raw, output_buffer_limit=limit)
            complete = brotli_decompressor.is_finished()
        elif coding == "zstd":
            zstd_decompressor = zstd.ZstdDecompressor()
            out = zstd_decompressor.decompress(raw, max_length=limit)
            complete = zstd_decompressor.eof and not zstd_decompressor.unused_data
        else:
            return None
    except (zlib.error, brotli.error, zstd.ZstdError):
        return None
    return out if complete and len(out) <= MAX_SCRUBBED_BODY else None
