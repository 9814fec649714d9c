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
egress:                      # optional: the egress policy (egress.py)
  default: deny
  allow:
    - hosts: [pypi.org, files.pythonhosted.org]
"""

import difflib
import functools
import json
from collections.abc import Callable

from ruamel.yaml import YAML, YAMLError  # mitmproxy's own YAML library
from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.constructor import ConstructorError, DuplicateKeyError, SafeConstructor
from ruamel.yaml.events import AliasEvent, ScalarEvent
from ruamel.yaml.nodes import MappingNode
from ruamel.yaml.scanner import Scanner, ScannerError

from .egress import EgressSettings, parse_section
from .failures import Failed
from .fields import SettingsError, shown
from .files import Stamp, read_regular
from .kinds import KINDS
from .settings import ALL_FIELDS, COMMON_FIELDS, MAX_NAME_CHARS, ProviderSettings, fields_of, parse_settings

MAX_FILE_BYTES = 1024 * 1024
# How deep lists and mappings may nest: a providers file needs 4 (providers, an entry, a list in it); YAML's
# composer and constructor and Python's json recurse once per level.
MAX_DEPTH = 32
# What a message keeps of a YAML error's own description (which quotes a character or a token of the file).
PROBLEM_CHARS = 64

_TOP_LEVEL = ("providers", "egress")


class Entries(list[tuple[ProviderSettings, Callable[[str], str]]]):
    """The file's providers in file order, each with the labeller that names its fields in messages; and `egress`,
    its `egress:` section (none given: an empty one)."""

    egress: EgressSettings = EgressSettings()


_TOO_DEEP = f"lists and mappings nested deeper than {MAX_DEPTH} levels"


class _Scanner(Scanner):
    """Refuses flow collections (`[`, `{`) nested deeper than MAX_DEPTH as it reads them. The scanner reads up to 1,024
    characters past what the composer has asked for, keeping a possible key for each open level, and checks them
    all at each token: thousands of `[` cost it a second before the composer saw the 33rd."""

    def fetch_flow_sequence_start(self) -> None:
        self._check_depth()
        super().fetch_flow_sequence_start()

    def fetch_flow_mapping_start(self) -> None:
        self._check_depth()
        super().fetch_flow_mapping_start()

    def _check_depth(self) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, _TOO_DEEP, self.reader.get_mark())


class _TreeComposer(Composer):
    """Composes only a plain tree of values, refusing at the first event that is not one, before anything is built:

    - an anchor or alias (`&x`, `*x`): an alias shares a node, so 500 bytes of aliases to aliases stand for billions
      of values ("billion laughs") that anything walking the document (a message quoting a value) expands;
    - a tag (`!!set`, `!!binary`, `!x`): it builds types no setting takes;
    - a key that is not a scalar (a list or mapping as a key cannot be hashed);
    - nesting deeper than MAX_DEPTH (in block style, or block and flow together: `_Scanner` sees flow alone).
    """

    def __init__(self, loader=None) -> None:
        super().__init__(loader=loader)
        self.nesting = 0

    def compose_node(self, parent, index):
        event = self.parser.peek_event()
        problem = None
        if isinstance(event, AliasEvent) or event.anchor is not None:
            problem = "anchors and aliases (& and *) are not accepted"
        elif getattr(event, "tag", None) is not None:
            problem = "tags (!) are not accepted"
        elif isinstance(parent, MappingNode) and index is None and not isinstance(event, ScalarEvent):
            problem = "a key must be a plain value, not a list or mapping"
        elif self.nesting >= MAX_DEPTH and not isinstance(event, ScalarEvent):
            problem = _TOO_DEEP
        if problem is not None:
            raise ComposerError(None, None, problem, event.start_mark)
        self.nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


class _Constructor(SafeConstructor):
    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError:  # a date that does not exist (2026-02-30), an integer of more than 4,300 digits
            raise ConstructorError(None, None, "a value that cannot be read", node.start_mark) from None


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.Scanner = _Scanner
    yaml.Composer = _TreeComposer
    yaml.Constructor = _Constructor
    return yaml


def _depth_exceeds(document: object, limit: int) -> bool:
    """Whether lists and mappings nest deeper than `limit` in a JSON document. Walked without recursion."""
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            pending += ((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def _syntax_error(e: Exception) -> str:
    """Where the file is broken and what is wrong, without quoting it: a line of it may hold a secret."""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if isinstance(e, DuplicateKeyError):  # its description quotes both values
        problem = "a key is given twice in one mapping"
    else:
        problem = (getattr(e, "problem", None) or type(e).__name__)[:PROBLEM_CHARS]
    return f"not valid YAML: {problem}{where}"


def _parse(text: str, is_json: bool) -> object:
    """The document in `text`, a tree of plain values no deeper than MAX_DEPTH; raises SettingsError."""
    if not is_json:
        try:
            return _yaml().load(text)
        except YAMLError as e:
            raise SettingsError(_syntax_error(e)) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(_syntax_error(e)) from None
    except RecursionError:  # json recurses per level: 100,000 `[` exhaust the stack before any check of ours
        document = None
    except ValueError:  # not a syntax error: an integer of more than 4,300 digits
        raise SettingsError("not valid JSON: a number too long to read") from None
    else:
        if not _depth_exceeds(document, MAX_DEPTH):
            return document
    raise SettingsError(f"not valid JSON: lists and objects nested deeper than {MAX_DEPTH} levels")


def _accepted(kind: object) -> str:
    """The fields an entry may have: its kind's, or those every kind has (the whole list is too long for a line)."""
    if isinstance(kind, str) and kind in KINDS:
        return f"accepted with kind {kind}: {', '.join(fields_of(KINDS[kind]))}"
    return f"accepted: kind, {', '.join(COMMON_FIELDS)} and the fields of the entry's kind ({', '.join(KINDS)})"


def load_providers_file(path: str, option: str = "header_providers_file") -> tuple[Entries, Stamp]:
    """Every provider in the file, in file order, each with the labeller that names its fields in messages (and the
    file's egress section as the list's `egress`), and the stamp of the content read. Applied only whole:
    SettingsError names the first entry and field at fault. An unknown top-level field is refused: a misspelt
    `egress` would otherwise leave the proxy open."""
    where = f"{option} {path}"
    try:
        data, read_stamp = read_regular(path, MAX_FILE_BYTES)
    except Failed as e:
        raise SettingsError(f"{where}: {e.reason}") from None
    try:
        document = _parse(data.decode("utf-8"), path.endswith(".json"))
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not UTF-8 text") from None
    except SettingsError as e:
        raise SettingsError(f"{where}: {e}") from None
    egress = EgressSettings()
    if isinstance(document, dict):
        for key in document:
            if key not in _TOP_LEVEL:
                close = difflib.get_close_matches(str(key)[:MAX_NAME_CHARS], _TOP_LEVEL, n=1)
                hint = f"; did you mean {close[0]}?" if close else f" (accepted: {', '.join(_TOP_LEVEL)})"
                raise SettingsError(f"{where}: unknown top-level field {shown(key)}{hint}")
        if "egress" in document:
            egress = parse_section(document["egress"], where)
        entries = document.get("providers", [] if "egress" in document else None)
    else:
        entries = document
    if not isinstance(entries, list):
        raise SettingsError(f"{where}: expected a list of providers (or a mapping with a 'providers' list)")
    providers = Entries()
    providers.egress = egress
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        here = f"{where}: provider {number}"
        if not isinstance(entry, dict):
            raise SettingsError(f"{here}: expected a mapping of settings")
        name = entry.get("name")
        if isinstance(name, str) and name and len(name) <= MAX_NAME_CHARS and name.isprintable():
            here += f" ({name})"  # one that is not is refused as the entry's first error, below
        for key in entry:
            if key not in ALL_FIELDS:
                close = difflib.get_close_matches(str(key)[:MAX_NAME_CHARS], ALL_FIELDS, n=1)
                hint = f"; did you mean {close[0]}?" if close else f" ({_accepted(entry.get('kind'))})"
                raise SettingsError(f"{here}: unknown field {shown(key)}{hint}")
        label = functools.partial("{}: {}".format, here)
        settings = parse_settings({str(k): v for k, v in entry.items()}, label)
        if settings.name:
            if settings.name in names:
                raise SettingsError(f"{label('name')}: {shown(settings.name)} is used by an earlier provider")
            names.add(settings.name)
        providers.append((settings, label))
    return providers, read_stamp
