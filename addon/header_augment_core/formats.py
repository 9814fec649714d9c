"""How a provider's content is read (`format`), for every kind but oauth2:

headers          a JSON object of header names to values, checked entry by entry (rules.py)
token            the whole content, surrounding white space stripped, is one credential: `header: prefix + token`
exec-credential  a Kubernetes ExecCredential (client.authentication.k8s.io/v1 or v1beta1): status.token as Bearer

A token that is a JWT with an `exp` claim is never used at or after `exp` (no signature check: only the expiry is
read), and so is an ExecCredential past its status.expirationTimestamp. An `exp` that is not a finite number (a
string, NaN, an infinity, a boolean, null) refuses the token: it is no reason to use it forever.
"""

import base64
import binascii
import datetime
import json
import math
import re
import time
from dataclasses import dataclass

from .durations import format_age
from .failures import Failed
from .fields import Option, SettingsError, choice, setting, shown
from .rules import Validated, parse_answer, problem_with_name, validate_entries

FORMATS = ("headers", "token", "exec-credential")
EXEC_CREDENTIAL_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")

# A credential: visible ASCII only, so it can never split a header line nor be partly used.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_PREFIX = re.compile(r"[\x20-\x7e]*")


def _header_name(value: object) -> str:
    if not isinstance(value, str) or (problem := problem_with_name(value)):
        raise SettingsError(f"{shown(value)} cannot be used: {problem if isinstance(value, str) else 'not a string'}")
    return value


def _prefix(value: object) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise SettingsError(f"{shown(value)} is not a string of visible ASCII and spaces")
    return value


@dataclass(frozen=True)
class Content:
    """The content fields of a kind's settings (mixed into them). `format` "" is the kind's default."""

    format: str = setting(
        "",
        choice(*FORMATS),
        Option(
            "header_provider_format",
            str,
            "",
            "How the provider's content is read: headers (a JSON object of headers; the default for URLs and "
            "files), token (one credential; the default for commands) or exec-credential (a Kubernetes "
            "ExecCredential).",
        ),
    )
    header: str = setting(
        "Authorization",
        _header_name,
        Option("header_token_header", str, "Authorization", "With header_provider_format=token: the header to set."),
    )
    prefix: str = setting(
        "Bearer ",
        _prefix,
        Option(
            "header_token_prefix",
            str,
            "Bearer ",
            "With header_provider_format=token: what goes before the token in the value ('' for the raw token).",
        ),
    )

    def check_content(self, label, given: set[str]) -> None:
        if self.format != "token":
            for name in ("header", "prefix"):
                if name in given:
                    raise SettingsError(f"{label(name)}: only with format token")


@dataclass(frozen=True)
class Parsed:
    answer: Validated
    lifetime: float | None = None  # seconds from now until the credential must no longer be used


def read(content: Content, data: bytes, now: float | None = None) -> Parsed:
    """The headers that `data` asks for, read in `content.format`; raises Failed. `now`: wall-clock seconds."""
    now = time.time() if now is None else now
    if content.format == "headers":
        return Parsed(parse_answer(data))
    if content.format == "token":
        return _bearer(content.header, content.prefix, _token(data), now)
    return _exec_credential(data, now)


def _token(data: bytes) -> str:
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise Failed("the token has characters other than visible ASCII") from None
    if not token:
        raise Failed("empty: no token")
    if not _TOKEN.fullmatch(token):
        raise Failed("the token has characters other than visible ASCII")
    return token


def _bearer(header: str, prefix: str, token: str, now: float, expires_at: float | None = None) -> Parsed:
    """`header: prefix + token`, usable until the earlier of `expires_at` and the token's own JWT expiry."""
    exp = jwt_expiry(token)
    if exp is not None:
        expires_at = exp if expires_at is None else min(expires_at, exp)
    if expires_at is not None and expires_at <= now:
        raise Failed(f"token expired {format_age(now - expires_at)} ago", "expired")
    answer = validate_entries([(header, prefix + token)])
    if not answer.headers:
        raise Failed(f"token unusable: {answer.rejected[0].reason}")
    return Parsed(answer, None if expires_at is None else expires_at - now)


def bearer_token(token: str, now: float | None = None) -> Parsed:
    """`Authorization: Bearer <token>` for a token from elsewhere (an OAuth2 token response). Raises Failed."""
    if not _TOKEN.fullmatch(token):
        raise Failed("the token has characters other than visible ASCII")
    return _bearer("Authorization", "Bearer ", token, time.time() if now is None else now)


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (seconds since the epoch) of a JWT, or None if the token is not a JWT or has no `exp`. Raises
    Failed for an `exp` that is no finite number, or is 0 or less (never valid: and too far back to say how far)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(claims, dict) or "exp" not in claims:
        return None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        kind = {bool: "a boolean", str: "a string", type(None): "null", list: "a list", dict: "an object"}[type(exp)]
        raise Failed(f"the token's JWT exp claim is {kind}, not a number of seconds")
    try:
        exp = float(exp)
    except OverflowError:  # an integer beyond any float: no time at all
        exp = math.inf
    if not math.isfinite(exp):
        raise Failed(f"the token's JWT exp claim is {'NaN' if math.isnan(exp) else 'infinite'}, not a finite number")
    if exp <= 0:
        raise Failed("the token's JWT exp claim is 0 or negative: it was never valid", "expired")
    return exp


def _exec_credential(data: bytes, now: float) -> Parsed:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Failed("not an ExecCredential: not JSON") from None
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise Failed("not an ExecCredential (kind is not ExecCredential)")
    if document.get("apiVersion") not in EXEC_CREDENTIAL_VERSIONS:
        raise Failed(f"ExecCredential apiVersion not supported (accepted: {', '.join(EXEC_CREDENTIAL_VERSIONS)})")
    status = document.get("status")
    token = status.get("token") if isinstance(status, dict) else None
    if not isinstance(token, str) or not token:
        raise Failed("ExecCredential has no status.token (client certificates are not supported)")
    expires_at = None
    stamp = status.get("expirationTimestamp")
    if stamp is not None:
        try:
            # RFC 3339 allows a lower-case "t" and "z", which fromisoformat does not take.
            when = datetime.datetime.fromisoformat(stamp.upper()) if isinstance(stamp, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise Failed("ExecCredential status.expirationTimestamp is not an RFC 3339 time")
        expires_at = when.timestamp()
    if not _TOKEN.fullmatch(token):
        raise Failed("the token has characters other than visible ASCII")
    return _bearer("Authorization", "Bearer ", token, now, expires_at)
