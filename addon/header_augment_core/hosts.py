"""Which hosts a provider's headers may go to: a security boundary, so exact names and nothing a client chooses.

Patterns (option `header_hosts`, field `hosts`):
    api.example.com        that name exactly (case-insensitively, trailing dot ignored, IDNA names in ASCII form)
    *.example.com          any name below example.com, not example.com itself
    api.example.com:8443   a pattern with a port matches that port only; without one, any port
    10.0.0.7, [2001:db8::1]:443   IPv4 and bracketed IPv6 literals (compared as addresses)
    *                      every host (logged as a warning at start-up)

They are matched against the destination mitmproxy routes the request to (`flow.request.host` and `.port`: the
CONNECT target or absolute URL in regular and upstream mode, the backend in reverse mode, the SOCKS target in socks5
mode), never against the Host header or :authority the client wrote. No name is ever resolved: an IP address
matches only an IP pattern.

A host is compared in the ASCII form the connection will resolve. For an xn-- name mitmproxy holds Unicode (its
parser decodes xn-- labels with Python's IDNA 2003 codec), and the socket encodes that string with the same codec
again, while patterns are read with IDNA 2008: where the two disagree (x.xn--bank-cwr.example decodes to a name
holding a Hangul filler that IDNA 2003 keeps and IDNA 2008 drops, giving x.bank.example), the name is two domains at
once, so a Unicode host matches no pattern unless both standards give it the same ASCII form and it is that form's
own Unicode spelling. ASCII hosts (xn-- labels as SOCKS5 hands them on) are the exact labels resolved.
"""

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import idna  # IDNA 2008 with UTS 46, as browsers, curl and httpx use (Python's own codec is IDNA 2003: ß → ss)

from .fields import SettingsError, shown

# Letters, digits, hyphen and underscore (seen in real internal names); each label 1-63 characters.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORTED = re.compile(r"(?P<host>.*?)(?::(?P<port>\d{1,5}))?")
_ANY_PORT = None


def _to_ascii(name: str) -> str:
    """An internationalised name in its ASCII (xn--) form; raises UnicodeError (IDNAError) if it has none."""
    return idna.encode(name, uts46=True).decode("ascii")


@functools.lru_cache(maxsize=256)  # a Unicode host is encoded once per binding per request: cache the work
def _resolved_form(host: str) -> tuple[str, str | None]:
    """(the ASCII name the connection resolves for a Unicode `host`, None), or ("", why it can match no pattern)."""
    host = host.removesuffix(".")
    try:
        mapped = idna.uts46_remap(host, std3_rules=False)
    except UnicodeError:
        return "", "the host is not a name under IDNA 2008"
    # Checked first, as it is cheap: a name that IDNA maps (case aside) is not the name the connection is given.
    if mapped != host.lower():
        return "", f"IDNA 2008 reads the host as {mapped!r}: a Unicode host is compared only as IDNA spells it"
    try:
        # As written, not lower-cased: the socket, and mitmproxy for an SNI or upstream CONNECT, encode it so.
        resolved = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return "", "the host has no IDNA 2003 form, the one the connection would resolve"
    try:
        read = idna.encode(mapped).decode("ascii")
    except UnicodeError:
        return "", f"the host has no IDNA 2008 form; the connection would resolve {resolved}"
    if read != resolved:
        return "", f"IDNA 2003 and IDNA 2008 read the host as different names: {resolved} is resolved, not {read}"
    return resolved, None


def _ascii_name(name: str) -> str:
    """A host name in the form it is compared in; raises ValueError if it is not one."""
    name = name.lower().removesuffix(".")
    if not name.isascii():
        name = _to_ascii(name)
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(name)
    return name


def _numeric_end(name: str) -> bool:
    """Whether the last label is all digits: an IPv4 address, never a DNS name (no top-level domain is numeric)."""
    return name[-1:].isdigit() and name.rpartition(".")[2].isdigit()


@dataclass(frozen=True)
class Hosts:
    """A parsed `hosts` list, ready for `matches` on every request. Equal lists compare equal."""

    patterns: tuple[str, ...] = ()  # as written, for the status report
    everything: bool = False
    exact: tuple[tuple[str, frozenset[int] | None], ...] = ()
    below: tuple[tuple[str, frozenset[int] | None], ...] = ()

    def __post_init__(self) -> None:
        # Lookup tables, derived: the hot path does one dict lookup per name suffix.
        object.__setattr__(self, "_exact", dict(self.exact))
        object.__setattr__(self, "_below", dict(self.below))
        # Names given without ports: a request key found here matches with no call (the request path checks it).
        object.__setattr__(self, "any_port", frozenset(name for name, ports in self.exact if ports is None))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        ports = self._exact.get(host, False)  # as given: most hosts are already in the form patterns are kept in
        if ports is None or (ports and port in ports):
            return True
        key = request_key(host)
        if key is None:
            return False
        return self.matches_key(key, port)

    def matches_key(self, key: str, port: int) -> bool:
        """`matches` for a host already in the form patterns are kept in (`request_key`)."""
        if self.everything:
            return True
        ports = self._exact.get(key, False)
        if ports is None or (ports and port in ports):
            return True
        below = self._below
        if below and not _numeric_end(key):  # `*.name` is for names: an address matches only address patterns
            dot = key.find(".")
            while dot != -1:
                ports = below.get(key[dot + 1 :], False)
                if ports is None or (ports and port in ports):
                    return True
                dot = key.find(".", dot + 1)
        return False


NO_HOSTS = Hosts()


def request_key(host: str) -> str | None:
    """A request's host in the form patterns are kept in, or None when it can match no pattern but `*`."""
    key = host.lower()
    if key.endswith("."):
        key = key[:-1]
    if not key.isascii():
        key, why = _resolved_form(host)
        if why is not None:
            return None
    elif ":" in key:
        try:
            key = ipaddress.IPv6Address(key.strip("[]")).compressed
        except ValueError:
            return None
    return key


class HostIndex[T]:
    """Which of many items, each with its `Hosts`, may be for a request's host, found without looking at each: one
    lookup for the exact name, one per label for `*.suffix`, and the short list of those for every host (`*`, or
    none given: an entry with only a scope). The answer is a superset in the given order: ports are left to
    `Hosts.matches_key`."""

    def __init__(self, entries: Sequence[tuple[Hosts, T]]) -> None:
        exact: dict[str, list[int]] = {}
        below: dict[str, list[int]] = {}
        always: list[int] = []
        for position, (hosts, _) in enumerate(entries):
            if not hosts or hosts.everything:
                always.append(position)
                continue
            for host, _ in hosts.exact:
                exact.setdefault(host, []).append(position)
            for host, _ in hosts.below:
                below.setdefault(host, []).append(position)
        self._items = tuple(item for _, item in entries)
        # Each group is (positions, items): one group found is the answer as it stands, several are merged in order.
        self._exact = {host: self._group(positions) for host, positions in exact.items()}
        self._below = {host: self._group(positions) for host, positions in below.items()}
        self._always = self._group(always)
        self._only_exact = not below and not always  # the common case: one lookup is the whole answer
        self.named = bool(exact or below)  # whether any entry names hosts (a Unicode host unmatchable is noted)

    def lookup(self, host: str) -> tuple[str | None, tuple[T, ...]]:
        """A request host's `request_key` and `candidates`: no work for a host given in the form kept (a name
        here is its own key), one lookup when every entry names exact hosts (the common case), and none when no
        entry names hosts (the host as given then stands for its key: `*` matches any)."""
        group = self._exact.get(host)
        if group is not None and self._only_exact:
            return host, group[1]
        if not self.named:  # only entries for every host: they need no key
            return host, self._always[1]
        key = host if group is not None else request_key(host)
        return key, self.candidates(key)

    def _group(self, positions: list[int]) -> tuple[tuple[int, ...], tuple[T, ...]]:
        return tuple(positions), tuple(self._items[p] for p in positions)

    def candidates(self, key: str | None) -> tuple[T, ...]:
        """The items, in order, that may be for `key` (from `request_key`)."""
        if key is None:
            return self._always[1]
        g = self._exact.get(key)
        if self._only_exact:
            return () if g is None else g[1]
        found = [] if g is None else [g]
        below = self._below
        if below and not _numeric_end(key):  # `*.name` is for names: an address matches only address patterns
            dot = key.find(".")
            while dot != -1:
                if (g := below.get(key[dot + 1 :])) is not None:
                    found.append(g)
                dot = key.find(".", dot + 1)
        if not found:
            return self._always[1]
        if self._always[0]:
            found.append(self._always)
        if len(found) == 1:
            return found[0][1]
        items = self._items
        return tuple(items[p] for p in sorted({p for positions, _ in found for p in positions}))

    def why_unmatchable(self, host: str) -> str | None:
        """Why a Unicode `host` can match no pattern but `*` (for the flow's comment), when some entry names hosts."""
        if not self.named or host.isascii():
            return None
        return _resolved_form(host)[1]


def _split(value: object) -> list[str]:
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
        for number, item in enumerate(items, 1):
            if not isinstance(item, str):
                raise SettingsError(f"item {number} is not a string (quote it)")
    else:
        raise SettingsError(f"{shown(value)} is not a list of hosts or a comma-separated string")
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


# A pattern with "/@?#" in it, in its URL parts: scheme (RFC 3986), user information, host[:port], and the rest.
_URL = re.compile(
    r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?:(?P<user>[^/?#]*)@)?(?P<host>[^/?#]*)(?P<rest>.*)", re.I | re.S
)
_REST = {"/": "a path", "?": "a query", "#": "a fragment"}


def _not_a_host(pattern: str) -> SettingsError:
    """The error for a pattern written as a URL or with a user, path or query. It quotes what was typed but for the
    user, path and query (they may hold secrets), and names the host[:port] to give instead."""
    match = _URL.fullmatch(pattern)
    assert match is not None  # every part may be empty
    scheme, user, host, rest = match["scheme"], match["user"], match["host"], match["rest"]
    typed = (f"{scheme}://" if scheme else "") + ("…@" if user is not None else "") + host
    typed += rest if rest == "/" else rest[:1] + "…" * (len(rest) > 1)
    try:
        ported = _one(host)[2] is not None
    except SettingsError:
        host, ported = "", False  # none, or not a host: naming it would only lead to the next error
    if scheme:
        problem, fix = "is a URL", "give its host" + (" and port" if ported else "")
    else:
        problem, fix = "has " + ("a user part" if user is not None else _REST[rest[:1]]), "give the host alone"
    return SettingsError(f"{shown(typed)} {problem}: {fix}" + (f", {host}" if host else ""))


def _one(pattern: str) -> tuple[str, str, frozenset[int] | None]:
    """(table, host, ports) for one pattern; table is "exact" or "below". Raises SettingsError."""
    if any(c in pattern for c in "/@?#"):
        raise _not_a_host(pattern)
    if any(c.isspace() for c in pattern):
        raise SettingsError(f"{shown(pattern)} is not a host[:port] (it has white space)")
    if pattern.startswith("["):
        address, closed, rest = pattern[1:].partition("]")
        if not closed or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            raise SettingsError(f"{shown(pattern)} is not a [IPv6 address] with an optional :port")
        host, port = address, rest[1:] or None
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise SettingsError(f"{shown(pattern)} is not a [IPv6 address] with an optional :port") from None
        table = "exact"
    else:
        if pattern.count(":") > 1:
            example = f"[{pattern}]" if len(pattern) <= 39 else "[2001:db8::1]"  # 39: the longest IPv6 address
            raise SettingsError(f"{shown(pattern)}: write an IPv6 address in brackets, e.g. {example}")
        match = _PORTED.fullmatch(pattern)
        assert match is not None  # the pattern matches any text
        host, port = match["host"], match["port"]
        table = "exact"
        if host.startswith("*."):
            table, host = "below", host[2:]
        try:
            host = str(ipaddress.IPv4Address(host)) if table == "exact" and _looks_ipv4(host) else _ascii_name(host)
        except (ValueError, UnicodeError):
            raise SettingsError(
                f"{shown(pattern)} is not a host name, *.name, IPv4 address or [IPv6 address], with an optional :port"
            ) from None
        if table == "below" and _numeric_end(host):
            raise SettingsError(f"{shown(pattern)}: *. is for names below a domain, not for IP addresses")
    ports = None
    if port is not None:
        number = int(port)
        if not 0 < number < 65536:
            raise SettingsError(f"{shown(pattern)}: port {number} is out of range")
        ports = frozenset({number})
    return table, host, ports


def _looks_ipv4(host: str) -> bool:
    return bool(re.fullmatch(r"[\d.]+", host))


def _merge(entries: Iterable[tuple[str, frozenset[int] | None]]) -> tuple[tuple[str, frozenset[int] | None], ...]:
    """One entry per host; a pattern without a port (any port) absorbs the same host's ported ones."""
    table: dict[str, frozenset[int] | None] = {}
    for host, ports in entries:
        if host in table:
            known = table[host]
            table[host] = None if known is None or ports is None else known | ports
        else:
            table[host] = ports
    return tuple(sorted(table.items()))


def parse_hosts(value: object) -> Hosts:
    """`hosts` from a list or a comma-separated string; raises SettingsError naming the first bad pattern."""
    patterns = _split(value)
    if not patterns:
        return NO_HOSTS
    if "*" in patterns:
        if len(patterns) > 1:
            raise SettingsError("'*' (every host) cannot be combined with other hosts")
        return Hosts(patterns=("*",), everything=True)
    exact, below = [], []
    for pattern in patterns:
        table, host, ports = _one(pattern)
        (exact if table == "exact" else below).append((host, ports))
    return Hosts(patterns=tuple(patterns), exact=_merge(exact), below=_merge(below))
