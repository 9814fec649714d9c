"""kind `file`: a file holding the headers to add (or a token, or an ExecCredential), such as a Kubernetes projected
service-account token, a Secret volume or a Vault Agent sink. Re-read at every interval and whenever it changes."""

from dataclasses import dataclass
from typing import ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import ONE_SOURCE, Option, SettingsError, setting, text
from ..files import SettledChange, read_regular, stamp
from ..formats import Content, read
from ..rules import MAX_BODY_BYTES
from .base import Source

# How often the file's stamp is looked at. A change is read once two looks in a row agree, so it reaches the
# request path within two of these (plus the read).
WATCH_INTERVAL = 0.5


@dataclass(frozen=True)
class FileSource(Content, Source):
    KIND: ClassVar[str] = "file"
    LOCATOR: ClassVar[str] = "path"
    DEFAULTS: ClassVar[dict] = {"format": "headers"}

    path: str = setting(
        "",
        text,
        Option(
            "header_provider_file",
            str,
            "",
            "File holding the provider's content (by default a JSON object of headers), re-read when it changes "
            "(an atomic rename, a Kubernetes volume update) and at every interval. " + ONE_SOURCE,
        ),
    )

    @property
    def display(self) -> str:
        return self.path

    def check(self, label, given):
        if not self.path:
            raise SettingsError(f"{label('path')}: required for kind file")
        self.check_content(label, given)
        # A file missing now is not refused: a sidecar or the kubelet may write it after the proxy starts.

    def client(self, timeout: float) -> Client:
        return FileClient(self)


class FileClient(Client):
    watch_interval = WATCH_INTERVAL

    def __init__(self, source: FileSource) -> None:
        self.source = source
        # `current`: the stamp of the content last read (used, or refused: a bad file is not read again until it
        # changes or its retry is due).
        self._watch = SettledChange(source.path, None)
        self._first = True

    def changed(self) -> bool:
        """Whether the file has a new stamp, the same on two looks in a row (so not still being written)."""
        return self._watch.check()

    def _fetch(self) -> FetchResult:
        watch = self._watch
        first, self._first = self._first, False
        try:
            data, got = read_regular(self.source.path, MAX_BODY_BYTES)
        except Failed:
            watch.current = stamp(self.source.path)
            raise
        # What is read must be what two looks in a row saw (the last look and this read), or what was read before:
        # a file written in place is not taken half-written. The first read has nothing to compare with.
        if not first and got not in (watch.current, watch.seen):
            watch.seen = got
            raise Failed("changing: it is read again once it has stopped changing", "file")
        watch.current = watch.seen = got
        if not data.strip():
            raise Failed("empty")
        parsed = read(self.source, data)
        return FetchResult(answer=parsed.answer, lifetime=parsed.lifetime)
