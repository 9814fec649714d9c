"""Credentials per client, in a real mitmdump: proxyauth users from a bcrypt htpasswd file and client addresses pick
the entries whose headers a request gets (field `clients`); the proxy's own credentials never reach the upstream."""

import base64
import http.client
import json
import ssl
import subprocess

import bcrypt
import pytest
from echo_upstream import received
from servers import ROOT, clean_env
from test_admin import ADMIN, admin_client
from test_scoping_e2e import console

from header_augment_core.counters import REQUEST_OUTCOMES

USERS = {"alice": "alice-pass", "bob": "bob-pass", "carol": "carol-pass"}  # carol: named by no entry
# Entry name -> (its header, its clients).
ENTRIES = {
    "alice": ("X-Alice", ["alice"]),
    "bob": ("X-Bob", "bob"),
    "second-address": ("X-Two", ["127.0.0.2"]),
    "network": ("X-Net", ["127.0.1.0/24"]),
    "v6-net": ("X-Six", ["[fd00::]/8"]),
}
HEADERS = [header for header, _ in ENTRIES.values()]


@pytest.fixture
def gateway(mitmdump, upstream, tls_upstream, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for user, pw in USERS.items()
        )
    )
    entries = []
    for name, (header, clients) in ENTRIES.items():
        answer = tmp_path / f"{name}.json"
        answer.write_text(json.dumps({header: f"value-of-{name}"}))
        entries.append(
            {
                "name": name,
                "path": str(answer),
                "hosts": [f"127.0.0.1:{upstream.port}", f"127.0.0.1:{tls_upstream.port}"],
                "clients": clients,
            }
        )
    providers = tmp_path / "providers.json"
    providers.write_text(json.dumps(entries))
    m = mitmdump(
        "--set",
        f"proxyauth=@{htpasswd}",
        "--set",
        f"header_providers_file={providers}",
        "--set",
        "header_require=true",
        "--set",
        "ssl_insecure=true",
        "-s",
        str(ROOT / "tests" / "console_set.py"),
        *ADMIN,
    )
    for name in ENTRIES:
        m.wait_for(rf"provider {name} .*headers in use")
    return m


def curl(m, upstream, *args: str) -> tuple[int, list[tuple[str, str]]]:
    """Status and the headers the upstream received (none when the proxy answered itself)."""
    out = subprocess.run(
        ["curl", "-sS", "-k", "--noproxy", "", "-x", m.proxy, "-w", "\n%{http_code}", *args, f"{upstream.url}/"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    assert status in ("200", "407"), out
    return int(status), received(json.loads(body)) if status == "200" else []


def ours(seen: list[tuple[str, str]]) -> dict[str, str]:
    return {name: value for name, value in seen if name in HEADERS}


def test_each_client_gets_only_its_own_entries_headers(gateway, upstream, tls_upstream):
    for user, entry in (("alice", "alice"), ("bob", "bob")):
        status, seen = curl(gateway, upstream, "-U", f"{user}:{USERS[user]}")
        assert status == 200
        assert ours(seen) == {ENTRIES[entry][0]: f"value-of-{entry}"}
        assert not [name for name, _ in seen if name.lower() == "proxy-authorization"]
    status, seen = curl(gateway, upstream, "-U", "carol:carol-pass")
    assert status == 200 and ours(seen) == {}  # authenticated, but no entry names carol
    assert curl(gateway, upstream)[0] == 407  # no credentials: mitmproxy's proxyauth answers
    assert curl(gateway, upstream, "-U", "alice:wrong")[0] == 407
    status, seen = curl(gateway, upstream, "-U", "carol:carol-pass", "--interface", "127.0.0.2")
    assert status == 200 and ours(seen) == {"X-Two": "value-of-second-address"}
    status, seen = curl(gateway, upstream, "-U", "alice:alice-pass", "--interface", "127.0.1.9")
    assert status == 200 and ours(seen) == {"X-Alice": "value-of-alice", "X-Net": "value-of-network"}

    # Through a CONNECT tunnel proxyauth authenticates the CONNECT, and the requests inside are that user's.
    status, seen = curl(gateway, tls_upstream, "-U", "bob:bob-pass")
    assert status == 200 and ours(seen) == {"X-Bob": "value-of-bob"}
    assert not [name for name, _ in seen if name.lower() == "proxy-authorization"]

    with admin_client(gateway) as admin:
        providers = admin.get("/status").json()["providers"]
    counts = {p["name"]: {c.attribute: p["requests"][c.attribute] for c in REQUEST_OUTCOMES} for p in providers}
    assert counts["alice"] == {"given": 2, "out_of_scope": 4, "refused": 0, "without": 0}
    assert counts["network"] == {"given": 1, "out_of_scope": 5, "refused": 0, "without": 0}
    assert counts["v6-net"] == {"given": 0, "out_of_scope": 6, "refused": 0, "without": 0}
    for password in USERS.values():
        assert password not in gateway.output


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()


def tunnel(m, upstream, user: str) -> http.client.HTTPSConnection:
    """A CONNECT tunnel as `user`, kept open: proxyauth authenticates the CONNECT alone."""
    conn = http.client.HTTPSConnection("127.0.0.1", m.port, timeout=10, context=ssl._create_unverified_context())
    conn.set_tunnel("127.0.0.1", upstream.port, headers={"Proxy-Authorization": basic(user)})
    return conn


def get(conn: http.client.HTTPSConnection, **headers: str) -> tuple[int, list[tuple[str, str]]]:
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    body = response.read()
    return response.status, received(json.loads(body)) if response.status == 200 else []


def test_a_user_revoked_at_runtime_gets_nothing_on_the_tunnel_she_has_open(gateway, upstream, tls_upstream, tmp_path):
    alice = tunnel(gateway, tls_upstream, "alice")
    bob = tunnel(gateway, tls_upstream, "bob")
    # A Proxy-Authorization inside the tunnel is not proxyauth's (it reads the CONNECT's): it never goes upstream.
    status, seen = get(alice, **{"Proxy-Authorization": basic("bob")})
    assert status == 200 and ours(seen) == {"X-Alice": "value-of-alice"}
    assert [name for name, _ in seen if name.lower() == "proxy-authorization"] == []
    assert ours(get(bob)[1]) == {"X-Bob": "value-of-bob"}

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        "".join(line + "\n" for line in htpasswd.read_text().splitlines() if line.split(":")[0] != "alice")
    )
    assert console(("127.0.0.1", gateway.port), f"set proxyauth=@{htpasswd}")[0] == 200

    # proxyauth still lets the open tunnels through, but a user authenticated before the change is nobody now:
    # bob's too, until he connects again (proxyauth does not check a tunnel's user a second time).
    status, seen = get(alice)
    assert status == 200 and ours(seen) == {}
    assert ours(get(bob)[1]) == {}
    assert curl(gateway, upstream, "-U", "alice:alice-pass")[0] == 407
    status, seen = curl(gateway, tls_upstream, "-U", "bob:bob-pass")
    assert status == 200 and ours(seen) == {"X-Bob": "value-of-bob"}
    assert ours(get(tunnel(gateway, tls_upstream, "bob"))[1]) == {"X-Bob": "value-of-bob"}
    alice.close()
    bob.close()
