"""Kinds `file` and `command`: their settings, the content formats, the clients against real files and real child
processes, and the refresher driving them with an injected clock."""

import datetime
import json
import math
import os
import re
import shutil
import threading
import time
import types

import header_augment
import pytest
from helpers.support import (
    CREDENTIAL,
    HANG,
    LEAVE_CHILD,
    NO_EXP,
    atomic_write,
    exec_credential,
    jwt,
    kubelet_volume,
    pid_lines,
    processes,
    zombie_children,
)
from helpers.waiting import DEADLINE
from mitmproxy import exceptions
from mitmproxy.test import taddons

from header_augment_core.counters import RequestCounters
from header_augment_core.failures import Failed
from header_augment_core.fields import ONE_SOURCE, SettingsError, shown
from header_augment_core.formats import read
from header_augment_core.kinds import KINDS
from header_augment_core.kinds.command import KUBERNETES_EXEC_INFO, CommandSource
from header_augment_core.kinds.file import FileSource
from header_augment_core.options import LOCATORS
from header_augment_core.providers_file import load_providers_file
from header_augment_core.refresher import Refresher
from header_augment_core.settings import parse_settings
from header_augment_core.status import provider_status

MiB = 1024 * 1024


def settings(**values):
    return parse_settings({"hosts": "*", **values}, str)


def client(**values):
    s = settings(**values)
    return s.source.client(s.timeout)


def headers(result):
    assert result.ok, result.reason
    return dict(result.answer.headers)


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


# -- settings ------------------------------------------------------------------------------------------------------


def test_kinds_and_their_locator_options():
    assert KINDS["file"] is FileSource and KINDS["command"] is CommandSource
    assert {option: kind.KIND for option, kind in LOCATORS.items()} == {
        "header_provider_url": "http",
        "header_provider_file": "file",
        "header_provider_command": "command",
        "header_aws_service": "aws-sigv4",
    }
    assert ONE_SOURCE == f"One of {', '.join(LOCATORS)}."  # the sentence each of their helps ends with


def test_defaults_and_display(tmp_path):
    file = settings(path=str(tmp_path / "headers.json"))
    assert (file.kind, file.source.format, file.timeout, file.label) == ("file", "headers", 5.0, file.source.path)
    command = settings(command=[CREDENTIAL, "token", "arg-s3cret"])
    assert (command.kind, command.source.format, command.timeout) == ("command", "token", 30.0)
    assert command.label == "command credential.py"
    assert settings(command=[CREDENTIAL], timeout="2s").timeout == 2.0  # the kind's default only when not given


@pytest.mark.parametrize(
    "given",
    [
        {"header_provider_url": "http://127.0.0.1:9/", "header_provider_file": "/tmp/h.json"},
        {"header_provider_file": "/tmp/h.json", "header_provider_command": CREDENTIAL},
        {
            "header_provider_url": "http://127.0.0.1:9/",
            "header_provider_file": "/tmp/h.json",
            "header_provider_command": CREDENTIAL,
        },
    ],
)
def test_exactly_one_locator_option(given):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(addon, header_hosts=["*"], **given)
    message = str(e.value)
    assert all(name in message.split(" set:")[0] for name in given), message
    assert message.endswith(
        "give one of header_provider_url, header_provider_file, header_provider_command, header_aws_service"
    )


def test_command_option_is_split_like_a_shell_and_never_shown():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_hosts=["*"], header_provider_command=f'{CREDENTIAL} token \'a b\' "c\\"d" e\\ f')
        assert addon.bindings[0].settings.source.command == (CREDENTIAL, "token", "a b", 'c"d', "e f")
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(addon, header_provider_command=f"{CREDENTIAL} token 'unclosed-s3cret")
        assert str(e.value) == "header_provider_command: No closing quotation"
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(addon, header_provider_command="no-such-program-zz arg-s3cret")
        assert str(e.value) == "header_provider_command: 'no-such-program-zz' is not found on PATH"
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(addon, header_provider_command="   ")
        assert str(e.value).startswith("header_provider_command: expected a non-empty list")


def test_providers_file_command_entries(tmp_path):
    not_executable = tmp_path / "helper"
    not_executable.write_text("#!/bin/sh\necho tok\n")
    cases = {
        f"command: {CREDENTIAL} token arg-s3cret": "command: a string is not accepted here: list the program",
        "command: []\n    kind: command": "command: expected a non-empty list",
        f"command: [{CREDENTIAL}, 42]": "command: item 2 is not a string (quote it)",
        "command: [no-such-program-zz, arg-s3cret]": "command: 'no-such-program-zz' is not found on PATH",
        f"command: [{not_executable}, arg-s3cret]": f"command: {shown(str(not_executable))} is not an executable file",
        f"command: [{tmp_path}]": f"command: {shown(str(tmp_path))} is not an executable file",
        f"command: [{CREDENTIAL}]\n    format: headers\n    prefix: ''": "prefix: only with format token",
        "kind: file": "path: required for kind file",
        f"path: {tmp_path}/h.json\n    header: X-Token": "header: only with format token",
        f"path: {tmp_path}/h.json\n    format: yaml": "format: 'yaml' is not accepted (accepted: headers, token, "
        "exec-credential)",
    }
    for number, (entry, message) in enumerate(cases.items()):
        path = tmp_path / f"providers-{number}.yaml"
        path.write_text(f"providers:\n  - name: p\n    hosts: '*'\n    {entry}\n")
        with pytest.raises(SettingsError) as e:
            load_providers_file(str(path))
        assert f"header_providers_file {path}: provider 1 (p): {message}" in str(e.value)
        assert "s3cret" not in str(e.value)
    good = tmp_path / "good.yaml"
    good.write_text(f"- {{name: c, hosts: '*', command: [{CREDENTIAL}, token, t], format: token, header: X-T}}\n")
    [(entry, _)], _ = load_providers_file(str(good))
    assert entry.source.command == (CREDENTIAL, "token", "t") and entry.source.header == "X-T"


# -- formats -------------------------------------------------------------------------------------------------------


def content(fmt, **fields):
    return FileSource(path="/unused", format=fmt, **fields)


def test_token_format():
    assert read(content("token"), b"  tok-1\n").answer.headers == (("Authorization", "Bearer tok-1"),)
    raw = read(content("token", header="X-Api-Key", prefix=""), b"k3y\r\n")
    assert raw.answer.headers == (("X-Api-Key", "k3y"),) and raw.lifetime is None
    for bad in (b"two words", b"t\xc3\xb6k", b"a\x00b", b"line1\nline2", b"a\x7fb"):
        with pytest.raises(Failed) as e:
            read(content("token"), bad)
        assert e.value.reason == "the token has characters other than visible ASCII"
    with pytest.raises(Failed) as e:
        read(content("token"), b" \n")
    assert e.value.reason == "empty: no token"


def test_jwt_expiry_bounds_the_token():
    now = 1_800_000_000.0
    parsed = read(content("token"), jwt(now + 100).encode(), now=now)
    assert parsed.lifetime == 100
    for exp, ago in ((now - 180, "3m"), (now, "0ms"), (now - 2.5, "2.5s")):
        with pytest.raises(Failed) as e:
            read(content("token"), jwt(exp).encode(), now=now)
        assert (e.value.reason, e.value.reason_class) == (f"token expired {ago} ago", "expired")
    # Not a JWT, or one without exp: no lifetime of its own.
    for token in ("a.b.c", "e30.e30.x", "plain-token", jwt(NO_EXP)):
        assert read(content("token"), token.encode(), now=now).lifetime is None


@pytest.mark.parametrize(
    ("exp", "what", "reason_class"),
    [
        ("soon", "a string", "format"),
        (str(1_800_000_100), "a string", "format"),
        (True, "a boolean", "format"),
        (False, "a boolean", "format"),
        (None, "null", "format"),
        ([1_800_000_100], "a list", "format"),
        (math.nan, "NaN", "format"),
        (math.inf, "infinite", "format"),
        (-math.inf, "infinite", "format"),
        (10**400, "infinite", "format"),  # beyond any float
        (0, "0 or negative", "expired"),
        (-1, "0 or negative", "expired"),
        (-1e300, "0 or negative", "expired"),
    ],
)
def test_a_jwt_exp_that_is_no_time_refuses_the_token(exp, what, reason_class):
    """Issue 18: such an exp was read as "no expiry", and the token used forever."""
    token = jwt(exp)
    with pytest.raises(Failed) as e:
        read(content("token"), token.encode(), now=1_800_000_000.0)
    assert e.value.reason_class == reason_class and f"exp claim is {what}" in e.value.reason
    assert token.split(".")[1] not in e.value.reason and len(e.value.reason) < 100


def test_exec_credential_format():
    now = datetime.datetime.fromisoformat("2027-01-15T08:00:00Z").timestamp()
    stamp = "2027-01-15T08:00:10Z"
    for version in ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"):
        parsed = read(content("exec-credential"), exec_credential(stamp=stamp, version=version), now=now)
        assert parsed.answer.headers == (("Authorization", "Bearer ec-token"),) and parsed.lifetime == 10
    for same in ("2027-01-15t08:00:10z", "2027-01-15T09:00:10+01:00", "2027-01-15T08:00:10.000000001Z"):
        assert read(content("exec-credential"), exec_credential(stamp=same), now=now).lifetime == 10
    assert read(content("exec-credential"), exec_credential(), now=now).lifetime is None
    # The earlier of the two expiries wins.
    parsed = read(content("exec-credential"), exec_credential(token=jwt(now + 4), stamp=stamp), now=now)
    assert parsed.lifetime == 4
    failures = {
        b"not json": "not an ExecCredential: not JSON",
        b"[]": "not an ExecCredential (kind is not ExecCredential)",
        exec_credential(version="client.authentication.k8s.io/v1alpha1"): "ExecCredential apiVersion not supported",
        exec_credential(token=None, clientCertificateData="PEM", clientKeyData="KEY"): "has no status.token "
        "(client certificates are not supported)",
        exec_credential(stamp="tomorrow"): "status.expirationTimestamp is not an RFC 3339 time",
        exec_credential(stamp="2027-01-15T08:00:10"): "status.expirationTimestamp is not an RFC 3339 time",
        exec_credential(stamp="2027-01-15T07:57:00Z"): "token expired 3m ago",
        exec_credential(token="t\r\nX-Evil: 1"): "the token has characters other than visible ASCII",
    }
    for data, reason in failures.items():
        with pytest.raises(Failed) as e:
            read(content("exec-credential"), data, now=now)
        assert reason in e.value.reason
        assert "PEM" not in e.value.reason and "KEY" not in e.value.reason


def test_headers_format_same_rules_as_http():
    parsed = read(content("headers"), b'{"X-Tenant": "acme", "Host": "evil", "X-Bad": "a\\nb"}')
    assert parsed.answer.headers == (("X-Tenant", "acme"),) and parsed.answer.rejected_count == 2
    with pytest.raises(Failed, match="a JSON array, not an object"):
        read(content("headers"), b"[]")


# -- file client ---------------------------------------------------------------------------------------------------


def test_file_formats(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    assert headers(client(path=str(token), format="token").fetch()) == {"Authorization": "Bearer tok-1"}
    ec = tmp_path / "ec.json"
    ec.write_bytes(exec_credential())
    assert headers(client(path=str(ec), format="exec-credential").fetch()) == {"Authorization": "Bearer ec-token"}
    h = tmp_path / "headers.json"
    h.write_text('{"X-Tenant": "acme"}')
    assert headers(client(path=str(h)).fetch()) == {"X-Tenant": "acme"}


def test_file_failures(tmp_path):
    path = tmp_path / "headers.json"
    cases = [
        (lambda: None, "cannot open it (No such file or directory)", "file"),
        (lambda: path.mkdir(), "not a regular file", "file"),
        (lambda: os.mkfifo(path), "not a regular file", "file"),  # and the read does not hang on it
        (lambda: path.write_text(""), "empty", "format"),
        (lambda: path.write_text(" \n"), "empty", "format"),
        (lambda: path.write_bytes(b" " * (MiB + 1)), f"larger than {MiB} bytes", "size"),
        (lambda: path.write_text("Authorization: Bearer s3cret"), "not JSON (JSONDecodeError at position 0)", "format"),
    ]
    for make, reason, reason_class in cases:
        if path.is_dir():
            path.rmdir()
        path.unlink(missing_ok=True)
        make()
        result = client(path=str(path)).fetch()
        assert (result.reason, result.reason_class) == (reason, reason_class)


def test_file_changes_are_seen_once_settled(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-1")
    c = client(path=str(token), format="token")
    assert headers(c.fetch()) == {"Authorization": "Bearer tok-1"}
    assert not c.changed()
    for change, expected in [
        (lambda: atomic_write(token, "tok-2"), "tok-2"),
        (lambda: token.write_text("tok-three"), "tok-three"),  # rewritten in place
        (lambda: token.unlink() or token.write_text("tok-4"), "tok-4"),
    ]:
        change()
        assert not c.changed()  # first look: it may still be being written
        assert c.changed()  # the same stamp on the next look: settled
        assert headers(c.fetch()) == {"Authorization": f"Bearer {expected}"}
        assert not c.changed()


def test_kubelet_symlink_swap_is_seen(tmp_path):
    path = kubelet_volume(tmp_path, "headers.json", '{"X-Version": "1"}', "2026_01")
    c = client(path=str(path))
    assert headers(c.fetch()) == {"X-Version": "1"}
    kubelet_volume(tmp_path, "headers.json", '{"X-Version": "2"}', "2026_02")
    assert [c.changed(), c.changed()] == [False, True]
    assert headers(c.fetch()) == {"X-Version": "2"}


def test_a_file_changing_under_the_read_is_not_used(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-1")
    c = client(path=str(token), format="token")
    c.fetch()
    token.write_text("tok-22")
    assert [c.changed(), c.changed()] == [False, True]
    token.write_text("tok-33-")  # written again after the change settled, before the read
    result = c.fetch()
    assert (result.reason, result.reason_class) == ("changing: it is read again once it has stopped changing", "file")
    assert c.changed()  # this stamp has now been seen twice: settled
    assert headers(c.fetch()) == {"Authorization": "Bearer tok-33-"}
    token.write_text("tok-4444")  # a scheduled read (no look since) of a file just written: not used either
    assert c.fetch().reason.startswith("changing")


def test_refresher_reads_a_changed_file_within_two_looks(tmp_path):
    path = kubelet_volume(tmp_path, "token", "tok-1", "2026_01")
    clock = FakeClock()
    s = settings(path=str(path), format="token", interval="1h")
    r = Refresher(s.source.client(s.timeout), s, clock=clock)
    assert r.client.watch_interval <= 1
    r.step()
    assert r.snapshot.fields == ((b"Authorization", b"Bearer tok-1"),)
    kubelet_volume(tmp_path, "token", "tok-2", "2026_02")
    changed_at = clock.now
    while r.snapshot.fields != ((b"Authorization", b"Bearer tok-2"),):
        clock.now = r.wake_at()
        r.step()
        assert clock.now - changed_at <= 2 * r.client.watch_interval
    assert r.counts.ok == 2 and r.counts.failed == 0


def test_bad_file_keeps_the_last_good_headers_and_reports_why(tmp_path):
    path = tmp_path / "headers.json"
    path.write_text('{"X-Token": "good"}')
    clock = FakeClock()
    s = settings(path=str(path), interval="1h")
    r = Refresher(s.source.client(s.timeout), s, clock=clock)
    entry = types.SimpleNamespace(settings=s, refresher=r, counters=RequestCounters())
    r.step()
    good = r.snapshot

    def settle():
        for _ in range(2):
            clock.now += r.client.watch_interval
            r.step()

    # Running as root, chmod 000 would not stop the read: a FIFO or a directory in its place does.
    for make_bad, reason in [
        (lambda: path.unlink(), "cannot open it (No such file or directory)"),
        (lambda: os.mkfifo(path), "not a regular file"),
        (lambda: os.unlink(path) or path.mkdir(), "not a regular file"),
        (lambda: path.rmdir() or path.write_text(""), "empty"),
    ]:
        make_bad()
        settle()
        data = provider_status(entry, clock.now)
        assert (data["state"], data["last_error"], data["headers"]) == ("failing", reason, ["X-Token"])
        assert r.snapshot is good and r.snapshot.usable(clock.now)
    assert r.counts.failed_by_class == {"file": 3, "format": 1}
    # A failed file is retried on the backoff schedule too (1, 2, 4, 8 s, up to 10 % earlier), changed or not.
    assert 7.2 <= r.next_fetch_at - clock.now <= 8
    clock.now = r.next_fetch_at
    r.step()
    assert r.counts.failed == 5
    path.write_text('{"X-Token": "again"}')
    settle()
    assert r.snapshot.fields == ((b"X-Token", b"again"),) and not r.last_error


def test_jwt_file_is_used_until_exp_and_refreshed_before(tmp_path):
    path = tmp_path / "token"
    path.write_text(jwt(time.time() + 100))
    clock = FakeClock()
    s = settings(path=str(path), format="token", interval="1h")
    r = Refresher(s.source.client(s.timeout), s, clock=clock)
    delay = r.refresh()
    assert 1 <= delay <= 80  # the first after a start is spread, never past 80 % of the lifetime
    assert 98 < r.snapshot.usable_until - clock.now <= 100
    delay = r.refresh()
    lifetime = r.snapshot.usable_until - r.snapshot.fetched_at  # what was left of the 100 s when it was read
    assert 0.72 * lifetime <= delay + 1e-9 and delay <= 0.8 * lifetime + 1e-9  # at 80 %, up to 10 % earlier
    clock.now += 100
    assert not r.snapshot.usable(clock.now)  # never used at or after exp, whatever the refresh did
    path.write_text(jwt(time.time() - 600))
    assert [r.client.changed(), r.client.changed()] == [False, True]
    r.refresh()
    assert (r.last_error, r.counts.failed_by_class["expired"]) == ("token expired 10m ago", 1)


def test_a_jwt_file_whose_exp_is_no_time_is_never_used(tmp_path):
    path = tmp_path / "token"
    path.write_text(jwt("never"))
    s = settings(path=str(path), format="token", interval="1h")
    r = Refresher(s.source.client(s.timeout), s, clock=FakeClock())
    r.refresh()
    assert r.snapshot.fields == () and r.counts.failed_by_class["format"] == 1
    assert r.last_error == "the token's JWT exp claim is a string, not a number of seconds"
    path.write_text(jwt(0))
    assert [r.client.changed(), r.client.changed()] == [False, True]
    r.refresh()
    assert r.snapshot.fields == () and r.counts.failed_by_class["expired"] == 1


# -- command client ------------------------------------------------------------------------------------------------


def test_command_token_and_format_options(tmp_path):
    assert headers(client(command=[CREDENTIAL, "token", "tok-1"]).fetch()) == {"Authorization": "Bearer tok-1"}
    custom = client(command=[CREDENTIAL, "token", "k3y"], header="X-Api-Key", prefix="")
    assert headers(custom.fetch()) == {"X-Api-Key": "k3y"}
    body = tmp_path / "headers.json"
    body.write_text('{"X-A": "1", "X-B": "2"}')
    assert headers(client(command=[CREDENTIAL, "cat", str(body)], format="headers").fetch()) == {"X-A": "1", "X-B": "2"}


def test_exec_credential_environment_and_empty_stdin(tmp_path):
    seen = tmp_path / "seen.json"
    result = client(command=[CREDENTIAL, "exec-info", str(seen)], format="exec-credential").fetch()
    assert headers(result) == {"Authorization": "Bearer ec-info"}
    assert json.loads(seen.read_text()) == {"exec_info": KUBERNETES_EXEC_INFO, "stdin_bytes": 0}
    assert json.loads(KUBERNETES_EXEC_INFO) == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }
    client(command=[CREDENTIAL, "exec-info", str(seen)], format="headers").fetch()  # fails the format; ran though
    assert json.loads(seen.read_text()) == {"exec_info": "unset", "stdin_bytes": 0}


def test_exec_credential_expiry_brings_the_next_run_forward(tmp_path):
    runs = tmp_path / "runs"
    clock = FakeClock()
    s = settings(command=[CREDENTIAL, "exec-credential", "3", str(runs)], format="exec-credential", interval="1h")
    r = Refresher(s.source.client(s.timeout), s, clock=clock)
    assert 1 <= r.refresh() <= 2.4  # the first after a start is spread, never past 80 % of the lifetime
    assert 0 < r.snapshot.usable_until - clock.now <= 3
    delay = r.refresh()
    # The lifetime is what was left of the 3 s when the output was read (the command's own run takes some of it):
    # the next run comes at 80 % of that, up to 10 % earlier.
    lifetime = r.snapshot.usable_until - r.snapshot.fetched_at
    assert 0 < lifetime <= 3
    assert max(1.0, 0.72 * lifetime) <= delay + 1e-9 and delay <= max(1.0, 0.8 * lifetime) + 1e-9
    assert r.snapshot.fields == ((b"Authorization", b"Bearer ec-2"),)


def test_command_jwt_lifetime_and_expired(tmp_path):
    state = tmp_path / "exp"
    parsed = client(command=[CREDENTIAL, "jwt", "2", str(state)]).fetch()
    assert parsed.ok and 0 < parsed.lifetime <= 2
    state.write_text(str(int(time.time() - 600)))
    result = client(command=[CREDENTIAL, "jwt", "2", str(state)]).fetch()
    assert re.fullmatch(r"credential\.py: token expired (10m|60\ds) ago", result.reason), result.reason
    assert result.reason_class == "expired"


@pytest.mark.parametrize(
    ("args", "reason", "reason_class"),
    [
        (["nothing"], "credential.py: printed nothing: no credentials configured", "format"),
        (["garbage"], "credential.py: the token has characters other than visible ASCII", "format"),
        (["big"], f"credential.py: output larger than {MiB} bytes", "size"),
        (["fail", "stdout-s3cret"], "credential.py: exit status 3: error: login required", "command"),
        (["signal"], "credential.py: killed by SIGTERM", "command"),
        (["no-such-mode", "arg-s3cret"], "credential.py: exit status 2: unknown mode no-such-mode", "command"),
    ],
)
def test_command_failures(args, reason, reason_class):
    result = client(command=[CREDENTIAL, *args]).fetch()
    assert (result.reason, result.reason_class) == (reason, reason_class)


def test_stderr_line_is_cut_and_cleaned():
    result = client(command=[CREDENTIAL, "noisy-stderr"]).fetch()
    prefix = "credential.py: exit status 1: "
    assert result.reason.startswith(prefix + "error: bell https://idp.example/t xxx")
    line = result.reason.removeprefix(prefix)
    assert len(line) == 200 and line.isprintable()
    assert "s3cr3t" not in line and "pw@" not in line


def test_program_gone_or_not_executable_at_run_time(tmp_path):
    program = tmp_path / "helper"
    shutil.copy(CREDENTIAL, program)
    c = client(command=[str(program), "token", "t"])
    assert c.fetch().ok
    program.chmod(0o644)
    assert (c.fetch().reason, c.fetch().reason_class) == ("helper: cannot run it (Permission denied)", "command")
    program.unlink()
    assert c.fetch().reason == "helper: not found"


def test_timeout_kills_the_command_and_its_child(tmp_path):
    pidfile = tmp_path / "pids"
    started = time.monotonic()
    result = client(command=[HANG, str(pidfile)], timeout="500ms").fetch()
    elapsed = time.monotonic() - started
    assert (result.reason, result.reason_class) == ("hang.sh: timed out after 500ms", "timeout")
    assert elapsed < 5  # a guard against a hang only: the run ends at its timeout
    [[leader, child]] = pid_lines(pidfile)
    assert not {leader, child} & processes().keys()  # killed and reaped before the fetch returned
    assert zombie_children() == []


def test_exit_ends_what_the_command_left_running(tmp_path):
    """A program that exits while a child it started still holds stdout: the run ends with the program (a wait for
    the child would last until the timeout and fail)."""
    pidfile = tmp_path / "pid"
    result = client(command=[LEAVE_CHILD, str(pidfile)], timeout="10s").fetch()
    assert headers(result) == {"Authorization": "Bearer tok-left-child"}
    [[child]] = pid_lines(pidfile)
    assert child not in processes()  # killed and reaped before the fetch returned
    assert zombie_children() == []


def test_stop_kills_a_running_command(tmp_path, scheduler):
    pidfile = tmp_path / "pids"
    s = settings(command=[HANG, str(pidfile)], timeout="60s")
    r = Refresher.for_settings(s)
    r.start(scheduler)
    [[leader, child]] = pid_lines(pidfile)
    r.stop()
    assert r.wait_ended(DEADLINE)  # stop() does not wait: the aborted run ends the refresher at once
    assert r.counts.failed == 0  # a stopped run is not the command's failure
    assert r.client.fetch().reason == "hang.sh: stopped"  # and no later run starts
    assert not {leader, child} & processes().keys() and zombie_children() == []


def test_abort_from_another_thread_during_a_run(tmp_path):
    pidfile = tmp_path / "pids"
    c = client(command=[HANG, str(pidfile)], timeout="60s")
    results = []
    thread = threading.Thread(target=lambda: results.append(c.fetch()))
    thread.start()
    [[leader, child]] = pid_lines(pidfile)
    c.abort()
    thread.join(5)
    assert not thread.is_alive() and results[0].reason == "hang.sh: stopped"
    assert not {leader, child} & processes().keys() and zombie_children() == []
