"""header-augment: add headers from a header provider to every proxied request in scope.

    mitmdump -s addon/header_augment.py --set header_provider_url=http://127.0.0.1:9000/headers

Providers are polled on background threads; the request hook only reads the last valid answer.
"""

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# Scripts are reloaded when this file changes: drop our modules too, so the reload picks up edits to them.
for _name in [m for m in sys.modules if m == "header_augment_core" or m.startswith("header_augment_core.")]:
    del sys.modules[_name]

from mitmproxy import command, ctx, exceptions, flowfilter, http  # noqa: E402

from header_augment_core.options import OPTIONS, check_deferred, label, settings_from_options  # noqa: E402
from header_augment_core.providers_file import load_providers_file  # noqa: E402
from header_augment_core.refresher import Refresher  # noqa: E402
from header_augment_core.settings import ProviderSettings, SettingsError  # noqa: E402
from header_augment_core.snapshot import NOTHING, merge  # noqa: E402
from header_augment_core.status import RequestCounters, fetch_summary, report  # noqa: E402

logger = logging.getLogger("header_augment")

COUNTERS_LOG_INTERVAL = 60.0
FILE_CHECK_INTERVAL = 1.0

Label = Callable[[str], str]


@dataclass(frozen=True)
class Binding:
    """One provider's refresher and the rules for applying its headers to a flow."""

    settings: ProviderSettings
    refresher: Refresher
    scope: flowfilter.TFilter | None
    counters: RequestCounters

    def apply(self, flow: http.HTTPFlow) -> None:
        counters = self.counters
        if self.scope is not None and not self.scope(flow):
            counters.out_of_scope += 1
            return
        snapshot = self.refresher.snapshot  # read once: a request never mixes two answers
        if not snapshot.usable(time.monotonic()):
            if self.settings.require:
                flow.response = _refusal(snapshot is NOTHING)
                counters.refused += 1
            else:
                counters.without += 1
            return
        fields, had_one = merge(flow.request.headers.fields, snapshot, self.settings.merge)
        if had_one:
            counters.already_present += 1
        if fields is not None:
            flow.request.headers.fields = fields
            counters.given += 1


def _refusal(never_answered: bool) -> http.Response:
    why = "no valid answer from the header provider yet" if never_answered else "the provider's headers expired"
    return http.Response.make(
        503, f"header-augment: {why} (header_require is set)\n", {"Content-Type": "text/plain; charset=utf-8"}
    )


def _compile_scope(settings: ProviderSettings, label_of: Label) -> flowfilter.TFilter | None:
    if not settings.scope:
        return None
    try:
        return flowfilter.parse(settings.scope)
    except ValueError as e:
        raise SettingsError(
            f"{label_of('scope')}: {settings.scope!r} is not a mitmproxy filter expression ({e})"
        ) from None


def _file_stamp(path: str) -> tuple | None:
    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class HeaderAugment:
    def __init__(self) -> None:
        self.bindings: tuple[Binding, ...] = ()
        self._running = False
        self._configured = False
        self._file_stamp: tuple | None = None
        self._ticker: asyncio.Task | None = None

    # -- configuration ------------------------------------------------------------------------------------------

    def load(self, loader) -> None:
        for option in OPTIONS:
            loader.add_option(option.name, option.typespec, option.default, option.help)
        check_deferred(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        if not any(name.startswith("header_") for name in updated):
            return
        try:
            bindings, stamp = self._build()
        except SettingsError as e:
            raise exceptions.OptionsError(str(e)) from None
        self._file_stamp = stamp
        self._install(bindings)

    def _build(self) -> tuple[tuple[Binding, ...], tuple | None]:
        """Bindings for the current options and providers file (and the file's stamp); nothing is changed yet."""
        wanted: list[tuple[ProviderSettings, Label]] = []
        single = settings_from_options(ctx.options)
        if single is not None:
            wanted.append((single, label))
        path = ctx.options.header_providers_file
        stamp = _file_stamp(path) if path else None
        if path:
            wanted += load_providers_file(path)
        bindings: list[Binding] = []
        try:
            for settings, label_of in wanted:
                bindings.append(self._bind(settings, label_of))
        except SettingsError:
            current = {b.refresher for b in self.bindings}
            for binding in bindings:
                if binding.refresher not in current:
                    binding.refresher.stop()  # made for this attempt only: close its client
            raise
        return tuple(bindings), stamp

    def _bind(self, settings: ProviderSettings, label_of: Label) -> Binding:
        """A binding for `settings`, reusing a running refresher (and its cache) when the source is unchanged."""
        scope = _compile_scope(settings, label_of)
        for old in self.bindings:
            if old.settings.source == settings.source:
                return Binding(settings, old.refresher, scope, old.counters)
        try:
            refresher = Refresher.for_settings(settings)
        except SettingsError as e:
            raise SettingsError(f"{label_of(e.field or 'url')}: {e}") from None
        return Binding(settings, refresher, scope, RequestCounters())

    def _install(self, bindings: tuple[Binding, ...]) -> None:
        previous, self.bindings = self.bindings, bindings
        for refresher in {b.refresher for b in previous} - {b.refresher for b in bindings}:
            refresher.stop()
        if not bindings and (previous or not self._configured):
            logger.warning(
                "no header provider configured (header_provider_url, header_providers_file): "
                "header-augment is idle and adds no headers"
            )
        self._configured = True
        warned = {(b.settings.source, b.settings.scope) for b in previous}
        for binding in bindings:
            if not binding.settings.scope and (binding.settings.source, "") not in warned:
                logger.warning(
                    "header_scope is empty: headers from %s go to every host this proxy sees", binding.settings.label
                )
        if self._running:
            self._start()

    def _start(self) -> None:
        for binding in self.bindings:
            if binding.refresher.ident is None:  # shared by two bindings, or already started
                binding.refresher.start()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def running(self) -> None:
        self._running = True
        self._start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="header-augment ticker")

    def done(self) -> None:
        self._running = False
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        bindings, self.bindings = self.bindings, ()
        for refresher in {b.refresher for b in bindings}:
            refresher.stop()

    async def _tick(self) -> None:
        """Reloads a changed providers file; logs the counters once a minute (at debug)."""
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)
            self._reload_providers_file()
            if time.monotonic() - last_log >= COUNTERS_LOG_INTERVAL:
                last_log = time.monotonic()
                for binding in self.bindings:
                    logger.debug(
                        "header provider %s: requests: %s; fetches: %s",
                        binding.settings.label,
                        binding.counters.summary(),
                        fetch_summary(binding.refresher),
                    )

    def _reload_providers_file(self) -> None:
        path = ctx.options.header_providers_file
        if not path or _file_stamp(path) == self._file_stamp:
            return
        try:
            bindings, self._file_stamp = self._build()
        except SettingsError as e:
            self._file_stamp = _file_stamp(path)  # report a bad file once, not every second
            logger.error("%s; keeping the previous configuration", e)
            return
        logger.info("header_providers_file %s changed: %d provider(s) configured", path, len(bindings))
        self._install(bindings)

    # -- the request path ---------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            for binding in self.bindings:
                binding.apply(flow)
                if flow.response:
                    return
        except Exception:
            # The flow goes on untouched: `apply` assigns the new header fields in one step, at its very end.
            logger.exception("header-augment: unexpected error; request passed on unchanged")

    # -- commands -----------------------------------------------------------------------------------------------

    @command.command("augment.refresh")
    def refresh(self) -> None:
        """Ask every header provider again now (in the background: this returns at once)."""
        for refresher in {b.refresher for b in self.bindings}:
            refresher.refresh_now()
        logger.info("header-augment: refresh requested for %d provider(s)", len(self.bindings))

    @command.command("augment.status")
    def status(self) -> str:
        """Per provider: state, age of the last good answer, last error, header names in use and counters."""
        return report([(b.settings, b.refresher, b.counters) for b in self.bindings], time.monotonic())


addons = [HeaderAugment()]
