"""The request path: one object that finds a flow's entries in the current configuration's index and applies them,
checks the flow again once every addon has changed it (rerouted, signed), and takes our values back out once the
request has left. Everything here runs on mitmproxy's event loop and nothing blocks: a body to hash or scrub that is
large goes to a worker thread, a wait for a provider's first answer is a coroutine that mitmproxy awaits."""

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Coroutine

from mitmproxy import http
from mitmproxy.websocket import WebSocketMessage

from .binding import DONE, WAIT, Binding, note
from .carried import (
    CARRIED,
    MAX_SCRUBBED_BODY,
    Carried,
    carried_by,
    drop_carried,
    masked,
    scrub_body,
    scrub_headers,
    scrubbed,
    without_markers,
)
from .clients import TUNNEL, tunnel_opened
from .counters import Seen
from .entries import NO_ENTRIES, Entries
from .refresher import Refresher
from .snapshot import Secrets

logger = logging.getLogger("header_augment")

# A request held for a provider's first answer waits at most the fetch's own timeout plus this.
FIRST_FETCH_GRACE = 1.0
HOOK_ERROR_LOG_INTERVAL = 60.0
# An upstream's 401 to our credentials asks their provider again at once, but at most this often per provider.
REASK_AFTER_401_GAP = 10.0
# A response body larger than this is scrubbed on a worker thread (zlib, brotli and zstd let go of the GIL).
SCRUB_ON_LOOP = 64 * 1024
NOT_WAITED: frozenset = frozenset()
_SCRUBBED_MESSAGE = "header-augment: scrubbed our values from websocket messages"


class RequestPath:
    """Its hooks are the addon's hooks. `entries` is replaced whole, by one assignment, when the configuration
    changes; a flow reads it once per hook."""

    def __init__(self) -> None:
        self.entries: Entries = NO_ENTRIES
        self.seen = Seen()  # flows the request hook looked at: each entry's out_of_scope is derived from it
        self.keep_values = False  # header_keep_values, set once per change: options are slow to read per flow
        self._hook_errors = 0
        self._hook_error_logged_at = -HOOK_ERROR_LOG_INTERVAL
        self._reasked_at: weakref.WeakKeyDictionary[Refresher, float] = weakref.WeakKeyDictionary()

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine | None:
        if flow.response or flow.error or not flow.live:
            return None
        request = flow.request
        if flow.is_replay == "request" and (fields := without_markers(request.headers.fields)) is not None:
            request.headers.fields = fields  # a saved flow replayed: the markers go, the live values come back
        if TUNNEL in flow.client_conn.__dict__ and (fields := _without_proxy_authorization(request.data.headers)):
            # proxyauth reads Proxy-Authorization at the CONNECT only: one sent inside the tunnel would reach the
            # upstream, and the proxy's own credentials never do.
            request.data.headers.fields = fields
            note(flow, "header-augment: removed Proxy-Authorization sent inside a tunnel")
        if request.data.method == b"TRACE":  # the upstream would send the request, with our headers, back
            note(flow, "header-augment: no headers for TRACE")
            return None
        self.seen.count += 1  # what _for does, written out here: a call less per request
        index, host = self.entries.index, request.data.host
        key, bindings = index.lookup(host)
        if key is None and (why := index.why_unmatchable(host)) is not None:
            note(flow, f"header-augment: not sent: {why}")
        return self._apply(flow, bindings, key, NOT_WAITED)

    @staticmethod
    def http_connect(flow: http.HTTPFlow) -> None:
        tunnel_opened(flow.client_conn)  # after proxyauth's own http_connect: built-in addons run first

    @staticmethod
    def socks5_auth(data) -> None:
        if data.valid:
            tunnel_opened(data.client_conn)

    def _for(self, flow: http.HTTPFlow) -> tuple[str | None, tuple[Binding, ...]]:
        """The flow's host as patterns are kept (once per request), and the entries that may be for it, in order:
        what they are not for costs nothing (their out_of_scope is derived from the flows seen)."""
        self.seen.count += 1
        index, host = self.entries.index, flow.request.host
        key, bindings = index.lookup(host)
        if key is None and (why := index.why_unmatchable(host)) is not None:
            note(flow, f"header-augment: not sent: {why}")
        return key, bindings

    def check_reroute(self, flow: http.HTTPFlow) -> Coroutine | None:
        """The match was made in `requestheaders` against the destination then. If an addon has rerouted the flow
        since (map_remote does, in `request`), what we added goes back out, and the headers are applied again for
        where it goes now: credentials never follow a flow to a host not named.
        Called at the end of the addon chain, by the script's reroute guard."""
        carried = flow.__dict__.get(CARRIED)  # only a flow we added to can have been rerouted with our headers
        if carried is not None:
            data = flow.request.data
            if data.host != carried.host or data.port != carried.port:
                self._take_back(flow, carried)
        if self.entries.signers and not (flow.response or flow.error or flow.request.stream):
            return self._sign(flow, False)
        return None

    def sign_streamed(self, flow: http.HTTPFlow) -> Coroutine | None:
        """A streamed request's headers leave once the `requestheaders` hooks have run: it is signed here, last."""
        if self.entries.signers and flow.request.stream and not (flow.response or flow.error) and flow.live:
            return self._sign(flow, False)
        return None

    def _sign(self, flow: http.HTTPFlow, waited: bool) -> Coroutine | None:
        """The first signing entry whose hosts the flow goes to signs it: a request carries one signature. The host
        is looked up now, where mitmproxy will connect (an addon may have rerouted the flow since `requestheaders`)."""
        key, bindings = self.entries.signing.lookup(flow.request.data.host)
        for binding in bindings:
            try:
                outcome = binding.sign(flow, key, may_wait=not waited)
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

    def _take_back(self, flow: http.HTTPFlow, carried: Carried) -> None:
        request = flow.request
        drop_carried(flow)
        touched = carried.names | {b"connection"}  # and the Connection header we may have edited
        request.headers.fields = tuple(f for f in request.headers.fields if f[0].lower() not in touched) + tuple(
            f for f in carried.original if f[0].lower() in touched
        )
        note(flow, f"header-augment: headers taken back: rerouted from {carried.host}:{carried.port} after the match")
        if not (flow.response or flow.error):
            key, bindings = self._for(flow)
            self._apply(flow, bindings, key, frozenset(b.refresher for b in bindings))  # no waiting here

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
            note(flow, "header-augment: scrubbed our values from the response headers")
        if response.stream and response.status_code != 101:  # the body is passed on as it comes, never held
            drop_carried(flow)

    def response(self, flow: http.HTTPFlow) -> Coroutine | None:
        own = flow.__dict__
        if own.get(CARRIED) is None or flow.websocket is not None:  # a websocket's record stays for its messages
            return None
        secrets = own.pop(CARRIED).secrets()
        raw = flow.response.raw_content
        if not secrets[1] or not raw or len(raw) > MAX_SCRUBBED_BODY:  # a larger one is passed on as it is
            return None
        if len(raw) > SCRUB_ON_LOOP:  # decoding and searching it would hold every other flow
            return asyncio.to_thread(self._scrub_body, flow, secrets)
        self._scrub_body(flow, secrets)
        return None

    @staticmethod
    def _scrub_body(flow: http.HTTPFlow, secrets: Secrets) -> None:
        """Only this flow's task touches it while its `response` hook runs: safe on a worker thread."""
        if scrub_body(flow.response, secrets):
            note(flow, "header-augment: scrubbed our values from the response body")

    def websocket_message(self, flow: http.HTTPFlow) -> Coroutine | None:
        """A message from the upstream of a websocket whose handshake carried our values: scrubbed as a body is.
        mitmproxy sends a message on once its hooks have returned (and their awaitables finished)."""
        carried = flow.__dict__.get(CARRIED)
        if carried is None:
            return None
        message = flow.websocket.messages[-1]
        # The client's own messages are passed as they are: it never held our values. A larger message too, as a body.
        if message.from_client or len(message.content) > MAX_SCRUBBED_BODY:
            return None
        secrets = carried.secrets()
        if len(message.content) > SCRUB_ON_LOOP:
            return asyncio.to_thread(self._scrub_message, flow, message, secrets)
        self._scrub_message(flow, message, secrets)
        return None

    @staticmethod
    def _scrub_message(flow: http.HTTPFlow, message: WebSocketMessage, secrets: Secrets) -> None:
        """The layer holds the message until the hook is done: safe on a worker thread."""
        clean = scrubbed(message.content, secrets)
        if clean is not None:
            message.content = clean
            if _SCRUBBED_MESSAGE not in flow.comment:  # said once, however many messages
                note(flow, _SCRUBBED_MESSAGE)

    @staticmethod
    def websocket_end(flow: http.HTTPFlow) -> None:
        drop_carried(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        carried = drop_carried(flow)
        if carried is not None:
            self._mask(flow, carried)

    def _mask(self, flow: http.HTTPFlow, carried: Carried) -> None:
        """The request has been sent: what savers, exporters and mitmweb see from now on holds markers instead."""
        if self.keep_values:
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
        self, flow: http.HTTPFlow, bindings: tuple[Binding, ...], key: str | None, waited: frozenset
    ) -> Coroutine | None:
        """Apply `bindings` in order; a coroutine (for mitmproxy to await) if one must wait for a first fetch.
        `waited`: the refreshers whose first fetch this flow has waited for already."""
        for index, binding in enumerate(bindings):
            try:
                outcome = binding.apply(flow, key, binding.refresher not in waited)
            except Exception:
                self._hook_error(flow, binding)
                return None
            if outcome is WAIT:
                return self._after_first_fetch(flow, bindings[index:], key, waited)
            if flow.response:
                return None
        return None

    async def _after_first_fetch(
        self, flow: http.HTTPFlow, bindings: tuple[Binding, ...], key: str | None, waited: frozenset
    ) -> None:
        """Hold `flow` until the provider's first fetch has finished (bounded by its timeout), then go on. Only this
        flow waits: the event loop and every other request carry on."""
        binding = bindings[0]
        await self._first_fetch(binding)
        waited |= {binding.refresher}
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


def _without_proxy_authorization(headers: http.Headers) -> tuple | None:
    fields = headers.fields
    kept = tuple(f for f in fields if f[0].lower() != b"proxy-authorization")
    return kept if len(kept) != len(fields) else None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
