"""A configuration's entries, built off the event loop and swapped in by one reference: the bindings in file order,
those that add headers and the index they are found by, those that sign at the end of the addon chain, and the
egress policy with its own index."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import flowfilter

from .binding import Binding
from .clients import Clients
from .counters import RequestCounters, Seen
from .egress import EgressPolicy, EgressSettings, policy_of
from .fields import SettingsError, shown
from .hosts import HostIndex
from .paths import matcher
from .placeholders import Matcher, check_entries
from .refresher import Refresher
from .settings import ProviderSettings
from .snapshot import NOTHING

Label = Callable[[str], str]
# Filters that search the request's host (or its Host header) with a regex: not a way to pick hosts.
_HOST_SEARCHING_FILTERS = {"d", "h", "hq", "u"}


@dataclass(frozen=True, slots=True)
class PathScope:
    """The scope of an entry with `paths`, called as its compiled filter is (Binding.scope): the request's path
    first, as it is now (the signer's is judged after map_remote), then the filter, if the entry has one."""

    under: Callable[[bytes], bool]
    filter: flowfilter.TFilter | None

    def __call__(self, flow: Any) -> bool:
        return self.under(flow.request.data.path) and (self.filter is None or self.filter(flow))


@dataclass(frozen=True)
class Entries:
    bindings: tuple[Binding, ...]
    adders: tuple[Binding, ...]
    signers: tuple[Binding, ...]
    index: HostIndex  # the adders by host, and the entries with a placeholder
    signing: HostIndex  # the signers by host: a request pays for those that name its host, not for every one
    egress: EgressPolicy | None = None  # None: header_egress=pass, and a request pays nothing for it
    # Whether a request's lookup is made as a decision.Decision (the request path checks this one attribute).
    decides: bool = False
    # Every placeholder and its entry; None when no entry has one, and a request pays nothing for them.
    placeholders: Matcher | None = None

    @classmethod
    def of(cls, bindings: tuple[Binding, ...], egress: tuple[EgressSettings, ...] = ()) -> "Entries":
        adders = tuple(b for b in bindings if b.signer is None and b.placeholder is None)
        signers = tuple(b for b in bindings if b.signer is not None)
        # In the one index with the adders, after all of them: a request's one lookup finds the placeholders that
        # may go to its host, and they come last in what it finds (decision.decide cuts there, without a walk).
        owners = {b.placeholder: b for b in bindings if b.placeholder is not None}
        indexed = adders + tuple(owners.values())
        policy = policy_of(egress, signers)
        return cls(
            bindings,
            adders,
            signers,
            HostIndex([(b.settings.hosts, b) for b in indexed]),
            HostIndex([(b.settings.hosts, b) for b in signers]),
            policy,
            policy is not None or bool(owners),
            Matcher(owners) if owners else None,
        )


NO_ENTRIES = Entries.of(())


def build(
    wanted: list[tuple[ProviderSettings, Label]],
    previous: Entries,
    seen: Seen,
    proxyauth: str,
    egress: tuple[EgressSettings, ...] = (),
) -> Entries:
    """Entries for `wanted` (settings, and how messages name their fields) and the egress policy of `egress` (the
    options', the providers file's), nothing changed yet: raises SettingsError, having stopped every refresher it
    made, if one cannot be made. Entries with equal fetch settings share one refresher, kept from `previous` when it
    is there; an entry keeps its counters across reloads (found by its name, or its source and position). Safe on a
    worker thread: it reads `previous` and touches nothing else."""
    for settings, label_of in wanted:
        _check_users(settings.clients, proxyauth, label_of("clients"))
    check_entries(wanted)
    for kind in dict.fromkeys(type(s.source) for s, _ in wanted):
        kind.check_across([(s.source, label_of) for s, label_of in wanted if type(s.source) is kind])
    for source in egress:
        for rule in source.rules:
            if rule.clients is not None:
                _check_users(rule.clients, proxyauth, f"header_providers_file: {rule.label}: clients")
    # A refresher that broke (an unexpected error, logged) is replaced, not kept: reconfiguring revives it.
    running = {b.settings.fetch_key: b.refresher for b in previous.bindings if not b.refresher.broken}
    cached = {}  # the headers a running refresher holds for the same credentials (only a transport setting changed)
    for b in previous.bindings:
        cached.setdefault(b.settings.credential_key, b.refresher)
    counters = {_entry_key(b.settings, i): b.counters for i, b in enumerate(previous.bindings)}
    made: dict[tuple, Refresher] = {}  # refreshers made for this attempt, by fetch key
    try:
        bindings = []
        for index, (settings, label_of) in enumerate(wanted):
            key = settings.fetch_key
            refresher = running.get(key) or made.get(key)
            if refresher is None:
                seed = cached[settings.credential_key].snapshot if settings.credential_key in cached else NOTHING
                try:
                    refresher = Refresher.for_settings(settings, seed=seed)
                except SettingsError as e:
                    raise SettingsError(f"{label_of(e.field or 'url')}: {e}") from None
                made[key] = refresher
            name = f"header-augment ({settings.name}): " if settings.name else "header-augment: "
            bindings.append(
                Binding(
                    settings=settings,
                    refresher=refresher,
                    hosts=settings.hosts if settings.hosts else None,
                    scope=_compile_scope(settings, label_of),
                    clients=settings.clients or None,
                    counters=counters.get(_entry_key(settings, index)) or RequestCounters(seen),
                    comment=name,
                    mode=settings.merge,
                    signer=_signer_of(settings),
                    placeholder=settings.placeholder.encode("ascii") or None,
                )
            )
        return Entries.of(tuple(bindings), egress)
    except Exception:
        for refresher in made.values():
            refresher.stop()  # made for this attempt only: close its client
        raise


def _check_users(clients: Clients, proxyauth: str, label: str) -> None:
    if clients.names and (not proxyauth or proxyauth.strip().lower() == "any"):
        # proxyauth=any takes whatever user name a client sends: it would let any client be anyone.
        why = "is not set" if not proxyauth else "is 'any', which accepts every user name a client sends"
        named = sorted(clients.names)
        cut = [n if len(n) <= 40 else n[:40] + "…" for n in named[:3]]  # a name can be as long as the file
        users = ", ".join(cut) + (f" and {len(named) - 3} more" * (len(named) > 3))
        raise SettingsError(
            f"{label}: names users ({users}), but proxyauth {why}: only users proxyauth checked tell clients apart"
        )


def _entry_key(settings: ProviderSettings, index: int) -> tuple:
    return (settings.name,) if settings.name else (settings.source.display, index)


def warnings(previous: Entries, entries: Entries) -> list[str]:
    """What to warn of in `entries` that `previous` did not already have: credentials for every host, and scopes
    that search hosts (or the URL) with a regex."""
    warned = {(b.settings.source, b.settings.hosts, b.settings.scope) for b in previous.bindings}
    found = []
    for binding in entries.bindings:
        settings = binding.settings
        if (settings.source, settings.hosts, settings.scope) in warned:
            continue
        if settings.hosts.everything and not settings.scope:
            found.append(f"header_hosts is *: headers from {settings.label} go to every host this proxy sees")
        scope = binding.scope.filter if isinstance(binding.scope, PathScope) else binding.scope
        if scope is not None and searches_hosts(scope):
            found.append(
                f"header_scope {shown(settings.scope)} of {settings.label} uses ~d, ~h, ~u or a bare word: these are "
                "regex searches that also see the Host header a client chose and match look-alike names; name the "
                "hosts with header_hosts"
                + (
                    "; ~u and a bare word search the whole URL, query included (~u /v2/ matches /x?q=/v2/): name the "
                    "paths with header_paths"
                    if "u" in _codes(scope)
                    else ""
                )
            )
    return found


def _compile_scope(settings: ProviderSettings, label_of: Label) -> flowfilter.TFilter | PathScope | None:
    """The entry's filter, with its `paths` checked first (entries without them pay nothing for them)."""
    compiled = None
    if settings.scope:
        try:
            compiled = flowfilter.parse(settings.scope)
        except ValueError:  # its message only quotes the whole expression again
            raise SettingsError(
                f"{label_of('scope')}: {shown(settings.scope)} is not a mitmproxy filter expression"
            ) from None
    return PathScope(matcher(settings.paths), compiled) if settings.paths else compiled


def searches_hosts(node: object) -> bool:
    """Whether a compiled filter uses ~d, ~h, ~hq or ~u (a bare word is ~u too)."""
    return not _codes(node).isdisjoint(_HOST_SEARCHING_FILTERS)


def _codes(node: object) -> set[str]:
    """The filters a compiled filter uses, by their codes (a bare word is `u`). Walked without recursion: `!!!…`
    nests as deep as the expression is long."""
    # flowfilter's undocumented node attributes (a filter's `code`, FAnd/FOr's `lst`, FNot's `itm`): the only way to
    # look inside a compiled filter (checked against mitmproxy 12.3.1; tests/test_seams.py fails if they move).
    codes = set()
    pending = [node]
    while pending:
        node = pending.pop()
        code = getattr(node, "code", None)
        if code is not None:
            codes.add(code)
        # extend, not +=: a list plus pyparsing's ParseResults (`lst`) recurses in ParseResults.__radd__.
        pending.extend(getattr(node, "lst", None) or ([node.itm] if hasattr(node, "itm") else []))
    return codes


def _signer_of(settings: ProviderSettings) -> Any:
    make = getattr(settings.source, "signer", None)  # only a signing kind has one
    return make() if make is not None else None
