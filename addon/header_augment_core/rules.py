"""What a provider may ask us to add: one check per entry, so one bad entry never costs the good ones."""

import json
import re
from dataclasses import dataclass

MAX_BODY_BYTES = 1024 * 1024
MAX_HEADERS = 64
MAX_NAME_LENGTH = 256
MAX_VALUE_LENGTH = 8 * 1024

# RFC 9110 §5.6.2 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and horizontal tab: no CR, LF, NUL or other controls that could split a header line.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")

# Headers that frame the message or the connection. A provider that could set them could smuggle a second
# request, cut a body short, or steer the hop-by-hop handling of the proxy.
FORBIDDEN_NAMES = frozenset(
    name.lower()
    for name in (
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Upgrade",
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


class InvalidAnswer(ValueError):
    """The provider's body as a whole is unusable (not JSON, not an object)."""


@dataclass(frozen=True)
class Rejected:
    """An entry we dropped. `name` is safe to log: printable and short. Values are never kept here."""

    name: str
    reason: str


@dataclass(frozen=True)
class Validated:
    headers: tuple[tuple[str, str], ...]
    rejected: tuple[Rejected, ...]


def loggable_name(name: object) -> str:
    if isinstance(name, str) and _TOKEN.fullmatch(name) and len(name) <= 64:
        return name
    text = repr(name)
    return text if len(text) <= 64 else text[:61] + "..."


def _entry_problem(name: str, value: object) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters"
    if not _TOKEN.fullmatch(name):
        return "name is not an HTTP token"
    if name.lower() in FORBIDDEN_NAMES:
        return "framing or hop-by-hop header, never added"
    if not isinstance(value, str):
        return f"value is a JSON {_JSON_TYPE_NAMES[type(value)]}, not a string"
    if len(value) > MAX_VALUE_LENGTH:
        return f"value longer than {MAX_VALUE_LENGTH} characters"
    if not _FIELD_VALUE.fullmatch(value):
        return "value has characters other than visible ASCII, space or tab"
    return None


def validate_entries(pairs: list[tuple[str, object]]) -> Validated:
    """Keep the valid entries in order; the first spelling of a name (case-insensitively) wins."""
    accepted: list[tuple[str, str]] = []
    rejected: list[Rejected] = []
    seen: dict[str, str] = {}
    for name, value in pairs:
        problem = _entry_problem(name, value)
        if problem is None and name.lower() in seen:
            problem = f"repeats {seen[name.lower()]}"
        if problem is None and len(accepted) == MAX_HEADERS:
            problem = f"more than {MAX_HEADERS} headers"
        if problem is not None:
            rejected.append(Rejected(loggable_name(name), problem))
            continue
        seen[name.lower()] = name
        accepted.append((name, value))
    return Validated(tuple(accepted), tuple(rejected))


def parse_answer(body: bytes) -> Validated:
    """Validate a provider body: a JSON object of header names to string values."""
    try:
        # object_pairs_hook keeps every pair, so a name given twice is reported instead of silently collapsed.
        document = json.loads(body, object_pairs_hook=_JSONObject)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidAnswer(f"body is not JSON ({type(e).__name__} at position {getattr(e, 'pos', '?')})") from None
    except RecursionError:
        raise InvalidAnswer("body is not JSON (nested too deeply)") from None
    if not isinstance(document, _JSONObject):
        raise InvalidAnswer(f"body is a JSON {_JSON_TYPE_NAMES[type(document)]}, not an object")
    return validate_entries(document)
