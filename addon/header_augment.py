"""header-augment: add headers from a header provider to the requests that go to the hosts you name.

    mitmdump -s addon/header_augment.py --set header_provider_url=http://127.0.0.1:9000/headers \\
        --set header_hosts=api.example.com

Providers are polled on background threads; the request hook only reads the last valid answer.
"""

import asyncio
import ipaddress
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

# Scripts are reloaded when this file changes: drop our modules too, so the reload picks up edits to them.
for _name in [m for m in sys.modules if m == "header_augment_core" or m.startswith("header_augment_core.")]:
    del sys.modules[_name]

from mitmproxy import command, ctx, exceptions, http  # noqa: E402
from mitmproxy.proxy import mode_specs  # noqa: E402

from header_augment_core import egress, entries  # noqa: E402
from header_augment_core.admin import OPTION as ADMIN_OPTION  # noqa: E402
from header_augment_core.admin import AdminEndpoint  # noqa: E402
from header_augment_core.audit import AuditLog, new_key  # noqa: E402
from header_augment_core.binding import Binding  # noqa: E402
from header_augment_core.clients import proxyauth_changed  # noqa: E402
from header_augment_core.counters import request_summary  # noqa: E402
from header_augment_core.fields import SettingsError  # noqa: E402
from header_augment_core.files import SettledChange, stamp  # noqa: E402
from header_augment_core.options import (  # noqa: E402
    LOCATORS,
    OPTIONS,
    check_deferred,
    label,
    settings_from_options,
)
from header_augment_core.placeholders import env_lines, parse_size  # noqa: E402
from header_augment_core.providers_file import load_providers_file  # noqa: E402
from header_augment_core.request_path import RequestPath  # noqa: E402
from header_augment_core.scheduler import Scheduler  # noqa: E402
from header_augment_core.status import addon_report, report  # noqa: E402

logger = logging.getLogger("header_augment")

COUNTERS_LOG_INTERVAL = 60.0
FILE_CHECK_INTERVAL = 1.0
AUDIT_OPTIONS = ("header_audit_log", "header_audit_require")
# Options that change no entry: a change of one is applied on its own, without building the entries again.
_NOT_ENTRIES = (ADMIN_OPTION, "header_keep_values", "header_substitute_body_limit", *AUDIT_OPTIONS)


class RerouteGuard:
    """Checks each flow once every other addon's `request` hook has run: scripts (ours too) run before mitmproxy's
    own map_remote and modify_headers, so HeaderAugment puts this at the end of the addon chain while it runs."""

    name = "header-augment reroute guard"

    def __init__(self, check: Callable[[http.HTTPFlow], Any], streamed: Callable[[http.HTTPFlow], Any]) -> None:
        self.request = check
        self.requestheaders = streamed  # a streamed body's headers leave before its `request` hook


def _open_listen_hosts(options) -> list[str]:
    """The proxy's listen addresses that are not loopback, when no proxyauth asks clients who they are: whoever
    reaches one sends requests with the providers' credentials. (A WireGuard mode's keys are its authentication; a
    local redirector listens nowhere.)"""
    if "proxyauth" in options and options.proxyauth:  # declared by mitmproxy's proxyauth addon, not its core
        return []
    found = []
    for spec in options.mode:
        mode = mode_specs.ProxyMode.parse(spec)
        if isinstance(mode, mode_specs.WireGuardMode) or mode.listen_port(options.listen_port) is None:
            continue
        host = mode.listen_host(options.listen_host)
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # "" (every interface) or a name
        if not loopback:
            found.append(host or "every interface")
    return found


class HeaderAugment:
    """The mitmproxy layer: options, configuration, lifecycle and commands. The request path is the package's
    `RequestPath`, whose methods are this addon's hooks (set as attributes: no extra call per flow)."""

    def __init__(self) -> None:
        self._path = path = RequestPath()
        self.requestheaders = path.requestheaders
        self.responseheaders = path.responseheaders
        self.response = path.response
        self.error = path.error
        self.websocket_message, self.websocket_end = path.websocket_message, path.websocket_end
        self.http_connect, self.socks5_auth = path.http_connect, path.socks5_auth
        self.server_connect, self.server_connected = path.server_connect, path.server_connected
        self.check_reroute, self.sign_streamed = path.check_reroute, path.sign_streamed  # the guard's hooks
        self._guard = RerouteGuard(self.check_reroute, self.sign_streamed)
        self._running = False
        self._configured = False
        self._file: SettledChange | None = None
        self._ticker: asyncio.Task | None = None
        self._admin = AdminEndpoint(lambda: self.bindings, self.refresh, path=path)
        self._audit_key = new_key()  # the fingerprints' key: one per run, whatever the audit log's path becomes
        self._scheduler = Scheduler()

    @property
    def bindings(self) -> tuple[Binding, ...]:
        """The entries in file order."""
        return self._path.entries.bindings

    # -- configuration ------------------------------------------------------------------------------------------

    def load(self, loader) -> None:
        for option in OPTIONS:
            loader.add_option(option.name, option.typespec, option.default, option.help)
        check_deferred(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        try:
            if ADMIN_OPTION in updated:
                self._admin.want(ctx.options.header_admin_listen)
            if "header_keep_values" in updated:
                self._path.keep_values = ctx.options.header_keep_values
            if "header_substitute_body_limit" in updated:
                try:
                    self._path.body_limit = parse_size(ctx.options.header_substitute_body_limit)
                except SettingsError as e:
                    raise SettingsError(f"header_substitute_body_limit: {e}") from None
            if "proxyauth" in updated:
                proxyauth_changed()
            if "proxyauth" in updated or any(
                name.startswith("header_") and name not in _NOT_ENTRIES for name in updated
            ):  # proxyauth: an entry's clients may name users only while it is set
                self._configure_providers()
            if not updated.isdisjoint(AUDIT_OPTIONS):
                self._configure_audit()
            if ADMIN_OPTION in updated and self._running:
                self._admin.serve()
        except SettingsError as e:
            if not self._running and updated == ctx.options.keys():
                # The script loader's configure, which logs an error raised here under a traceback of our frame; a
                # logged error stops mitmdump at start-up just the same. Nothing would roll back: no option changed.
                logger.error("header-augment: %s", e)
                return
            raise exceptions.OptionsError(str(e)) from None

    def _configure_providers(self) -> None:
        """An option changed: built here, on the loop, because mitmproxy's `configure` must accept or refuse the
        change before it returns. A changed providers file, the frequent and large case, is built off the loop."""
        path = ctx.options.header_providers_file
        loaded = load_providers_file(path) if path else ([], None)
        policy = (self._egress(), *((loaded[0].egress,) if path else ()))
        built = entries.build(self._wanted(loaded[0]), self._path.entries, self._path.seen, self._proxyauth(), policy)
        self._file = SettledChange(path, loaded[1]) if path else None
        self._install(built, entries.warnings(self._path.entries, built))

    @staticmethod
    def _wanted(from_file: list) -> list:
        single = settings_from_options(ctx.options)
        return ([(single, label)] if single is not None else []) + from_file

    @staticmethod
    def _egress() -> egress.EgressSettings:
        return egress.from_options(ctx.options.header_egress, ctx.options.header_egress_allow)

    def _configure_audit(self) -> None:
        """header_audit_log and header_audit_require: a new path is opened here (an unwritable one is the option's
        error, which stops mitmdump at start-up), and the answer hooks record each flow while a log is set."""
        log_path, require = ctx.options.header_audit_log, ctx.options.header_audit_require
        if require and not log_path:
            raise SettingsError("header_audit_require: set header_audit_log too (the log that must be writable)")
        current = self._path.audit
        if current is not None and current.path == log_path:
            current.require = require
            return
        self._path.audit = AuditLog(log_path, self._path.counts, self._audit_key, require) if log_path else None
        if current is not None:
            current.close()
        self._bind_answer_hooks()

    def _bind_answer_hooks(self) -> None:
        """With an audit log the answer hooks also write each flow's line; without one they cost nothing more."""
        path = self._path
        if path.audit is None:
            self.responseheaders, self.response, self.error = path.responseheaders, path.response, path.error
            for hook in ("http_connected", "http_connect_error"):
                self.__dict__.pop(hook, None)
        else:
            self.responseheaders = path.audited_responseheaders
            self.response, self.error = path.audited_response, path.audited_error
            self.http_connected = self.http_connect_error = path.audited_connect_end

    @staticmethod
    def _proxyauth() -> str:
        return ctx.options.proxyauth if "proxyauth" in ctx.options else ""  # declared by mitmproxy's proxyauth addon

    def _install(self, built: entries.Entries, warnings: list[str]) -> None:
        """Swaps the request path's entries (one reference) and stops the refreshers no entry uses any more."""
        previous, self._path.entries = self._path.entries, built
        for refresher in {b.refresher for b in previous.bindings} - {b.refresher for b in built.bindings}:
            refresher.stop()
        kept = {b.counters for b in previous.bindings}
        for binding in built.bindings:
            if binding.counters not in kept:
                # A new entry counts the flows seen from now, not from its build (on a thread, seconds earlier).
                binding.counters.out_of_scope = 0
        if not built.bindings and built.egress is None and (previous.bindings or not self._configured):
            logger.warning(
                "no header provider configured (%s, header_providers_file): header-augment is idle and adds no headers",
                ", ".join(LOCATORS),
            )
        self._configured = True
        for warning in warnings:
            logger.warning("%s", warning)
        if self._running:
            self._start()

    def _start(self) -> None:
        for binding in self.bindings:
            binding.refresher.start(self._scheduler)  # once: shared by two bindings, or already started

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def running(self) -> None:
        self._running = True
        if open_hosts := _open_listen_hosts(ctx.options):
            logger.warning(
                "the proxy listens on %s, not only loopback, and proxyauth is not set: whoever can reach it sends "
                "requests with the providers' credentials; listen on 127.0.0.1 or set proxyauth",
                ", ".join(dict.fromkeys(open_hosts)),
            )
        self._start()
        ctx.master.addons.add(self._guard)
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="header-augment ticker")
        try:
            self._admin.serve()  # tornado serves on the loop that runs now
        except SettingsError as e:
            logger.error("%s", e)  # at start-up, this stops mitmdump

    def done(self) -> None:
        self._running = False
        # Before the save addon's done (it comes after the scripts) writes the flows in flight as they are.
        self._path.mask_in_flight(getattr(ctx.master.addons.get("save"), "active_flows", ()))
        if self._guard in ctx.master.addons.chain:
            ctx.master.addons.remove(self._guard)
        self._admin.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        bindings, self._path.entries = self.bindings, entries.NO_ENTRIES
        for refresher in {b.refresher for b in bindings}:
            refresher.stop()
        if (audit := self._path.audit) is not None:
            self._path.audit = None
            self._bind_answer_hooks()
            audit.close()  # what is queued is written first
        self._scheduler.close()  # its threads end with the turns in flight, which the stops have aborted
        self._scheduler = Scheduler()

    async def _tick(self) -> None:
        """Reloads a changed providers file; logs the counters once a minute (at debug)."""
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)
            try:
                if self._path.audit is not None:
                    self._path.audit.probe()
                await self._reload_providers_file()
                if time.monotonic() - last_log >= COUNTERS_LOG_INTERVAL:
                    last_log = time.monotonic()
                    self._log_counters()
            except Exception:
                logger.exception("header-augment: unexpected error in the periodic check; it goes on")

    def _log_counters(self) -> None:
        logger.debug("header-augment: %s", addon_report(self._path))
        for binding in self.bindings:
            logger.debug(
                "header provider %s: requests: %s; fetches: %s",
                binding.settings.label,
                request_summary(binding.counters),
                binding.refresher.counts.summary(),
            )

    async def _reload_providers_file(self) -> None:
        """Applies the providers file if it has changed and settled. It is read and checked, and its entries are
        built, on a worker thread: a YAML file of a megabyte takes seconds to parse and thousands of clients take
        seconds to make, which the event loop would spend not answering requests. The loop only swaps them in."""
        watch = self._file
        if watch is None or not watch.check():
            return
        path = watch.path
        previous = self._path.entries
        single = self._wanted([])  # options are read here, on the loop; the file and the clients on the thread
        proxyauth, from_options = self._proxyauth(), self._egress()

        def build() -> tuple:
            entries_from_file, file_stamp = load_providers_file(path)
            policy = (from_options, entries_from_file.egress)
            built = entries.build(single + entries_from_file, previous, self._path.seen, proxyauth, policy)
            return built, file_stamp, entries.warnings(previous, built)

        def unused(made: entries.Entries) -> None:
            for refresher in {b.refresher for b in made.bindings} - {b.refresher for b in previous.bindings}:
                refresher.stop()

        work = asyncio.ensure_future(asyncio.to_thread(build))
        try:
            built, file_stamp, warnings = await asyncio.shield(work)
        except asyncio.CancelledError:  # done() while the thread builds: what it makes is stopped once it is made
            work.add_done_callback(lambda w: w.cancelled() or w.exception() or unused(w.result()[0]))
            raise
        except Exception as e:  # whatever the file makes go wrong, it is reported once, not every second
            watch.current = stamp(path)
            if isinstance(e, SettingsError):
                logger.error("%s; keeping the previous configuration", e)
            else:  # its type alone: its message or traceback could quote the file
                logger.error(
                    "header_providers_file %s: cannot be applied (%s); keeping the previous configuration",
                    path,
                    type(e).__name__,
                )
            return
        if self._file is not watch or self._path.entries is not previous:  # reconfigured meanwhile: that stands
            unused(built)
            return
        watch.current = file_stamp
        logger.info("header_providers_file %s changed: %d provider(s) configured", path, len(built.bindings))
        self._install(built, warnings)

    # -- commands -----------------------------------------------------------------------------------------------

    @command.command("augment.refresh")
    def refresh(self) -> None:
        """Ask every header provider again now (in the background: this returns at once). A provider is asked at most
        once a second: calls in between are merged into one fetch at the end of that second."""
        refreshers = {b.refresher for b in self.bindings}
        new = sum(refresher.refresh_now() for refresher in refreshers)
        # Once per fetch asked for, not per call: POST /refresh in a loop does not fill the log.
        logger.log(
            logging.INFO if new or not refreshers else logging.DEBUG,
            "header-augment: refresh requested for %d provider(s)%s",
            len(refreshers),
            "" if new == len(refreshers) else f" ({len(refreshers) - new} already waiting for one)",
        )

    @command.command("augment.placeholders")
    def placeholders(self) -> str:
        """NAME=VALUE for every entry with a placeholder and an env name (what a sandbox launcher gives the workload):
        the placeholders, never the credentials."""
        return env_lines(self.bindings)

    @command.command("augment.status")
    def status(self) -> str:
        """Per provider: state, age of the last good answer, last error, header names in use and counters."""
        return report(self.bindings, time.monotonic(), self._path)


addons = [HeaderAugment()]
