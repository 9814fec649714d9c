"""The providers file: several providers, each with its own scope, in YAML or JSON.

providers:
  - name: internal
    url: http://127.0.0.1:9000/headers
    scope: "~d api.internal.example"
  - name: partner
    kind: oauth2
    url: https://idp.example/oauth2/token
    client_id: proxy
    client_secret_file: /run/secrets/partner
    scope: "~d api.partner.example"
"""

import difflib
import functools
import json
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML, YAMLError  # mitmproxy's own YAML library

from .settings import FIELDS, ProviderSettings, SettingsError, parse_settings


def load_providers_file(
    path: str, option: str = "header_providers_file"
) -> list[tuple[ProviderSettings, Callable[[str], str]]]:
    """Every provider in the file, in file order, each with the labeller that names its fields in messages.

    SettingsError names the entry and the field at fault.
    """
    where = f"{option} {path}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        document = json.loads(text) if path.endswith(".json") else YAML(typ="safe", pure=True).load(text)
    except (ValueError, YAMLError) as e:
        raise SettingsError(f"{where}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from None
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
            if key not in FIELDS:
                close = difflib.get_close_matches(str(key), FIELDS, n=1)
                hint = f"; did you mean {close[0]}?" if close else f" (accepted: {', '.join(FIELDS)})"
                raise SettingsError(f"{here}: unknown field {key!r}{hint}")
        label = functools.partial("{}: {}".format, here)
        settings = parse_settings({str(k): v for k, v in entry.items()}, label)
        if settings.name:
            if settings.name in names:
                raise SettingsError(f"{label('name')}: {settings.name!r} is used by an earlier provider")
            names.add(settings.name)
        providers.append((settings, label))
    return providers
