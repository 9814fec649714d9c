"""One provider entry on the request path: whether a flow is in its scope, and adding its headers or signing."""

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import flowfilter, http
from mitmproxy.net.http import url

from .carried import CARRIED, Carried, carried_by, carry
from .clients import Clients
from .decision import answer
from .hosts import Hosts, request_key
from .refresher import Refresher
from .settings import ProviderSettings
from .sigv4 import HASH_ON_LOOP, Unsignable, prepare, sign, signed_with
from .snapshot import NOTHING, Merge, merge

logger = logging.getLogger("header_augment")

# A warning that is true of every flow of an entry (a streamed body it cannot sign) is logged at most this often.
WARN_INTERVAL = 60.0
_LOWER_CASE_NAMES = (b"HTTP/2.0", b"HTTP/3")  # versions whose header names must be lower-case

WAIT = object()  # from Binding.apply: hold the request until the provider's first fetch has finished
DONE = object()  # from Binding.sign: the flow was in scope and has been dealt with


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
    # The placeholder this entry's token replaces (it then adds no header); with a signer, the access key id whose
    # requests it signs again.
    placeholder: bytes | None = None

    def covers(self, flow: http.HTTPFlow, key: str | None) -> bool:
        """Whether `flow` is in this entry's hosts, scope and clients (`key`: its host's `request_key`)."""
        hosts = self.hosts
        if hosts is not None and key not in hosts.any_port and not hosts.matches_key(key, flow.request.data.port):
            return False
        if self.scope is not None and not self.scope(flow):
            return False
        return self.clients is None or self.clients.matches(flow)

    def host_header_agrees(self, flow: http.HTTPFlow) -> bool:
        """Whether the request's Host header (HTTP/2's :authority) names its destination or one of this entry's
        hosts. A shared front (a reverse proxy with virtual hosts, a CDN without an SNI check) routes by it: a token
        put in a request to a named host's address with another site's Host would reach that other site."""
        named = flow.request.host_header
        if not named:
            return True
        try:
            host, port = url.parse_authority(named, check=True)
        except ValueError:
            return False
        key, data = request_key(host), flow.request.data
        if key is not None and key == request_key(data.host):
            return True
        hosts = self.hosts
        if hosts is None:
            return True
        return key is not None and (key in hosts.any_port or hosts.matches_key(key, port or data.port))

    def apply(self, flow: http.HTTPFlow, key: str | None, may_wait: bool = True) -> object:
        """Add the headers to `flow` if it is in scope (`key`: its host's `request_key`). Returns WAIT (having done
        nothing) when the flow should be held until the provider's first fetch has finished."""
        counters = self.counters
        data = flow.request.data  # the request's fields themselves: Request's properties would be a call each
        hosts = self.hosts
        if hosts is not None and key not in hosts.any_port and not hosts.matches_key(key, data.port):
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
        headers = data.headers
        existing = headers.fields
        fields, clashes = merge(existing, snapshot, self.mode, data.http_version in _LOWER_CASE_NAMES)
        if clashes:
            counters.already_present += 1
            note(flow, self.comment + _clash_note(snapshot, clashes, self.mode))
        elif fields is not None:
            note(flow, self.comment + snapshot.summary)
        if fields is None:  # nothing to add: {} from the provider, or keep mode and the request had every name
            return None
        headers.fields = fields
        counters.given += 1
        own = flow.__dict__
        carried = own.get(CARRIED)
        if carried is None:
            own[CARRIED] = Carried(existing, data.host, data.port, snapshot.names, [(self, snapshot)])
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
            answer(flow, _refusal(never, what))
            counters.refused += 1
            note(flow, f"{self.comment}refused: {why[0] if never else why[1]}")
        else:
            counters.without += 1
            note(flow, f"{self.comment}no usable {what}, passed {'unsigned' if self.signer else 'without'}")
        return None

    def sign(self, flow: http.HTTPFlow, key: str | None, may_wait: bool = True, unsized: bool = False) -> object:
        """Sign `flow` if it is in scope (`key`: its host's `request_key`), as it will be sent: None if it is not,
        WAIT, DONE, or a coroutine that signs it with the body hashed on a worker thread. `unsized`: at its headers,
        a body without a length while stream_large_bodies is set, which this entry then streams from its headers."""
        counters = self.counters
        request = flow.request
        hosts = self.hosts
        if hosts is not None and key not in hosts.any_port and not hosts.matches_key(key, request.data.port):
            return None  # out_of_scope is derived from the flows seen (counters.py)
        if self.scope is not None and not self.scope(flow):
            return None
        if self.clients is not None and not self.clients.matches(flow):
            return None
        if self.placeholder is not None and not signed_with(request, self.placeholder):
            return None  # signed by the client with another key, or not at all: not this entry's to sign
        if unsized:
            # mitmproxy buffers such a body until it outgrows the limit, then sends the headers as they are, with no
            # hook in between: the request is signed now, with what needs no body, or killed, never sent with the
            # client's signature. Streamed before any refusal below, which then kills it: an answer set now would
            # be sent once the body has been read, and mitmproxy fails the connection if it outgrows the limit.
            request.stream = True
        snapshot = self.refresher.snapshot
        if time.monotonic() >= snapshot.usable_until:
            outcome = self._unusable(
                flow, snapshot, may_wait, "credentials", ("no credentials yet", "credentials expired")
            )
            return DONE if outcome is None else outcome
        counters.in_scope += 1
        streamed = bool(request.stream)
        try:
            prepared = prepare(request, streamed)
        except Unsignable as e:
            answer(flow, _unsignable(str(e), e.status))
            counters.refused += 1
            note(flow, f"{self.comment}refused: {e}")
            return DONE
        if streamed and prepared.streaming is None and not self.signer.unsigned_payload:
            # mitmproxy cannot answer a request whose body it streams (it would stream it again as it reads it):
            # the flow is killed before anything is sent, and the log and the flow say why.
            flow.kill()
            counters.refused += 1
            why = UNSIZED if unsized else STREAMED
            s3 = self.signer.service == "s3"
            note(flow, f"{self.comment}refused: {why}{', unsigned_payload not set' if s3 else ''}")
            _warn_streamed(self.settings.label, why, UNSIGNED_HINT if s3 else LENGTH_HINT)
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
        note(flow, self.comment + self.signer.comment)
        carried = carried_by(flow)
        if carried is None:
            carried = Carried(original, request.host, request.port, secrets.names, [(self, secrets)])
            carry(flow, carried)
        else:
            carried.add(self, secrets)
        if self.placeholder is not None:  # an answer that names the real key id shows the client's placeholder
            signing = self.refresher.snapshot.signing
            if signing is not None:
                carried.undo += ((signing.access_key.encode(), self.placeholder),)


# Why a streamed body cannot be signed, and what to do, in the flow's comment and the log.
STREAMED = "streamed request body (stream_large_bodies)"
UNSIZED = "request body of unknown length (Transfer-Encoding) while stream_large_bodies is set"
UNSIGNED_HINT = "set unsigned_payload: true to send S3 uploads with UNSIGNED-PAYLOAD"
LENGTH_HINT = "send it with a Content-Length, or unset stream_large_bodies"

_streamed_warned_at: dict[tuple[str, str], float] = {}


def _warn_streamed(label: str, why: str, hint: str) -> None:
    now = time.monotonic()
    if now - _streamed_warned_at.get((label, why), -math.inf) >= WARN_INTERVAL:
        _streamed_warned_at[label, why] = now
        logger.warning(
            "header provider %s: a %s cannot be hashed for its signature before it is sent: killed; %s "
            "(logged at most once a minute)",
            label,
            why,
            hint,
        )


def _unsignable(why: str, status: int) -> http.Response:
    return http.Response.make(
        status, f"header-augment: not signed: {why}\n", {"Content-Type": "text/plain; charset=utf-8"}
    )


def note(flow: http.HTTPFlow, text: str) -> None:
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
