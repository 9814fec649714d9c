"""Credentials per client (field `clients`) and the counters of a request path that looks only at the entries a
request may be for, in-process with mitmproxy's taddons and tflow."""

import json

import header_augment
import pytest
from mitmproxy import exceptions
from mitmproxy.addons import proxyauth
from mitmproxy.test import taddons
from test_addon import VALID, give, make_flow

from header_augment_core.clients import parse_clients, proxyauth_changed, tunnel_opened
from header_augment_core.fields import SettingsError
from header_augment_core.snapshot import Snapshot


def from_client(address: str, user: str | None = None, host: str = "api.example.com"):
    f = make_flow(host=host)
    f.client_conn.peername = (address, 50000)
    if user is not None:
        f.metadata["proxyauth"] = (user, "its-password")
    return f


@pytest.mark.parametrize(
    ("address", "user", "expected"),
    [
        ("10.1.200.3", None, True),
        ("::ffff:10.1.0.9", None, True),  # an IPv4 client of a dual-stack listener
        ("10.2.0.1", None, False),
        ("127.0.0.2", None, True),
        ("127.0.0.3", None, False),
        ("fd12::1", None, True),
        ("fe80::1%eth0", None, False),
        ("192.0.2.1", "alice", True),
        ("192.0.2.1", "Alice", False),  # names are compared as proxyauth gives them
        ("192.0.2.1", "bob", False),
    ],
)
def test_a_client_matches_by_its_user_or_its_address(address, user, expected):
    clients = parse_clients(["10.1.0.0/16", "127.0.0.2", "[fd00::]/8", "alice"])
    assert clients.matches(from_client(address, user)) is expected


def test_a_user_authenticated_for_a_whole_tunnel_counts_only_under_the_proxyauth_that_checked_her():
    clients = parse_clients("alice")
    in_tunnel, alone = from_client("192.0.2.1", "alice"), from_client("192.0.2.2", "alice")
    tunnel_opened(in_tunnel.client_conn)
    assert clients.matches(in_tunnel) and clients.matches(alone)
    proxyauth_changed()
    # A request authenticated by itself was checked under the new configuration; the tunnel's user was not.
    assert not clients.matches(in_tunnel) and clients.matches(alone)
    tunnel_opened(in_tunnel.client_conn)  # connected again, checked again
    assert clients.matches(in_tunnel)


def test_a_user_name_is_never_taken_from_a_header():
    f = from_client("192.0.2.1")
    f.request.headers["Proxy-Authorization"] = "Basic YWxpY2U6eA=="  # alice:x, never checked by proxyauth
    assert not parse_clients("alice").matches(f)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.1.0.1/16", "is not a network"),
        ("10.1.0.0/33", "is not a network"),
        ("fd00::/8", "is not a network"),  # IPv6 in brackets, as header_hosts writes it
        ("[fd00::]/x", "is not a network"),
        ("[fd00::", "is not a network"),
        ("300.1.1.1", "is not a network"),
        ("al ice", "has white space"),
        (7, "is not a list of clients"),
    ],
)
def test_bad_clients_are_refused_naming_them(value, message):
    with pytest.raises(SettingsError, match=message):
        parse_clients(value)


def test_user_names_need_proxyauth_at_start_up_naming_the_option():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="^header_clients: names users \\(alice\\), but proxyauth"):
            tctx.configure(addon, header_clients=["alice"], **VALID)
        tctx.configure(addon, header_clients=["10.0.0.0/8"], **VALID)  # addresses need no proxyauth
        assert addon.bindings[0].clients is not None


def test_user_names_in_a_providers_file_need_proxyauth_naming_the_entry(tmp_path):
    path = tmp_path / "providers.json"
    path.write_text(json.dumps([{"name": "a", "url": "http://127.0.0.1:9/", "hosts": "x.test", "clients": ["bob"]}]))
    auth, addon = proxyauth.ProxyAuth(), header_augment.HeaderAugment()
    with taddons.context(auth, addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"provider 1 \(a\): clients: names users \(bob\)"):
            tctx.configure(addon, header_providers_file=str(path))
        tctx.configure(auth, proxyauth="bob:pw")
        tctx.configure(addon, header_providers_file=str(path))
        with pytest.raises(exceptions.OptionsError, match="proxyauth is 'any', which accepts every user name"):
            tctx.configure(auth, proxyauth="any")  # a client could say it is bob
        assert addon.bindings[0].clients.names == {"bob"}
        with pytest.raises(exceptions.OptionsError, match="clients: names users"):
            tctx.configure(auth, proxyauth="")  # the entry still names bob: refused, the configuration stays


def test_each_client_gets_only_its_entries(tmp_path):
    path = tmp_path / "providers.json"
    entries = [
        {"name": "alice", "url": "http://127.0.0.1:9/a", "hosts": "api.example.com", "clients": "alice"},
        {"name": "net", "url": "http://127.0.0.1:9/n", "hosts": "api.example.com", "clients": "10.0.0.0/8"},
        {"name": "all", "url": "http://127.0.0.1:9/e", "hosts": "api.example.com"},
    ]
    path.write_text(json.dumps(entries))
    auth, addon = proxyauth.ProxyAuth(), header_augment.HeaderAugment()
    with taddons.context(auth, addon) as tctx:
        tctx.configure(auth, proxyauth="alice:pw")
        tctx.configure(addon, header_providers_file=str(path))
        for binding in addon.bindings:
            binding.refresher.snapshot = Snapshot.build([(f"X-{binding.settings.name}", "v")], 0.0, 0.0)
        flows = [from_client("10.0.0.1", "alice"), from_client("10.0.0.1"), from_client("192.0.2.1", "carol")]
        for f in flows:
            addon.requestheaders(f)
        got = [[n for n in f.request.headers if n.startswith("X-")] for f in flows]
        assert got == [["X-alice", "X-net", "X-all"], ["X-net", "X-all"], ["X-all"]]  # in file order
        counts = [(b.counters.given, b.counters.out_of_scope) for b in addon.bindings]
        assert counts == [(1, 2), (2, 1), (3, 0)]


def test_out_of_scope_counts_only_the_flows_an_entry_saw_and_survives_reloads(tmp_path):
    path = tmp_path / "providers.json"

    def write(*names: str) -> None:
        path.write_text(
            json.dumps([{"name": n, "url": f"http://127.0.0.1:9/{n}", "hosts": f"{n}.test"} for n in names])
        )

    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        write("a")
        tctx.configure(addon, header_providers_file=str(path))
        give(addon, ("X-A", "v"))
        for host in ("a.test", "other.test", "other.test"):
            addon.requestheaders(make_flow(host=host))
        write("a", "b")
        addon._configure_providers()  # as a reload of the changed file does
        a, b = addon.bindings
        b.refresher.snapshot = Snapshot.build([("X-B", "v")], 0.0, 0.0)
        for host in ("b.test", "other.test"):
            addon.requestheaders(make_flow(host=host))
        assert (a.counters.given, a.counters.out_of_scope) == (1, 4)
        assert (b.counters.given, b.counters.out_of_scope) == (1, 1)  # it did not exist for the first three
