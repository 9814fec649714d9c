"""Which request paths an entry is for (field `paths`, option `header_paths`): path prefixes, matched against the
request's path alone (never its query), once normalised.

A request's path is taken as mitmproxy will send it (`Request.data.path`: the request line's target or HTTP/2's
`:path`, after any addon rewrote it) up to its first `?`, then normalised as RFC 3986 §6.2.2 says: an escaped
unreserved character (`%41`, `%7E`) is decoded, every other escape upper-cased (`%2f` is `%2F`), a byte beyond ASCII
escaped. An escaped slash or backslash (`%2F`, `%5C`) is not decoded: it is a character of its segment, never a
boundary. `//` stays as it is (an S3 key may hold empty segments): paths are compared exactly once normalised.

A prefix takes whole segments: `/v2/` takes `/v2/` and what is below it; `/v2` takes `/v2` as well; neither takes
`/v2x`.

Some paths are read differently by different servers, and those match no prefix at all (the entry leaves the request
alone): one that does not start with `/` (`*` of `OPTIONS *`, an absolute URL sent as HTTP/2's `:path`), one with a
`#`, and one with a dot segment — `.` or `..` between slashes, backslashes or escapes of them once every escape is
decoded, or followed by `;` parameters. Resolving dot segments (RFC 3986 §5.2.4) is not safe here: S3 keeps them in
the key (`/secret/../allowed/x` is the key `../allowed/x` in the bucket `secret`) while web servers resolve them,
Tomcat reads `..;` as `..`, and a server may decode `%2F` or decode twice first. Clients resolve dot segments before
sending (curl without `--path-as-is`, browsers, the AWS SDKs), so only a request made by hand has one."""

import re
from collections.abc import Callable
from urllib.parse import quote_from_bytes

from .fields import SettingsError, comma_list, shown

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_HEX = "0123456789ABCDEFabcdef"
# Every escape, in either case, to its byte and to its normal form: looked up, not worked out for each request.
_DECODED = {f"%{a}{b}".encode(): bytes((int(a + b, 16),)) for a in _HEX for b in _HEX}
_NORMAL = {escape: byte if byte[0] in _UNRESERVED else escape.upper() for escape, byte in _DECODED.items()}
_ASCII = bytes(range(128))
_PERCENT, _BACKSLASH, _HASH = b"%\\#"
# A dot segment as a lenient server may find it, once every escape is decoded (`%2F` and `%5C` included).
_DOT_SEGMENT = re.compile(rb"[/\\]\.\.?(?=[/\\;?#\x00-\x20\x7f]|\Z)")
_ENCODED_SEPARATOR = re.compile(rb"%(?:2F|5C)")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-F]{2})")


def _normal(match: re.Match[bytes]) -> bytes:
    return _NORMAL[match[0]]


def _decoded(match: re.Match[bytes]) -> bytes:
    return _DECODED[match[0]]


def normalise(target: bytes) -> bytes | None:
    """The path of a request target (path and query, as `Request.data.path` holds it), normalised; None for one
    no prefix matches (see the module's text)."""
    path = target.partition(b"?")[0]
    if not path.startswith(b"/"):
        return None
    # Most paths have nothing to normalise: no escape, no dot segment, nothing a server might take for either.
    # (`37 in path`, an int, costs a tenth of `b"%" in path`.)
    if _PERCENT not in path and _BACKSLASH not in path and _HASH not in path and path.find(b"/.") < 0:
        if path.isascii():
            return path
    if _HASH in path:
        return None
    if not path.isascii():
        path = quote_from_bytes(path, safe=_ASCII).encode("ascii")
    path = _ESCAPE.sub(_normal, path)
    # Decoded twice, as a server that decodes twice would (%252E is `.`), and no more: each round could take away
    # only two bytes of `%252525…`, and the rounds until nothing changes would grow with the square of its length.
    loose = _ESCAPE.sub(_decoded, path)
    if _PERCENT in loose:
        loose = _ESCAPE.sub(_decoded, loose)
    return None if _DOT_SEGMENT.search(loose) else path


def matcher(prefixes: tuple[str, ...]) -> Callable[[bytes], bool]:
    """Whether a request target's path is under one of `prefixes` (as parse_paths returns them)."""
    encoded = [prefix.encode("ascii") for prefix in prefixes]
    whole = frozenset(p for p in encoded if not p.endswith(b"/"))  # `/v2` takes `/v2` itself
    below = tuple(p if p.endswith(b"/") else p + b"/" for p in encoded)

    def under(target: bytes) -> bool:
        path = normalise(target)
        return path is not None and (path in whole or path.startswith(below))

    return under


def parse_paths(value: object) -> tuple[str, ...]:
    """`paths` from a list or a comma-separated string: each a prefix starting with `/`, normalised as request paths
    are. Raises SettingsError."""
    prefixes = comma_list(value, "paths")
    return tuple(dict.fromkeys(_prefix(prefix) for prefix in prefixes))


def _prefix(prefix: str) -> str:
    def refused(why: str) -> SettingsError:
        return SettingsError(f"{shown(prefix)} is not a path prefix: {why}")

    if not prefix.startswith("/"):
        raise refused("it must start with /")
    if not prefix.isprintable() or any(c.isspace() or c in "?#\\" for c in prefix):
        raise refused("it has a space, a control character, ?, # or \\ (a query is never matched)")
    raw = prefix.encode("utf-8")
    if _BAD_ESCAPE.search(raw.upper()):
        raise refused("% must start an escape such as %20")
    path = normalise(raw)
    if path is None:
        raise refused("it has a . or .. segment, which no request path is matched with")
    if _ENCODED_SEPARATOR.search(path):
        raise refused("it has %2F or %5C, an escaped / or \\, which servers disagree on as a segment's end")
    return path.decode("ascii")
