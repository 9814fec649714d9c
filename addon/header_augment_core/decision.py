"""One decision per request: a small frozen value, made once from the configuration's indexes (in `requestheaders`,
or at `http_connect` for a tunnel), that the refusal, the counters, the flow's comment and the audit line all read.

It carries the one host lookup the request path makes: the host's key and the entries that may be for it, which
the request path then applies. What else the request path needs about its destination is added here, to the same
lookup (the egress verdict first; then, with placeholders, the placeholders that may go to this host: `substituters`),
never as a second lookup of its own.
"""

from typing import Any, NamedTuple

from mitmproxy import ctx, http

from .egress import DENY, PASS, REPORT

HOST, ADDRESS = "host", "address"  # the reason classes of a refusal (the `denied` counter's label)
REASON_CLASSES = (HOST, ADDRESS)
# On the flow object, not in its metadata: metadata is saved with the flow, an attribute is not (as carried.CARRIED).
DECISION = "_header_augment_decision"
# The start of every refusal's first line, and of the server connection's error a refused connection gets.
DENIED = "header-augment: denied"
NOTHING_NAMES_IT = "no entry or allow rule names it for this client"


class Decision(NamedTuple):
    """`verdict`: pass, report (passes; deny would refuse it) or deny. `reason`: the class of a refusal (host,
    address), None when it passes. `by`: the entry (a Binding) or allow rule that names the destination for the
    client, None when nothing does; `why`: then, why it is refused. `key` and `bindings`: the host's request key
    and the entries that may be for it (the request path's index), in file order. A named tuple: immutable, and
    made in a fraction of a frozen dataclass's time (one per request)."""

    verdict: str
    reason: str | None
    host: str
    port: int
    by: Any = None
    why: str = ""
    key: str | None = None
    bindings: tuple = ()
    # What the lookup found when the entries with a placeholder are among it, and where they start: they come after
    # the others (Entries.of), and are sliced off only when a placeholder is found (however many they are).
    found: tuple = ()
    cut: int = 0

    @property
    def substituters(self) -> tuple:
        """The entries with a placeholder that may be for this host (their hosts; ports, scope and clients are
        checked where a placeholder is found)."""
        return self.found[self.cut :]

    @property
    def substitutes(self) -> bool:
        """Whether any entry with a placeholder may be for this host."""
        return self.cut < len(self.found)

    @property
    def destination(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def comment(self) -> str:
        """The flow's comment for a decision that is not a pass (what mitmweb and the console show): the host and
        why, never a value."""
        if self.verdict == DENY:
            return f"{DENIED} {self.destination}: {self.why}"
        return f"header-augment: reported {self.destination} (header_egress=report would deny it): {self.why}"


def decide(entries: Any, flow: http.HTTPFlow) -> Decision:
    """The flow's decision: the index's entries for its destination (flow.request.host and .port, what mitmproxy
    connects to, never the Host header) and the egress verdict for its client."""
    data = flow.request.data
    host, port = data.host, data.port
    key, found_here = entries.index.lookup(host)
    bindings, listed, cut = found_here, (), 0
    if entries.placeholders is not None and found_here and found_here[-1].placeholder is not None:
        # The entries with a placeholder come after all the others (Entries.of): a walk over the adders only, which
        # the request walks anyway.
        while found_here[cut].placeholder is None:
            cut += 1
        bindings, listed = found_here[:cut], found_here
    policy = entries.egress
    if policy is None:
        return Decision(PASS, None, host, port, None, "", key, bindings, listed, cut)
    found = policy.admitting(key, port, flow, found_here)
    if found is not None:
        return Decision(PASS, None, host, port, found, "", key, bindings, listed, cut)
    verdict = DENY if policy.deny else REPORT
    return Decision(verdict, HOST, host, port, None, NOTHING_NAMES_IT, key, bindings, listed, cut)


def answer(flow: http.HTTPFlow, response: http.Response) -> None:
    """Answer the flow ourselves; nothing is sent upstream. A request whose body mitmproxy streams cannot have an
    answer: it is killed. So is one whose body it may yet stream, sent without a length while stream_large_bodies is
    set: once such a body outgrows the limit, mitmproxy 12.3.1 crashes on an answer set at its headers ("Can't set a
    response and enable streaming at the same time")."""
    if flow.request.stream or (
        "transfer-encoding" in flow.request.headers
        and "stream_large_bodies" in ctx.options  # declared by mitmproxy's proxy server: absent without it
        and ctx.options.stream_large_bodies
    ):
        flow.kill()
    else:
        flow.response = response


def placeholder_refusal(status: int, why: str) -> http.Response:
    """The proxy's own answer to a request whose placeholder may not be replaced (403) or has no valid credential
    to be replaced with (503): `why` names the entry, never a value."""
    return http.Response.make(status, f"header-augment: {why}\n", {"Content-Type": "text/plain; charset=utf-8"})


def refusal(decision: Decision) -> http.Response:
    """The proxy's own answer to a denied request or CONNECT: its first line names the host and why."""
    return http.Response.make(
        403, f"{DENIED} {decision.destination}: {decision.why}\n", {"Content-Type": "text/plain; charset=utf-8"}
    )
