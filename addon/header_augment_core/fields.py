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

# The end of each single-provider locator's help: the options that each pick the provider's kind, one at a time.
ONE_SOURCE = "One of header_provider_url, header_provider_file, header_provider_command, header_aws_service."


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


# -- how a message quotes a value -------------------------------------------------------------------------------

SHOWN_CHARS = 40


def shown(value: object) -> str:
    """`value` as a message quotes it, in at most about SHOWN_CHARS characters whatever it is: the start of a string,
    a number, and only the type of anything else. A providers file can hold a list of a million items or a string
    of a megabyte; its messages must not grow with them (nor spend the event loop's time rendering them)."""
    if isinstance(value, str):
        head = value[:SHOWN_CHARS]
        while len(repr(head)) > SHOWN_CHARS + 2:  # escapes (a control character is four) count too
            head = head[:-1]
        return repr(head) + ("…" if len(head) < len(value) else "")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else "a very large number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a value of type {type(value).__name__[:SHOWN_CHARS]}"


# -- parsers: each takes a raw value (a string from --set, or a YAML/JSON value) and raises on a bad one ----------

_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def comma_list(value: object, what: str) -> list[str]:
    """The items of a list of strings or of a comma-separated string, stripped, empty ones dropped; raises
    SettingsError saying the value is not a list of `what`."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise SettingsError(f"{shown(value)} is not a list of {what} or a comma-separated string")
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def text(value: object) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{shown(value)} is not a string")
    if "\0" in value:  # no path, URL, name or filter has one; open() and os.stat() raise ValueError for it
        raise SettingsError(f"{shown(value)} has a NUL character")
    return value


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and (word := value.strip().lower()) in _BOOLEANS:
        return _BOOLEANS[word]
    if isinstance(value, int) and value in (0, 1):  # `require: 1` in JSON
        return bool(value)
    raise SettingsError(f"{shown(value)} is not a boolean (accepted: true, false)")


def choice(*accepted: str) -> Parser:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in accepted:
            raise SettingsError(f"{shown(value)} is not accepted (accepted: {', '.join(accepted)})")
        return value

    return parse


def duration(minimum: float, maximum: float, allow_zero: bool = False) -> Parser:
    """A duration in seconds within [minimum, maximum] (0 too when `allow_zero`); `minimum` 0 means "more than 0".

    The upper bound keeps every timer the refresher sets within what threading and the scheduler accept.
    """

    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SettingsError(f"{shown(value)} is not a duration")
        try:
            seconds = float(value) if isinstance(value, int | float) else parse_duration(value)
        except OverflowError:  # an int beyond a float's range
            seconds = math.inf
        except ValueError as e:
            raise SettingsError(f"{shown(value)} {e}") from None
        if not math.isfinite(seconds):
            raise SettingsError(f"{shown(value)} is not a finite duration")
        if seconds == 0 and allow_zero:
            return 0.0
        if seconds < minimum or (minimum == 0 and seconds <= 0):
            least = "more than 0s" if minimum == 0 else f"at least {format_duration(minimum)}"
            raise SettingsError(f"{shown(value)} is too short: it must be {least}")
        if seconds > maximum:
            raise SettingsError(f"{shown(value)} is too long: it must be at most {format_duration(maximum)}")
        return seconds

    return parse
