"""Which request paths an entry is for (field `paths`, option `header_paths`): path prefixes, matched against the
request's path alone (never its query), once normalised."""

from .fields import SettingsError, shown


def parse_paths(value: object) -> tuple[str, ...]:
    """`paths` from a list or a comma-separated string: each a prefix starting with `/`. Raises SettingsError."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise SettingsError(f"{shown(value)} is not a list of paths or a comma-separated string")
    prefixes = tuple(part.strip() for item in items for part in item.split(",") if part.strip())
    for prefix in prefixes:
        if not prefix.startswith("/") or any(c.isspace() or c in "?#" for c in prefix):
            raise SettingsError(f"{shown(prefix)} is not a path prefix (it starts with /, has no query or space)")
    return prefixes
