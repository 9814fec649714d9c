"""Deny by default end to end: one real mitmdump for the module (header_egress deny from a providers file, two
proxyauth users, a SOCKS5 listener beside the HTTP one, the audit log), real clients (curl) and upstreams on
127.0.0.1 that count the connections they accept: whatever is refused, its upstream sees nothing."""

import http.server
import json
import os
import ssl
import stat
import subprocess
import threading

import bcrypt
import echo_upstream
import pytest
from echo_upstream import received
from helpers.ports import free_port
from servers import ROOT, Mitmdump, clean_env, serve_in_background, wait_until
from test_admin import ADMIN, admin_client, metrics, sample
from test_scoping_e2e import console

USERS = {"alice": "alice-pass", "bob": "bob-pass"}
TOKEN = "Bearer named-t0ken-never-logged"


class Counted:
    """The echo upstream (behind TLS if given a context), counting the TCP connections it accepts."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        counted = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, address = self.socket.accept()
                with counted._lock:
                    counted.accepted += 1
                return (sock if context is None else context.wrap_socket(sock, server_side=True)), address

        self.server = Server(("127.0.0.1", 0), echo_upstream.EchoHandler)
        self.port = self.server.server_address[1]
        serve_in_background(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    """The module's proxy and its upstreams: `named` (an entry names it), `tls_named`, `allowed` (every client,
    header_egress_allow), `alices` (an allow rule for alice), `name_only` (a rule for localhost:port, no address
    rule: localhost resolves to loopback), `denied` and `tls_denied` (nothing names them); `dead`: a port an entry
    names where nothing listens; `tls_by_name`: an entry names localhost:port, and header_egress_allow its address."""

    def __init__(self, tmp, tls_files) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_files / "cert-combined.pem")
        self.upstreams = {
            name: Counted(context if name.startswith("tls_") else None)
            for name in ("named", "tls_named", "tls_by_name", "allowed", "alices", "name_only", "denied", "tls_denied")
        }
        for name, upstream in self.upstreams.items():
            setattr(self, name, upstream)
        self.dead = free_port()
        htpasswd = tmp / "htpasswd"
        htpasswd.write_text(
            "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in USERS.items())
        )
        (tmp / "named.json").write_text(json.dumps({"Authorization": TOKEN}))
        at = "127.0.0.1"
        named_hosts = [f"{at}:{self.named.port}", f"{at}:{self.tls_named.port}", f"{at}:{self.dead}"]
        named_hosts.append(f"localhost:{self.tls_by_name.port}")
        providers = tmp / "providers.yaml"
        providers.write_text(
            f"""
providers:
  - name: named
    path: {tmp / "named.json"}
    hosts: {json.dumps(named_hosts)}
egress:
  default: deny
  allow:
    - hosts: ["{at}:{self.alices.port}"]
      clients: [alice]
    - hosts: ["localhost:{self.name_only.port}", "localhost:{self.allowed.port}"]
"""
        )
        self.audit = tmp / "audit" / "audit.log"
        self.marks = 0
        self.audit.parent.mkdir()
        self.socks_port = free_port()
        self.proxy = Mitmdump(
            tmp / "confdir",
            *("--mode", "regular", "--mode", f"socks5@{self.socks_port}"),
            *("--set", f"proxyauth=@{htpasswd}"),
            *("--set", f"header_providers_file={providers}"),
            *("--set", f"header_egress_allow={at}:{self.allowed.port},{at}:{self.tls_by_name.port}"),
            *("--set", f"header_audit_log={self.audit}"),
            *("--set", "ssl_insecure=true"),
            *ADMIN,
        )
        # Both listeners log "... proxy listening at": the fixture's pattern may have found either.
        self.proxy.port = int(self.proxy.wait_for(r"HTTP\(S\) proxy listening at 127\.0\.0\.1:(\d+)").group(1))
        self.proxy.wait_for(r"provider named .*headers in use")

    def curl(self, url: str, user: str | None = None, *args: str, socks: bool = False) -> tuple[int, int, str]:
        """(status, the CONNECT's status (0: none), body) of curl through the proxy, as `user`."""
        auth = f"{user}:{USERS[user]}" if user else ""
        if socks:
            proxy = [
                "-x",
                f"socks5h://{auth}@127.0.0.1:{self.socks_port}" if auth else f"socks5h://127.0.0.1:{self.socks_port}",
            ]
        else:
            proxy = ["-x", self.proxy.proxy, *(["-U", auth] if auth else [])]
        out = subprocess.run(
            ["curl", "-sS", "-k", "--noproxy", "", *proxy, "-w", "\n%{http_code} %{http_connect}", *args, url],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
        ).stdout
        body, _, codes = out.rpartition("\n")
        status, connect = codes.split()
        return int(status), int(connect), body

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []

    def written(self) -> int:
        """How many lines the audit log holds once every flow before now has been written: the writer keeps the
        order of the flows' ends, so once a denied request to a host of its own is there, all before it are."""
        self.marks += 1
        host = f"mark-{self.marks}.example"
        assert self.curl(f"http://{host}/", "alice")[0] == 403
        lines = wait_until(lambda: [line["host"] for line in self.lines()].count(host) and self.lines())
        return [line["host"] for line in lines].index(host) + 1

    def close(self) -> None:
        self.proxy.stop()
        for upstream in self.upstreams.values():
            upstream.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tls_files):
    made = World(tmp_path_factory.mktemp("egress"), tls_files)
    yield made
    made.close()


def url(upstream: Counted, host: str = "127.0.0.1", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{upstream.port}/"


def test_named_and_allowed_hosts_pass_and_another_is_answered_403_with_nothing_sent(world):
    status, _, body = world.curl(url(world.named), "alice")
    assert status == 200 and dict(received(json.loads(body)))["Authorization"] == TOKEN
    assert world.curl(url(world.allowed), "bob")[0] == 200  # an address rule: header_egress_allow
    assert world.curl(url(world.allowed, "localhost"), "bob")[0] == 200  # the name, and its address
    status, _, body = world.curl(url(world.denied), "alice")
    assert status == 403 and body.splitlines()[0].startswith(f"header-augment: denied 127.0.0.1:{world.denied.port}")
    # An IP literal needs an address rule: localhost:port names the name only.
    assert world.curl(url(world.name_only), "alice")[0] == 403
    assert world.denied.accepted == 0 and world.name_only.accepted == 0


def test_a_connect_to_a_denied_host_is_answered_403_before_any_connection(world):
    status, connect, _ = world.curl(url(world.tls_denied, scheme="https"), "alice")
    assert (status, connect) == (0, 403)  # no request was ever sent in a tunnel
    _, connect, _ = world.curl("https://denied.example/", "bob")  # never resolved, never connected to
    assert connect == 403
    assert world.tls_denied.accepted == 0
    status, connect, body = world.curl(url(world.tls_named, scheme="https"), "bob")
    assert (status, connect) == (200, 200) and dict(received(json.loads(body)))["Authorization"] == TOKEN


def test_a_tunnel_to_an_allowed_name_connects_to_the_address_checked_and_keeps_the_name(world):
    """localhost is resolved and checked by the proxy, which connects to that address; the requests inside the
    tunnel are still for localhost (the entry names the name, not the address), and share its one connection."""
    target = url(world.tls_by_name, "localhost", "https")
    before = world.tls_by_name.accepted
    out = subprocess.run(
        ["curl", "-sS", "-k", "--noproxy", "", "-x", world.proxy.proxy, "-U", "bob:bob-pass", target, target],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    ).stdout
    answers = [json.loads(line) for line in out.splitlines()]
    assert [dict(received(answer))["Authorization"] for answer in answers] == [TOKEN, TOKEN]
    assert world.tls_by_name.accepted == before + 1


def test_allow_rules_are_per_client(world):
    assert world.curl(url(world.alices), "alice")[0] == 200
    assert world.curl(url(world.alices), "bob")[0] == 403
    assert world.curl(url(world.alices, scheme="https"), "bob")[1] == 403  # the CONNECT too
    assert world.alices.accepted == 1


def test_a_name_allowed_whose_address_is_not_is_refused_at_the_connection(world):
    status, _, _ = world.curl(url(world.name_only, "localhost"), "alice")
    assert status == 502 and world.name_only.accepted == 0
    with admin_client(world.proxy) as admin:
        assert sample(metrics(admin), "header_augment_denied_total", reason="address") >= 1
        egress = admin.get("/status").json()["egress"]
    assert egress["mode"] == "deny" and egress["denied"]["address"] >= 1 and egress["denied"]["host"] >= 1


def test_socks5_is_decided_at_the_connection(world):
    assert world.curl(url(world.allowed), "bob", socks=True)[0] == 200
    assert world.curl(url(world.alices), "alice", socks=True)[0] == 200
    before = (world.denied.accepted, world.alices.accepted)
    assert world.curl(url(world.denied), "alice", socks=True)[0] == 0  # the SOCKS handshake fails
    assert world.curl(url(world.alices), "bob", socks=True)[0] == 0
    assert (world.denied.accepted, world.alices.accepted) == before


def test_each_flow_is_audited_once_with_its_fields_and_no_value(world):
    mark = world.written()
    assert world.curl(url(world.named) + "v1?key=query-s3cret", "alice")[0] == 200
    assert world.curl(url(world.denied), "bob")[0] == 403
    assert world.curl(url(world.tls_denied, scheme="https"), "bob")[1] == 403
    assert world.curl(f"http://127.0.0.1:{world.dead}/", "alice")[0] == 502
    assert world.curl(url(world.allowed), "alice")[0] == 200  # nothing of ours, nothing denied: no line
    found = wait_until(lambda: len(lines := world.lines()) >= mark + 4 and lines)[mark:]
    ports = {world.named.port: "added", world.denied.port: "denied", world.tls_denied.port: "denied"}
    ports[world.dead] = "failed"
    assert sorted((line["port"], line["action"]) for line in found) == sorted(ports.items())
    added = next(line for line in found if line["action"] == "added")
    assert added["client"] == {"address": "127.0.0.1", "user": "alice"} and added["path"] == "/v1"
    assert (added["provider"], added["headers"], added["status"]) == ("named", ["Authorization"], 200)
    connect = next(line for line in found if line["port"] == world.tls_denied.port)
    assert (connect["method"], connect["status"], connect["reason"]) == ("CONNECT", 403, "host")
    assert connect["scheme"] is None and connect["path"] is None  # a CONNECT has neither
    failed = next(line for line in found if line["action"] == "failed")
    assert failed["credential"] == added["credential"] and failed["status"] is None
    text = world.audit.read_text()
    assert "named-t0ken" not in text and "query-s3cret" not in text
    assert not any(password in text for password in USERS.values())
    assert stat.S_IMODE(os.stat(world.audit).st_mode) == 0o600
    # logrotate renames the file: the next line starts a new one
    world.audit.rename(world.audit.with_name("audit.log.1"))
    assert world.curl(url(world.named), "bob")[0] == 200
    (line,) = wait_until(lambda: world.lines())
    assert (line["action"], line["client"]["user"]) == ("added", "bob")


# -- report, then pass, in a proxy of their own ---------------------------------------------------------------------


def test_report_lets_through_and_audits_what_deny_would_refuse_and_pass_is_todays_behaviour(tmp_path):
    upstream = Counted()
    audit = tmp_path / "audit.log"
    m = Mitmdump(
        tmp_path / "confdir",
        *("--set", "header_egress=report", "--set", "header_egress_allow=console.test"),
        *("--set", f"header_audit_log={audit}"),
        *("-s", str(ROOT / "tests" / "console_set.py")),
        *ADMIN,
    )
    try:
        proxy = ("127.0.0.1", m.port)
        status, body = _get(m, upstream)
        assert status == 200 and upstream.accepted == 1
        (line,) = wait_until(lambda: audit.read_text().splitlines())
        assert json.loads(line)["action"] == "reported" and json.loads(line)["status"] == 200
        assert console(proxy, "set header_egress=pass")[0] == 200
        assert _get(m, upstream)[0] == 200 and upstream.accepted == 2
        assert (
            "denied 127.0.0.1" not in m.output
            and "reported" not in console(proxy, "augment.status")[1].split("reported (")[0]
        )
        assert len(audit.read_text().splitlines()) == 1  # nothing of ours, nothing reported: no line
    finally:
        m.stop()
        upstream.close()


def _get(m: Mitmdump, upstream: Counted) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "-x", m.proxy, "-w", "\n%{http_code}", url(upstream)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


# -- header_audit_require ------------------------------------------------------------------------------------------


def test_audit_require_answers_503_while_the_log_cannot_be_written_and_recovers(mitmdump, upstream, tmp_path):
    (tmp_path / "token.json").write_text(json.dumps({"Authorization": TOKEN}))
    logs = tmp_path / "logs"
    logs.mkdir()
    m = mitmdump(
        *("--set", f"header_provider_file={tmp_path / 'token.json'}"),
        *("--set", f"header_hosts=127.0.0.1:{upstream.port}"),
        *("--set", f"header_audit_log={logs / 'audit.log'}", "--set", "header_audit_require=true"),
    )
    m.wait_for("headers in use: Authorization")
    assert _get(m, upstream)[0] == 200
    # Tests run as root, whom no mode keeps out of a directory: the log's directory is replaced by a file.
    logs.rename(tmp_path / "logs.old")
    logs.write_text("")
    status, body = wait_until(lambda: (got := _get(m, upstream))[0] == 503 and got)
    assert body.startswith("header-augment: the audit log cannot be written")
    logs.unlink()
    logs.mkdir()
    wait_until(lambda: _get(m, upstream)[0] == 200)
    log = logs / "audit.log"
    wait_until(
        lambda: log.exists() and "added" in [json.loads(line)["action"] for line in log.read_text().splitlines()]
    )


def test_an_unwritable_audit_log_at_start_up_stops_mitmdump_naming_the_option(mitmdump, tmp_path):
    (tmp_path / "file").write_text("")
    m = mitmdump("--set", f"header_audit_log={tmp_path / 'file' / 'audit.log'}", wait_listening=False)
    assert m.wait_exit() == 1
    assert "header_audit_log: cannot open" in m.output
