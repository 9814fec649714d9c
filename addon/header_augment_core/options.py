"""The single-provider options, and the start-up check that keeps a bad `--set header_…` from going unnoticed.

mitmproxy applies `--set` values for script options only once the script has declared them (`process_deferred`,
called from `AddonManager.register`). If mitmproxy's own parser rejects such a value there, the OptionsError
escapes `Script.loadscript` (its `safecall` re-raises OptionsError) inside the script watcher task: the script is
dropped, nothing is logged, and the proxy runs on without it. A misspelled name just stays deferred forever.
`check_deferred` runs in our `load()`, before that, and turns both into logged errors (which stop mitmdump at
start-up) while taking the bad values out of mitmproxy's way. It reads mitmproxy's private deferred-option state
(`OptManager.deferred`, `_parse_setval`, `_UnconvertedStrings`; mitmproxy is pinned to 12.3.1): mitmproxy's own bug,
https://github.com/mitmproxy/mitmproxy/issues/8013 (fix proposed in pull request 8429). Once a mitmproxy release
logs these failures itself, this check can go.
"""

import difflib
import logging
from collections.abc import Sequence

from mitmproxy import exceptions, optmanager
from mitmproxy.utils import typecheck

from .fields import Option, SettingsError, options_of, shown
from .http_exchange import redact_urls
from .kinds import KINDS
from .settings import ProviderSettings, fields_of, parse_settings

logger = logging.getLogger("header_augment")


def _table() -> tuple[tuple[Option, str | None], ...]:
    """Every option with the settings field it sets: the shared settings', then each kind's, then the others."""
    by_name: dict[str, tuple[Option, str | None]] = {}
    for cls in (ProviderSettings, *KINDS.values()):
        for field, option in options_of(cls).items():
            known = by_name.setdefault(option.name, (option, field))
            assert known == (option, field), f"{option.name} is declared twice"
    for option in OTHER_OPTIONS:
        by_name[option.name] = (option, None)
    return tuple(by_name.values())


OTHER_OPTIONS = (
    Option(
        "header_providers_file",
        str,
        "",
        "YAML or JSON file listing several providers, each with its own hosts and settings "
        "(see docs/providers-file.md). Reloaded when it changes and stops changing.",
    ),
    Option(
        "header_admin_listen",
        str,
        "",
        "Serve /ready, /live, /metrics, /status and POST /refresh at host:port (127.0.0.1:9901, [::1]:9901; port 0 "
        "picks a free one); empty: off. It has no authentication: keep it on loopback or a network you trust.",
    ),
    Option(
        "header_keep_values",
        bool,
        False,
        "Keep the values header-augment added in each flow once its request has been sent. By default they are "
        "replaced by <header-augment: NAME> there, so that -w flow files, hardump, the export commands and mitmweb "
        "never hold them; set this only to debug your own traffic.",
    ),
    Option(
        "header_egress",
        str,
        "pass",
        "Where requests may go: pass (every host, as without header-augment); deny (only the hosts an entry names "
        "for the request's client, or header_egress_allow or a providers file's egress: allow rules; every other "
        "request or CONNECT is answered 403, and a name that resolves to a loopback, link-local or private address "
        "needs an address rule); report (everything goes out; what deny would refuse is counted and audited). A "
        "providers file's egress: default applies too: the stricter of the two holds.",
    ),
    Option(
        "header_egress_allow",
        Sequence[str],
        [],
        "Hosts every client may reach with header_egress=deny, as header_hosts writes them (api.example.com, "
        "*.example.com, host:port, 10.0.0.7), and networks (10.0.0.0/8, [fd00::]/8): an address or network also "
        "admits names that resolve into it. Repeat the option or separate with commas.",
    ),
    Option(
        "header_audit_log",
        str,
        "",
        "File that gets one JSON line for every request header-augment added a credential to, signed, denied, "
        "reported or refused: time, action, provider, client, method, host, path (no query), header names, status "
        "and an HMAC fingerprint of the credential, never a value. Created 0600; reopened when logrotate renames "
        "it. Empty: off.",
    ),
    Option(
        "header_substitute_body_limit",
        str,
        "1MiB",
        "The largest request body searched for placeholders (bytes, or with KiB or MiB), for entries whose "
        "header_substitute has body; a larger or streamed body is sent as it is, and the flow's comment says so.",
    ),
    Option(
        "header_audit_require",
        bool,
        False,
        "Answer 503 instead of sending a request with a credential while the header_audit_log file cannot be "
        "written; service resumes by itself once it can.",
    ),
)
TABLE = _table()
OPTIONS = tuple(option for option, _ in TABLE)
OPTION_NAMES = tuple(option.name for option in OPTIONS)
_LABELS = {field: option.name for option, field in TABLE if field}
# The options that say where the single provider's credentials come from, each picking its kind.
LOCATORS = {_LABELS[kind.LOCATOR]: kind for kind in KINDS.values() if kind.LOCATOR}


def label(field: str) -> str:
    """The option that sets a settings field (the field's own name if none does)."""
    return _LABELS.get(field, field)


def settings_from_options(options: optmanager.OptManager) -> ProviderSettings | None:
    """Settings for the single provider the options describe, or None when none of its sources is set."""
    given = [name for name in LOCATORS if getattr(options, name)]
    if not given:
        return None
    if len(given) > 1:
        both = "both" if len(given) == 2 else "all"
        raise SettingsError(f"{' and '.join(given)} are {both} set: give one of {', '.join(LOCATORS)}")
    kind = LOCATORS[given[0]]
    values: dict[str, object] = {"kind": kind.KIND}  # picked here already: an empty command is refused as such
    for option, field in TABLE:
        if field is None or getattr(options, option.name) == options.default(option.name):
            continue
        if option.name in LOCATORS and option.name != given[0]:
            continue
        if field not in fields_of(kind):
            raise SettingsError(f"{option.name}: not used with {given[0]}")
        value = getattr(options, option.name)
        if option.convert is not None:
            try:
                value = option.convert(value)
            except ValueError as e:
                raise SettingsError(f"{option.name}: {e}") from None
        values[field] = value
    return parse_settings(values, label)


# optmanager._Option is private: the class of OptManager._options' values (mitmproxy 12.3.1; see tests/test_seams.py).
def _why(option: optmanager._Option, error: Exception) -> str:
    if option.typespec is bool:
        return "accepted: true, false, toggle, or no value (meaning true)"
    return f"{error}; accepted: one value"


def check_deferred(options: optmanager.OptManager) -> None:
    """Report every deferred `header_*` value that mitmproxy would drop the script over, and take it out."""
    for name, value in list(options.deferred.items()):
        if not name.startswith("header_"):
            continue
        problem = None
        if name not in options:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; header-augment's options: {', '.join(OPTION_NAMES)}"
            problem = f"unknown option {name}{hint}"
        else:
            known = options._options[name]  # private: the declared option, typespec included (mitmproxy 12.3.1)
            if known.typespec is str and isinstance(value, int | float) and not isinstance(value, bool):
                options.deferred[name] = value = str(value)  # `header_refresh_interval: 30` in config.yaml
            try:
                if isinstance(value, optmanager._UnconvertedStrings):  # from --set (private, mitmproxy 12.3.1)
                    options._parse_setval(known, value.val)  # private: mitmproxy's own --set conversion, as is
                else:  # from a config file, already typed by YAML
                    typecheck.check_option_type(name, value, known.typespec)
            except (exceptions.OptionsError, TypeError) as e:
                problem = f"{name}: {_shown(value)} is not accepted ({_why(known, e)})"
        if problem:
            del options.deferred[name]
            logger.error("header-augment: %s", redact_urls(problem))


def _shown(value: object) -> str:
    if isinstance(value, optmanager._UnconvertedStrings):  # private: what --set defers (mitmproxy 12.3.1)
        return ", ".join(shown(v) for v in value.val) or "no value"
    return shown(value)
