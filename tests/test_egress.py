"""Deny by default (header_egress, header_egress_allow, a providers file's egress:), in-process with mitmproxy's
taddons and tflow: one decision per request from the configuration's indexes, the refusal it makes, its counters and
comment, the address check with an injected resolver, and a connection no request decided (socks5)."""

import asyncio
import json

import header_augment
import pytest
from mitmproxy import connection, exceptions
from mitmproxy.addons import proxyauth
from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.test import taddons, tflow
from test_addon import VALID, give, make_flow

from header_augment_core import egress
from header_augment_core.clients import proxyauth_changed
from header_augment_core.decision import DECISION, DENIED, Decision, decide
from header_augment_core.entries import Entries
from header_augment_core.fields import SettingsError
from header_augment_core.providers_file import load_providers_file
from header_augment_core.request_path import DECIDED, PINNED


class Proxy:
    """The addon in a taddons context (with mitmproxy's proxyauth, so that entries and rules may name users)."""

    def __init__(self, tctx, addon) -> None:
        self.tctx, self.addon = tctx, addon

    def configure(self, **options) -> None:
        self.tctx.configure(self.addon, **options)

    def request(self, host: str, port: int = 443, user: str | None = None, address: str = "192.0.2.1", **kw):
        f = make_flow(host=host)
        f.request.port = port
        f.client_conn.peername = (address, 50000)
        if user is not None:
            f.metadata["proxyauth"] = (user, "its-password")
        for name, value in kw.items():
            setattr(f.request, name, value)
        pending = self.addon.requestheaders(f)
        if pending is not None:
            asyncio.run(pending)
        return f

    @property
    def path(self):
        return self.addon._path


@pytest.fixture
def proxy():
    addon = header_augment.HeaderAugment()
    with taddons.context(proxyauth.ProxyAuth(), addon) as tctx:
        tctx.configure(tctx.master.addons.get("proxyauth"), proxyauth="alice:pw")
        yield Proxy(tctx, addon)
        addon.done()


def status_of(f) -> int | None:
    return f.response.status_code if f.response else None


def test_pass_is_the_default_and_makes_no_decision(proxy):
    proxy.configure(**VALID)
    give(proxy.addon, ("Authorization", "Bearer x"))
    assert proxy.path.entries.decides is False and proxy.path.entries.egress is None
    for host in ("api.example.com", "elsewhere.example", "10.9.9.9"):
        f = proxy.request(host)
        assert status_of(f) is None and DECISION not in f.__dict__
    # Allow rules alone change nothing: they only matter once something denies.
    proxy.configure(header_egress_allow=["pypi.org"])
    assert proxy.path.entries.egress is None
    assert status_of(proxy.request("elsewhere.example")) is None


def test_deny_lets_out_named_and_allowed_hosts_and_answers_the_rest_itself(proxy):
    proxy.configure(**VALID, header_egress="deny", header_egress_allow=["pypi.org", "*.pythonhosted.org:443"])
    give(proxy.addon, ("Authorization", "Bearer x"))
    named = proxy.request("api.example.com")
    assert status_of(named) is None and named.request.headers["Authorization"] == "Bearer x"
    assert named.__dict__[DECISION].by is proxy.addon.bindings[0]
    assert status_of(proxy.request("pypi.org", 8080)) is None
    assert status_of(proxy.request("files.pythonhosted.org")) is None
    for host, port in (("files.pythonhosted.org", 80), ("pythonhosted.org", 443), ("api.example.com.evil", 443)):
        f = proxy.request(host, port)
        assert status_of(f) == 403
        first = f.response.content.split(b"\n")[0].decode()
        assert first.startswith(f"{DENIED} {host}:{port}")
        assert f.response.headers["Content-Type"].startswith("text/plain")
        assert f"{DENIED} {host}:{port}" in f.comment
        assert "Authorization" not in f.request.headers
    assert proxy.path.counts.denied == {"host": 3}
    assert proxy.path.counts.reported.total() == 0


def test_the_destination_is_the_routed_host_never_the_host_header(proxy):
    proxy.configure(**VALID, header_egress="deny")
    f = make_flow(host="elsewhere.example")
    f.request.headers["Host"] = "api.example.com"
    proxy.addon.requestheaders(f)
    assert status_of(f) == 403


def test_an_ip_literal_needs_an_address_rule(proxy):
    proxy.configure(
        header_provider_url="http://127.0.0.1:9/x",
        header_hosts=["*"],
        header_egress="deny",
        header_egress_allow=["10.1.0.0/16", "192.0.2.7:8443", "[fd00::]/8", "[2001:db8::1]"],
    )
    give(proxy.addon, ("X-Any", "x"))
    assert status_of(proxy.request("anything.example")) is None  # `*` names every name...
    assert status_of(proxy.request("203.0.113.9")) == 403  # ...never an address
    assert status_of(proxy.request("10.1.200.3")) is None
    assert status_of(proxy.request("10.2.0.1")) == 403
    assert status_of(proxy.request("192.0.2.7", 8443)) is None
    assert status_of(proxy.request("192.0.2.7", 443)) == 403
    assert status_of(proxy.request("fd12::3")) is None
    assert status_of(proxy.request("2001:db8::1")) is None
    assert status_of(proxy.request("2001:db8::2")) == 403


def test_an_entry_that_names_an_address_admits_it(proxy):
    proxy.configure(header_provider_url="http://127.0.0.1:9/x", header_hosts=["127.0.0.1:8443"], header_egress="deny")
    give(proxy.addon, ("X-Any", "x"))
    assert status_of(proxy.request("127.0.0.1", 8443)) is None
    assert status_of(proxy.request("127.0.0.1", 8444)) == 403


def test_rules_and_entries_are_per_client(proxy, tmp_path):
    providers = tmp_path / "p.yaml"
    providers.write_text(
        "providers:\n"
        "  - {name: bobs, url: 'http://127.0.0.1:9/b', hosts: api.bob.example, clients: [bob]}\n"
        "egress:\n"
        "  default: deny\n"
        "  allow:\n"
        "    - {hosts: [pypi.org], clients: [alice, 10.1.0.0/16]}\n"
    )
    proxy.configure(header_providers_file=str(providers))
    give(proxy.addon, ("X-Bob", "x"))
    assert status_of(proxy.request("pypi.org", user="alice")) is None
    assert status_of(proxy.request("pypi.org", user="bob")) == 403
    assert status_of(proxy.request("pypi.org", address="10.1.0.9")) is None
    assert status_of(proxy.request("api.bob.example", user="bob")) is None
    assert status_of(proxy.request("api.bob.example", user="alice")) == 403
    assert proxy.path.counts.denied["host"] == 2


def test_a_tunnel_user_counts_only_under_the_proxyauth_in_force(proxy, tmp_path):
    providers = tmp_path / "p.yaml"
    providers.write_text("egress: {default: deny, allow: [{hosts: [pypi.org], clients: [alice]}]}\n")
    proxy.configure(header_providers_file=str(providers))
    connect = make_flow(host="pypi.org")
    connect.metadata["proxyauth"] = ("alice", "pw")
    proxy.addon.http_connect(connect)
    assert status_of(connect) is None
    inside = make_flow(host="pypi.org")
    inside.client_conn = connect.client_conn
    inside.metadata["proxyauth"] = ("alice", "pw")
    proxy.addon.requestheaders(inside)
    assert status_of(inside) is None
    proxyauth_changed()  # alice's tunnel was authenticated under a proxyauth that is no longer in force
    again = make_flow(host="pypi.org")
    again.client_conn = connect.client_conn
    again.metadata["proxyauth"] = ("alice", "pw")
    proxy.addon.requestheaders(again)
    assert status_of(again) == 403


def test_a_connect_to_a_denied_host_is_answered_at_the_connect(proxy):
    proxy.configure(**VALID, header_egress="deny")
    denied, named = make_flow(host="elsewhere.example"), make_flow(host="api.example.com")
    denied.request.method = named.request.method = "CONNECT"
    proxy.addon.http_connect(denied)
    proxy.addon.http_connect(named)
    assert status_of(denied) == 403 and denied.response.content.startswith(f"{DENIED} elsewhere.example:".encode())
    assert status_of(named) is None
    # What server_connect will need for the tunnel's connection: decided, and admitted or not.
    decided = named.client_conn.__dict__[DECIDED]
    assert decided[("api.example.com", named.request.port)] == (True, None)


def test_report_lets_everything_through_and_counts_what_deny_would_refuse(proxy):
    proxy.configure(**VALID, header_egress="report")
    f = proxy.request("elsewhere.example")
    assert status_of(f) is None
    assert f.__dict__[DECISION].verdict == "report"
    assert "reported elsewhere.example:443" in f.comment
    assert proxy.path.counts.reported == {"host": 1} and proxy.path.counts.denied.total() == 0


def test_trace_to_a_denied_host_is_denied_too(proxy):
    proxy.configure(**VALID, header_egress="deny")
    assert status_of(proxy.request("elsewhere.example", method="TRACE")) == 403


def test_a_flow_rerouted_after_the_decision_is_decided_again(proxy):
    proxy.configure(**VALID, header_egress="deny")
    give(proxy.addon, ("Authorization", "Bearer x"))
    f = proxy.request("api.example.com")
    assert f.request.headers["Authorization"] == "Bearer x"
    f.request.host = "elsewhere.example"  # what map_remote does in `request`, before the reroute guard
    proxy.addon.check_reroute(f)
    assert status_of(f) == 403 and "Authorization" not in f.request.headers


def test_a_signing_entry_names_its_hosts_too(proxy, tmp_path):
    providers = tmp_path / "aws.yaml"
    providers.write_text(
        "providers:\n  - {kind: aws-sigv4, service: s3, region: eu-west-1, hosts: '*.s3.eu-west-1.amazonaws.com'}\n"
        "egress: {default: deny}\n"
    )
    proxy.configure(header_providers_file=str(providers))
    assert status_of(proxy.request("b.s3.eu-west-1.amazonaws.com")) is None
    assert status_of(proxy.request("b.s3.us-east-1.amazonaws.com")) == 403


def test_the_stricter_default_holds_and_an_egress_only_file_is_valid(proxy, tmp_path):
    providers = tmp_path / "p.json"
    providers.write_text(json.dumps({"providers": [], "egress": {"default": "report"}}))
    proxy.configure(header_providers_file=str(providers))
    assert proxy.path.entries.egress.mode == "report"
    proxy.configure(header_egress="deny")
    assert proxy.path.entries.egress.mode == "deny"  # the file cannot loosen the option
    providers.write_text(json.dumps({"egress": {"default": "deny"}}))
    proxy.configure(header_egress="pass", header_providers_file="")
    proxy.configure(header_providers_file=str(providers))
    assert proxy.path.entries.egress.mode == "deny"  # nor the option the file


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"header_egress": "block"}, "header_egress: 'block' is not accepted (accepted: pass, report, deny)"),
        ({"header_egress_allow": ["10.0.0.1/8"]}, "header_egress_allow: '10.0.0.1/8' is not a network"),
        ({"header_egress_allow": ["fd00::/8"]}, "header_egress_allow: 'fd00::/8' is not a network"),
        ({"header_egress_allow": ["https://pypi.org/simple"]}, "header_egress_allow: 'https://pypi.org/…' is a URL"),
        ({"header_egress_allow": ["*.10.0.0.1"]}, "header_egress_allow:"),
        ({"header_audit_require": True}, "header_audit_require: set header_audit_log too"),
    ],
)
def test_bad_options_are_refused_naming_them(proxy, options, message):
    with pytest.raises(exceptions.OptionsError) as raised:
        proxy.configure(**options)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"providers": [], "egres": {}}, "unknown top-level field 'egres'; did you mean egress?"),
        ({"egress": []}, "egress: expected a mapping"),
        ({"egress": {"default": "block"}}, "egress: default: 'block' is not accepted"),
        ({"egress": {"allowed": []}}, "egress: unknown field 'allowed'"),
        ({"egress": {"allow": {"hosts": "x"}}}, "egress: allow: expected a list of rules"),
        ({"egress": {"allow": ["pypi.org"]}}, "egress: allow rule 1: expected a mapping"),
        ({"egress": {"allow": [{"clients": ["alice"]}]}}, "egress: allow rule 1: hosts: required"),
        ({"egress": {"allow": [{"hosts": []}]}}, "egress: allow rule 1: hosts: required"),
        ({"egress": {"allow": [{"hosts": ["a b"]}]}}, "egress: allow rule 1: hosts: 'a b' is not a host"),
        ({"egress": {"allow": [{"hosts": ["x.org"], "client": []}]}}, "egress: allow rule 1: unknown field 'client'"),
        ({"egress": {"allow": [{"hosts": ["x.org"], "clients": ["al ice"]}]}}, "allow rule 1: clients: 'al ice'"),
    ],
)
def test_a_bad_egress_section_is_refused_naming_the_field(tmp_path, document, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(document))
    with pytest.raises(SettingsError) as raised:
        load_providers_file(str(path))
    assert str(raised.value).startswith(f"header_providers_file {path}: ")
    assert message in str(raised.value)


def test_a_rule_that_names_users_needs_proxyauth(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("egress: {default: deny, allow: [{hosts: [pypi.org], clients: [alice]}]}\n")
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="allow rule 1: clients: names users .alice., but proxyauth"):
            tctx.configure(addon, header_providers_file=str(path))
        addon.done()


def test_a_decision_costs_one_lookup_whatever_the_number_of_rules(tmp_path):
    """2,000 rules: the decision still finds the one rule for its host (and only it), through the index."""
    rules = [{"hosts": [f"h{i}.example.com"], "clients": [f"10.{i // 256}.{i % 256}.0/24"]} for i in range(2_000)]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"egress": {"default": "deny", "allow": rules}}))
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(path))
        entries: Entries = addon._path.entries
        for i in (0, 1234, 1999):
            f = make_flow(host=f"h{i}.example.com")
            f.client_conn.peername = (f"10.{i // 256}.{i % 256}.9", 1)
            assert decide(entries, f).by.label == f"egress allow rule {i + 1}"
            f.client_conn.peername = ("10.200.200.9", 1)
            assert decide(entries, f).verdict == "deny"
        assert len(entries.egress.index.candidates("h77.example.com")) == 1
        addon.done()


# -- the address check, and connections no request decided -------------------------------------------------------


class Resolver:
    """A name resolution the test writes: name → addresses, recording each question."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers, self.asked = answers, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise OSError(-2, "Name or service not known")
        return self.answers[host]


def connect(proxy, host: str, port: int, client=None, mode: str = "regular"):
    """server_connect (and server_connected, when it was not refused) for a connection to host:port."""
    client = client or tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse(mode)
    server = connection.Server(address=(host, port))
    data = server_hooks.ServerConnectionHookData(server=server, client=client)
    pending = proxy.addon.server_connect(data)
    if pending is not None:
        asyncio.run(pending)
    connected_to = server.address
    if not server.error:
        proxy.addon.server_connected(data)
    return server, connected_to


def decided_on(proxy, host: str, port: int = 443, user: str | None = None):
    """A request to host:port decided on a fresh client connection: the connection it will open is that one's."""
    f = proxy.request(host, port, user=user)
    return f.client_conn


def test_a_name_that_resolves_to_a_private_address_needs_an_address_rule(proxy):
    resolver = Resolver(
        {
            "internal.example": ["127.0.0.1"],
            "metadata.example": ["169.254.169.254"],
            "mapped.example": ["::ffff:10.0.0.1"],
            "public.example": ["93.184.215.14"],
            "mixed.example": ["::1", "127.0.0.1"],
        }
    )
    proxy.path.resolve = resolver
    proxy.configure(
        header_egress="deny",
        header_egress_allow=[
            "internal.example",
            "metadata.example",
            "mapped.example",
            "public.example",
            "mixed.example",
            "127.0.0.1:443",
        ],
    )
    for host in ("internal.example", "metadata.example", "mapped.example", "public.example", "mixed.example"):
        assert status_of(proxy.request(host)) is None  # the name is allowed: the request goes on to connect
    server, _ = connect(proxy, "metadata.example", 443, decided_on(proxy, "metadata.example"))
    assert server.error.startswith(f"{DENIED} metadata.example:443") and "169.254.169.254, a link-local" in server.error
    server, _ = connect(proxy, "mapped.example", 443, decided_on(proxy, "mapped.example"))
    assert "a private address" in server.error
    assert proxy.path.counts.denied["address"] == 2
    # Allowed: pinned to the address checked while it connects, then known by its name again.
    server, connected_to = connect(proxy, "public.example", 443, decided_on(proxy, "public.example"))
    assert not server.error and connected_to == ("93.184.215.14", 443) and server.address == ("public.example", 443)
    assert PINNED not in server.__dict__
    server, connected_to = connect(proxy, "internal.example", 443, decided_on(proxy, "internal.example"))
    assert not server.error and connected_to == ("127.0.0.1", 443)  # 127.0.0.1:443 is an address rule
    server, _ = connect(proxy, "internal.example", 8443, decided_on(proxy, "internal.example", 8443))
    assert server.error and "127.0.0.1, a loopback address" in server.error  # the rule is for port 443 only
    # The first address a rule admits is the one connected to: ::1 is named by none, 127.0.0.1:443 is.
    _, connected_to = connect(proxy, "mixed.example", 443, decided_on(proxy, "mixed.example"))
    assert connected_to == ("127.0.0.1", 443)
    assert ("public.example", 443) in resolver.asked


def test_the_address_check_is_per_client(proxy, tmp_path):
    proxy.path.resolve = Resolver({"internal.example": ["10.0.0.5"]})
    providers = tmp_path / "p.yaml"
    providers.write_text(
        "egress:\n  default: deny\n  allow:\n    - hosts: [internal.example]\n"
        "    - {hosts: [10.0.0.0/8], clients: [alice]}\n"
    )
    proxy.configure(header_providers_file=str(providers))
    server, connected_to = connect(proxy, "internal.example", 443, decided_on(proxy, "internal.example", user="alice"))
    assert not server.error and connected_to == ("10.0.0.5", 443)
    server, _ = connect(proxy, "internal.example", 443, decided_on(proxy, "internal.example", user="bob"))
    assert server.error and "10.0.0.5, a private address" in server.error


def test_report_checks_the_address_and_lets_it_through(proxy):
    proxy.path.resolve = Resolver({"internal.example": ["127.0.0.1"]})
    proxy.configure(header_egress="report", header_egress_allow=["internal.example"])
    server, connected_to = connect(proxy, "internal.example", 443, decided_on(proxy, "internal.example"))
    assert not server.error and connected_to == ("127.0.0.1", 443)
    assert proxy.path.counts.reported == {"address": 1}


def test_a_name_that_cannot_be_resolved_is_not_resolved_again_by_mitmproxy(proxy):
    proxy.path.resolve = Resolver({})
    proxy.configure(header_egress="deny", header_egress_allow=["gone.example"])
    server, _ = connect(proxy, "gone.example", 443, decided_on(proxy, "gone.example"))
    assert server.error.startswith("header-augment: cannot resolve gone.example")
    assert proxy.path.counts.denied.total() == 0  # not a refusal of the policy: there was nothing to connect to


def test_a_socks5_connection_is_decided_at_the_connection(proxy, tmp_path):
    proxy.path.resolve = Resolver({"pypi.org": ["151.101.0.223"]})
    providers = tmp_path / "p.yaml"
    providers.write_text("egress: {default: deny, allow: [{hosts: [pypi.org], clients: [alice]}]}\n")
    proxy.configure(header_providers_file=str(providers))
    client = tflow.tclient_conn()
    server, _ = connect(proxy, "pypi.org", 443, client, mode="socks5")
    assert server.error.startswith(f"{DENIED} pypi.org:443")  # no user: the rule is alice's
    auth = type("Socks5AuthData", (), {"client_conn": client, "username": "alice", "password": "pw", "valid": True})
    proxy.addon.socks5_auth(auth)
    server, connected_to = connect(proxy, "pypi.org", 443, client, mode="socks5")
    assert not server.error and connected_to == ("151.101.0.223", 443)
    server, _ = connect(proxy, "203.0.113.9", 22, client, mode="socks5")
    assert server.error.startswith(f"{DENIED} 203.0.113.9:22")
    assert proxy.path.counts.denied["host"] == 2


def test_upstream_mode_leaves_the_address_to_the_next_proxy(proxy):
    resolver = Resolver({})
    proxy.path.resolve = resolver
    proxy.configure(header_egress="deny", header_egress_allow=["pypi.org"])
    server, connected_to = connect(proxy, "10.0.0.1", 3128, mode="upstream:http://10.0.0.1:3128")
    assert not server.error and connected_to == ("10.0.0.1", 3128) and resolver.asked == []


def test_the_decision_value_is_frozen():
    decision = Decision("deny", "host", "x.example", 443, "nothing")
    with pytest.raises(AttributeError):
        decision.verdict = "pass"  # type: ignore[misc]
    assert egress.special(egress.ip_of("169.254.169.254")) == "link-local"
    assert egress.special(egress.ip_of("8.8.8.8")) is None
    assert egress.ip_of("example.com") is None and egress.ip_of("v6.example1") is None


def test_a_providers_file_changed_at_run_time_brings_its_egress_section(proxy, tmp_path):
    """Built off the loop with the file's entries, and swapped in with them as one reference."""
    path = tmp_path / "p.yaml"
    path.write_text("egress: {default: deny, allow: [{hosts: [pypi.org]}]}\n")
    proxy.configure(header_providers_file=str(path))
    assert status_of(proxy.request("pypi.org")) is None and status_of(proxy.request("other.org")) == 403
    path.write_text("egress: {default: deny, allow: [{hosts: [other.org]}]}\n")
    for _ in range(2):  # a change is applied once the file has stopped changing
        asyncio.run(proxy.addon._reload_providers_file())
    assert status_of(proxy.request("pypi.org")) == 403 and status_of(proxy.request("other.org")) is None
    path.write_text("egress: {default: report}\n")
    for _ in range(2):
        asyncio.run(proxy.addon._reload_providers_file())
    assert status_of(proxy.request("pypi.org")) is None and proxy.path.counts.reported["host"] == 1


def test_a_client_connection_remembers_its_most_recent_destinations_only(proxy):
    from header_augment_core.request_path import MAX_DECIDED

    proxy.configure(header_egress="deny", header_egress_allow=["*.example.org"])
    first = proxy.request("h0.example.org")
    client = first.client_conn
    for i in range(1, MAX_DECIDED + 2):
        f = make_flow(host=f"h{i}.example.org")
        f.client_conn = client
        proxy.addon.requestheaders(f)
        if i == MAX_DECIDED // 2:  # a destination decided again is recent again
            again = make_flow(host="h1.example.org")
            again.client_conn = client
            proxy.addon.requestheaders(again)
    decided = client.__dict__[DECIDED]
    assert len(decided) == MAX_DECIDED
    assert ("h0.example.org", 22) not in decided and ("h1.example.org", 22) in decided
    assert ("h2.example.org", 22) not in decided and (f"h{MAX_DECIDED + 1}.example.org", 22) in decided


def test_a_refusal_whose_body_mitmproxy_may_yet_stream_is_a_kill_not_an_answer(proxy):
    """A body sent without a length may outgrow stream_large_bodies after the headers were answered: mitmproxy
    12.3.1 then crashed ("Can't set a response and enable streaming at the same time"). Such a refusal kills it."""
    from mitmproxy.flow import Error

    proxy.tctx.options.add_option("stream_large_bodies", str | None, None, "as mitmproxy's proxy server declares it")
    proxy.configure(**VALID, header_egress="deny", stream_large_bodies="64k")
    unsized = make_flow(host="elsewhere.example")
    unsized.request.headers["Transfer-Encoding"] = "chunked"
    proxy.addon.requestheaders(unsized)
    assert unsized.response is None and unsized.error is not None and unsized.error.msg == Error.KILLED_MESSAGE
    assert f"{DENIED} elsewhere.example:{unsized.request.port}" in unsized.comment
    assert status_of(proxy.request("elsewhere.example")) == 403  # a body with a length, or none: answered
    assert proxy.path.counts.denied == {"host": 2}
    proxy.configure(stream_large_bodies=None)
    unsized = make_flow(host="elsewhere.example")
    unsized.request.headers["Transfer-Encoding"] = "chunked"
    proxy.addon.requestheaders(unsized)
    assert status_of(unsized) == 403  # nothing streamed: answered
