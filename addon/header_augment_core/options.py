"""The single-provider options, and the start-up check that keeps a bad `--set header_…` from going unnoticed.

mitmproxy applies `--set` values for script options only once the script has declared them (`process_deferred`,
called from `AddonManager.register`). If mitmproxy's own parser rejects such a value there, the OptionsError
escapes `Script.loadscript` (its `safecall` re-raises OptionsError) inside the script watcher task: the script is
dropped, nothing is logged, and the proxy runs on without it. A misspelled name just stays deferred forever.
`check_deferred` runs in our `load()`, before that, and turns both into logged errors (which stop mitmdump at
start-up) while taking the bad values out of mitmproxy's way.
"""

import difflib
import logging
from dataclasses import dataclass

from mitmproxy import exceptions, optmanager
from mitmproxy.utils import typecheck

from .settings import ProviderSettings, parse_settings

logger = logging.getLogger("header_augment")


@dataclass(frozen=True)
class Option:
    name: str
    field: str | None  # the ProviderSettings field it sets, if any
    typespec: type
    default: object
    help: str


OPTIONS = (
    Option(
        "header_provider_url",
        "url",
        str,
        "",
        "http(s) URL of the header provider, which answers with a JSON object of header names to values. "
        "Empty: header-augment stays idle.",
    ),
    Option(
        "header_provider_authority",
        "authority",
        str,
        "",
        "Host (authority) presented to the provider instead of the URL's; for https also the TLS server name.",
    ),
    Option(
        "header_provider_socket",
        "socket",
        str,
        "",
        "Unix socket to reach the provider through; the URL then only gives the path and the authority.",
    ),
    Option("header_provider_timeout", "timeout", str, "5s", "Timeout for one provider call, e.g. 250ms, 5s, 1m."),
    Option(
        "header_provider_ca",
        "ca",
        str,
        "",
        "CA bundle (PEM) to verify an https provider with, instead of the default trust store.",
    ),
    Option(
        "header_provider_cert",
        "cert",
        str,
        "",
        "Client certificate for mTLS to the provider: a PEM file holding the certificate and its key.",
    ),
    Option(
        "header_refresh_interval",
        "interval",
        str,
        "360s",
        "How often the provider is polled, e.g. 30s, 6m; at least 100ms. A shorter Cache-Control max-age wins.",
    ),
    Option(
        "header_max_stale",
        "max_stale",
        str,
        "0s",
        "Drop the cached headers once the last valid answer is older than this; 0s keeps them forever.",
    ),
    Option(
        "header_merge",
        "merge",
        str,
        "replace",
        "How provider headers meet the request's own: replace (ours win), append (both), keep (the request's win).",
    ),
    Option(
        "header_scope",
        "scope",
        str,
        "",
        "mitmproxy filter expression selecting the requests that get the headers, e.g. '~d api.example.com'. "
        "Empty: every request.",
    ),
    Option(
        "header_providers_file",
        None,
        str,
        "",
        "YAML or JSON file listing several providers, each with its own settings and scope (see the README). "
        "Reloaded when it changes.",
    ),
    Option(
        "header_require",
        "require",
        bool,
        False,
        "Answer in-scope requests with 503 while no valid headers are available, instead of forwarding them.",
    ),
)
OPTION_NAMES = tuple(option.name for option in OPTIONS)
_LABELS = {option.field: option.name for option in OPTIONS if option.field}


def label(field: str) -> str:
    """The option that sets a settings field."""
    return _LABELS[field]


def settings_from_options(options: optmanager.OptManager) -> ProviderSettings | None:
    """Settings for the single provider the options describe, or None when no URL is set."""
    if not options.header_provider_url:
        return None
    values = {option.field: getattr(options, option.name) for option in OPTIONS if option.field}
    return parse_settings(values, label)


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
            known = options._options[name]
            if known.typespec is str and isinstance(value, int | float) and not isinstance(value, bool):
                options.deferred[name] = value = str(value)  # `header_refresh_interval: 30` in config.yaml
            try:
                if isinstance(value, optmanager._UnconvertedStrings):  # from --set
                    options._parse_setval(known, value.val)
                else:  # from a config file, already typed by YAML
                    typecheck.check_option_type(name, value, known.typespec)
            except (exceptions.OptionsError, TypeError) as e:
                problem = f"{name}: {_shown(value)} is not accepted ({_why(known, e)})"
        if problem:
            del options.deferred[name]
            logger.error("header-augment: %s", problem)


def _shown(value: object) -> str:
    if isinstance(value, optmanager._UnconvertedStrings):
        return ", ".join(repr(v) for v in value.val) or "no value"
    return repr(value)
