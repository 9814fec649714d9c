"""What a flow carries from us, from the moment headers are added until its exchange is over (its answer, or the
end of the websocket it became).

That record lets the addon take the headers back if the flow is rerouted after the match, mask the values in the
flow once the request has left (so that saved flows, HAR files, exports and mitmweb never hold them), and scrub the
credentials among them from what the upstream answers, in headers, body and websocket messages: an in-scope upstream
that echoes request headers (httpbin's /headers, a debug endpoint) must not hand the credential to a client that was
never meant to hold it.
"""

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import brotli  # mitmproxy's own dependency for `br`
from mitmproxy import http

try:
    from compression import zstd  # Python 3.14
except ImportError:  # pragma: no cover - the Python mitmproxy 12 runs on here is 3.12 or 3.13
    from backports import zstd  # what mitmproxy itself imports for `zstd` before 3.14

from .snapshot import MARKER_PREFIX, Fields, Secrets, Snapshot, probes_of

# Bodies (and websocket messages) are scrubbed up to this size once decoded; a streamed body is never held, so never
# scrubbed.
MAX_SCRUBBED_BODY = 1024 * 1024
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_IDENTITY = (b"", b"identity", b"none")
# Media types never searched: compressed or encoded so that no value can be read in them as sent, whatever echoes.
# Their bodies are passed on without a decode or a search (image/svg+xml is text, and is searched).
_NEVER_SEARCHED_KINDS = (b"image/", b"audio/", b"video/", b"font/")
_NEVER_SEARCHED_TYPES = frozenset(
    {
        b"application/gzip",
        b"application/x-gzip",
        b"application/zip",
        b"application/zstd",
        b"application/x-xz",
        b"application/x-bzip2",
        b"application/x-7z-compressed",
        b"application/vnd.rar",
    }
)


@dataclass(slots=True)
class Carried:
    """Our part of one flow. `original`, `host` and `port` are the request before the first entry added anything."""

    original: Fields
    host: str
    port: int
    names: frozenset[bytes]  # lower-cased names every entry added (or replaced)
    given: list[tuple[Any, Snapshot]]  # (binding, the snapshot it added), in the order they were applied
    # Where a placeholder was replaced: the request target and the raw body as the client sent them (None: not
    # changed), and (value as sent, value as the client wrote it) for a header changed as a whole (a Basic value).
    target: bytes | None = None
    content: bytes | None = None
    undo: tuple[tuple[bytes, bytes], ...] = ()

    def add(self, binding: Any, snapshot: Snapshot) -> None:
        self.names |= snapshot.names
        self.given.append((binding, snapshot))

    def secrets(self) -> Secrets:
        """What to scrub from the answer: (form of a value, marker or placeholder) longest first, and the forms to
        search for: the credentials among what each entry added, and the headers its `secret_headers` names."""
        if len(self.given) == 1 and not self.undo:
            binding, snapshot = self.given[0]
            return snapshot.scrubbed(binding.settings.secret_headers)
        pairs = {pair for b, s in self.given for pair in s.scrubbed(b.settings.secret_headers)[0]} | set(self.undo)
        return tuple(sorted(pairs, key=lambda pair: -len(pair[0]))), probes_of(value for value, _ in pairs)

    def substituted(self) -> Secrets | None:
        """What puts a placeholder back where its token was sent (None: no placeholder was replaced)."""
        if not self.undo and not any(b.placeholder is not None and b.signer is None for b, _ in self.given):
            return None
        pairs = set(self.undo)
        for binding, snapshot in self.given:
            if binding.placeholder is not None and binding.signer is None:
                pairs.update(snapshot.secrets)
        return tuple(sorted(pairs, key=lambda pair: -len(pair[0]))), probes_of(value for value, _ in pairs)


# The record is an attribute of the flow object, not an entry of flow.metadata: metadata is saved with the flow (and
# deep-copied by get_state and copy), an attribute is not, and it goes when the flow goes; a dict beside the flows
# (weak or not) cost a quarter of the request hook. Checked against mitmproxy 12.3.1: Flow has no __slots__, and
# get_state() reads only its declared state attributes (tests/test_flows_and_echoes.py checks both).
# The request path reads and sets it through `flow.__dict__` itself (a call less per flow: the hook is that small).
CARRIED = "_header_augment_carried"


def carried_by(flow: http.HTTPFlow) -> Carried | None:
    return flow.__dict__.get(CARRIED)


def carry(flow: http.HTTPFlow, carried: Carried) -> None:
    flow.__dict__[CARRIED] = carried


def drop_carried(flow: http.HTTPFlow) -> Carried | None:
    return flow.__dict__.pop(CARRIED, None)


def masked(fields: Fields, given: Iterable[tuple[Any, Snapshot]]) -> Fields | None:
    """The request's fields with each value we added replaced by its marker (None if there was none)."""
    out, changed = list(fields), False
    for _, snapshot in given:
        masks, values = snapshot.masks, snapshot.mask_values
        for index, field in enumerate(out):
            stand_in = masks.get(field)  # a field as we added it: one lookup
            if stand_in is None:
                name, value = field
                if value not in values or (stand_in := masks.get((name.lower(), value))) is None:
                    continue
            out[index] = (field[0], stand_in)
            changed = True
    return tuple(out) if changed else None


def without_markers(fields: Fields) -> Fields | None:
    """A replayed flow's fields without the markers a saved flow holds (None if it has none): the live values are
    added again by the entries whose hosts it goes to, and a marker is never sent anywhere."""
    kept = tuple(f for f in fields if not f[1].startswith(MARKER_PREFIX))
    return kept if len(kept) != len(fields) else None


def scrubbed(data: bytes, secrets: Secrets) -> bytes | None:
    """`data` with every secret replaced by its marker, or None if it holds none."""
    pairs, probes = secrets
    if not probes or len(data) < len(probes[0]) or not any(probe in data for probe in probes):
        return None  # most answers: a search per probe, nothing more
    for value, stand_in in pairs:
        data = data.replace(value, stand_in)
    return data


def scrub_headers(message: http.Message, secrets: Secrets) -> bool:
    """Replace our values in `message`'s header values; whether any was there."""
    return _scrub_fields(message.headers, secrets)


def scrub_trailers(message: http.Message, secrets: Secrets) -> bool:
    """The same in `message`'s trailers (HTTP/2 and 3; mitmproxy refuses HTTP/1 trailers): an echo may put what it
    saw there."""
    trailers = message.trailers
    return trailers is not None and _scrub_fields(trailers, secrets)


def _scrub_fields(headers: http.Headers, secrets: Secrets) -> bool:
    if not secrets[1]:
        return False
    fields = headers.fields
    block = b"\n".join(value for _, value in fields)  # one search per probe, not one per header and probe
    if not any(probe in block for probe in secrets[1]):
        return False
    headers.fields = tuple(
        (name, value if (clean := scrubbed(value, secrets)) is None else clean) for name, value in fields
    )
    return True


def scrub_body(message: http.Message, secrets: Secrets) -> bool:
    """Replace our values in `message`'s body, decoded as mitmproxy decodes it (gzip, deflate, br, zstd), if it is at
    most MAX_SCRUBBED_BODY decoded; whether any was there. The body is encoded again as it was. A body that cannot
    hold a value (too short, a media type never searched) costs no decode."""
    raw = message.raw_content
    if not secrets[1] or not raw or len(raw) > MAX_SCRUBBED_BODY:
        return False
    coding = kind = b""
    for name, value in message.headers.fields:  # one pass: Headers.get is a pass (and a decode) per call
        low = name.lower()
        if low == b"content-encoding":
            coding = value.strip().lower()
        elif low == b"content-type":
            kind = value
    if kind and _never_searched(kind):
        return False
    if coding not in _IDENTITY and (decoded := _decoded(raw, coding.decode("latin-1"))) is not None:
        clean = scrubbed(decoded, secrets)
        if clean is None:
            return False  # and none in the encoded bytes either: what a client could read there, it reads decoded
        message.content = clean  # encoded again with the same Content-Encoding; Content-Length follows
        return True
    # Not encoded, or not decodable within the bound (or not really encoded): the client gets these bytes as they are.
    clean = scrubbed(raw, secrets)
    if clean is None:
        return False
    message.raw_content = clean
    if "content-length" in message.headers:
        message.headers["content-length"] = str(len(clean))
    return True


def _never_searched(kind: bytes) -> bool:
    media = kind.partition(b";")[0].strip().lower()
    return media in _NEVER_SEARCHED_TYPES or (media.startswith(_NEVER_SEARCHED_KINDS) and media != b"image/svg+xml")


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
