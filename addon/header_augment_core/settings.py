"""One provider's settings, parsed and checked before anything is started with them."""

import math
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import certifi  # httpx's own default trust store

from .durations import format_duration, parse_duration
from .snapshot import Merge

MIN_INTERVAL = 0.1


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and says what is accepted.

    `field` is set where the message does not name the setting yet (its caller knows the label to put first).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


KINDS = ("headers", "oauth2")
CLIENT_AUTH = ("basic", "post")
# How headers are applied to flows: changing these needs no new fetch, so a running refresher is kept.
_APPLY_FIELDS = frozenset({"name", "merge", "scope", "require"})


@dataclass(frozen=True)
class ProviderSettings:
    url: str
    authority: str = ""
    socket: str = ""
    timeout: float = 5.0
    ca: str = ""
    cert: str = ""
    interval: float = 360.0
    max_stale: float = 0.0
    merge: Merge = Merge.REPLACE
    scope: str = ""
    require: bool = False
    name: str = ""
    # kind "headers": `url` answers with a JSON object of headers. kind "oauth2": `url` is an OAuth2 token
    # endpoint, asked for a client-credentials grant (RFC 6749 §4.4); the token becomes `Authorization: Bearer`.
    kind: str = "headers"
    client_id: str = ""
    client_secret_file: str = ""
    token_scope: str = ""
    audience: str = ""
    client_auth: str = "basic"

    @property
    def source(self) -> tuple:
        """Everything that decides how the provider is fetched (two equal sources can share one refresher)."""
        return tuple(v for k, v in self.__dict__.items() if k not in _APPLY_FIELDS)

    @property
    def label(self) -> str:
        """How logs and the status report name this provider."""
        return f"{self.name} ({self.display_url})" if self.name else self.display_url

    @property
    def display_url(self) -> str:
        """The URL without credentials, query or fragment: safe to log and to show in a status report."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return f"{shown} via {self.socket}" if self.socket else shown

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings for an https provider; raises SettingsError if the CA or certificate is unusable."""
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=self.ca or certifi.where())
        except (OSError, ssl.SSLError) as e:
            raise SettingsError(f"cannot load CA bundle {self.ca!r}: {e}", field="ca") from None
        if self.cert:
            try:
                context.load_cert_chain(self.cert)
            except (OSError, ssl.SSLError) as e:
                raise SettingsError(
                    f"cannot load client certificate {self.cert!r} (PEM with key): {e}", field="cert"
                ) from None
        return context


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _duration(value: object, minimum: float, allow_zero: bool = False) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{value!r} is not a duration")
    seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    if not math.isfinite(seconds):
        raise SettingsError(f"{value!r} is not a finite duration")
    if seconds == 0 and allow_zero:
        return 0.0
    if seconds < minimum or (minimum == 0 and seconds <= 0):
        shown = "more than 0s" if minimum == 0 else f"at least {format_duration(minimum)}"
        raise SettingsError(f"{value!r} is too short: it must be {shown}")
    return seconds


def parse_settings(values: Mapping[str, object], label: Callable[[str], str]) -> ProviderSettings:
    """Build settings from raw values keyed by field name; `label(field)` names a field in error messages."""

    def field(name: str, parse: Callable[[object], object]) -> object:
        try:
            return parse(values[name])
        except (SettingsError, ValueError) as e:
            raise SettingsError(f"{label(name)}: {e}") from None

    url = str(values.get("url", "") or "")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{label('url')}: {url!r} is not an http:// or https:// URL with a host")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError as e:
        raise SettingsError(f"{label('url')}: {url!r} has a bad port ({e})") from None

    def choice(accepted: tuple[str, ...]) -> Callable[[object], str]:
        def parse(value: object) -> str:
            if str(value) not in accepted:
                raise SettingsError(f"{value!r} is not accepted (accepted: {', '.join(accepted)})")
            return str(value)

        return parse

    def merge(value: object) -> Merge:
        try:
            return Merge(str(value).strip().lower())
        except ValueError:
            raise SettingsError(f"{value!r} is not a merge mode (accepted: replace, append, keep)") from None

    def boolean(value: object) -> bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in _BOOLEANS:
            return _BOOLEANS[str(value).strip().lower()]
        raise SettingsError(f"{value!r} is not a boolean (accepted: true, false)")

    def text(value: object) -> str:
        if not isinstance(value, str):
            raise SettingsError(f"{value!r} is not a string")
        return value

    defaults = ProviderSettings(url=url)
    parsers: dict[str, Callable[[object], object]] = {
        "authority": text,
        "socket": text,
        "timeout": lambda v: _duration(v, 0),
        "ca": text,
        "cert": text,
        "interval": lambda v: _duration(v, MIN_INTERVAL),
        "max_stale": lambda v: _duration(v, 0, allow_zero=True),
        "merge": merge,
        "scope": text,
        "require": boolean,
        "name": text,
        "kind": choice(KINDS),
        "client_id": text,
        "client_secret_file": text,
        "token_scope": text,
        "audience": text,
        "client_auth": choice(CLIENT_AUTH),
    }
    given = {name: field(name, parse) for name, parse in parsers.items() if name in values}
    settings = ProviderSettings(**{**defaults.__dict__, **given})
    if settings.authority and ("/" in settings.authority or any(c.isspace() for c in settings.authority)):
        raise SettingsError(f"{label('authority')}: {settings.authority!r} is not a host[:port]")
    if settings.kind == "oauth2":
        if not settings.client_id:
            raise SettingsError(f"{label('client_id')}: required for kind oauth2")
        if not settings.client_secret_file:
            raise SettingsError(f"{label('client_secret_file')}: required for kind oauth2")
        try:
            read_secret(settings.client_secret_file)
        except OSError as e:
            raise SettingsError(f"{label('client_secret_file')}: cannot read it ({e.strerror})") from None
    else:
        for field_name in ("client_id", "client_secret_file", "token_scope", "audience"):
            if getattr(settings, field_name):
                raise SettingsError(f"{label(field_name)}: only for kind oauth2")
    return settings


FIELDS = tuple(ProviderSettings.__dataclass_fields__)


def read_secret(path: str) -> str:
    """A secret from a file, without its final newline. Read on every use, so a rotated secret is picked up."""
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")
