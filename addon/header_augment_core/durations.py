import math
import re

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``250ms``, ``5s``, ``6m``, ``1h`` or a bare number of seconds.

    The ValueError says what is wrong without quoting `text`: its caller quotes it (bounded: fields.shown)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("is not a duration (accepted: 250ms, 5s, 6m, 1h or a number of seconds)")
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds):
        raise ValueError("is too large a duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of `parse_duration` for humans: ``0.25`` → ``250ms``, ``360`` → ``6m``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.3g}s" if seconds < 60 else f"{seconds:.0f}s"


def format_age(seconds: float) -> str:
    """How long ago, for logs and the status report: tenths under 10 s, whole seconds above."""
    return format_duration(max(0.0, round(seconds, 1 if seconds < 10 else 0)))
