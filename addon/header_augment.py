"""header-augment: add headers from a header provider to the requests that go to the hosts you name.

    mitmdump -s addon/header_augment.py --set header_provider_url=http://127.0.0.1:9000/headers \\
        --set header_hosts=api.example.com

Providers are polled on background threads; the request hook only reads the last valid answer.
"""

import asyncio
import ipaddress
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

# Scripts are reloaded when this file changes: drop our modules too, so the reload picks up edits to them.
for _name in [m for m in sys.modules if m == "header_augment_core" or m.startswith("header_augment_core.")]:
    del sys.modules[_name]

from mitmproxy import command, ctx, exceptions, flowfilter, http  # noqa: E402
from mitmproxy.proxy import mode_specs  # noqa: E402

from header_augment_core.admin import OPTION as ADMIN_OPTION  # noqa: E402
from header_augment_core.admin import AdminEndpoint  # noqa: E402
from header_augment_core.carried import (  # noqa: E402
    MAX_SCRUBBED_BODY,
    Carried,
    carried_by,
    carry,
    drop_carried,
    masked,
    scrub_body,
    scrub_headers,
    without_markers,
)
from header_augment_core.clients import Clients  # noqa: E402
from header_augment_core.counters import RequestCounters, Seen, request_summary  # noqa: E402
from header_augment_core.fields import SettingsError, shown  # noqa: E402
from header_augment_core.files import SettledChange, stamp  # noqa: E402
from header_augment_core.hosts import HostIndex, Hosts  # noqa: E402
from header_augment_core.options import OPTIONS, check_deferred, label, settings_from_options  # noqa: E402
from header_augment_core.providers_file import load_providers_file  # noqa: E402
from header_augment_core.refresher import Refresher  # noqa: E402
from header_augment_core.scheduler import Scheduler  # noqa: E402
from header_augment_core.settings import ProviderSettings  # noqa: E402
from header_augment_core.sigv4 import HASH_ON_LOOP, Unsignable, prepare, sign  # noqa: E402
from header_augment_core.snapshot import NOTHING, Merge, merge  # noqa: E402
from header_augment_core.status import report  # noqa: E402

logger = logging.getLogger("header_augment")

COUNTERS_LOG_INTERVAL = 60.0
FILE_CHECK_INTERVAL = 1.0
# A request held for a provider's first answer waits at most the fetch's own timeout plus this.
FIRST_FETCH_GRACE = 1.0
HOOK_ERROR_LOG_INTERVAL = 60.0
# An upstream's 401 to our credentials asks their provider again at once, but at most this often per provider.
REASK_AFTER_401_GAP = 10.0
# A response body larger than this is scrubbed on a worker thread (zlib, brotli and zstd let go of the GIL).
SCRUB_ON_LOOP = 64 * 1024
# Filters that search the request's host (or its Host header) with a regex: not a way to pick hosts.
_HOST_SEARCHING_FILTERS = {"d", "h", "hq", "u"}
_LOWER_CASE_NAMES = (b"HTTP/2.0", b"HTTP/3")  # versions whose header names must be lower-case

Label = Callable[[str], str]
WAIT = object()  # from Binding.apply: hold the request until the provider's first fetch has finished
DONE = object()  # from Binding.sign: the flow was in scope and has been dealt with


class RerouteGuard:
    """Checks each flow once every other addon's `request` hook has run: scripts (ours too) run before mitmproxy's
    own map_remote and modify_headers, so HeaderAugment puts this at the end of the addon chain while it runs."""

    name = "header-augment reroute guard"

    def __init__(self, check: Callable[[http.HTTPFlow], Any], streamed: Callable[[http.HTTPFlow], Any]) -> None:
        self.request = check
        self.requestheaders = streamed  # a streamed body's headers leave before its `request` hook


@dataclass(frozen=True)
class Binding:
    """One provider entry: its refresher (maybe shared with an entry that fetches the same), the rules for applying
    its headers to a flow, and its own counters."""

    settings: ProviderSettings
    refresher: Refresher
    hosts: Hosts | None
    scope: flowfilter.TFilter | None
    clients: Clients | None
    counters: Any  # RequestCounters
    comment: str  # how a flow's comment names this provider
    mode: Merge  # settings.merge, one attribute away on the request path
    signer: Any = None  # aws-sigv4's: the flow is signed at the end of the addon chain instead of given headers

    def apply(self, flow: http.HTTPFlow, key: str | None, may_wait: bool = True) -> object:
        """Add the headers to `flow` if it is in scope (`key`: its host's `request_key`). Returns WAIT (having done
        nothing) when the flow should be held until the provider's first fetch has finished."""
        counters = self.counters
        request = flow.request
        host, port = request.host, request.port
        if self.hosts is not None and not self.hosts.matches_key(key, port):
            return None
        if self.scope is not None and not self.scope(flow):
            return None
        if self.clients is not None and not self.clients.matches(flow):
            return None
        snapshot = self.refresher.snapshot  # read once: a request never mixes two answers
        until = snapshot.usable_until
        if until != math.inf and time.monotonic() >= until:  # most snapshots are usable forever: no clock read
            return self._unusable(flow, snapshot, may_wait, "headers", ("no valid answer yet", "headers expired"))
        counters.in_scope += 1
        existing = request.headers.fields
        fields, clashes = merge(existing, snapshot, self.mode, request.data.http_version in _LOWER_CASE_NAMES)
        if clashes:
            counters.already_present += 1
            _note(flow, self.comment + _clash_note(snapshot, clashes, self.mode))
        elif fields is not None:
            _note(flow, self.comment + snapshot.summary)
        if fields is None:  # nothing to add: {} from the provider, or keep mode and the request had every name
            return None
        request.headers.fields = fields
        counters.given += 1
        carried = carried_by(flow)
        if carried is None:
            carry(flow, Carried(existing, host, port, snapshot.names, [(self, snapshot)]))
        else:  # a second entry for the same flow
            carried.add(self, snapshot)
        return None

    def _unusable(self, flow: http.HTTPFlow, snapshot, may_wait: bool, what: str, why: tuple[str, str]) -> object:
        """In scope, but nothing usable to add or sign with: WAIT for the first fetch, else refused (require) or
        passed without. `why`: the comment's words before any answer, and once expired."""
        if may_wait and snapshot is NOTHING and not self.refresher.first_attempt_done:
            return WAIT
        counters = self.counters
        counters.in_scope += 1
        never = snapshot is NOTHING
        if self.settings.require:
            _answer(flow, _refusal(never, what))
            counters.refused += 1
            _note(flow, f"{self.comment}refused: {why[0] if never else why[1]}")
        else:
            counters.without += 1
            _note(flow, f"{self.comment}no usable {what}, passed {'unsigned' if self.signer else 'without'}")
        return None

    def sign(self, flow: http.HTTPFlow, may_wait: bool = True) -> object:
        """Sign `flow` if it is in scope, as it will be sent: None if it is not, WAIT, DONE, or a coroutine that
        signs it with the body hashed on a worker thread."""
        counters = self.counters
        request = flow.request
        if self.hosts is not None and not self.hosts.matches(request.host, request.port):
            return None  # out_of_scope is derived from the flows seen (counters.py)
        if self.scope is not None and not self.scope(flow):
            return None
        if self.clients is not None and not self.clients.matches(flow):
            return None
        snapshot = self.refresher.snapshot
        if time.monotonic() >= snapshot.usable_until:
            outcome = self._unusable(
                flow, snapshot, may_wait, "credentials", ("no credentials yet", "credentials expired")
            )
            return DONE if outcome is None else outcome
        counters.in_scope += 1
        streamed = bool(request.stream)
        if streamed and not self.signer.unsigned_payload:
            # mitmproxy cannot answer a request whose body it streams (it would stream it again as it reads it):
            # the flow is killed before anything is sent, and the log and the flow say why.
            flow.kill()
            counters.refused += 1
            _note(flow, f"{self.comment}refused: streamed body (stream_large_bodies), unsigned_payload not set")
            _warn_streamed(self.settings.label)
            return DONE
        try:
            prepared = prepare(request, streamed)
        except Unsignable as e:
            _answer(flow, _unsignable(str(e)))
            counters.refused += 1
            _note(flow, f"{self.comment}refused: {e}")
            return DONE
        if prepared.body is not None and len(prepared.body) > HASH_ON_LOOP:
            return self._sign_off_loop(flow, snapshot, prepared)
        self._signed(flow, sign(self.signer, snapshot.signing, prepared))
        return DONE

    async def _sign_off_loop(self, flow: http.HTTPFlow, snapshot, prepared) -> None:
        """Only this flow's task touches it while its hook runs; the thread reads `prepared`, never the flow."""
        signed = await asyncio.to_thread(sign, self.signer, snapshot.signing, prepared)
        if not (flow.response or flow.error) and flow.live:
            self._signed(flow, signed)

    def _signed(self, flow: http.HTTPFlow, signed) -> None:
        fields, secrets = signed
        request = flow.request
        original = request.headers.fields
        request.headers.fields = fields
        self.counters.given += 1
        _note(flow, self.comment + self.signer.comment)
        carried = carried_by(flow)
        if carried is None:
            carry(flow, Carried(original, request.host, request.port, secrets.names, [(self, secrets)]))
        else:
            carried.add(self, secrets)


def _answer(flow: http.HTTPFlow, response: http.Response) -> None:
    """Answer the flow ourselves. A streamed request cannot have a response: it is killed (nothing was sent)."""
    if flow.request.stream:
        flow.kill()
    else:
        flow.response = response


_streamed_warned_at: dict[str, float] = {}


def _warn_streamed(label: str) -> None:
    now = time.monotonic()
    if now - _streamed_warned_at.get(label, -math.inf) >= HOOK_ERROR_LOG_INTERVAL:
        _streamed_warned_at[label] = now
        logger.warning(
            "header provider %s: a streamed request body (stream_large_bodies) cannot be hashed for its signature: "
            "killed; set unsigned_payload: true to send S3 uploads with UNSIGNED-PAYLOAD (logged at most once a "
            "minute)",
            label,
        )


def _unsignable(why: str) -> http.Response:
    return http.Response.make(
        502, f"header-augment: not signed: {why}\n", {"Content-Type": "text/plain; charset=utf-8"}
    )


def _note(flow: http.HTTPFlow, text: str) -> None:
    """Say what was done where a mitmweb or console user looks: the flow's comment (names only, never values)."""
    flow.comment = f"{flow.comment}\n{text}" if flow.comment else text


def _clash_note(snapshot, clashes: set[bytes], mode: Merge) -> str:
    added = [n for n, low in zip(snapshot.display_names, snapshot.lowered, strict=True) if low not in clashes]
    present = [n for n, low in zip(snapshot.display_names, snapshot.lowered, strict=True) if low in clashes]
    verb = {Merge.REPLACE: "replaced", Merge.APPEND: "appended to", Merge.KEEP: "kept the request's"}[mode]
    return "; ".join(([f"added {', '.join(added)}"] if added else []) + [f"{verb} {', '.join(present)}"])


def _refusal(never_answered: bool, what: str = "headers") -> http.Response:
    why = "no valid answer from the header provider yet" if never_answered else f"the provider's {what} expired"
    return http.Response.make(
        503, f"header-augment: {why} (header_require is set)\n", {"Content-Type": "text/plain; charset=utf-8"}
    )


def _compile_scope(settings: ProviderSettings, label_of: Label) -> flowfilter.TFilter | None:
    if not settings.scope:
        return None
    try:
        return flowfilter.parse(settings.scope)
    except ValueError:  # its message only quotes the whole expression again
        raise SettingsError(
            f"{label_of('scope')}: {shown(settings.scope)} is not a mitmproxy filter expression"
        ) from None


def _searches_hosts(node: object) -> bool:
    """Whether a compiled filter uses ~d, ~h, ~hq or ~u (a bare word is ~u too). Walked without recursion: `!!!…`
    nests as deep as the expression is long."""
    # flowfilter's undocumented node attributes (a filter's `code`, FAnd/FOr's `lst`, FNot's `itm`): the only way to
    # look inside a compiled filter (checked against mitmproxy 12.3.1; tests/test_seams.py fails if they move).
    pending = [node]
    while pending:
        node = pending.pop()
        if getattr(node, "code", None) in _HOST_SEARCHING_FILTERS:
            return True
        # extend, not +=: a list plus pyparsing's ParseResults (`lst`) recurses in ParseResults.__radd__.
        pending.extend(getattr(node, "lst", None) or ([node.itm] if hasattr(node, "itm") else []))
    return False


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


def _signer_of(settings: ProviderSettings) -> Any:
    make = getattr(settings.source, "signer", None)  # only a signing kind has one
    return make() if make is not None else None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class HeaderAugment:
    def __init__(self) -> None:
        self.bindings: tuple[Binding, ...] = ()
        self._seen = Seen()  # flows the request hook looked at: each entry's out_of_scope is derived from it
        self._running = False
        self._configured = False
        self._file: SettledChange | None = None
        self._ticker: asyncio.Task | None = None
        self._hook_errors = 0
        self._hook_error_logged_at = -HOOK_ERROR_LOG_INTERVAL
        self._admin = AdminEndpoint(lambda: self.bindings, self.refresh)
        self._guard = RerouteGuard(self.check_reroute, self.sign_streamed)
        self._keep_values = False  # header_keep_values, read once per change: options are slow to read per flow
        self._reasked_at: weakref.WeakKeyDictionary[Refresher, float] = weakref.WeakKeyDictionary()
        self._scheduler = Scheduler()

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return self._bindings

    @bindings.setter
    def bindings(self, bindings: tuple[Binding, ...]) -> None:
        """The entries in file order; those that add headers, and the index `requestheaders` finds them by, and those
        that sign at the end of the addon chain (built here, off the hot path)."""
        self._bindings = bindings
        self._adders = tuple(b for b in bindings if b.signer is None)
        self._signers = tuple(b for b in bindings if b.signer is not None)
        self._index = HostIndex([(b.settings.hosts, b) for b in self._adders])

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
                self._keep_values = ctx.options.header_keep_values
            if "proxyauth" in updated or any(
                name.startswith("header_") and name not in (ADMIN_OPTION, "header_keep_values") for name in updated
            ):  # proxyauth: an entry's clients may name users only while it is set
                self._configure_providers()
            if ADMIN_OPTION in updated and self._running:
                self._admin.serve()
        except SettingsError as e:
            raise exceptions.OptionsError(str(e)) from None

    def _configure_providers(self) -> None:
        bindings, file_stamp = self._build()
        path = ctx.options.header_providers_file
        self._file = SettledChange(path, file_stamp) if path else None
        self._install(bindings)

    def _build(self, loaded: tuple | None = None) -> tuple[tuple[Binding, ...], object]:
        """Bindings for the current options and providers file (and the file's stamp); nothing is changed yet.
        `loaded`: what `load_providers_file` made of the file, where it has been read already."""
        wanted: list[tuple[ProviderSettings, Label]] = []
        single = settings_from_options(ctx.options)
        if single is not None:
            wanted.append((single, label))
        path = ctx.options.header_providers_file
        file_stamp = None
        if path:
            entries, file_stamp = loaded if loaded is not None else load_providers_file(path)
            wanted += entries
        made: dict[tuple, Refresher] = {}  # refreshers made for this attempt, by fetch key
        try:
            bindings = self._bind_all(wanted, made)
        except Exception:
            for refresher in made.values():
                refresher.stop()  # made for this attempt only: close its client
            raise
        return bindings, file_stamp

    def _bind_all(self, wanted: list[tuple[ProviderSettings, Label]], made: dict) -> tuple[Binding, ...]:
        """Entries with equal fetch settings share one refresher, kept from the running configuration when it is
        there; an entry keeps its counters across reloads (found by its name, or its source and position)."""
        proxyauth = ctx.options.proxyauth if "proxyauth" in ctx.options else ""
        for settings, label_of in wanted:
            if settings.clients.names and (not proxyauth or proxyauth.strip().lower() == "any"):
                # proxyauth=any takes whatever user name a client sends: it would let any client be anyone.
                why = "is not set" if not proxyauth else "is 'any', which accepts every user name a client sends"
                named = sorted(settings.clients.names)
                cut = [n if len(n) <= 40 else n[:40] + "…" for n in named[:3]]  # a name can be as long as the file
                users = ", ".join(cut) + (f" and {len(named) - 3} more" * (len(named) > 3))
                raise SettingsError(
                    f"{label_of('clients')}: names users ({users}), but "
                    f"proxyauth {why}: only users proxyauth checked tell clients apart"
                )
        # A refresher that broke (an unexpected error, logged) is replaced, not kept: reconfiguring revives it.
        running = {b.settings.fetch_key: b.refresher for b in self.bindings if not b.refresher.broken}
        counters = {self._entry_key(b.settings, i): b.counters for i, b in enumerate(self.bindings)}
        bindings = []
        for index, (settings, label_of) in enumerate(wanted):
            key = settings.fetch_key
            refresher = running.get(key) or made.get(key)
            if refresher is None:
                try:
                    refresher = Refresher.for_settings(settings, seed=self._cached_for(settings))
                except SettingsError as e:
                    raise SettingsError(f"{label_of(e.field or 'url')}: {e}") from None
                made[key] = refresher
            hosts = settings.hosts if settings.hosts else None
            name = f"header-augment ({settings.name}): " if settings.name else "header-augment: "
            bindings.append(
                Binding(
                    settings=settings,
                    refresher=refresher,
                    hosts=hosts,
                    scope=_compile_scope(settings, label_of),
                    clients=settings.clients or None,
                    counters=counters.get(self._entry_key(settings, index)) or RequestCounters(self._seen),
                    comment=name,
                    mode=settings.merge,
                    signer=_signer_of(settings),
                )
            )
        return tuple(bindings)

    @staticmethod
    def _entry_key(settings: ProviderSettings, index: int) -> tuple:
        return (settings.name,) if settings.name else (settings.source.display, index)

    def _cached_for(self, settings: ProviderSettings):
        """The headers a running refresher holds for the same credentials (only a transport setting changed)."""
        for binding in self.bindings:
            if binding.settings.credential_key == settings.credential_key:
                return binding.refresher.snapshot
        return NOTHING

    def _install(self, bindings: tuple[Binding, ...]) -> None:
        previous, self.bindings = self.bindings, bindings
        for refresher in {b.refresher for b in previous} - {b.refresher for b in bindings}:
            refresher.stop()
        if not bindings and (previous or not self._configured):
            logger.warning(
                "no header provider configured (header_provider_url, header_provider_file, header_provider_command, "
                "header_providers_file): header-augment is idle and adds no headers"
            )
        self._configured = True
        warned = {(b.settings.source, b.settings.hosts, b.settings.scope) for b in previous}
        for binding in bindings:
            settings = binding.settings
            if (settings.source, settings.hosts, settings.scope) in warned:
                continue
            if settings.hosts.everything and not settings.scope:
                logger.warning("header_hosts is *: headers from %s go to every host this proxy sees", settings.label)
            if binding.scope is not None and _searches_hosts(binding.scope):
                logger.warning(
                    "header_scope %s of %s uses ~d, ~h, ~u or a bare word: these are regex searches that also see "
                    "the Host header a client chose and match look-alike names; name the hosts with header_hosts",
                    shown(settings.scope),
                    settings.label,
                )
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
        if self._guard in ctx.master.addons.chain:
            ctx.master.addons.remove(self._guard)
        self._admin.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        bindings, self.bindings = self.bindings, ()
        for refresher in {b.refresher for b in bindings}:
            refresher.stop()
        self._scheduler.close()  # its threads end with the turns in flight, which the stops have aborted
        self._scheduler = Scheduler()

    async def _tick(self) -> None:
        """Reloads a changed providers file; logs the counters once a minute (at debug)."""
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)
            try:
                await self._reload_providers_file()
                if time.monotonic() - last_log >= COUNTERS_LOG_INTERVAL:
                    last_log = time.monotonic()
                    self._log_counters()
            except Exception:
                logger.exception("header-augment: unexpected error in the periodic check; it goes on")

    def _log_counters(self) -> None:
        for binding in self.bindings:
            logger.debug(
                "header provider %s: requests: %s; fetches: %s",
                binding.settings.label,
                request_summary(binding.counters),
                binding.refresher.counts.summary(),
            )

    async def _reload_providers_file(self) -> None:
        """Applies the providers file if it has changed and settled. It is read and checked on a worker thread: a
        YAML file of a megabyte takes seconds to parse, which the event loop would spend not answering requests."""
        watch = self._file
        if watch is None or not watch.check():
            return
        path = watch.path
        try:
            loaded = await asyncio.to_thread(load_providers_file, path)
            if self._file is not watch:  # reconfigured meanwhile: that configuration stands
                return
            bindings, file_stamp = self._build(loaded)
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
        watch.current = file_stamp
        logger.info("header_providers_file %s changed: %d provider(s) configured", path, len(bindings))
        self._install(bindings)

    # -- the request path ---------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine | None:
        if flow.response or flow.error or not flow.live:
            return None
        request = flow.request
        if flow.is_replay == "request" and (fields := without_markers(request.headers.fields)) is not None:
            request.headers.fields = fields  # a saved flow replayed: the markers go, the live values come back
        if request.data.method == b"TRACE":  # the upstream would send the request, with our headers, back
            _note(flow, "header-augment: no headers for TRACE")
            return None
        self._seen.count += 1  # what _for does, written out here: a call less per request
        index, host = self._index, request.host
        key, bindings = index.lookup(host)
        if key is None and (why := index.why_unmatchable(host)) is not None:
            _note(flow, f"header-augment: not sent: {why}")
        return self._apply(flow, bindings, key, set())

    def _for(self, flow: http.HTTPFlow) -> tuple[str | None, tuple[Binding, ...]]:
        """The flow's host as patterns are kept (once per request), and the entries that may be for it, in order:
        what they are not for costs nothing (their out_of_scope is derived from the flows seen)."""
        self._seen.count += 1
        index, host = self._index, flow.request.host
        key, bindings = index.lookup(host)
        if key is None and (why := index.why_unmatchable(host)) is not None:
            _note(flow, f"header-augment: not sent: {why}")
        return key, bindings

    def check_reroute(self, flow: http.HTTPFlow) -> Coroutine | None:
        """The match was made in `requestheaders` against the destination then. If an addon has rerouted the flow
        since (map_remote does, in `request`), what we added goes back out, and the headers are applied again for
        where it goes now: credentials never follow a flow to a host not named. Called by `RerouteGuard`."""
        self._check_reroute(flow)
        if self._signers and not (flow.response or flow.error or flow.request.stream):
            return self._sign(flow, False)
        return None

    def sign_streamed(self, flow: http.HTTPFlow) -> Coroutine | None:
        """A streamed request's headers leave once the `requestheaders` hooks have run: it is signed here, last."""
        if self._signers and flow.request.stream and not (flow.response or flow.error) and flow.live:
            return self._sign(flow, False)
        return None

    def _sign(self, flow: http.HTTPFlow, waited: bool) -> Coroutine | None:
        """The first signing entry whose hosts the flow goes to signs it: a request carries one signature."""
        for binding in self._signers:
            try:
                outcome = binding.sign(flow, may_wait=not waited)
            except Exception:
                self._hook_error(flow, binding)
                return None
            if outcome is WAIT:
                return self._sign_after_first_fetch(flow, binding)
            if outcome is not None:
                return None if outcome is DONE else outcome
        return None

    async def _sign_after_first_fetch(self, flow: http.HTTPFlow, binding: Binding) -> None:
        await self._first_fetch(binding)
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._sign(flow, True)) is not None:
            await more

    def _check_reroute(self, flow: http.HTTPFlow) -> None:
        carried = carried_by(flow)
        if carried is None:
            return
        request = flow.request
        if request.host == carried.host and request.port == carried.port:
            return
        drop_carried(flow)
        touched = carried.names | {b"connection"}  # and the Connection header we may have edited
        request.headers.fields = tuple(f for f in request.headers.fields if f[0].lower() not in touched) + tuple(
            f for f in carried.original if f[0].lower() in touched
        )
        _note(flow, f"header-augment: headers taken back: rerouted from {carried.host}:{carried.port} after the match")
        if not (flow.response or flow.error):
            key, bindings = self._for(flow)
            self._apply(flow, bindings, key, {b.refresher for b in bindings})  # no waiting here

    # -- once the request has left: nothing we added stays in the flow or comes back in the answer -------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        carried = carried_by(flow)
        if carried is None:
            return
        response = flow.response
        if response.status_code == 401:
            self._unauthorized(carried)
        self._mask(flow, carried)
        if scrub_headers(response, carried.secrets()):
            _note(flow, "header-augment: scrubbed our values from the response headers")
        if response.stream:  # the body is passed on as it comes, never held: nothing more to do
            drop_carried(flow)

    def response(self, flow: http.HTTPFlow) -> Coroutine | None:
        carried = drop_carried(flow)
        raw = flow.response.raw_content
        if carried is None or not raw or len(raw) > MAX_SCRUBBED_BODY:  # a larger one is passed on as it is
            return None
        if len(raw) > SCRUB_ON_LOOP:  # decoding and searching it would hold every other flow
            return asyncio.to_thread(self._scrub_body, flow, carried)
        self._scrub_body(flow, carried)
        return None

    @staticmethod
    def _scrub_body(flow: http.HTTPFlow, carried: Carried) -> None:
        """Only this flow's task touches it while its `response` hook runs: safe on a worker thread."""
        if scrub_body(flow.response, carried.secrets()):
            _note(flow, "header-augment: scrubbed our values from the response body")

    def error(self, flow: http.HTTPFlow) -> None:
        carried = drop_carried(flow)
        if carried is not None:
            self._mask(flow, carried)

    def _mask(self, flow: http.HTTPFlow, carried: Carried) -> None:
        """The request has been sent: what savers, exporters and mitmweb see from now on holds markers instead."""
        if self._keep_values:
            return
        if (fields := masked(flow.request.headers.fields, carried.given)) is not None:
            flow.request.headers.fields = fields

    def _unauthorized(self, carried: Carried) -> None:
        """The upstream refused credentials we added (revoked, rotated): ask their providers again now, not at the
        next interval — coalesced, so a stream of 401s makes at most one fetch per provider per REASK gap."""
        now = time.monotonic()
        for binding, _ in carried.given:
            binding.counters.unauthorized += 1
            refresher = binding.refresher
            if now - self._reasked_at.get(refresher, -math.inf) >= REASK_AFTER_401_GAP:
                self._reasked_at[refresher] = now
                binding.counters.reasked += 1
                refresher.refresh_now()

    def _apply(
        self, flow: http.HTTPFlow, bindings: tuple[Binding, ...], key: str | None, waited: set
    ) -> Coroutine | None:
        """Apply `bindings` in order; a coroutine (for mitmproxy to await) if one must wait for a first fetch."""
        for index, binding in enumerate(bindings):
            try:
                outcome = binding.apply(flow, key, may_wait=binding.refresher not in waited)
            except Exception:
                self._hook_error(flow, binding)
                return None
            if outcome is WAIT:
                return self._after_first_fetch(flow, bindings[index:], key, waited)
            if flow.response:
                return None
        return None

    async def _after_first_fetch(
        self, flow: http.HTTPFlow, bindings: tuple[Binding, ...], key: str | None, waited: set
    ) -> None:
        """Hold `flow` until the provider's first fetch has finished (bounded by its timeout), then go on. Only this
        flow waits: the event loop and every other request carry on."""
        binding = bindings[0]
        await self._first_fetch(binding)
        waited.add(binding.refresher)
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._apply(flow, bindings, key, waited)) is not None:
            await more

    @staticmethod
    async def _first_fetch(binding: Binding) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            try:
                loop.call_soon_threadsafe(_resolve, done)
            except RuntimeError:
                pass  # the loop has closed: nobody is waiting any more

        if binding.refresher.when_first_attempt_done(finished):
            binding.refresher.hurry()
            try:
                await asyncio.wait_for(done, binding.settings.timeout + FIRST_FETCH_GRACE)
            except TimeoutError:
                pass
        binding.counters.waited += 1

    def _hook_error(self, flow: http.HTTPFlow, binding: Binding) -> None:
        """An unexpected error (a scope filter that raises, say): fail closed where the provider requires it."""
        self._hook_errors += 1
        now = time.monotonic()
        if now - self._hook_error_logged_at >= HOOK_ERROR_LOG_INTERVAL:
            self._hook_error_logged_at = now
            logger.exception(
                "header-augment: unexpected error applying %s (%d so far; logged at most once a minute)",
                binding.settings.label,
                self._hook_errors,
            )
        if binding.settings.require:
            flow.response = http.Response.make(
                503, "header-augment: internal error (header_require is set)\n", {"Content-Type": "text/plain"}
            )
            binding.counters.in_scope += 1  # it was refused as one in scope
            binding.counters.refused += 1

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

    @command.command("augment.status")
    def status(self) -> str:
        """Per provider: state, age of the last good answer, last error, header names in use and counters."""
        return report(self.bindings, time.monotonic())


addons = [HeaderAugment()]
