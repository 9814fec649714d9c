"""The request path: one object that finds a flow's entries in the current configuration's index and applies them,
checks the flow again once every addon has changed it (rerouted, signed), and takes our values back out once the
request has left. Everything here runs on mitmproxy's event loop and nothing blocks: a body to hash or scrub that is
large goes to a worker thread, a wait for a provider's first answer is a coroutine that mitmproxy awaits."""

import asyncio
import ipaddress
import logging
import math
import time
import weakref
from collections.abc import Coroutine

from mitmproxy import ctx, http
from mitmproxy.proxy import mode_specs
from mitmproxy.websocket import WebSocketMessage

from . import audit as audit_log
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
    scrub_trailers,
    scrubbed,
    without_markers,
)
from .clients import TUNNEL, tunnel_opened
from .counters import AddonCounters, Seen
from .decision import (
    ADDRESS,
    DECISION,
    DENIED,
    DENY,
    HOST,
    NOTHING_NAMES_IT,
    PASS,
    Decision,
    answer,
    decide,
    placeholder_refusal,
    refusal,
)
from .egress import REPORT, Resolver, ip_of, resolve, special
from .entries import NO_ENTRIES, Entries
from .hosts import request_key
from .placeholders import (
    BODY,
    DEFAULT_BODY_LIMIT,
    HEADER,
    PATH,
    PROXY_AUTHORIZATION,
    QUERY,
    WEBSOCKET,
    Matcher,
    form_body,
    json_body,
    replace_all,
    substitute_headers,
    substitute_target,
)
from .refresher import Refresher
from .snapshot import NOTHING, Secrets

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
_REPLACED_MESSAGE = "header-augment: replaced placeholders in websocket messages"
# On a flow whose answer the request path made itself in place of a credential (require's 503, a signing refusal,
# the audit log's 503): the entry that refused it (None: the audit log's). The audit line says `refused`, with the
# answer's first line as the reason.
REFUSED = "_header_augment_refused"
# On a flow the audit log has taken the record of what was added from (the answer hooks drop it) or written.
AUDITED = "_header_augment_audited"
_WRITTEN = object()
# On a client connection: the destinations its requests and CONNECTs were decided for, with what server_connect
# needs of that decision (admitted or not, and proxyauth's user), at most MAX_DECIDED of them.
DECIDED = "_header_augment_decided"
MAX_DECIDED = 256
# On a client connection: the error each destination's connection was refused with (the address check), at most
# MAX_DECIDED: a request that fails with it has its line already.
REFUSED_CONNECTIONS = "_header_augment_refused_connections"
# On a client connection: the user a SOCKS5 handshake authenticated (proxyauth), for its connections' decisions.
SOCKS_USER = "_header_augment_socks_user"
# On a server connection while it connects to the address checked: the name and port it was opened for.
PINNED = "_header_augment_pinned"
_OUR_ANSWER = b"header-augment: "
_NO_RULE = "no rule names for this client"
_AUDIT_DOWN = "header-augment: the audit log cannot be written (header_audit_require is set)\n"
_NONE: frozenset = frozenset()
_IDENTITY = (b"", b"identity")


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
        self.counts = AddonCounters()  # the addon's own: kept across configurations
        self.audit: audit_log.AuditLog | None = None  # header_audit_log, swapped whole when it changes
        self.resolve: Resolver = resolve  # how server_connect resolves a name for the address check
        self.body_limit = DEFAULT_BODY_LIMIT  # header_substitute_body_limit, set once per change

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
        entries = self.entries
        if entries.decides:  # the one check a request pays with header_egress=pass
            return self._decided(flow, entries)
        if request.data.method == b"TRACE":  # the upstream would send the request, with our headers, back
            note(flow, "header-augment: no headers for TRACE")
            return None
        self.seen.count += 1  # what _for does, written out here: a call less per request
        index, host = entries.index, request.data.host
        key, bindings = index.lookup(host)
        if key is None and (why := index.why_unmatchable(host)) is not None:
            note(flow, f"header-augment: not sent: {why}")
        return self._apply(flow, bindings, key, NOT_WAITED)

    def _decided(self, flow: http.HTTPFlow, entries: Entries) -> Coroutine | None:
        """`requestheaders` once the request's destination has a decision: the egress verdict first (a request
        denied goes no further), then the entries the same lookup found."""
        decision = decide(entries, flow)
        flow.__dict__[DECISION] = decision
        if entries.egress is not None and not self._enforce(flow, decision):
            return None
        if flow.request.data.method == b"TRACE":
            note(flow, "header-augment: no headers for TRACE")
            return None
        self.seen.count += 1
        key = decision.key
        if key is None and (why := entries.index.why_unmatchable(decision.host)) is not None:
            note(flow, f"header-augment: not sent: {why}")
        if (matcher := entries.placeholders) is not None:
            held = self._placeholders(flow, decision, matcher, NOT_WAITED)
            if held is not None:
                return held
            if flow.response or flow.error:
                return None
        return self._apply(flow, decision.bindings, key, NOT_WAITED)

    # -- placeholders: found in one pass per field, replaced by the token toward their hosts, refused elsewhere -----

    def _placeholders(
        self, flow: http.HTTPFlow, decision: Decision, matcher: Matcher, waited: frozenset
    ) -> Coroutine | None:
        """The placeholders in the request's headers, path and query: each replaced by its entry's token, or the
        request answered by the proxy (403: an entry that does not cover the flow or the place; 503: no valid
        token). Every placeholder is checked before any is replaced. A coroutine when one must wait for its entry's
        first fetch."""
        data = flow.request.data
        in_headers = matcher.in_headers(data.headers.fields)
        target = data.path
        in_target = matcher.find(target)
        if not (in_headers or in_target):
            return None
        in_path = in_query = _NONE
        in_proxy = matcher.in_proxy_authorization(data.headers.fields) if in_headers else _NONE
        if in_target:
            before, _, query = target.partition(b"?")
            in_path, in_query = matcher.find(before), matcher.find(query)
        found: dict[bytes, list[str]] = {}
        for place, placeholders in (
            (HEADER, in_headers),
            (PATH, in_path),
            (QUERY, in_query),
            (PROXY_AUTHORIZATION, in_proxy),
        ):
            for placeholder in placeholders:
                found.setdefault(placeholder, []).append(place)
        plan = []
        for placeholder, places in found.items():
            binding = matcher.owners[placeholder]
            if not self._may_go(flow, binding, decision):
                return None
            if binding.signer is not None:  # the client's signature with it: signed again at the end of the chain
                held = self._token_of(flow, binding, waited)
                if held is WAIT:
                    return self._placeholders_after_first_fetch(flow, decision, matcher, binding, waited)
                if held is None:
                    return None
                continue
            allowed = binding.settings.substitute
            if (outside := [place for place in places if place not in allowed]) and not self._refuse_placeholder(
                flow,
                binding,
                403,
                f"in the {outside[0]}, where its entry does not replace it ({', '.join(sorted(allowed))})",
            ):
                return None
            snapshot = self._token_of(flow, binding, waited)
            if snapshot is WAIT:
                return self._placeholders_after_first_fetch(flow, decision, matcher, binding, waited)
            if snapshot is None:
                return None
            plan.append((placeholder, binding, snapshot, places))
        if plan:
            self._replace(flow, plan, in_path, in_query)
        return None

    def _may_go(self, flow: http.HTTPFlow, binding: Binding, decision: Decision) -> bool:
        """Whether `binding`'s placeholder may be replaced in this flow: its hosts, ports, scope and clients; if not,
        the flow is refused (403)."""
        if not binding.covers(flow, decision.key):  # its hosts: what put it among the decision's substituters
            why = f"toward {decision.destination}, which its entry's hosts, paths, scope or clients do not cover"
        elif not binding.host_header_agrees(flow):
            why = f"toward {decision.destination} with a Host header that names neither it nor its entry's hosts"
        else:
            return True
        return self._refuse_placeholder(flow, binding, 403, why)

    def _token_of(self, flow: http.HTTPFlow, binding: Binding, waited: frozenset) -> object:
        """The entry's snapshot if it has a usable token; WAIT for its first fetch; None: refused (503)."""
        snapshot = binding.refresher.snapshot
        held = snapshot.token if binding.signer is None else snapshot.signing  # a token, or credentials to sign with
        if held is not None and (snapshot.usable_until == math.inf or time.monotonic() < snapshot.usable_until):
            return snapshot
        if snapshot is NOTHING and not binding.refresher.first_attempt_done and binding.refresher not in waited:
            return WAIT
        why = "no valid credential yet" if snapshot is NOTHING else "its credential expired"
        self._refuse_placeholder(flow, binding, 503, why)
        return None

    async def _placeholders_after_first_fetch(
        self, flow: http.HTTPFlow, decision: Decision, matcher: Matcher, binding: Binding, waited: frozenset
    ) -> None:
        await self._first_fetch(binding)
        waited |= {binding.refresher}
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._placeholders(flow, decision, matcher, waited)) is not None:
            await more
            return
        if flow.response or flow.error:
            return
        if (more := self._apply(flow, decision.bindings, decision.key, waited)) is not None:
            await more

    def _refuse_placeholder(self, flow: http.HTTPFlow, binding: Binding, status: int, why: str) -> bool:
        """Answers the flow (nothing is sent upstream) and says why where the flow, the counters and the audit line
        are read. False, to be returned by the check that refused."""
        settings = binding.settings
        reason = f"placeholder of {settings.name or settings.label} refused: {why}"
        binding.counters.placeholder_refused += 1
        note(flow, f"header-augment: {reason}")
        carried = carried_by(flow)
        if carried is not None:  # the request goes nowhere: it shows what the client sent
            self._restore(flow, carried)
            flow.__dict__[AUDITED] = carried
        flow.__dict__[REFUSED] = binding
        answer(flow, placeholder_refusal(status, reason))
        return False

    @staticmethod
    def _replace(flow: http.HTTPFlow, plan: list, in_path: set, in_query: set) -> None:
        """Writes each token where its placeholder was (all checked): in the headers as it is, a Basic value decoded
        and encoded again, percent-encoded in the path and the query."""
        request = flow.request
        data = request.data
        existing = data.headers.fields
        raw = [(p, snapshot.token.raw) for p, _, snapshot, places in plan if HEADER in places]
        fields, undo, names = substitute_headers(existing, raw) if raw else (existing, [], set())
        own = flow.__dict__
        carried = own.get(CARRIED)
        if carried is None:
            carried = own[CARRIED] = Carried(existing, data.host, data.port, frozenset(), [])
        if names:
            data.headers.fields = fields
            carried.names |= names
            carried.undo += tuple(undo)
        if in_path or in_query:
            encoded = {p: snapshot.token.url for p, _, snapshot, _ in plan}
            if carried.target is None:
                carried.target = data.path
            data.path = substitute_target(data.path, in_path, in_query, encoded)
        for placeholder, binding, snapshot, places in plan:
            carried.add(binding, snapshot.stand_in(placeholder))
            binding.counters.in_scope += 1
            binding.counters.given += 1
            note(flow, f"{binding.comment}replaced its placeholder in the {', '.join(places)}")

    def _body_placeholders(self, flow: http.HTTPFlow, matcher: Matcher) -> Coroutine | None:
        """The request's body, in the `request` hook at the end of the chain (what is sent): placeholders of the
        entries that replace theirs in a body, for where the flow goes now. A body over SCRUB_ON_LOOP is searched on
        a worker thread."""
        decision = flow.__dict__.get(DECISION)
        if decision is None or not decision.substitutes or not matcher.body:
            return None  # searched where a placeholder entry names the host, if any entry replaces in bodies
        request = flow.request
        if request.stream:
            note(flow, "header-augment: body not searched for placeholders: streamed (stream_large_bodies)")
            return None
        raw = request.raw_content
        if not raw:
            return None
        if len(raw) > self.body_limit:
            note(flow, "header-augment: body not searched for placeholders: larger than header_substitute_body_limit")
            return None
        if request.headers.get("content-encoding", "").strip().lower().encode() not in _IDENTITY:
            note(flow, "header-augment: body not searched for placeholders: it has a Content-Encoding")
            return None
        if len(raw) > SCRUB_ON_LOOP:
            return self._body_off_loop(flow, decision, matcher, raw)
        self._body_found(flow, decision, matcher, raw, matcher.find(raw), NOT_WAITED)
        return None

    async def _body_off_loop(self, flow: http.HTTPFlow, decision: Decision, matcher: Matcher, raw: bytes) -> None:
        found = await asyncio.to_thread(matcher.find, raw)
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._body_found(flow, decision, matcher, raw, found, NOT_WAITED)) is not None:
            await more

    def _body_found(
        self, flow: http.HTTPFlow, decision: Decision, matcher: Matcher, raw: bytes, found: set, waited: frozenset
    ) -> Coroutine | None:
        if not found:
            return None
        kind = flow.request.headers.get("content-type", "").encode("latin-1", "replace")
        form = "json" if json_body(kind) else "url" if form_body(kind) else "raw"
        plan = []
        for placeholder in found:
            binding = matcher.owners[placeholder]
            if binding.signer is not None or not (
                binding.covers(flow, decision.key) and binding.host_header_agrees(flow)
            ):
                continue  # not for this flow: a body is only searched for the entries that are
            if BODY not in binding.settings.substitute:
                allowed = ", ".join(sorted(binding.settings.substitute))
                self._refuse_placeholder(
                    flow, binding, 403, f"in the body, where its entry does not replace it ({allowed})"
                )
                return None
            snapshot = self._token_of(flow, binding, waited)
            if snapshot is WAIT:
                return self._body_after_first_fetch(flow, decision, matcher, raw, found, binding, waited)
            if snapshot is None:
                return None
            plan.append((placeholder, binding, snapshot))
        if not plan:
            return None
        request = flow.request
        body = replace_all(raw, ((p, getattr(snapshot.token, form)) for p, _, snapshot in plan))
        own = flow.__dict__
        carried = own.get(CARRIED)
        if carried is None:
            data = request.data
            carried = own[CARRIED] = Carried(data.headers.fields, data.host, data.port, frozenset(), [])
        carried.content = raw
        request.raw_content = body
        if "content-length" in request.headers:
            request.headers["content-length"] = str(len(body))
        for placeholder, binding, snapshot in plan:
            if all(given is not binding for given, _ in carried.given):
                carried.add(binding, snapshot.stand_in(placeholder))
                binding.counters.in_scope += 1
                binding.counters.given += 1
            note(flow, f"{binding.comment}replaced its placeholder in the body ({form})")
        return None

    async def _body_after_first_fetch(
        self, flow, decision: Decision, matcher: Matcher, raw: bytes, found: set, binding: Binding, waited: frozenset
    ) -> None:
        await self._first_fetch(binding)
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._body_found(flow, decision, matcher, raw, found, waited | {binding.refresher})) is not None:
            await more

    def _enforce(self, flow: http.HTTPFlow, decision: Decision) -> bool:
        """Acts on a request's or CONNECT's decision: counted, said in the flow's comment, remembered for its
        connection's address check, and answered 403 when denied (False: the flow goes no further)."""
        verdict = decision.verdict
        self._remember(flow, decision)
        if verdict == PASS:
            return True
        (self.counts.denied if verdict == DENY else self.counts.reported)[decision.reason] += 1
        note(flow, decision.comment())
        if verdict == REPORT:
            return True
        answer(flow, refusal(decision))
        return False

    @staticmethod
    def _remember(flow: http.HTTPFlow, decision: Decision) -> None:
        """What `server_connect` needs of this decision for the connection it opens: whether the destination was
        admitted, and proxyauth's user (as its metadata holds it, without the password)."""
        decided = flow.client_conn.__dict__.setdefault(DECIDED, {})
        key = (decision.host, decision.port)
        if decided.pop(key, None) is None and len(decided) >= MAX_DECIDED:
            del decided[next(iter(decided))]  # the least recent: a connection is opened just after its request
        user = flow.metadata.get("proxyauth")
        decided[key] = (decision.verdict == PASS, None if user is None else (user[0], ""))

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT is decided as a request is: one to a denied host is answered 403 here, and mitmproxy then
        opens no upstream connection and intercepts no TLS."""
        tunnel_opened(flow.client_conn)  # after proxyauth's own http_connect: built-in addons run first
        entries = self.entries
        if entries.egress is not None and not flow.response:  # proxyauth may have answered 407
            decision = decide(entries, flow)
            flow.__dict__[DECISION] = decision
            self._enforce(flow, decision)

    @staticmethod
    def socks5_auth(data) -> None:
        if data.valid:
            tunnel_opened(data.client_conn)
            data.client_conn.__dict__[SOCKS_USER] = data.username

    # -- the connection: decided where no request was (socks5, transparent), and its address checked --------------

    def server_connect(self, data) -> Coroutine | None:
        """With header_egress=deny or report: a connection no request or CONNECT of its client decided (a SOCKS5 or
        transparent connection) is decided here, and refused by setting the server connection's error; and a name
        is resolved here, its address checked (the address check), and the connection pinned to that address, so
        that what was checked is what is connected to. In upstream mode the next proxy resolves: nothing to check."""
        entries = self.entries
        policy = entries.egress
        if policy is None:
            return None
        server, client = data.server, data.client
        if server.address is None or server.error or isinstance(client.proxy_mode, mode_specs.UpstreamMode):
            return None
        host, port = server.address
        decided = client.__dict__.get(DECIDED)
        known = decided.get((host, port)) if decided else None
        if known is None:
            user = client.__dict__.get(SOCKS_USER)
            requester = _Requester(client, None if user is None else (user, ""))
            key, bindings = entries.index.lookup(host)
            admitted = policy.admitting(key, port, requester, bindings) is not None
            if not admitted:
                verdict = DENY if policy.deny else REPORT
                decision = Decision(verdict, HOST, host, port, None, NOTHING_NAMES_IT)
                if self._refuse_connection(data, decision, requester):
                    return None
        else:
            admitted, user = known
            requester = _Requester(client, user)
        if not admitted or ip_of(request_key(host)) is not None:
            # Reported already (its address would be reported again), or an address: its own rule admitted it.
            return None
        return self._check_address(data, host, port, requester, entries)

    async def _check_address(self, data, host: str, port: int, requester: "_Requester", entries: Entries) -> None:
        policy = entries.egress
        assert policy is not None
        server = data.server
        try:
            addresses = await self.resolve(host, port)
        except OSError as e:  # mitmproxy would resolve again: what it then connected to would be unchecked
            server.error = f"header-augment: cannot resolve {host}: {e.strerror or type(e).__name__}"
            return
        chosen, refused = None, None
        for text in addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            kind = special(address)
            if kind is None or policy.admits_address(address, port, requester, entries.index) is not None:
                chosen = text
                break
            refused = refused or (text, kind)
        if chosen is None:
            if refused is None:
                server.error = f"header-augment: cannot resolve {host}: no address"
                return
            text, kind = refused
            verdict = DENY if policy.deny else REPORT
            why = f"it resolves to {text}, a {kind} address {_NO_RULE}"
            decision = Decision(verdict, ADDRESS, host, port, None, why)
            if self._refuse_connection(data, decision, requester):
                return
            chosen = text  # report: it goes where deny would have refused it
        server.__dict__[PINNED] = server.address
        server.address = (chosen, port)

    @staticmethod
    def server_connected(data) -> None:
        """The connection was made to the address checked: mitmproxy knows it by the name again (it routes by
        server.address: the requests of a tunnel take their host from it, and connections are reused by it)."""
        pinned = data.server.__dict__.pop(PINNED, None)
        if pinned is not None:
            # mitmproxy 12.3.1's Server.__setattr__ refuses to change an open connection's address; the connection
            # is made, and only its name is put back (the peer stays the address checked).
            object.__setattr__(data.server, "address", pinned)

    def _refuse_connection(self, data, decision: Decision, requester: "_Requester") -> bool:
        """A connection's decision that is not a pass: counted, audited, and refused if denied (True)."""
        denied = decision.verdict == DENY
        (self.counts.denied if denied else self.counts.reported)[decision.reason] += 1
        if self.audit is not None:
            action = "denied" if denied else "reported"
            self.audit.put(
                audit_log.connection_line(data.client, requester, action, decision.host, decision.port, decision.reason)
            )
        if denied:
            data.server.error = error = f"{DENIED} {decision.destination}: {decision.why}"
            refused = data.client.__dict__.setdefault(REFUSED_CONNECTIONS, {})
            if len(refused) >= MAX_DECIDED:
                del refused[next(iter(refused))]
            refused[(decision.host, decision.port)] = error
        return denied

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
        since (map_remote does, in `request`), it is decided again for where it goes now, what we added goes back
        out, and the headers are applied again: credentials never follow a flow to a host not named, and a request
        never goes to a host the egress policy denies. A flow that carries our values leaves only while the audit
        log can record it (header_audit_require).
        Called at the end of the addon chain, by the script's reroute guard."""
        if self.entries.decides:
            decision, data = flow.__dict__.get(DECISION), flow.request.data
            if decision is not None and (data.host != decision.host or data.port != decision.port):
                self._decide_again(flow)
        carried = flow.__dict__.get(CARRIED)  # only a flow we added to can have been rerouted with our headers
        if carried is not None:
            data = flow.request.data
            if data.host != carried.host or data.port != carried.port:
                self._take_back(flow, carried)
        if (matcher := self.entries.placeholders) is not None and not (flow.response or flow.error):
            body = self._body_placeholders(flow, matcher)  # what is sent, where it goes now
            if body is not None:
                return self._after_body(flow, body)
        return self._gate_and_sign(flow)

    def _gate_and_sign(self, flow: http.HTTPFlow) -> Coroutine | None:
        if self.audit is not None and CARRIED in flow.__dict__:
            self._audit_gate(flow)
        if self.entries.signers and not (flow.response or flow.error or flow.request.stream):
            return self._sign(flow, False)
        return None

    async def _after_body(self, flow: http.HTTPFlow, body: Coroutine) -> None:
        await body
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._gate_and_sign(flow)) is not None:
            await more

    def sign_streamed(self, flow: http.HTTPFlow) -> Coroutine | None:
        """A streamed request's headers leave once the `requestheaders` hooks have run: it is signed here, last. So
        may those of a body sent without a length (HTTP/1's Transfer-Encoding) while stream_large_bodies is set:
        mitmproxy sends them, with no hook in between, once the body outgrows the limit; the entry that signs such
        a request streams it from here (Binding.sign)."""
        if self.audit is not None and CARRIED in flow.__dict__:
            self._audit_gate(flow)
        if self.entries.signers and not (flow.response or flow.error) and flow.live:
            request = flow.request
            if request.stream:
                return self._sign(flow, False)
            if b"transfer-encoding" in request.headers:
                options = ctx.options  # mitmproxy's proxy server declares stream_large_bodies: absent without it
                if "stream_large_bodies" in options and options.stream_large_bodies:
                    return self._sign(flow, False, unsized=True)
        return None

    def _decide_again(self, flow: http.HTTPFlow) -> None:
        """An addon rerouted the flow after its decision (map_remote, in `request`): decided for where it goes now."""
        if flow.response:
            return
        decision = decide(self.entries, flow)
        flow.__dict__[DECISION] = decision
        if self.entries.egress is not None:
            self._enforce(flow, decision)

    def _audit_gate(self, flow: http.HTTPFlow) -> None:
        """header_audit_require: a flow about to leave with our values while the audit log cannot be written is
        answered 503 instead, with the request as the client sent it."""
        audit = self.audit
        if audit is None or not audit.require or audit.writable or flow.response or flow.error:
            return
        carried = carried_by(flow)
        if carried is None:
            return
        self._restore(flow, carried)
        flow.__dict__[AUDITED] = carried  # the line names what would have been sent
        self.counts.audit_refused += 1
        note(flow, "header-augment: refused: the audit log cannot be written (header_audit_require)")
        flow.__dict__[REFUSED] = None
        answer(flow, http.Response.make(503, _AUDIT_DOWN, {"Content-Type": "text/plain; charset=utf-8"}))

    def _sign(self, flow: http.HTTPFlow, waited: bool, unsized: bool = False) -> Coroutine | None:
        """The first signing entry whose hosts the flow goes to signs it: a request carries one signature. The host
        is looked up now, where mitmproxy will connect (an addon may have rerouted the flow since `requestheaders`)."""
        key, bindings = self.entries.signing.lookup(flow.request.data.host)
        for binding in bindings:
            try:
                outcome = binding.sign(flow, key, may_wait=not waited, unsized=unsized)
            except Exception:
                self._hook_error(flow, binding)
                return None
            if outcome is WAIT:
                return self._sign_after_first_fetch(flow, binding)
            if outcome is not None:
                if flow.response:  # refused, not signed
                    flow.__dict__[REFUSED] = binding
                if outcome is DONE:
                    if self.audit is not None:
                        self._audit_gate(flow)
                    return None
                return outcome if self.audit is None else self._gated(flow, outcome)
        return None

    async def _gated(self, flow: http.HTTPFlow, signing: Coroutine) -> None:
        """A signature made on a worker thread: the audit log's gate once it is in the flow."""
        await signing
        self._audit_gate(flow)

    async def _sign_after_first_fetch(self, flow: http.HTTPFlow, binding: Binding) -> None:
        await self._first_fetch(binding)
        if flow.response or flow.error or not flow.live:
            return
        if (more := self._sign(flow, True)) is not None:
            await more

    @staticmethod
    def _restore(flow: http.HTTPFlow, carried: Carried) -> None:
        """Takes what we added out of the request, and gives back the fields it replaced."""
        request = flow.request
        drop_carried(flow)
        touched = carried.names | {b"connection"}  # and the Connection header we may have edited
        request.headers.fields = tuple(f for f in request.headers.fields if f[0].lower() not in touched) + tuple(
            f for f in carried.original if f[0].lower() in touched
        )
        if carried.target is not None:  # a placeholder replaced in the path or the query
            request.data.path = carried.target
        if carried.content is not None:  # in the body
            request.raw_content = carried.content
            if "content-length" in request.headers:
                request.headers["content-length"] = str(len(carried.content))

    def _take_back(self, flow: http.HTTPFlow, carried: Carried) -> None:
        self._restore(flow, carried)
        note(flow, f"header-augment: headers taken back: rerouted from {carried.host}:{carried.port} after the match")
        if not (flow.response or flow.error):
            matcher, decision = self.entries.placeholders, flow.__dict__.get(DECISION)
            if matcher is not None and decision is not None:  # decided again for where it goes now
                self.seen.count += 1
                everyone = frozenset(b.refresher for b in (*decision.bindings, *decision.substituters))
                self._placeholders(flow, decision, matcher, everyone)  # no waiting here
                if not (flow.response or flow.error):
                    self._apply(flow, decision.bindings, decision.key, everyone)
                return
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
        if flow.response.trailers and scrub_trailers(flow.response, secrets):
            note(flow, "header-augment: scrubbed our values from the response trailers")
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
        own = flow.__dict__
        carried = own.get(CARRIED)
        message = flow.websocket.messages[-1]
        if message.from_client:
            if (matcher := self.entries.placeholders) is not None and matcher.websocket and DECISION in own:
                self._message_placeholders(flow, message, matcher)
            return None  # the client's own messages are passed as they are otherwise: it never held our values
        # A larger message is passed as it is, as a body is.
        if carried is None or len(message.content) > MAX_SCRUBBED_BODY:
            return None
        secrets = carried.secrets()
        if len(message.content) > SCRUB_ON_LOOP:
            return asyncio.to_thread(self._scrub_message, flow, message, secrets)
        self._scrub_message(flow, message, secrets)
        return None

    def _message_placeholders(self, flow: http.HTTPFlow, message: WebSocketMessage, matcher: Matcher) -> None:
        """A client's text message to a host whose entries replace their placeholders in websocket messages. The
        layer sends the message object it made once the hooks have returned, and the flow keeps the one in its
        list: the token goes into the first and the list gets a copy that still holds the placeholder, so nothing
        that saves or shows the flow (a -w file, mitmweb) ever holds the token."""
        decision = flow.__dict__[DECISION]
        content = message.content
        if not message.is_text or len(content) > self.body_limit:
            return
        found = matcher.find(content)
        if not found:
            return
        plan = []
        for placeholder in found:
            binding = matcher.owners[placeholder]
            if binding.signer is not None or not (
                binding.covers(flow, decision.key) and binding.host_header_agrees(flow)
            ):
                continue
            if WEBSOCKET not in binding.settings.substitute:
                continue  # the handshake's entry does not replace it here: the message goes as the client wrote it
            snapshot = self._token_of_message(binding)
            if snapshot is None:
                binding.counters.placeholder_refused += 1
                note(
                    flow,
                    f"header-augment: placeholder of {binding.settings.name or binding.settings.label} "
                    "refused: no valid credential for a websocket message (dropped)",
                )
                message.drop()
                return
            plan.append((placeholder, binding, snapshot))
        if not plan:
            return
        form = "json" if content.lstrip()[:1] in (b"{", b"[") else "raw"
        message.content = replace_all(content, ((p, getattr(snapshot.token, form)) for p, _, snapshot in plan))
        flow.websocket.messages[-1] = WebSocketMessage(
            message.type, message.from_client, content, message.timestamp, message.dropped, message.injected
        )
        own = flow.__dict__
        carried = own.get(CARRIED)
        if carried is None:
            data = flow.request.data
            carried = own[CARRIED] = Carried(data.headers.fields, data.host, data.port, frozenset(), [])
        for placeholder, binding, snapshot in plan:
            if all(given is not binding for given, _ in carried.given):
                carried.add(binding, snapshot.stand_in(placeholder))
            binding.counters.given += 1
        if _REPLACED_MESSAGE not in flow.comment:
            note(flow, _REPLACED_MESSAGE)

    @staticmethod
    def _token_of_message(binding: Binding):
        snapshot = binding.refresher.snapshot
        if snapshot.token is not None and time.monotonic() < snapshot.usable_until:
            return snapshot
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
        request = flow.request
        if (fields := masked(request.headers.fields, carried.given)) is not None:
            request.headers.fields = fields
        if (placeholders := carried.substituted()) is None:
            return
        # Where a placeholder was replaced, it stands again: the client's own value, not a marker.
        pairs = placeholders[0]
        request.headers.fields = tuple((name, replace_all(value, pairs)) for name, value in request.headers.fields)
        if carried.target is not None:
            request.data.path = carried.target
        if carried.content is not None:
            request.raw_content = carried.content
            if "content-length" in request.headers:
                request.headers["content-length"] = str(len(carried.content))

    def mask_in_flight(self, flows) -> None:
        """At shutdown, the flows still waiting for their answer (a -w file's, which mitmproxy's save addon writes as
        they are once every addon's `done` has run): what they carry of ours is masked first."""
        for flow in list(flows):
            carried = drop_carried(flow)
            if carried is not None:
                self._mask(flow, carried)

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

    # -- the audit log: the hooks the addon has in place of the answer hooks while header_audit_log is set --------

    def audited_responseheaders(self, flow: http.HTTPFlow) -> None:
        """`responseheaders`, keeping the record of what was added for the line (a streamed answer's hook drops it)."""
        carried = flow.__dict__.get(CARRIED)
        if carried is not None:
            flow.__dict__[AUDITED] = carried
        self.responseheaders(flow)

    def audited_response(self, flow: http.HTTPFlow) -> Coroutine | None:
        self._audit(flow, None)
        return self.response(flow)

    def audited_error(self, flow: http.HTTPFlow) -> None:
        error = flow.error
        # A connection server_connect refused has its line already (it had no flow to wait for). Known by the error
        # it was given for this destination, never by words in a message (a certificate's name could hold them).
        refused = flow.client_conn.__dict__.get(REFUSED_CONNECTIONS)
        ours = refused.get((flow.request.host, flow.request.port)) if refused else None
        if error is None or ours is None or ours not in error.msg:
            self._audit(flow, "failed")
        self.error(flow)

    def audited_connect_end(self, flow: http.HTTPFlow) -> None:
        """`http_connected` and `http_connect_error`: a CONNECT's line, when it was denied or reported."""
        self._audit(flow, None)

    def _audit(self, flow: http.HTTPFlow, failed: str | None) -> None:
        """The flow's line, once: denied or reported (its decision), refused (our own answer), or what was added
        or signed (`failed` when the upstream never answered). Nothing for a flow that carried nothing of ours."""
        audit = self.audit
        own = flow.__dict__
        if audit is None or own.get(AUDITED) is _WRITTEN:
            return
        carried = own.get(CARRIED) or own.get(AUDITED)
        own[AUDITED] = _WRITTEN
        given = carried.given if carried is not None else ()
        decision = own.get(DECISION)
        if decision is not None and decision.verdict != PASS:
            action, reason = ("denied" if decision.verdict == DENY else "reported"), decision.reason
        elif REFUSED in own and flow.response is not None:
            action, reason = "refused", _first_line(flow.response)
            if (binding := own[REFUSED]) is not None and not given:
                audit.put(audit_log.flow_line(flow, action, reason, (), binding.settings))
                return
        elif given:
            first = given[0][0]
            action = failed or (
                "signed" if first.signer is not None else "substituted" if first.placeholder is not None else "added"
            )
            reason = None
        else:
            return
        audit.put(audit_log.flow_line(flow, action, reason, given))

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
                flow.__dict__[REFUSED] = binding  # our own answer (require's 503) in place of a credential
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
            flow.__dict__[REFUSED] = binding
            answer(
                flow,
                http.Response.make(
                    503, "header-augment: internal error (header_require is set)\n", {"Content-Type": "text/plain"}
                ),
            )
            binding.counters.in_scope += 1  # it was refused as one in scope
            binding.counters.refused += 1


class _Requester:
    """What `Clients.matches` and `clients.user_of` read of a flow (its client connection and proxyauth's metadata),
    for a connection that has no flow at hand: the user is still checked against the proxyauth in force."""

    __slots__ = ("client_conn", "metadata")

    def __init__(self, client_conn, user: tuple[str, str] | None) -> None:
        self.client_conn = client_conn
        self.metadata = {} if user is None else {"proxyauth": user}


def _first_line(response: http.Response) -> str | None:
    """The reason our own answer gives (its first line, after "header-augment: "); never a value: we wrote it."""
    body = response.raw_content or b""
    if not body.startswith(_OUR_ANSWER):
        return None
    return body[len(_OUR_ANSWER) :].split(b"\n", 1)[0].decode("utf-8", "replace")


def _without_proxy_authorization(headers: http.Headers) -> tuple | None:
    fields = headers.fields
    kept = tuple(f for f in fields if f[0].lower() != b"proxy-authorization")
    return kept if len(kept) != len(fields) else None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
