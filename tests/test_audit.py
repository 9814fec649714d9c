"""The audit log (header_audit_log, header_audit_require), in-process: each action once per flow with its fields, the
file's mode, no value ever in it, logrotate's rename, the fingerprint, a full queue, and requests refused while the
log cannot be written."""

import asyncio
import json
import os
import stat

import header_augment
import pytest
from mitmproxy import connection, exceptions, flow, http
from mitmproxy.addons import proxyauth
from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.test import taddons, tflow
from servers import wait_until
from test_addon import VALID, give, make_flow

from header_augment_core.audit import ACTIONS, AuditLog, Line, fingerprint, new_key
from header_augment_core.counters import AUDIT_COUNTERS, AddonCounters
from header_augment_core.status import status

TOKEN = "Bearer s3cret-t0ken-never-written"
OTHER = "Bearer 0ther-t0ken-never-written"
FIELDS = ("ts", "action", "provider", "client", "method", "scheme", "host", "port", "path", "headers", "status")
FIELDS += ("reason", "credential")


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_lines(path, n: int) -> list[dict]:
    return wait_until(lambda: len(found := lines(path)) >= n and found, what=f"{n} audit lines in {path}")


class Proxy:
    def __init__(self, tctx, addon, log) -> None:
        self.tctx, self.addon, self.log = tctx, addon, log

    def configure(self, **options) -> None:
        self.tctx.configure(self.addon, **options)

    def flow(self, host="api.example.com", path="/v1/items?key=query-s3cret", user=None, status=200, **kw):
        """A flow through the hooks as mitmproxy calls them: the request's, the guard's, then its answer's."""
        f = make_flow(host=host)
        f.request.path = path
        f.client_conn.peername = ("192.0.2.1", 50000)
        if user is not None:
            f.metadata["proxyauth"] = (user, "its-password")
        for name, value in kw.items():
            setattr(f.request, name, value)
        addon = self.addon
        for hook in (addon.requestheaders, addon.check_reroute):
            if (pending := hook(f)) is not None:
                asyncio.run(pending)
        if f.response is None and status is not None:
            f.response = http.Response.make(status, b"ok")
        if f.response is not None:
            addon.responseheaders(f)
            if (pending := addon.response(f)) is not None:
                asyncio.run(pending)
        else:
            f.error = flow.Error("Connection refused")
            addon.error(f)
        return f


@pytest.fixture
def proxy(tmp_path):
    addon = header_augment.HeaderAugment()
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    with taddons.context(proxyauth.ProxyAuth(), addon) as tctx:
        tctx.configure(tctx.master.addons.get("proxyauth"), proxyauth="alice:pw")
        tctx.configure(addon, **VALID, header_audit_log=str(log))
        give(addon, ("Authorization", TOKEN), ("X-Tenant", "acme"))
        yield Proxy(tctx, addon, log)
        addon.done()


def test_a_flow_with_our_credential_gets_one_line_with_its_fields(proxy):
    f = proxy.flow(user="alice")
    proxy.addon.response(f)  # a hook called again for the same flow writes nothing more
    proxy.flow(host="elsewhere.example")  # nothing of ours: no line
    (line,) = wait_lines(proxy.log, 1)
    assert tuple(line) == FIELDS
    assert line["action"] == "added" and line["provider"] == "http://127.0.0.1:9/headers"
    assert line["client"] == {"address": "192.0.2.1", "user": "alice"}
    assert (line["method"], line["scheme"], line["host"], line["port"]) == ("GET", "http", "api.example.com", 22)
    assert line["path"] == "/v1/items"  # never the query
    assert line["headers"] == ["Authorization", "X-Tenant"] and line["status"] == 200 and line["reason"] is None
    assert len(line["credential"]) == 16 and int(line["credential"], 16) >= 0
    assert line["ts"].endswith("Z") and len(line["ts"]) == len("2026-03-01T12:00:00.123Z")
    text = proxy.log.read_text()
    for secret in ("s3cret-t0ken", "query-s3cret", "acme", "its-password"):
        assert secret not in text
    assert stat.S_IMODE(os.stat(proxy.log).st_mode) == 0o600
    assert proxy.addon._path.counts.audit_written == 1


def test_each_action_once_per_flow(proxy, tmp_path, monkeypatch):
    # denied and reported: the egress policy
    proxy.configure(header_egress="deny")
    proxy.flow(host="elsewhere.example")
    connect = make_flow(host="tunnel.example")
    connect.request.method = "CONNECT"
    proxy.addon.http_connect(connect)
    proxy.addon.http_connect_error(connect)  # what mitmproxy calls once it has sent the 403
    proxy.configure(header_egress="report")
    proxy.flow(host="elsewhere.example")
    # refused: require, and the credential expired
    proxy.configure(header_egress="pass", header_require=True)
    give(proxy.addon, ("Authorization", TOKEN), max_stale=1, at=0)
    proxy.flow()
    # failed: it carried our credential, and the upstream never answered
    proxy.configure(header_require=False)
    give(proxy.addon, ("Authorization", TOKEN))
    proxy.flow(status=None)
    # signed: aws-sigv4, with the key parts fingerprinted
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY000001",
        "AWS_SECRET_ACCESS_KEY": "aws-s3cret-never-written",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    aws = tmp_path / "aws.yaml"
    aws.write_text("- {kind: aws-sigv4, service: s3, region: eu-west-1, hosts: '*.s3.eu-west-1.amazonaws.com'}\n")
    proxy.configure(header_providers_file=str(aws))
    proxy.addon.bindings[1].refresher.refresh()
    proxy.flow(host="b.s3.eu-west-1.amazonaws.com", path="/report.csv?uploadId=x")
    # a connection refused before any request: socks5, nothing names it
    proxy.configure(header_egress="deny", header_providers_file="")
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("socks5")
    data = server_hooks.ServerConnectionHookData(server=connection.Server(address=("203.0.113.9", 22)), client=client)
    assert proxy.addon.server_connect(data) is None and data.server.error

    found = wait_lines(proxy.log, 7)
    assert [(line["action"], line["status"], line["reason"]) for line in found] == [
        ("denied", 403, "host"),
        ("denied", 403, "host"),
        ("reported", 200, "host"),
        ("refused", 503, "the provider's headers expired (header_require is set)"),
        ("failed", None, None),
        ("signed", 200, None),
        ("denied", None, "host"),
    ]
    assert (found[1]["method"], found[1]["host"]) == ("CONNECT", "tunnel.example")
    assert found[3]["provider"] == "http://127.0.0.1:9/headers" and found[3]["credential"] is None
    assert found[5]["headers"] == ["authorization"] and found[5]["credential"] is not None
    assert (found[6]["method"], found[6]["path"], found[6]["port"]) == (None, None, 22)
    assert {line["action"] for line in found} == set(ACTIONS) - {"added", "substituted"}
    text = proxy.log.read_text()
    assert "s3cret" not in text and "uploadId" not in text


def test_the_fingerprint_is_equal_for_equal_credentials_only(proxy):
    proxy.flow()
    proxy.flow()
    give(proxy.addon, ("Authorization", OTHER), ("X-Tenant", "acme"))
    proxy.flow()
    first, second, third = (line["credential"] for line in wait_lines(proxy.log, 3))
    assert first == second != third
    key = new_key()
    fields = ((b"Authorization", b"x"),)
    assert fingerprint(key, (fields,)) == fingerprint(key, (fields,)) != fingerprint(new_key(), (fields,))


def test_a_renamed_log_is_followed_by_a_new_file(proxy):
    proxy.flow()
    wait_lines(proxy.log, 1)
    rotated = proxy.log.with_name("audit.log.1")
    proxy.log.rename(rotated)  # what logrotate does, before it signals nothing: the next line makes a new file
    proxy.flow()
    (line,) = wait_lines(proxy.log, 1)
    assert line["action"] == "added" and len(lines(rotated)) == 1
    assert stat.S_IMODE(os.stat(proxy.log).st_mode) == 0o600


def test_a_full_queue_drops_and_counts(tmp_path):
    counters = AddonCounters()
    log = AuditLog(str(tmp_path / "audit.log"), counters, new_key(), queue_size=1)
    try:
        with log._file.lock:  # the writer's thread is held in its handler: nothing is written meanwhile
            log.put(Line("denied", "a.example", 443, None, None, reason="host"))
            wait_until(log._queue.empty, what="the writer to take the first line")
            log.put(Line("denied", "b.example", 443, None, None, reason="host"))  # fills the queue
            log.put(Line("denied", "c.example", 443, None, None, reason="host"))  # dropped
            assert counters.audit_dropped == 1
        wait_until(lambda: counters.audit_written == 2, what="two lines written")
    finally:
        log.close()
    assert [line["host"] for line in lines(tmp_path / "audit.log")] == ["a.example", "b.example"]


def test_an_unwritable_log_is_the_options_error(tmp_path):
    addon = header_augment.HeaderAugment()
    (tmp_path / "file").write_text("")
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"^header_audit_log: cannot open .*file/audit\.log"):
            tctx.configure(addon, header_audit_log=str(tmp_path / "file" / "audit.log"))
        assert addon._path.audit is None
        addon.done()


def test_require_refuses_credentials_while_the_log_cannot_be_written_and_recovers(proxy):
    proxy.configure(header_audit_require=True)
    audit = proxy.addon._path.audit
    assert proxy.flow().response.status_code == 200
    wait_lines(proxy.log, 1)
    # As root no mode keeps a directory from being written: the log's directory is replaced by a file.
    directory = proxy.log.parent
    directory.rename(directory.with_name("logs.old"))
    directory.write_text("")
    audit.probe()  # the ticker's, each second
    wait_until(lambda: not audit.writable, what="the log found unwritable")
    refused = proxy.flow()
    assert refused.response.status_code == 503 and refused.response.content.startswith(b"header-augment: the audit")
    assert "Authorization" not in refused.request.headers  # what was added is taken out
    assert proxy.flow(host="elsewhere.example").response.status_code == 200  # no credential: it goes out
    counts = proxy.addon._path.counts
    assert counts.audit_refused == 1
    wait_until(lambda: counts.audit_failed >= 1, what="the refusal's own line found unwritable")  # on the writer
    report = status(proxy.addon.bindings, 0.0, proxy.addon._path)["audit"]
    assert report["writable"] is False and report["require"] is True
    assert {c.attribute for c in AUDIT_COUNTERS} <= set(report)
    directory.unlink()
    directory.mkdir()
    audit.probe()
    wait_until(lambda: audit.writable, what="the log writable again")
    assert proxy.flow().response.status_code == 200
    assert [line["action"] for line in wait_lines(proxy.log, 1)] == ["added"]


def test_status_and_report_show_the_policy_and_the_log(proxy):
    proxy.configure(header_egress="deny", header_egress_allow=["pypi.org", "10.0.0.0/8"])
    proxy.flow(host="elsewhere.example")
    shown = status(proxy.addon.bindings, 0.0, proxy.addon._path)
    assert shown["egress"]["mode"] == "deny" and shown["egress"]["denied"] == {"host": 1, "address": 0}
    assert shown["egress"]["allow"] == [
        {"label": "header_egress_allow", "hosts": ["pypi.org", "10.0.0.0/8"], "clients": []}
    ]
    assert shown["audit"]["log"] == str(proxy.log)
    assert "egress: deny; audit log: " in proxy.addon.status()


def test_a_request_whose_connection_was_refused_has_that_line_only(proxy):
    """The address check refuses the connection in server_connect, which writes the line; the request then fails
    with the error it was given. Another request's error that merely holds the same words is a failure."""

    async def loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    proxy.addon._path.resolve = loopback
    proxy.configure(header_egress="deny")
    f = make_flow(host="api.example.com")
    f.client_conn.peername = ("192.0.2.1", 50000)
    proxy.addon.requestheaders(f)
    proxy.addon.check_reroute(f)
    assert f.request.headers["Authorization"] == TOKEN  # named by the entry: it goes on to connect
    server = connection.Server(address=(f.request.host, f.request.port))
    asyncio.run(proxy.addon.server_connect(server_hooks.ServerConnectionHookData(server=server, client=f.client_conn)))
    f.error = flow.Error(f"Connection killed: {server.error}")  # what mitmproxy makes of the server's error
    proxy.addon.error(f)
    other = make_flow(host="api.example.com")
    other.client_conn.peername = ("192.0.2.99", 50000)
    proxy.addon.requestheaders(other)
    proxy.addon.check_reroute(other)
    other.error = flow.Error(f"Certificate verify failed: {server.error}")  # a name the upstream chose
    proxy.addon.error(other)
    proxy.flow(host="last.example")  # denied: its line comes after every line of the two above
    denied, failed, last = wait_lines(proxy.log, 3)
    assert (denied["action"], denied["reason"], denied["method"]) == ("denied", "address", None)
    assert (failed["action"], failed["client"]["address"]) == ("failed", "192.0.2.99")
    assert (last["action"], last["host"]) == ("denied", "last.example")
