"""What each provider kind declares in its one module: its settings (a frozen dataclass of `fields.setting`s, with
the checks across them) and the client that fetches with them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..fetch import Client
from ..fields import declared


@dataclass(frozen=True)
class Source:
    """A kind's own settings. Subclasses are frozen dataclasses: equal settings fetch the same credentials."""

    KIND: ClassVar[str]
    # The field that names where credentials come from (url, path, command, service). Given without `kind`, it picks
    # this kind; None: the kind must be named.
    LOCATOR: ClassVar[str | None] = None
    # Defaults this kind gives to fields declared elsewhere (the shared `timeout`, the content `format`).
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        for f in declared(type(self)):
            if f.name in self.DEFAULTS and getattr(self, f.name) == f.default:
                object.__setattr__(self, f.name, self.DEFAULTS[f.name])

    @property
    def display(self) -> str:
        """How logs and the status report name the source: never a secret, a URL query or a command's arguments."""
        raise NotImplementedError

    def check(self, label: Callable[[str], str], given: set[str]) -> None:
        """Checks across fields; raises SettingsError naming the field with `label(field)`."""

    @classmethod
    def check_across(cls, sources: list[tuple["Source", Callable[[str], str]]]) -> None:
        """Checks across a configuration's entries of this kind (each with its label); raises SettingsError."""

    def client(self, timeout: float) -> Client:
        """A client for these settings; raises SettingsError (with `field`) for a file it cannot load."""
        raise NotImplementedError
