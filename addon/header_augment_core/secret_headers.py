"""Which added headers carry credentials: only their values are scrubbed from answers (a value such as
`X-Tenant: production` is no secret, and replacing it would mangle ordinary text). The names every entry treats so
are here; an entry's field `secret_headers` (option `header_secret_headers`) names more."""

import re

from .fields import SettingsError, comma_list, shown

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 §5.1)

CREDENTIAL_NAMES = frozenset({"authorization", "proxy-authorization", "cookie"})
# A name holding one of these is a credential's: X-Api-Key, X-Auth-Token, X-Session-Id, X-Amz-Security-Token,
# X-Hub-Signature, X-Goog-Credential...
CREDENTIAL_WORDS = ("token", "key", "secret", "auth", "session", "signature", "credential")


def is_credential(name: str) -> bool:
    """Whether the header `name` carries a credential whatever the entry says."""
    low = name.lower()
    return low in CREDENTIAL_NAMES or any(word in low for word in CREDENTIAL_WORDS)


def parse_header_names(value: object) -> frozenset[str]:
    """Header names from a list or a comma-separated string, lower-cased. Raises SettingsError."""
    names = comma_list(value, "header names")
    for name in names:
        if not _TOKEN.fullmatch(name):
            raise SettingsError(f"{shown(name)} is not a header name")
    return frozenset(name.lower() for name in names)
