"""Which added headers carry credentials (field `secret_headers`, option `header_secret_headers`, beside the names
every entry treats so): only their values are scrubbed from answers."""

import re

from .fields import SettingsError, shown

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 §5.1)


def parse_header_names(value: object) -> frozenset[str]:
    """Header names from a list or a comma-separated string, lower-cased. Raises SettingsError."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise SettingsError(f"{shown(value)} is not a list of header names or a comma-separated string")
    names = [part.strip() for item in items for part in item.split(",") if part.strip()]
    for name in names:
        if not _TOKEN.fullmatch(name):
            raise SettingsError(f"{shown(name)} is not a header name")
    return frozenset(name.lower() for name in names)
