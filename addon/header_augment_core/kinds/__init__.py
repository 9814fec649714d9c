"""The provider kinds, picked by `kind:`. A kind is one module: its settings, their checks and its client."""

from .base import Source
from .command import CommandSource
from .file import FileSource
from .http import HttpSource
from .oauth2 import OAuth2Source

KINDS: dict[str, type[Source]] = {cls.KIND: cls for cls in (HttpSource, OAuth2Source, FileSource, CommandSource)}
