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

from .fields import SettingsError, comma_list, shown

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
            user = user_of(flow)
            if user is not None and user in self.names:
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

# proxyauth remembers the user of each connection it authenticated by CONNECT or SOCKS5 and gives it to every flow of
# that connection, and a change of its option (a user removed from the htpasswd file, then `set proxyauth=@file`)
# does not reach those connections: a revoked user's open tunnel kept her credentials. So each such connection is
# stamped with the proxyauth configuration in force when it was authenticated, and its user counts only while that is
# still the one in force. A stamp is a new object at every change (not a number): a reloaded script, whose counter
# would start again, never takes an old connection's stamp for a current one.
TUNNEL = "_header_augment_tunnel"  # on the client connection object: it goes when the connection goes
_in_force = object()


def proxyauth_changed() -> None:
    """The proxyauth option was set (even to the same value: mitmproxy reads the htpasswd file again)."""
    global _in_force
    _in_force = object()


def tunnel_opened(client_conn) -> None:
    """A CONNECT or SOCKS5 handshake has been through proxyauth: what it authenticated holds for this configuration."""
    client_conn.__dict__[TUNNEL] = _in_force


def user_of(flow) -> str | None:
    """The proxyauth user of `flow`, as proxyauth authenticated them under the configuration in force; never a header.
    The one place a user is read: every match by user (entries' clients, egress rules) goes through it."""
    user = flow.metadata.get("proxyauth")  # (user, password), set by proxyauth once it authenticated them
    if user is None:
        return None
    stamp = flow.client_conn.__dict__.get(TUNNEL)
    if stamp is not None and stamp is not _in_force:
        return None  # authenticated once for the whole connection, under a proxyauth that has changed since
    return user[0]


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
    patterns = comma_list(value, "clients")
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
