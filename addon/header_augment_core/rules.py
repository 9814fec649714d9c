"""What a provider may ask us to add: one check per entry, so one bad entry never costs the good ones, and bounds
on the whole, so no answer can make the requests it is added to too big for the servers they go to.
"""

import json
import re
from dataclasses import dataclass

from .failures import Failed

MAX_BODY_BYTES = 1024 * 1024
MAX_HEADERS = 64
MAX_NAME_LENGTH = 256
# One header line (name, ": ", value, CRLF) must fit nginx's default header buffer (large_client_header_buffers 8k),
# and all we add must leave room in its 32 KiB in all for the request line and the client's own headers.
MAX_LINE_BYTES = 8 * 1024
MAX_TOTAL_BYTES = 16 * 1024
# Rejected entries kept as examples for the log line; the rest are only counted.
REJECTED_EXAMPLES = 5

# RFC 9110 §5.6.2 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and horizontal tab: no CR, LF, NUL or other controls that could split a header line.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")

# Headers that a provider never sets, because they are not credentials but change how the message is framed,
# routed, forwarded or read (RFC 9110, RFC 9112):
FORBIDDEN_NAMES = frozenset(
    name.lower()
    for name in (
        # framing: a wrong one cuts a body short or smuggles a second request (RFC 9112 §6)
        "Content-Length",
        "Transfer-Encoding",
        # routing (RFC 9110 §7.2)
        "Host",
        # connection-specific, hop-by-hop (RFC 9110 §7.6.1; RFC 9113 §8.2.2 for HTTP2-Settings)
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "HTTP2-Settings",
        # the proxy's own credentials and challenges (RFC 9110 §11.7)
        "Proxy-Authorization",
        "Proxy-Authenticate",
        # expectations and forwarding limits, acted on by every hop (RFC 9110 §10.1.1, §7.6.2)
        "Expect",
        "Max-Forwards",
        # how the body is to be read: its coding, media type and range (RFC 9110 §8.3, §8.4, §14.4)
        "Content-Encoding",
        "Content-Type",
        "Content-Range",
    )
)


class _JSONObject(list):
    """A JSON object as the list of its pairs, in order, repeats included."""


_JSON_TYPE_NAMES = {
    _JSONObject: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class Rejected:
    """An entry we dropped. `name` is safe to log: a valid, short header name, or a placeholder. Never a value."""

    name: str
    reason: str


@dataclass(frozen=True)
class Validated:
    headers: tuple[tuple[str, str], ...]
    rejected: tuple[Rejected, ...] = ()  # the first few, as examples
    rejected_count: int = 0

    def rejections(self) -> str:
        """One line about every dropped entry, whatever their number: the count and the first few, by name."""
        examples = "; ".join(f"{r.name}: {r.reason}" for r in self.rejected)
        more = self.rejected_count - len(self.rejected)
        return f"dropped {self.rejected_count} entr{'y' if self.rejected_count == 1 else 'ies'} ({examples}" + (
            f"; and {more} more)" if more else ")"
        )


def loggable_name(name: object) -> str:
    """The name itself if it is a valid header name of at most 64 characters; otherwise a placeholder, because an
    invalid "name" may be anything the provider sent, e.g. `Authorization: Bearer <token>`."""
    if isinstance(name, str) and len(name) <= 64 and _TOKEN.fullmatch(name):
        return name
    return "(an invalid name)"


def problem_with_name(name: str) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters"
    if not _TOKEN.fullmatch(name):
        return "name is not an HTTP token"
    if name.lower() in FORBIDDEN_NAMES:
        return "framing, hop-by-hop or body header, never added"
    return None


def _entry_problem(name: str, value: object) -> str | None:
    problem = problem_with_name(name)
    if problem is not None:
        return problem
    if not isinstance(value, str):
        return f"value is a JSON {_JSON_TYPE_NAMES[type(value)]}, not a string"
    if len(name) + len(value) + 4 > MAX_LINE_BYTES:
        return f"header line longer than {MAX_LINE_BYTES} bytes"
    if not _FIELD_VALUE.fullmatch(value):
        return "value has characters other than visible ASCII, space or tab"
    return None


def validate_entries(pairs: list[tuple[str, object]]) -> Validated:
    """Keep the valid entries in order; the first spelling of a name (case-insensitively) wins.

    Raises Failed if the valid entries together are over MAX_TOTAL_BYTES: a request must not become too big.
    """
    accepted: list[tuple[str, str]] = []
    rejected: list[Rejected] = []
    rejected_count = 0
    seen: dict[str, str] = {}
    total = 0
    for name, value in pairs:
        problem = _entry_problem(name, value)
        if problem is None and name.lower() in seen:
            problem = f"repeats {seen[name.lower()]}"
        if problem is None and len(accepted) == MAX_HEADERS:
            problem = f"more than {MAX_HEADERS} headers"
        if problem is not None:
            rejected_count += 1
            if len(rejected) < REJECTED_EXAMPLES:
                rejected.append(Rejected(loggable_name(name), problem))
            continue
        assert isinstance(value, str)
        seen[name.lower()] = name
        accepted.append((name, value))
        total += len(name) + len(value) + 4
    if total > MAX_TOTAL_BYTES:
        raise Failed(f"the headers add {total} bytes to each request, over the limit of {MAX_TOTAL_BYTES}", "size")
    return Validated(tuple(accepted), tuple(rejected), rejected_count)


def parse_answer(body: bytes) -> Validated:
    """Validate a body that must be a JSON object of header names to string values. Raises Failed."""
    try:
        # object_pairs_hook keeps every pair, so a name given twice is reported instead of silently collapsed.
        document = json.loads(body, object_pairs_hook=_JSONObject)
    except (UnicodeDecodeError, ValueError) as e:
        raise Failed(f"not JSON ({type(e).__name__} at position {getattr(e, 'pos', '?')})") from None
    except RecursionError:
        raise Failed("not JSON (nested too deeply)") from None
    if not isinstance(document, _JSONObject):
        raise Failed(f"a JSON {_JSON_TYPE_NAMES[type(document)]}, not an object")
    return validate_entries(document)
