"""header-augment: add headers from a header provider to every proxied request in scope.

    mitmdump -s addon/header_augment.py --set header_provider_url=http://127.0.0.1:9000/headers

The provider is polled on a background thread; the request hook only reads the last valid answer.
"""

import logging
import sys
import time
from dataclasses import dataclass

# Scripts are reloaded when this file changes: drop our modules too, so the reload picks up edits to them.
for _name in [m for m in sys.modules if m == "augment" or m.startswith("augment.")]:
    del sys.modules[_name]

from mitmproxy import ctx, exceptions, flowfilter, http  # noqa: E402

from augment.options import OPTIONS, check_deferred, label, settings_from_options  # noqa: E402
from augment.provider import ProviderClient  # noqa: E402
from augment.refresher import Refresher  # noqa: E402
from augment.settings import ProviderSettings, SettingsError  # noqa: E402
from augment.snapshot import NOTHING, merge  # noqa: E402

logger = logging.getLogger("header_augment")


@dataclass(frozen=True)
class Binding:
    """One provider's refresher and the rules for applying its headers to a flow."""

    settings: ProviderSettings
    refresher: Refresher
    scope: flowfilter.TFilter | None

    def apply(self, flow: http.HTTPFlow) -> None:
        if self.scope is not None and not self.scope(flow):
            return
        snapshot = self.refresher.snapshot  # read once: a request never mixes two answers
        if not snapshot.usable(time.monotonic()):
            if self.settings.require:
                flow.response = _refusal(snapshot is NOTHING)
            return
        fields = merge(flow.request.headers.fields, snapshot, self.settings.merge)
        if fields is not None:
            flow.request.headers.fields = fields


def _refusal(never_answered: bool) -> http.Response:
    why = "no valid answer from the header provider yet" if never_answered else "the provider's headers expired"
    return http.Response.make(
        503, f"header-augment: {why} (header_require is set)\n", {"Content-Type": "text/plain; charset=utf-8"}
    )


def _compile_scope(settings: ProviderSettings, label: str) -> flowfilter.TFilter | None:
    if not settings.scope:
        return None
    try:
        return flowfilter.parse(settings.scope)
    except ValueError as e:
        raise SettingsError(f"{label}: {settings.scope!r} is not a mitmproxy filter expression ({e})") from None


class HeaderAugment:
    def __init__(self) -> None:
        self.bindings: tuple[Binding, ...] = ()
        self._running = False
        self._configured = False

    def load(self, loader) -> None:
        for option in OPTIONS:
            loader.add_option(option.name, option.typespec, option.default, option.help)
        check_deferred(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        if not any(name.startswith("header_") for name in updated):
            return
        try:
            settings = settings_from_options(ctx.options)
            binding = self._bind(settings) if settings is not None else None
        except SettingsError as e:
            raise exceptions.OptionsError(str(e)) from None
        self._install((binding,) if binding else ())

    def _bind(self, settings: ProviderSettings) -> Binding:
        """A binding for `settings`, reusing the running refresher when only how headers are applied changed."""
        scope = _compile_scope(settings, "header_scope")
        current = self.bindings[0].refresher if self.bindings else None
        if current is not None and _same_source(current.settings, settings):
            refresher = current
        else:
            try:
                refresher = Refresher(ProviderClient(settings))
            except SettingsError as e:
                raise SettingsError(f"{label(e.field or 'url')}: {e}") from None
        return Binding(settings, refresher, scope)

    def _install(self, bindings: tuple[Binding, ...]) -> None:
        previous, self.bindings = self.bindings, bindings
        for refresher in {b.refresher for b in previous} - {b.refresher for b in bindings}:
            refresher.stop()
        if not bindings and (previous or not self._configured):
            logger.warning("header_provider_url is not set: header-augment is idle and adds no headers")
        self._configured = True
        warned = {(b.settings.url, b.settings.scope) for b in previous}
        for binding in bindings:
            if not binding.settings.scope and (binding.settings.url, "") not in warned:
                logger.warning(
                    "header_scope is empty: headers from %s go to every host this proxy sees",
                    binding.settings.display_url,
                )
        if self._running:
            self._start()

    def _start(self) -> None:
        for binding in self.bindings:
            if not binding.refresher.is_alive() and binding.refresher.ident is None:
                binding.refresher.start()

    def running(self) -> None:
        self._running = True
        self._start()

    def done(self) -> None:
        self._running = False
        bindings, self.bindings = self.bindings, ()
        for binding in bindings:
            binding.refresher.stop()

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


def _same_source(a: ProviderSettings, b: ProviderSettings) -> bool:
    """Whether two settings fetch the same way, so a running refresher (and its cache) can be kept."""
    return (a.url, a.authority, a.socket, a.timeout, a.ca, a.cert, a.interval, a.max_stale) == (
        b.url,
        b.authority,
        b.socket,
        b.timeout,
        b.ca,
        b.cert,
        b.interval,
        b.max_stale,
    )


addons = [HeaderAugment()]
