"""One provider's settings: those every kind shares (declared here) and its kind's own (`kinds/`), parsed and
checked before anything is started with them."""

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .clients import EVERY_CLIENT, Clients, parse_clients
from .fields import Option, SettingsError, boolean, declared, duration, setting, shown, text
from .hosts import NO_HOSTS, Hosts, parse_hosts
from .kinds import KINDS, Source
from .paths import parse_paths
from .placeholders import PLACES, check_placeholder, parse_env, parse_placeholder, parse_places
from .secret_headers import parse_header_names
from .snapshot import Merge

MIN_INTERVAL = 0.1
MAX_INTERVAL = 7 * 24 * 3600.0
MAX_STALE = 30 * 24 * 3600.0
MAX_TIMEOUT = 600.0
DEFAULT_TIMEOUT = 5.0

MAX_NAME_CHARS = 64

Label = Callable[[str], str]


def _merge(value: object) -> Merge:
    try:
        return Merge(value.strip().lower() if isinstance(value, str) else None)
    except ValueError:
        raise SettingsError(f"{shown(value)} is not a merge mode (accepted: replace, append, keep)") from None


def _name(value: object) -> str:
    """An entry's name: it labels every log line, status line, metric and message about the entry."""
    name = text(value)
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise SettingsError(f"{shown(name)}: a name is at most {MAX_NAME_CHARS} printable characters")
    return name


@dataclass(frozen=True)
class ProviderSettings:
    """`source` holds the kind's own settings; the fields here apply to every kind."""

    source: Source
    name: str = setting(
        "",
        _name,
        Option(
            "header_provider_name",
            str,
            "",
            "Name of the provider in logs, the status, flow comments and the metrics' provider label (which is "
            "otherwise its URL, file or command).",
        ),
    )
    hosts: Hosts = setting(
        NO_HOSTS,
        parse_hosts,
        Option(
            "header_hosts",
            Sequence[str],
            [],
            "The hosts that get the provider's headers, matched exactly against the request's destination (never "
            "its Host header): api.example.com, *.example.com (names below it), host:port, 10.0.0.7, [::1]:8443; "
            "* for every host. Repeat the option or separate with commas. Required unless header_scope is set.",
        ),
    )
    scope: str = setting(
        "",
        text,
        Option(
            "header_scope",
            str,
            "",
            "mitmproxy filter expression a request must also match to get the headers, e.g. '~m POST'. Use "
            "header_hosts for hosts: ~d, ~h and ~u are regex searches that also see the client's Host header.",
        ),
    )
    paths: tuple[str, ...] = setting(
        (),
        parse_paths,
        Option(
            "header_paths",
            Sequence[str],
            [],
            "Path prefixes a request must be under to get the headers (or be signed), e.g. /v2/: whole segments of "
            "the request's normalised path (/v2 takes /v2 and /v2/..., not /v2x), never its query; a path with a . or "
            ".. segment is under none. Repeat the option or separate with commas. Empty: every path.",
        ),
    )
    clients: Clients = setting(
        EVERY_CLIENT,
        parse_clients,
        Option(
            "header_clients",
            Sequence[str],
            [],
            "The clients of the proxy that get the provider's headers: user names as proxyauth authenticated "
            "them (proxyauth must be set, and not to any), client addresses or networks (127.0.0.2, "
            "10.1.0.0/16, [fd00::]/8). Repeat the option or separate with commas. Empty: every client.",
        ),
    )
    secret_headers: frozenset[str] = setting(
        frozenset(),
        parse_header_names,
        Option(
            "header_secret_headers",
            Sequence[str],
            [],
            "More names of added headers whose values are credentials, scrubbed from answers (Authorization, "
            "Proxy-Authorization, Cookie and names holding token, key, secret, auth, session, signature or "
            "credential always are). Repeat the option or separate with commas.",
        ),
    )
    merge: Merge = setting(
        Merge.REPLACE,
        _merge,
        Option(
            "header_merge",
            str,
            "replace",
            "How provider headers meet the request's own: replace (ours win), append (both), keep (the request's win).",
        ),
    )
    require: bool = setting(
        False,
        boolean,
        Option(
            "header_require",
            bool,
            False,
            "Answer in-scope requests with 503 while no valid headers are available, instead of forwarding them.",
        ),
    )
    placeholder: str = setting(
        "",
        parse_placeholder,
        Option(
            "header_placeholder",
            str,
            "",
            "A fake credential the client holds instead of the provider's token (16 to 256 of A-Z a-z 0-9 - . _ ~; "
            "`header-augment placeholder SHAPE` makes one shaped like a real token). The entry then adds no header: "
            "each occurrence of it, in the places header_substitute allows, in requests to header_hosts (from "
            "header_clients), is replaced by the token; anywhere else it is refused (403), and while there is no valid "
            "token, answered 503. With header_aws_service: an access key id (AKIA + 16 of A-Z 2-7), and the requests "
            "the client signed with it are signed again with the real credentials.",
        ),
    )
    substitute: frozenset[str] = setting(
        frozenset({"header"}),
        parse_places,
        Option(
            "header_substitute",
            Sequence[str],
            [],
            f"Where header_placeholder is replaced: any of {', '.join(PLACES)} (header: every request header value, "
            "and the user or password of Authorization: Basic; websocket: the client's text messages). Repeat the "
            "option or separate with commas. Empty: header.",
        ),
    )
    env: str = setting(
        "",
        parse_env,
        Option(
            "header_placeholder_env",
            str,
            "",
            "The environment variable a sandbox launcher gives the workload header_placeholder in (GH_TOKEN, "
            "OPENAI_API_KEY): augment.placeholders and the admin endpoint's GET /placeholders.env list NAME=VALUE.",
        ),
    )
    max_stale: float = setting(
        0.0,
        duration(0, MAX_STALE, allow_zero=True),
        Option(
            "header_max_stale",
            str,
            "0s",
            "Drop the cached headers once the last valid answer is older than this; 0s keeps them forever "
            "(a token's own expiry always applies).",
        ),
        transport=True,
    )
    interval: float = setting(
        360.0,
        duration(MIN_INTERVAL, MAX_INTERVAL),
        Option(
            "header_refresh_interval",
            str,
            "360s",
            "How often the provider is asked, e.g. 30s, 6m; from 100ms to 168h. A shorter max-age or token "
            "lifetime wins.",
        ),
        transport=True,
    )
    timeout: float = setting(
        DEFAULT_TIMEOUT,
        duration(0, MAX_TIMEOUT),
        Option(
            "header_provider_timeout",
            str,
            "",
            "Bound on one whole fetch (connect, TLS, answer; or a command's run), up to 10m. Default: 5s, and 30s "
            "for a command.",
        ),
        transport=True,
    )

    @property
    def kind(self) -> str:
        return self.source.KIND

    @functools.cached_property  # logged on every fetch; a frozen dataclass, so it never changes
    def label(self) -> str:
        """How logs and the status report name this provider."""
        return f"{self.name} ({self.source.display})" if self.name else self.source.display

    @property
    def fetch_key(self) -> tuple:
        """Everything that decides how the provider is fetched: two entries with equal keys share one refresher."""
        return (self.source, self.timeout, self.interval, self.max_stale)

    @property
    def credential_key(self) -> tuple:
        """What decides which credentials are fetched; a change to anything else (a timeout, a CA) keeps serving
        the cached headers until the new settings have fetched their own."""
        return (type(self.source),) + tuple(
            getattr(self.source, f.name) for f in declared(type(self.source)) if not f.metadata["transport"]
        )


COMMON_FIELDS = tuple(f.name for f in declared(ProviderSettings))


def fields_of(kind: type[Source]) -> tuple[str, ...]:
    return ("kind", *COMMON_FIELDS, *(f.name for f in declared(kind)))


ALL_FIELDS = tuple(dict.fromkeys(name for kind in KINDS.values() for name in fields_of(kind)))


def _kind_of(values: Mapping[str, object], label: Label) -> type[Source]:
    if "kind" in values:
        name = values["kind"]
        if not isinstance(name, str) or name not in KINDS:
            raise SettingsError(f"{label('kind')}: {shown(name)} is not accepted (accepted: {', '.join(KINDS)})")
        return KINDS[name]
    locators = {kind.LOCATOR: kind for kind in KINDS.values() if kind.LOCATOR}
    given = [field for field in locators if values.get(field)]
    if len(given) != 1:
        what = f"{' and '.join(given)} are {'both' if len(given) == 2 else 'all'} given" if given else "none is given"
        raise SettingsError(
            f"{label('kind')}: not given, so one of {', '.join(locators)} must name the source ({what})"
        )
    return locators[given[0]]


def parse_settings(values: Mapping[str, object], label: Label) -> ProviderSettings:
    """Settings from raw values keyed by field name; `label(field)` names a field in error messages."""
    kind = _kind_of(values, label)
    accepted = fields_of(kind)
    for name in values:
        if name not in accepted:
            raise SettingsError(f"{label(name)}: not a setting of kind {kind.KIND}")

    def parsed(cls: type) -> dict[str, object]:
        out = {}
        for f in declared(cls):
            if f.name in values:
                try:
                    out[f.name] = f.metadata["parse"](values[f.name])
                except (SettingsError, ValueError) as e:
                    raise SettingsError(f"{label(f.name)}: {e}") from None
        return out

    source = kind(**parsed(kind))  # the kind fills in its own defaults
    source.check(label, set(values))
    shared = parsed(ProviderSettings)
    if "timeout" not in shared and "timeout" in kind.DEFAULTS:
        shared["timeout"] = kind.DEFAULTS["timeout"]
    settings = ProviderSettings(source=source, **shared)
    check_placeholder(settings, label, set(values))
    if not settings.hosts and not settings.scope:
        raise SettingsError(
            f"{label('hosts')}: required: name the hosts that may receive this provider's headers "
            "(e.g. api.example.com, *.example.com), or * for every host"
        )
    return settings
