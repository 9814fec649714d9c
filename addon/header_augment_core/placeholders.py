"""Placeholders: the fake credential a workload holds, replaced by the real one only in requests to the hosts its
entry names (and from its clients), in the places the entry allows.

A placeholder is made of the characters a URL never escapes (A-Z a-z 0-9 - . _ ~), at least MIN_CHARS of them: it is
written the same in a header, a query, a path, a JSON string and a form, so one search finds it everywhere. It is found
as a word: between characters that cannot be part of it, or after an escape (`%2F`, `\\n`, `\\u0022`). The search
for every placeholder of every entry is one pass (`Matcher.find`): the text's words are cut out by `bytes.translate`
and `split` and the set of placeholders is intersected with them, all in C, so a request pays the same with one
placeholder entry or a thousand (measured against a compiled alternation of escaped literals, which Python's `re`
tries one by one at each position: 2 ms for a header block at 1,000 placeholders; see scripts/benchparts).

The real value goes in written for its place (`snapshot.TokenForms`, made with the snapshot on the refresher's
thread): as it is in a header, percent-encoded in a query or a path and in a form, JSON-escaped in a JSON string.
"""

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from typing import Any

from .fields import SettingsError, comma_list, shown, text

MIN_CHARS = 16
MAX_CHARS = 256
HEADER, QUERY, PATH, BODY, WEBSOCKET = "header", "query", "path", "body", "websocket"
PLACES = (HEADER, QUERY, PATH, BODY, WEBSOCKET)
# Where a placeholder is found and never replaced, whatever its entry allows.
PROXY_AUTHORIZATION = "Proxy-Authorization"
# The kinds whose credential is one minted token (Authorization: Bearer …), and the one that signs.
MINTED = ("oauth2", "github-app", "google-service-account")
SIGNING = "aws-sigv4"
DEFAULT_BODY_LIMIT = 1024 * 1024

_WORD = re.compile(r"[A-Za-z0-9._~-]+")
_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Every byte that cannot be in a placeholder becomes a space: what is left, split, is the text's words.
_WORDS_ONLY = bytes(c if c in _WORD_BYTES else 0x20 for c in range(256))
# Escapes whose last characters could otherwise join the word after them (`%2FPH` is the word `2FPH`).
_ESCAPES = re.compile(rb"%[0-9A-Fa-f]{2}|\\(?:u[0-9A-Fa-f]{4}|.)", re.S)
_NONE: frozenset[bytes] = frozenset()
_ACCESS_KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z2-7]{16}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BASIC = re.compile(rb"[Bb][Aa][Ss][Ii][Cc] +([A-Za-z0-9+/=]+) *")


def parse_placeholder(value: object) -> str:
    placeholder = text(value)
    if not MIN_CHARS <= len(placeholder) <= MAX_CHARS or not _WORD.fullmatch(placeholder):
        raise SettingsError(
            f"{shown(placeholder)} is not a placeholder: {MIN_CHARS} to {MAX_CHARS} of A-Z a-z 0-9 - . _ ~ "
            "(`header-augment placeholder SHAPE` makes one)"
        )
    return placeholder


def parse_places(value: object) -> frozenset[str]:
    places = comma_list(value, "places")
    for place in places:
        if place not in PLACES:
            raise SettingsError(f"{shown(place)} is not a place (accepted: {', '.join(PLACES)})")
    if not places:
        raise SettingsError(f"no place given (accepted: {', '.join(PLACES)})")
    return frozenset(places)


_SIZE = re.compile(r"(\d{1,12}) *(B|KiB|MiB)?")
_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}


def parse_size(value: object) -> int:
    """header_substitute_body_limit: bytes, or a number of KiB or MiB."""
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise SettingsError(f"{shown(value)} is not a size (bytes, or with KiB or MiB: 1MiB)")
    return int(match[1]) * _UNITS[match[2]]


def parse_env(value: object) -> str:
    name = text(value)
    if name and not _ENV_NAME.fullmatch(name):
        raise SettingsError(f"{shown(name)} is not an environment variable's name")
    return name


def check_placeholder(settings: Any, label: Callable[[str], str], given: set[str]) -> None:
    """The checks of one entry's placeholder fields against its kind: a placeholder stands for one token."""
    if not settings.placeholder:
        for name in ("substitute", "env"):
            if name in given:
                raise SettingsError(f"{label(name)}: only with placeholder")
        return
    source = settings.source
    kind = source.KIND
    if kind == SIGNING:
        if not _ACCESS_KEY_ID.fullmatch(settings.placeholder):
            raise SettingsError(
                f"{label('placeholder')}: with kind aws-sigv4, an access key id: AKIA (or ASIA) and 16 of A-Z 2-7"
            )
        if "substitute" in given:
            raise SettingsError(f"{label('substitute')}: not with kind aws-sigv4 (its requests are signed again)")
        return
    fmt = getattr(source, "format", None)
    if fmt is not None:
        if fmt not in ("token", "exec-credential"):
            raise SettingsError(
                f"{label('placeholder')}: the content of kind {kind} is read as {fmt} (a header map): a placeholder "
                "stands for one token (format token or exec-credential)"
            )
        for name in ("header", "prefix"):
            if name in given:
                raise SettingsError(f"{label(name)}: not with placeholder (the entry adds no header)")
    elif kind not in MINTED:
        raise SettingsError(f"{label('placeholder')}: kind {kind} gives no single token to stand for")


def check_entries(wanted: Iterable[tuple[Any, Callable[[str], str]]]) -> None:
    """Across entries: each placeholder used once, and none inside another (it would be replaced in part)."""
    seen: list[tuple[str, Callable[[str], str]]] = []
    for settings, label in wanted:
        mine = settings.placeholder
        if not mine:
            continue
        for theirs, their_label in seen:
            if mine == theirs:
                raise SettingsError(f"{label('placeholder')}: the same as {their_label('placeholder')}")
            if mine in theirs or theirs in mine:
                raise SettingsError(
                    f"{label('placeholder')}: one of it and {their_label('placeholder')} contains the other"
                )
        seen.append((mine, label))


class Matcher:
    """Every placeholder of a configuration and the entry it stands for; built with the configuration, off the
    loop. `find` is the one pass over a text."""

    __slots__ = ("owners", "_all", "body", "websocket")

    def __init__(self, owners: dict[bytes, Any]) -> None:
        self.owners = owners
        self._all = frozenset(owners)
        # Whether any entry replaces its placeholder in bodies, in websocket messages: else none is searched.
        self.body = any(BODY in b.settings.substitute for b in owners.values())
        self.websocket = any(WEBSOCKET in b.settings.substitute for b in owners.values())

    def find(self, data: bytes) -> frozenset[bytes]:
        """The placeholders that stand as words in `data` (an empty set: most texts)."""
        if len(data) < MIN_CHARS:
            return _NONE
        # find(), not `in`: bytes.__contains__ first tries its argument as an integer, and that failure costs ten
        # times the search (CPython 3.13).
        if data.find(b"%") != -1 or data.find(b"\\") != -1:
            data = _ESCAPES.sub(b" ", data)
        words = data.translate(_WORDS_ONLY).split()
        if self._all.isdisjoint(words):  # most texts: no set is made
            return _NONE
        return self._all.intersection(words)

    def in_headers(self, fields) -> frozenset[bytes]:
        """The placeholders in the header values, Authorization: Basic's user and password included."""
        block = b"\n".join([value for _, value in fields])
        found = self.find(block)
        if block.find(b"asic ") != -1 or block.find(b"ASIC ") != -1:
            # One search over them all: a search per value cost 13 µs each (1.3 s for a request with 100,000).
            decoded = [
                credentials
                for name, value in fields
                if name.lower() in _AUTHORIZATIONS and (credentials := basic_credentials(value)) is not None
            ]
            if decoded:
                found |= self.find(b"\n".join(decoded))
        return found

    def in_proxy_authorization(self, fields) -> frozenset[bytes]:
        """The placeholders in Proxy-Authorization, Basic's user and password included: the proxy's credentials,
        never the destination's (in upstream mode they go to the next proxy)."""
        values = [value for name, value in fields if name.lower() == b"proxy-authorization"]
        decoded = [credentials for value in values if (credentials := basic_credentials(value)) is not None]
        return self.find(b"\n".join(values + decoded)) if values else _NONE


_AUTHORIZATIONS = (b"authorization", b"proxy-authorization")


def basic_credentials(value: bytes) -> bytes | None:
    """`user:password` of a Basic value, or None."""
    match = _BASIC.fullmatch(value)
    if match is None:
        return None
    try:  # what b64decode(validate=True) does once the characters are checked (the pattern did): a call less
        return binascii.a2b_base64(match[1], strict_mode=True)
    except binascii.Error:
        return None


def replace_all(data: bytes, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    for old, new in pairs:
        data = data.replace(old, new)
    return data


def substitute_headers(fields, raw: list[tuple[bytes, bytes]]) -> tuple[tuple, list[tuple[bytes, bytes]], set[bytes]]:
    """`fields` with each placeholder replaced (`raw`: placeholder → the value as it is), a Basic value decoded,
    replaced and encoded again; with the (new value → old value) pairs of the Basic values changed, and the
    lower-cased names of the fields changed."""
    out = []
    undo: list[tuple[bytes, bytes]] = []
    names: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"proxy-authorization":  # refused before this (in_proxy_authorization)
            out.append((name, value))
            continue
        new = replace_all(value, raw)
        if new == value and name.lower() == b"authorization" and (decoded := basic_credentials(value)) is not None:
            replaced = replace_all(decoded, raw)
            if replaced != decoded:
                sent = base64.b64encode(replaced)
                new = b"Basic " + sent
                # An echo may show the credentials without the scheme word, or without base64's padding.
                given = base64.b64encode(decoded)
                undo += [(new, value), (sent, given), (sent.rstrip(b"="), given.rstrip(b"="))]
        if new != value:
            names.add(name.lower())
        out.append((name, new))
    return tuple(out), undo, names


def substitute_target(path: bytes, in_path: set[bytes], in_query: set[bytes], encoded: dict[bytes, bytes]) -> bytes:
    """The request target with the placeholders found in its path and its query percent-encoded in place."""
    before, mark, query = path.partition(b"?")
    if in_path:
        before = replace_all(before, ((p, encoded[p]) for p in in_path))
    if in_query:
        query = replace_all(query, ((p, encoded[p]) for p in in_query))
    return before + mark + query


def json_body(content_type: bytes) -> bool:
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def form_body(content_type: bytes) -> bool:
    return content_type.partition(b";")[0].strip().lower() == b"application/x-www-form-urlencoded"


def env_lines(bindings: Iterable[Any]) -> str:
    """NAME=VALUE for every entry with a placeholder and an env name: the placeholders, never a credential."""
    return "".join(f"{b.settings.env}={b.settings.placeholder}\n" for b in bindings if b.settings.env)
