"""Which clients of the proxy an entry's headers are for (option `header_clients`, field `clients`).

Patterns:
    alice                  a user name, as mitmproxy's proxyauth authenticated it (htpasswd, single user, LDAP)
    10.1.0.0/16, 127.0.0.2 an IPv4 network or address of the client connection
    [fd00::]/8, [::1]      an IPv6 network or address, in brackets

A client matches when its proxyauth user is named or its address is in a network named. An entry with no `clients`
is for every client. The address is the client connection's peer as mitmproxy sees it (an IPv4 client of a dual-stack
listener, ::ffff:10.1.2.3, is compared as 10.1.2.3); a name is taken only from proxyauth, never from a header.
"""

import ipaddress
from dataclasses import dataclass

from .fields import SettingsError, shown

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Clients:
    patterns: tuple[str, ...] = ()  # as written, for the status report
    names: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, flow) -> bool:
        if self.names:
            user = flow.metadata.get("proxyauth")  # (user, password), set by proxyauth once it authenticated them
            if user is not None and user[0] in self.names:
                return True
        if self.networks:
            peer = flow.client_conn.peername
            if peer:
                try:
                    address = ipaddress.ip_address(peer[0])
                except ValueError:
                    return False
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                return any(address in network for network in self.networks)
        return False


EVERY_CLIENT = Clients()


def _network(pattern: str) -> Network:
    if pattern.startswith("["):
        address, closed, rest = pattern[1:].partition("]")
        if not closed or (rest and not rest[1:].isdigit()) or (rest and rest[0] != "/"):
            raise ValueError(pattern)
        return ipaddress.IPv6Network(address + rest)
    return ipaddress.IPv4Network(pattern)


def _looks_like_address(pattern: str) -> bool:
    return pattern.startswith("[") or ":" in pattern or all(c.isdigit() or c in "./" for c in pattern)


def parse_clients(value: object) -> Clients:
    """`clients` from a list or a comma-separated string; raises SettingsError naming the first bad pattern."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise SettingsError(f"{shown(value)} is not a list of clients or a comma-separated string")
    patterns = [part.strip() for item in items for part in item.split(",") if part.strip()]
    names, networks = set(), []
    for pattern in patterns:
        if any(c.isspace() for c in pattern):
            raise SettingsError(f"{shown(pattern)} is not a user name or a network (it has white space)")
        if not _looks_like_address(pattern):
            names.add(pattern)
            continue
        try:
            networks.append(_network(pattern))
        except ValueError as e:
            raise SettingsError(
                f"{shown(pattern)} is not a network (10.1.0.0/16, 127.0.0.2, [fd00::]/8) with no bits set past its "
                f"prefix ({e})"
            ) from None
    if not patterns:
        return EVERY_CLIENT
    return Clients(patterns=tuple(patterns), names=frozenset(names), networks=tuple(networks))
