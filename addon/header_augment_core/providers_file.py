"""The providers file: several providers, each with its own hosts and settings, in YAML or JSON.

providers:
  - name: internal
    url: http://127.0.0.1:9000/headers
    hosts: api.internal.example
  - name: partner
    kind: oauth2
    url: https://idp.example/oauth2/token
    client_id: proxy
    client_secret_file: /run/secrets/partner
    hosts: [api.partner.example, "*.partner.example"]
"""

import difflib
import functools
import json
from collections.abc import Callable

from ruamel.yaml import YAML, YAMLError  # mitmproxy's own YAML library

from .failures import Failed
from .fields import SettingsError
from .files import Stamp, read_regular
from .settings import ALL_FIELDS, ProviderSettings, parse_settings

MAX_FILE_BYTES = 1024 * 1024

Entries = list[tuple[ProviderSettings, Callable[[str], str]]]


def _syntax_error(e: Exception) -> str:
    """Where the file is broken and what is wrong, without quoting it: a line of it may hold a secret."""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"not valid YAML: {getattr(e, 'problem', None) or type(e).__name__}{where}"


def load_providers_file(path: str, option: str = "header_providers_file") -> tuple[Entries, Stamp]:
    """Every provider in the file, in file order, each with the labeller that names its fields in messages, and
    the stamp of the content read. Applied only whole: SettingsError names the first entry and field at fault."""
    where = f"{option} {path}"
    try:
        data, read_stamp = read_regular(path, MAX_FILE_BYTES)
    except Failed as e:
        raise SettingsError(f"{where}: {e.reason}") from None
    try:
        text = data.decode("utf-8")
        document = json.loads(text) if path.endswith(".json") else YAML(typ="safe", pure=True).load(text)
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not UTF-8 text") from None
    except (ValueError, YAMLError) as e:
        raise SettingsError(f"{where}: {_syntax_error(e)}") from None
    entries = document.get("providers") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise SettingsError(f"{where}: expected a list of providers (or a mapping with a 'providers' list)")
    providers = []
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        here = f"{where}: provider {number}"
        if not isinstance(entry, dict):
            raise SettingsError(f"{here}: expected a mapping of settings")
        if isinstance(entry.get("name"), str) and entry["name"]:
            here += f" ({entry['name']})"
        for key in entry:
            if key not in ALL_FIELDS:
                close = difflib.get_close_matches(str(key), ALL_FIELDS, n=1)
                hint = f"; did you mean {close[0]}?" if close else f" (accepted: {', '.join(ALL_FIELDS)})"
                raise SettingsError(f"{here}: unknown field {str(key)[:64]!r}{hint}")
        label = functools.partial("{}: {}".format, here)
        settings = parse_settings({str(k): v for k, v in entry.items()}, label)
        if settings.name:
            if settings.name in names:
                raise SettingsError(f"{label('name')}: {settings.name!r} is used by an earlier provider")
            names.add(settings.name)
        providers.append((settings, label))
    return providers, read_stamp
