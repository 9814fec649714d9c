"""How a provider setting is declared: a dataclass field that carries its parser and, where there is one, the
single-provider option that sets it. Settings classes (`settings.py`, each kind in `kinds/`) are built from these,
and so are the option table, the providers file's field list and the error labels.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from .durations import format_duration, parse_duration


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and says what is accepted.

    `field` is set where the message does not name the setting yet (its caller knows the label to put first).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Option:
    """A mitmproxy option (`--set name=value`) that sets one field of the single provider."""

    name: str
    typespec: Any
    default: object
    help: str
    # Turns the option's value into the field's raw value where the two are written differently (one command line
    # for the words a providers file lists); raises ValueError for a value it cannot convert.
    convert: Callable[[Any], object] | None = None


Parser = Callable[[object], object]


def setting(default: object, parse: Parser, option: Option | None = None, *, transport: bool = False) -> Any:
    """A settings field. `transport`: it changes how credentials are fetched, not which ones (a change to it keeps
    serving the cached headers until the new settings have fetched their own)."""
    return dataclasses.field(default=default, metadata={"parse": parse, "option": option, "transport": transport})


def declared(cls: type) -> tuple[dataclasses.Field, ...]:
    """The settings fields of a settings class, in declaration order."""
    return tuple(f for f in dataclasses.fields(cls) if "parse" in f.metadata)


def options_of(cls: type) -> dict[str, Option]:
    """Field name → the option that sets it, for the fields of `cls` that have one."""
    return {f.name: f.metadata["option"] for f in declared(cls) if f.metadata["option"] is not None}


# -- parsers: each takes a raw value (a string from --set, or a YAML/JSON value) and raises on a bad one ----------

_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def text(value: object) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{value!r} is not a string")
    return value


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _BOOLEANS:
        return _BOOLEANS[word]
    raise SettingsError(f"{value!r} is not a boolean (accepted: true, false)")


def choice(*accepted: str) -> Parser:
    def parse(value: object) -> str:
        if str(value) not in accepted:
            raise SettingsError(f"{value!r} is not accepted (accepted: {', '.join(accepted)})")
        return str(value)

    return parse


def duration(minimum: float, maximum: float, allow_zero: bool = False) -> Parser:
    """A duration in seconds within [minimum, maximum] (0 too when `allow_zero`); `minimum` 0 means "more than 0".

    The upper bound keeps every timer the refresher sets within what threading and the scheduler accept.
    """

    def parse(value: object) -> float:
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
        if seconds > maximum:
            raise SettingsError(f"{value!r} is too long: it must be at most {format_duration(maximum)}")
        return seconds

    return parse
