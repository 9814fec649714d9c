"""End to end, as an attacker would try it: a provider's credentials reach only the destinations named in
header_hosts, in every proxy mode, over plain HTTP and HTTPS, whatever Host header or :authority the client writes.

Most tests share one mitmdump (`world`). It listens in all four modes at once, each listener on its own loopback
address so that every one can take an ephemeral port, and it has one provider per *grant* (a hosts list, see
`grants`), each answering its own header `X-Token-<grant>: Bearer SECRET-TOKEN-<grant>`. What the echo upstream
received therefore says exactly which grants matched a request's destination.

Only `localhost` and IP addresses resolve here (not `localhost.`, not `a.localhost`: glibc's resolver gives them no
address). Two things make look-alike destinations reach a loopback server for real, so that a wrong match would
really deliver the token:
- addresses: 127.1, 127.0.0.01, 2130706433, 0x7f.0.0.1 and [::ffff:127.0.0.1] all reach 127.0.0.1 through the
  system resolver, while header_hosts compares addresses as written and never resolves;
- names: the upstream-mode listener forwards to `LoopbackProxy`, an upstream proxy whose resolver answers 127.0.0.1
  for every name (keeping the port), so api.example.com.attacker.test really is the destination mitmproxy routes
  to; the proxy records the authorities it was asked for, which the tests check.

Linux routes all of 127.0.0.0/8 to the loopback interface, which the listeners' addresses rely on. IPv6 checks are
skipped where there is no [::1].
"""

import http.client
import json
import socket
import ssl
import subprocess
import threading
import urllib.parse

import pytest
from echo_upstream import received
from servers import ROOT, LoopbackProxy, Mitmdump, Provider, Upstream, Upstream6, clean_env

SECRET = "SECRET-TOKEN"
TOKEN = f"Bearer {SECRET}"

# The shared mitmdump's listeners: name -> listen address (on loopback; each with an ephemeral port).
LISTEN = {
    "regular": "127.0.0.1",
    "upstream": "127.0.0.2",
    "socks5": "127.0.0.3",
    "reverse-a": "127.0.0.4",
    "reverse-b": "127.0.0.5",
    "reverse-tls": "127.0.0.6",
    "reverse-127.1": "127.0.0.7",
    "reverse-localhost": "127.0.0.8",
}


def grants(w: "World") -> dict[str, dict]:
    """Grant name -> the providers-file fields that scope it. Upstreams: A and B plain, T and T2 TLS, V on [::1]."""
    return {
        "api": {"hosts": "api.example.com"},
        "below": {"hosts": ["*.example.com"]},
        "port-a": {"hosts": [f"127.0.0.1:{w.a.port}"]},
        "tls": {"hosts": [f"127.0.0.1:{w.t.port}"]},
        "localhost": {"hosts": ["localhost"]},
        "sub-localhost": {"hosts": "*.localhost"},
        "idna": {"hosts": ["bücher.example"]},
        "post-a": {"hosts": [f"127.0.0.1:{w.a.port}"], "scope": "~m POST"},
        "sharp-s": {"hosts": ["straße.example"]},  # for the xfail test of IDNA 2003's ß -> ss
        "bank": {"hosts": ["*.bank.example"]},
    } | ({"v6": {"hosts": [f"[::1]:{w.v6.port}"]}} if w.v6 else {})


class World:
    """The upstreams, the providers and the shared mitmdump; `at[listener]` is where a listener listens."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.servers: list = []
        self.mitmdump: Mitmdump | None = None

    def serve(self, server):
        self.servers.append(server)
        return server

    def start(self, tls_files) -> None:
        directory = self.directory
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(tls_files / "cert-combined.pem")
        self.a, self.b = self.serve(Upstream()), self.serve(Upstream())
        self.t, self.t2 = self.serve(Upstream(ssl_context=tls)), self.serve(Upstream(ssl_context=tls))
        try:
            self.v6 = self.serve(Upstream6())
        except OSError:  # no IPv6 loopback, as in many containers
            self.v6 = None
        self.relay = self.serve(LoopbackProxy())
        entries = []
        for grant, scoping in grants(self).items():
            provider = self.serve(Provider())
            provider.answer({f"X-Token-{grant}": f"{TOKEN}-{grant}"})
            entries.append({"name": grant, "url": provider.url, **scoping})
        providers_file = directory / "providers.json"
        providers_file.write_text(json.dumps({"providers": entries}))
        specs = {
            "regular": "regular",
            "upstream": f"upstream:{self.relay.url}",
            "socks5": "socks5",
            "reverse-a": f"reverse:http://127.0.0.1:{self.a.port}",
            "reverse-b": f"reverse:http://127.0.0.1:{self.b.port}",
            "reverse-tls": f"reverse:https://127.0.0.1:{self.t.port}",
            "reverse-127.1": f"reverse:http://127.1:{self.a.port}",
            "reverse-localhost": f"reverse:http://localhost:{self.a.port}",
        }
        modes = [arg for name, spec in specs.items() for arg in ("--mode", f"{spec}@{LISTEN[name]}:0")]
        self.mitmdump = Mitmdump(
            directory / "confdir",
            "--set",
            f"header_providers_file={providers_file}",
            *modes,
            "--set",
            "ssl_insecure=true",  # the test upstreams' certificate is self-signed
            "--set",
            "keep_host_header=true",  # reverse mode too passes the client's Host header on: more for an attacker
            "--set",
            "termlog_verbosity=debug",
            wait_listening=False,
        )
        self.at = {
            name: (address, int(self.mitmdump.wait_for(rf"listening at {address}:(\d+)").group(1)))
            for name, address in LISTEN.items()
        }
        for grant in grants(self):
            self.mitmdump.wait_for(rf"headers in use: X-Token-{grant}$")
        self.ca = ssl.create_default_context(cafile=directory / "confdir" / "mitmproxy-ca-cert.pem")
        # A reverse listener's certificate names the backend, not the loopback address the client dials.
        self.ca_any_name = ssl.create_default_context(cafile=directory / "confdir" / "mitmproxy-ca-cert.pem")
        self.ca_any_name.check_hostname = False

    def assert_no_secret_in_output(self) -> None:
        assert SECRET not in self.mitmdump.output

    def close(self) -> None:
        if self.mitmdump is not None and self.mitmdump.proc.poll() is None:
            self.mitmdump.stop()
        # In parallel: each server takes up to its poll interval (0.5 s) to notice its shutdown.
        closing = [threading.Thread(target=server.close) for server in self.servers]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tls_files):
    w = World(tmp_path_factory.mktemp("scoping"))
    try:
        w.start(tls_files)
        yield w
    finally:
        w.close()


# -- clients: each sends the destination and Host exactly as written, and returns what the echo upstream saw ----


def echo(response: http.client.HTTPResponse) -> dict:
    body = response.read()
    assert response.status == 200, body[:500]
    return json.loads(body)


def granted(seen: dict) -> set[str]:
    """The grants whose header reached the upstream, each with its own value, once."""
    names = [(name.lower(), value) for name, value in received(seen) if name.lower().startswith("x-token-")]
    found = {name.removeprefix("x-token-"): value for name, value in names}
    assert len(found) == len(names), seen
    assert all(value == f"{TOKEN}-{grant}" for grant, value in found.items()), seen
    return set(found)


def host_seen(seen: dict) -> str:
    return next(value for name, value in received(seen) if name.lower() == "host")


def request(conn: http.client.HTTPConnection, target: str, host: str | None, method: str) -> dict:
    try:
        conn.request(method, target, headers={"Host": host} if host else {})
        return echo(conn.getresponse())
    finally:
        conn.close()


def via_proxy(proxy, url: str, host: str | None = None, method: str = "GET") -> dict:
    """Plain HTTP through an HTTP proxy; the absolute URL is sent as written (http.client normalises nothing)."""
    return request(http.client.HTTPConnection(*proxy, timeout=10), url, host, method)


def via_tunnel(proxy, target: tuple[str, int], ca: ssl.SSLContext, host: str | None = None) -> dict:
    """HTTPS through an HTTP proxy: CONNECT target, TLS (verified against mitmproxy's CA), then a request inside."""
    conn = http.client.HTTPSConnection(*proxy, timeout=10, context=ca)
    conn.set_tunnel(*target)
    return request(conn, "/", host, "GET")


def direct(address, host: str | None = None, method: str = "GET", tls: ssl.SSLContext | None = None) -> dict:
    """To a reverse-mode listener, as to a server."""
    if tls is None:
        return request(http.client.HTTPConnection(*address, timeout=10), "/", host, method)
    return request(http.client.HTTPSConnection(*address, timeout=10, context=tls), "/", host, method)


def via_socks(proxy, target: tuple[str, int], host: str | None = None, tls: ssl.SSLContext | None = None) -> dict:
    """Through a SOCKS5 proxy given the destination as a name, like `curl --socks5-hostname` but without curl's
    normalising of addresses such as 127.1, then (optionally) TLS and a request."""
    sock = socket.create_connection(proxy, timeout=10)
    sock.sendall(b"\x05\x01\x00")  # version 5, one method: no authentication
    assert recv_exactly(sock, 2) == b"\x05\x00"
    name = target[0].encode("ascii")
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + target[1].to_bytes(2, "big"))
    reply = recv_exactly(sock, 4)
    assert reply[1] == 0, f"SOCKS5 reply {reply[1]}"
    recv_exactly(sock, {1: 4, 4: 16}[reply[3]] + 2)  # the bound address and port
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=target[0])
    conn = http.client.HTTPConnection(*target, timeout=10)
    conn.sock = sock
    return request(conn, "/", host, "GET")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "SOCKS5 proxy closed the connection"
        data += chunk
    return data


def curl(*args: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "10", *args], capture_output=True, text=True, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- regular mode -------------------------------------------------------------------------------------------------


def test_regular_http_goes_by_the_absolute_url_never_the_host_header(world):
    a, b, proxy = world.a.port, world.b.port, world.at["regular"]
    checks = {
        (f"http://127.0.0.1:{a}/", None): {"port-a"},
        (f"http://127.0.0.1:{a}/", "api.example.com"): {"port-a"},
        (f"http://127.0.0.1:{b}/", "api.example.com"): set(),
        (f"http://127.0.0.1:{b}/", "x.example.com"): set(),
        (f"http://127.0.0.1:{b}/", f"127.0.0.1:{a}"): set(),
        (f"http://127.0.0.1:{b}/", "localhost"): set(),
        (f"http://localhost:{b}/", None): {"localhost"},
        (f"http://LOCALHOST:{b}/", None): {"localhost"},
        (f"http://localhost:{b}/", f"127.0.0.1:{a}"): {"localhost"},
        # Origin-form: regular mode then routes by the Host header, so there it *is* the destination.
        ("/", f"127.0.0.1:{a}"): {"port-a"},
        ("/", f"127.0.0.1:{b}"): set(),
    }
    seen = {(url, host): via_proxy(proxy, url, host) for url, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    # The spoofed Host header was not dropped on the way: the upstream got it, just not the token.
    assert host_seen(seen[(f"http://127.0.0.1:{b}/", "api.example.com")]) == "api.example.com"
    world.assert_no_secret_in_output()


def test_regular_https_goes_by_the_connect_target_never_the_inner_host(world):
    t, t2, proxy = world.t.port, world.t2.port, world.at["regular"]
    checks = {
        (("127.0.0.1", t), None): {"tls"},
        (("127.0.0.1", t), "api.example.com"): {"tls"},  # the destination is named: the token goes, Host or not
        (("127.0.0.1", t2), "api.example.com"): set(),
        (("127.0.0.1", t2), f"127.0.0.1:{t}"): set(),
        (("127.0.0.1", t2), "a.localhost"): set(),
        (("localhost", t2), "api.example.com"): {"localhost"},
    }
    seen = {(target, host): via_tunnel(proxy, target, world.ca, host) for target, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    assert host_seen(seen[(("127.0.0.1", t2), "api.example.com")]) == "api.example.com"
    world.assert_no_secret_in_output()


def test_regular_mode_look_alike_addresses_of_a_named_one_get_nothing(world):
    """Each of these spellings reaches upstream A on 127.0.0.1 (the echo answers), and none is `127.0.0.1`."""
    a, proxy = world.a.port, world.at["regular"]
    spellings = ["127.1", "127.0.0.01", "2130706433", "0x7f.0.0.1"] + (["[::ffff:127.0.0.1]"] if world.v6 else [])
    seen = {spelling: via_proxy(proxy, f"http://{spelling}:{a}/") for spelling in spellings}
    assert {spelling: granted(s) for spelling, s in seen.items()} == dict.fromkeys(spellings, set())
    assert granted(via_proxy(proxy, f"http://127.0.0.1:{a}/")) == {"port-a"}
    world.assert_no_secret_in_output()


# -- upstream mode (through LoopbackProxy, whose resolver sends every name to 127.0.0.1) ----------------------------


def test_upstream_http_goes_by_the_absolute_url_never_the_host_header(world):
    a, b, proxy = world.a.port, world.b.port, world.at["upstream"]
    checks = {
        (f"http://api.example.com:{b}/", None): {"api", "below"},
        (f"http://127.0.0.1:{a}/", "api.example.com"): {"port-a"},
        (f"http://127.0.0.1:{b}/", "api.example.com"): set(),
        (f"http://localhost.attacker.test:{b}/", "api.example.com"): set(),
        (f"http://127.0.0.1:{b}/", f"127.0.0.1:{a}"): set(),
    }
    before = len(world.relay.targets)
    seen = {(url, host): via_proxy(proxy, url, host) for url, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    assert world.relay.targets[before:] == [urllib.parse.urlsplit(url).netloc for url, _ in checks]
    world.assert_no_secret_in_output()


def test_upstream_https_goes_by_the_connect_target_never_the_inner_host(world):
    t, t2, proxy = world.t.port, world.t2.port, world.at["upstream"]
    checks = {
        (("api.example.com", t2), None): {"api", "below"},
        (("api.example.com.attacker.test", t2), "api.example.com"): set(),
        (("127.0.0.1", t), "api.example.com"): {"tls"},
        (("127.0.0.1", t2), "api.example.com"): set(),
    }
    before, connects_before = len(world.relay.targets), len(world.relay.connect_heads)
    seen = {(target, host): via_tunnel(proxy, target, world.ca, host) for target, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    assert world.relay.targets[before:] == [f"{name}:{port}" for (name, port), _ in checks]
    # The CONNECT that mitmproxy sends the upstream proxy carries no credentials, not even for a named destination.
    connects = world.relay.connect_heads[connects_before:]
    assert len(connects) == len(checks) and not any(SECRET in line for head in connects for line in head)
    world.assert_no_secret_in_output()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api.example.com", {"api", "below"}),
        ("API.Example.COM", {"api", "below"}),
        ("a.b.example.com", {"below"}),
        ("evil-api.example.com", {"below"}),  # below example.com, which the user named
        ("api.example.com.attacker.test", set()),
        ("apiXexample.com", set()),
        ("api-example.com", set()),
        ("example.com", set()),
        ("badexample.com", set()),
        ("example.com.attacker.test", set()),
        ("xn--bcher-kva.example", {"idna"}),
        ("bucher.example", set()),
        ("xn--bcher-kva.example.attacker.test", set()),
        ("localhost", {"localhost"}),
        ("a.localhost", {"sub-localhost"}),
        ("localhost.attacker.test", set()),
        ("x.bank.example", {"bank"}),
        # mitmproxy decodes it (IDNA 2003) to x.ba\u115fnk.example, which IDNA 2008 reads as x.bank.example, and
        # encodes it back to this, another domain, for the connection: the relay is asked for it, as asserted below
        ("x.xn--bank-cwr.example", set()),
    ],
)
def test_look_alike_names_get_nothing(world, name, expected):
    """Through the upstream-mode listener, so that the name is the destination mitmproxy routes to; both over
    plain HTTP (absolute URL) and HTTPS (CONNECT)."""
    before = len(world.relay.targets)
    plain = via_proxy(world.at["upstream"], f"http://{name}:{world.a.port}/")
    tunnelled = via_tunnel(world.at["upstream"], (name, world.t2.port), world.ca)
    assert (granted(plain), granted(tunnelled)) == (expected, expected)
    routed = [target.rsplit(":", 1)[0].lower() for target in world.relay.targets[before:]]
    assert routed == [name.lower()] * 2
    world.assert_no_secret_in_output()


def test_a_trailing_dot_is_the_same_name(world):
    """Plain HTTP only: mitmproxy 12 cannot open TLS to a name with a trailing dot (its tls_start_server fails on
    such an SNI, and the client's handshake hangs)."""
    seen = {
        name: via_proxy(world.at["upstream"], f"http://{name}:{world.a.port}/")
        for name in ("api.example.com.", "x.example.com.", "example.com.", "localhost.", "a.localhost.")
    }
    assert {name: granted(s) for name, s in seen.items()} == {
        "api.example.com.": {"api", "below"},
        "x.example.com.": {"below"},
        "example.com.": set(),
        "localhost.": {"localhost"},
        "a.localhost.": {"sub-localhost"},
    }
    world.assert_no_secret_in_output()


def test_a_unicode_name_does_not_give_the_token_to_another_domain(world):
    assert granted(via_proxy(world.at["upstream"], f"http://strasse.example:{world.a.port}/")) == set()


# -- reverse mode -------------------------------------------------------------------------------------------------


def test_reverse_http_goes_by_the_backend_never_the_host_header(world):
    a = world.a.port
    checks = {
        ("reverse-a", None): {"port-a"},
        ("reverse-a", "api.example.com"): {"port-a"},
        ("reverse-b", "api.example.com"): set(),
        ("reverse-b", f"127.0.0.1:{a}"): set(),
        ("reverse-b", "localhost"): set(),
        ("reverse-localhost", "api.example.com"): {"localhost"},
        ("reverse-127.1", f"127.0.0.1:{a}"): set(),  # reaches upstream A, under a name that is not 127.0.0.1
    }
    seen = {(listener, host): direct(world.at[listener], host) for listener, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    assert host_seen(seen[("reverse-b", "api.example.com")]) == "api.example.com"
    world.assert_no_secret_in_output()


def test_reverse_https_goes_by_the_backend_never_the_host_header(world):
    seen = direct(world.at["reverse-tls"], "api.example.com", tls=world.ca_any_name)
    assert granted(seen) == {"tls"}
    assert host_seen(seen) == "api.example.com"
    world.assert_no_secret_in_output()


# -- socks5 mode --------------------------------------------------------------------------------------------------


def test_socks5_http_goes_by_the_socks_target_never_the_host_header(world):
    a, b, proxy = world.a.port, world.b.port, world.at["socks5"]
    checks = {
        (("127.0.0.1", a), "api.example.com"): {"port-a"},
        (("127.0.0.1", b), "api.example.com"): set(),
        (("127.0.0.1", b), f"127.0.0.1:{a}"): set(),
        (("127.1", a), None): set(),  # reaches upstream A, under a name that is not 127.0.0.1
        (("localhost", b), "api.example.com"): {"localhost"},
    }
    seen = {(target, host): via_socks(proxy, target, host) for target, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    # And with a common client:
    socks = ("--socks5-hostname", f"{proxy[0]}:{proxy[1]}")
    assert granted(json.loads(curl(*socks, "-H", "Host: api.example.com", f"http://127.0.0.1:{b}/"))) == set()
    assert granted(json.loads(curl(*socks, "-H", "Host: api.example.com", f"http://127.0.0.1:{a}/"))) == {"port-a"}
    world.assert_no_secret_in_output()


def test_socks5_https_goes_by_the_socks_target_never_the_inner_host(world):
    t, t2, proxy = world.t.port, world.t2.port, world.at["socks5"]
    checks = {
        (("127.0.0.1", t), "api.example.com"): {"tls"},
        (("127.0.0.1", t2), "api.example.com"): set(),
        (("127.0.0.1", t2), f"127.0.0.1:{t}"): set(),
    }
    seen = {(target, host): via_socks(proxy, target, host, tls=world.ca) for target, host in checks}
    assert {check: granted(s) for check, s in seen.items()} == checks
    socks = (
        "--socks5-hostname",
        f"{proxy[0]}:{proxy[1]}",
        "--cacert",
        str(world.mitmdump.confdir / "mitmproxy-ca-cert.pem"),
    )
    assert granted(json.loads(curl(*socks, "-H", "Host: api.example.com", f"https://127.0.0.1:{t2}/"))) == set()
    assert granted(json.loads(curl(*socks, "-H", "Host: api.example.com", f"https://127.0.0.1:{t}/"))) == {"tls"}
    world.assert_no_secret_in_output()


# -- across modes -------------------------------------------------------------------------------------------------


def test_a_port_in_the_pattern_pins_it(world):
    """`127.0.0.1:<A>` gives the token to upstream A only; `localhost` (no port) to any port."""
    a, b = world.a.port, world.b.port
    results = {
        "regular A": via_proxy(world.at["regular"], f"http://127.0.0.1:{a}/"),
        "regular B": via_proxy(world.at["regular"], f"http://127.0.0.1:{b}/"),
        "upstream A": via_proxy(world.at["upstream"], f"http://127.0.0.1:{a}/"),
        "upstream B": via_proxy(world.at["upstream"], f"http://127.0.0.1:{b}/"),
        "reverse A": direct(world.at["reverse-a"]),
        "reverse B": direct(world.at["reverse-b"]),
        "socks5 A": via_socks(world.at["socks5"], ("127.0.0.1", a)),
        "socks5 B": via_socks(world.at["socks5"], ("127.0.0.1", b)),
        "localhost A": via_proxy(world.at["regular"], f"http://localhost:{a}/"),
        "localhost B": via_proxy(world.at["regular"], f"http://localhost:{b}/"),
    }
    assert {check: granted(seen) for check, seen in results.items()} == {
        "regular A": {"port-a"},
        "regular B": set(),
        "upstream A": {"port-a"},
        "upstream B": set(),
        "reverse A": {"port-a"},
        "reverse B": set(),
        "socks5 A": {"port-a"},
        "socks5 B": set(),
        "localhost A": {"localhost"},
        "localhost B": {"localhost"},
    }
    world.assert_no_secret_in_output()


def test_hosts_and_scope_must_both_match(world):
    """Grant post-a: hosts 127.0.0.1:<A> and scope `~m POST`."""
    a, b = world.a.port, world.b.port
    results = {
        "POST A": via_proxy(world.at["regular"], f"http://127.0.0.1:{a}/", method="POST"),
        "GET A": via_proxy(world.at["regular"], f"http://127.0.0.1:{a}/"),
        "POST B": via_proxy(world.at["regular"], f"http://127.0.0.1:{b}/", method="POST"),
        "POST B as A": via_proxy(world.at["regular"], f"http://127.0.0.1:{b}/", f"127.0.0.1:{a}", method="POST"),
        "reverse POST A": direct(world.at["reverse-a"], method="POST"),
        "reverse POST B": direct(world.at["reverse-b"], f"127.0.0.1:{a}", method="POST"),
    }
    assert {check: granted(seen) for check, seen in results.items()} == {
        "POST A": {"port-a", "post-a"},
        "GET A": {"port-a"},
        "POST B": set(),
        "POST B as A": set(),
        "reverse POST A": {"port-a", "post-a"},
        "reverse POST B": set(),
    }
    world.assert_no_secret_in_output()


def test_ipv6_literals_match_as_addresses(world):
    if world.v6 is None:
        pytest.skip("no IPv6 loopback here")
    v6, proxy = world.v6.port, world.at["regular"]
    spellings = ["[::1]", "[0:0::1]", "[0000:0000:0000:0000:0000:0000:0000:0001]"]
    seen = {spelling: via_proxy(proxy, f"http://{spelling}:{v6}/", "api.example.com") for spelling in spellings}
    assert {spelling: granted(s) for spelling, s in seen.items()} == dict.fromkeys(spellings, {"v6"})
    world.assert_no_secret_in_output()


# -- one mitmdump each ----------------------------------------------------------------------------------------------


def test_http2_authority_inside_a_tunnel_is_not_the_destination(mitmdump, provider, world):
    """HTTP/2 carries the client's :authority in the request itself; the CONNECT target still decides."""
    provider.answer({"Authorization": TOKEN})
    # lazy: mitmproxy answers the client's TLS before dialing the (HTTP/1.1-only) upstream, so HTTP/2 is offered.
    m = mitmdump(
        "--set",
        f"header_provider_url={provider.url}",
        "--set",
        f"header_hosts=api.example.com,127.0.0.1:{world.t.port}",
        "--set",
        "ssl_insecure=true",
        "--set",
        "connection_strategy=lazy",
        "--set",
        "termlog_verbosity=debug",
    )
    m.wait_for("headers in use")
    ca = ("--cacert", str(m.confdir / "mitmproxy-ca-cert.pem"))
    authorization = {}
    for port in (world.t.port, world.t2.port):
        out = curl(
            "--http2",
            "-x",
            m.proxy,
            *ca,
            "-H",
            "Host: api.example.com",
            "-w",
            "\n%{http_version}",
            f"https://127.0.0.1:{port}/",
        )
        body, version = out.rsplit("\n", 1)
        assert version == "2"
        authorization[port] = [v for n, v in received(json.loads(body)) if n.lower() == "authorization"]
    assert authorization == {world.t.port: [TOKEN], world.t2.port: []}
    assert SECRET not in m.output


@pytest.fixture
def providers():
    """Start providers answering the given headers: `providers(headers)`; all are closed at the end of the test."""
    started: list[Provider] = []

    def start(headers: dict) -> Provider:
        provider = Provider()
        provider.answer(headers)
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.close()


@pytest.mark.parametrize(
    ("args", "entry", "message"),
    [
        ([], None, "header_hosts: required"),
        (["--set", "header_hosts= , "], None, "header_hosts: required"),
        ([], {"hosts": []}, "provider 1: hosts: required"),
    ],
)
def test_a_provider_with_neither_hosts_nor_scope_is_refused_at_start_up(
    mitmdump, providers, tmp_path, args, entry, message
):
    provider = providers({"Authorization": TOKEN})
    if entry is None:
        args = ["--set", f"header_provider_url={provider.url}", *args]
    else:
        path = tmp_path / "providers.json"
        path.write_text(json.dumps([{"url": provider.url, **entry}]))
        args = ["--set", f"header_providers_file={path}"]
    m = mitmdump(*args, wait_listening=False)
    assert m.wait_exit() != 0
    assert message in m.output
    assert provider.count == 0  # its credentials were never even fetched


def test_every_host_and_a_host_searching_scope_are_warned_about(mitmdump, providers, tmp_path, world):
    """`*` starts (with a warning) and gives the token everywhere. A `~d` scope starts with a warning naming
    header_hosts, and where hosts are also set they still bound it: a spoofed Host matches ~d, not the hosts."""
    a, b = world.a.port, world.b.port
    every = providers({"X-Token-every": f"{TOKEN}-every"})
    tilde_d = providers({"X-Token-tilde-d": f"{TOKEN}-tilde-d"})
    path = tmp_path / "providers.json"
    path.write_text(
        json.dumps([{"name": "tilde-d", "url": tilde_d.url, "hosts": f"127.0.0.1:{a}", "scope": "~d api.example.com"}])
    )
    m = mitmdump(
        "--set",
        f"header_provider_url={every.url}",
        "--set",
        "header_hosts=*",
        "--set",
        f"header_providers_file={path}",
        "--set",
        "termlog_verbosity=debug",
    )
    m.wait_for(r"header_hosts is \*: headers from \S+ go to every host")
    m.wait_for(r"header_scope '~d api\.example\.com' of tilde-d \(\S+\) uses ~d.*name the hosts with header_hosts")
    m.wait_for("headers in use: X-Token-every")
    m.wait_for("headers in use: X-Token-tilde-d")
    proxy = ("127.0.0.1", m.port)
    checks = {
        (f"http://127.0.0.1:{b}/", None): {"every"},
        (f"http://localhost:{b}/", None): {"every"},
        (f"http://127.0.0.1:{a}/", None): {"every"},
        (f"http://127.0.0.1:{a}/", "api.example.com"): {"every", "tilde-d"},
        (f"http://127.0.0.1:{b}/", "api.example.com"): {"every"},
    }
    assert {(url, host): granted(via_proxy(proxy, url, host)) for url, host in checks} == checks
    assert SECRET not in m.output


def console(proxy, command: str) -> tuple[int, str]:
    """Run a console command in the mitmdump through tests/console_set.py: (status, answer)."""
    conn = http.client.HTTPConnection(*proxy, timeout=10)
    try:
        conn.request("GET", "http://console.test/" + urllib.parse.quote(command))
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_emptying_the_hosts_at_runtime_is_refused(mitmdump, provider, world):
    a, b = world.a.port, world.b.port
    provider.answer({"Authorization": TOKEN})
    m = mitmdump(
        "--set",
        f"header_provider_url={provider.url}",
        "--set",
        f"header_hosts=127.0.0.1:{a}",
        "-s",
        str(ROOT / "tests" / "console_set.py"),
        "--set",
        "termlog_verbosity=debug",
    )
    m.wait_for("headers in use")
    proxy = ("127.0.0.1", m.port)

    def tokens(port: int, host: str | None = None) -> list[str]:
        seen = via_proxy(proxy, f"http://127.0.0.1:{port}/", host)
        return [value for name, value in received(seen) if name.lower() == "authorization"]

    for command in ['set header_hosts ""', "set header_hosts", 'set header_hosts " , "']:
        status, answer = console(proxy, command)
        assert (status, "header_hosts: required" in answer) == (400, True), (command, answer)
        assert (tokens(a), tokens(b), tokens(b, f"127.0.0.1:{a}")) == ([TOKEN], [], []), command
    # The same path takes a good value at once, so the refusals above are the addon's.
    assert console(proxy, f"set header_hosts 127.0.0.1:{b}")[0] == 200
    assert (tokens(a), tokens(b)) == ([], [TOKEN])
    assert SECRET not in m.output


def test_a_flow_rerouted_after_the_match_does_not_take_the_token_along(mitmdump, provider, world):
    a, b = world.a.port, world.b.port
    provider.answer({"Authorization": TOKEN})
    m = mitmdump(
        "--set",
        f"header_provider_url={provider.url}",
        "--set",
        f"header_hosts=127.0.0.1:{a}",
        "--map-remote",
        f"|//127.0.0.1:{a}/rerouted|//127.0.0.1:{b}/rerouted",
    )
    m.wait_for("headers in use")
    proxy = ("127.0.0.1", m.port)
    kept = via_proxy(proxy, f"http://127.0.0.1:{a}/kept")
    rerouted = via_proxy(proxy, f"http://127.0.0.1:{a}/rerouted")
    assert host_seen(rerouted) == f"127.0.0.1:{b}"  # map_remote did reroute it to upstream B
    assert [v for n, v in received(kept) if n.lower() == "authorization"] == [TOKEN]
    assert [v for n, v in received(rerouted) if n.lower() == "authorization"] == []
