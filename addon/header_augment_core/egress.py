"""The egress policy: which destinations a request may go to, and which addresses a connection may reach.

Options `header_egress` (pass, report, deny) and `header_egress_allow`, and a providers file's `egress:` section:

    egress:
      default: deny                  # pass (the default: today's behaviour), report or deny
      allow:
        - hosts: [pypi.org, "*.pythonhosted.org"]
        - hosts: [10.1.0.0/16, "[fd00::]/8", 127.0.0.1:8443]
          clients: [alice]           # as an entry's clients: proxyauth users, addresses, networks

With `deny`, a request goes out only when its destination is named by an entry that covers its client, or by an
allow rule for its client. A pattern that is an address or a network (10.0.0.7, 127.0.0.1:8443, 10.1.0.0/16) is an
address rule: only address rules admit an IP-literal destination, and only they admit a connection to a name that
resolves to a loopback, link-local, private or unspecified address (the address check, in `server_connect`). `*`
names every host name, never an IP literal. With `report`, everything goes out, and what `deny` would refuse is
counted and audited. Where the option and the file both give a default, the stricter one holds: a file cannot
loosen a command line's `deny`.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .clients import Clients, parse_clients
from .fields import SettingsError, comma_list, shown
from .hosts import NO_HOSTS, HostIndex, Hosts, parse_hosts

PASS, REPORT, DENY = "pass", "report", "deny"
MODES = (PASS, REPORT, DENY)  # in order of strictness
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# How a name is resolved for the address check: (host, port) → the addresses, in the order to try them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_SECTION_KEYS = ("default", "allow")
_RULE_KEYS = ("hosts", "clients")


def mode(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in MODES:
        raise SettingsError(f"{shown(value)} is not accepted (accepted: {', '.join(MODES)})")
    return value.strip().lower()


@dataclass(frozen=True)
class AllowRule:
    """Destinations some clients may go to: names and addresses (`hosts`, in header_hosts syntax) and networks."""

    hosts: Hosts
    networks: tuple[Network, ...]
    clients: Clients | None  # None: every client (an entry's Binding has the same two attributes)
    label: str  # how a flow's comment and the status name it


@dataclass(frozen=True)
class EgressSettings:
    """The egress part of one source of configuration (the options, or a providers file): its default, if it gives
    one, and its allow rules."""

    default: str | None = None
    rules: tuple[AllowRule, ...] = ()


def _network(pattern: str) -> Network:
    """`10.1.0.0/16` or `[fd00::]/8`; raises ValueError."""
    if pattern.startswith("["):
        address, closed, prefix = pattern[1:].partition("]")
        if not closed or not prefix.startswith("/") or not prefix[1:].isdigit():
            raise ValueError(pattern)
        return ipaddress.IPv6Network(address + prefix)
    return ipaddress.IPv4Network(pattern)


def parse_patterns(value: object) -> tuple[Hosts, tuple[Network, ...]]:
    """Allow patterns from a list or a comma-separated string: header_hosts patterns, and networks (a `/`)."""
    patterns = comma_list(value, "hosts and networks")
    names, networks = [], []
    for pattern in patterns:
        if "/" in pattern and "://" not in pattern and "@" not in pattern:
            try:
                networks.append(_network(pattern))
            except ValueError as e:
                raise SettingsError(
                    f"{shown(pattern)} is not a network (10.1.0.0/16, [fd00::]/8) with no bits set past its prefix "
                    f"({e})"
                ) from None
        else:
            names.append(pattern)
    return (parse_hosts(names) if names else NO_HOSTS), tuple(networks)


def from_options(default: str, allow: Sequence[str]) -> EgressSettings:
    """header_egress and header_egress_allow; raises SettingsError naming the option."""
    try:
        chosen = mode(default)
    except SettingsError as e:
        raise SettingsError(f"header_egress: {e}") from None
    try:
        hosts, networks = parse_patterns(list(allow))
    except SettingsError as e:
        raise SettingsError(f"header_egress_allow: {e}") from None
    rules = (AllowRule(hosts, networks, None, "header_egress_allow"),) if hosts or networks else ()
    return EgressSettings(chosen, rules)


def _known_fields(mapping: dict, accepted: tuple[str, ...], at: str) -> None:
    """A misspelt field is refused, not ignored: an ignored `alow:` would leave the proxy open."""
    for key in mapping:
        if key not in accepted:
            raise SettingsError(f"{at}: unknown field {shown(key)} (accepted: {', '.join(accepted)})")


def parse_section(value: object, where: str) -> EgressSettings:
    """A providers file's `egress:` mapping; raises SettingsError naming `where` (the file) and the field."""
    here = f"{where}: egress"
    if not isinstance(value, dict):
        raise SettingsError(f"{here}: expected a mapping with default and allow")
    _known_fields(value, _SECTION_KEYS, here)
    default = None
    if "default" in value:
        try:
            default = mode(value["default"])
        except SettingsError as e:
            raise SettingsError(f"{here}: default: {e}") from None
    allow = value.get("allow", [])
    if not isinstance(allow, list):
        raise SettingsError(f"{here}: allow: expected a list of rules, each a mapping with hosts and clients")
    rules = []
    for number, rule in enumerate(allow, 1):
        label = f"egress allow rule {number}"
        at = f"{here}: allow rule {number}"
        if not isinstance(rule, dict):
            raise SettingsError(f"{at}: expected a mapping with hosts and clients")
        _known_fields(rule, _RULE_KEYS, at)
        if "hosts" not in rule:
            raise SettingsError(f"{at}: hosts: required: the hosts, addresses or networks it allows")
        try:
            hosts, networks = parse_patterns(rule["hosts"])
        except SettingsError as e:
            raise SettingsError(f"{at}: hosts: {e}") from None
        if not hosts and not networks:
            raise SettingsError(f"{at}: hosts: required: the hosts, addresses or networks it allows")
        clients = None
        if "clients" in rule:
            try:
                clients = parse_clients(rule["clients"]) or None
            except SettingsError as e:
                raise SettingsError(f"{at}: clients: {e}") from None
        rules.append(AllowRule(hosts, networks, clients, label))
    return EgressSettings(default, tuple(rules))


def special(address: Address) -> str | None:
    """What kind of address the address check refuses unless a rule names it, or None for one it lets through."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:  # RFC 1918, fc00::/7 and the other ranges Python's ipaddress counts as private
        return "private"
    return None


def ip_of(key: str | None) -> Address | None:
    """The address a request key (hosts.request_key) is, or None for a name. Names never end in a digit label, and
    IPv6 keys hold a colon: most names cost two character tests."""
    if key is None or not (key[-1:].isdigit() or ":" in key):
        return None
    try:
        return ipaddress.ip_address(key)
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[str]:
    """The addresses a name resolves to, in the resolver's order (the event loop's getaddrinfo, on its executor)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _admits(item: Any, key: str | None, port: int, requester: Any) -> bool:
    """Whether an entry (a Binding) or an allow rule names the destination for this requester (a flow, or what
    `server_connect` knows of one: its client connection and proxyauth's metadata). `*` names every host name, not
    an address; an entry with only a scope names none."""
    hosts = item.hosts  # None for an entry with none (an allow rule is indexed only with some)
    if hosts is None:
        return False
    if key not in hosts.any_port:  # a name given without a port: no call (most entries' hosts are these)
        if hosts.everything:
            if ip_of(key) is not None:
                return False
        elif key is None or not hosts.matches_key(key, port):
            return False
    clients = item.clients
    return clients is None or clients.matches(requester)


class EgressPolicy:
    """One configuration's policy, built with its entries (off the loop for a providers file): the mode, the allow
    rules and their index by host (with the signing entries, which the request path's index does not hold), and the
    networks by prefix length. A decision costs the same with 1 or 10,000 rules: one lookup for the name and one
    per label for `*.suffix`, and for an address one lookup per distinct prefix length of the networks given."""

    def __init__(self, chosen: str, rules: Sequence[AllowRule], signers: Sequence[Any]) -> None:
        self.mode = chosen
        self.deny = chosen == DENY
        self.rules = tuple(rules)
        self.index: HostIndex = HostIndex(
            [(rule.hosts, rule) for rule in self.rules if rule.hosts] + [(b.settings.hosts, b) for b in signers]
        )
        networks: dict[int, dict[int, dict[Network, list[AllowRule]]]] = {4: {}, 6: {}}
        for rule in self.rules:
            for network in rule.networks:
                networks[network.version].setdefault(network.prefixlen, {}).setdefault(network, []).append(rule)
        # Longest prefixes first: the narrower rule is found first (each still checks its clients).
        self._networks = {
            version: tuple(
                (length, {net: tuple(found) for net, found in table[length].items()})
                for length in sorted(table, reverse=True)
            )
            for version, table in networks.items()
        }

    def admitting(self, key: str | None, port: int, requester: Any, bindings: Sequence[Any]) -> Any:
        """What names the destination for `requester`: an entry among `bindings` (the request path's candidates for
        `key`) or the policy's index, or an allow rule; None when nothing does."""
        for binding in bindings:
            if _admits(binding, key, port, requester):
                return binding
        for item in self.index.candidates(key):
            if _admits(item, key, port, requester):
                return item
        address = ip_of(key)
        return None if address is None else self._network_rule(address, requester)

    def admits_address(self, address: Address, port: int, requester: Any, adders: HostIndex) -> Any:
        """What names `address` (an address rule: an exact address in an entry's or a rule's hosts, or a network
        of a rule) for the requester; None when nothing does."""
        key = str(address)
        for index in (adders, self.index):
            for item in index.candidates(key):
                if _admits(item, key, port, requester):
                    return item
        return self._network_rule(address, requester)

    def _network_rule(self, address: Address, requester: Any) -> AllowRule | None:
        for length, table in self._networks[address.version]:
            rules = table.get(ipaddress.ip_network((address, length), strict=False))
            for rule in rules or ():
                if rule.clients is None or rule.clients.matches(requester):
                    return rule
        return None

    def status(self) -> Mapping[str, Any]:
        return {
            "mode": self.mode,
            "allow": [
                {
                    "label": rule.label,
                    "hosts": [*rule.hosts.patterns, *(str(n) for n in rule.networks)],
                    "clients": list(rule.clients.patterns) if rule.clients else [],
                }
                for rule in self.rules
            ],
        }


def policy_of(sources: Sequence[EgressSettings], signers: Sequence[Any]) -> EgressPolicy | None:
    """The policy for these sources (the options', a providers file's), or None for `pass`: then a request pays
    nothing for it. Allow rules do nothing in pass mode."""
    chosen = max((s.default for s in sources if s.default is not None), key=MODES.index, default=PASS)
    if chosen == PASS:
        return None
    return EgressPolicy(chosen, [rule for s in sources for rule in s.rules], signers)
