"""A person's refresh token (kind oauth2, grant refresh-token; `header-augment login` and `logout`) against a hostile
or broken token endpoint (authlib's, its answers rewritten after it made them: tests/token_issuers.py), a hostile or
broken file system, and a careless user. The refresher is driven with an injected clock, the command with injected
sleep and clock; nothing waits in real time but two writers killed or held mid-write."""

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import test_login
from servers import RawProvider, http_answer, trickle, wait_until
from test_login import Browser, Person, run, run_browser
from test_refresh_token import FakeClock, bearer, held, refresher_of, unwritable
from token_issuers import AuthlibSignIn

from header_augment_core import files
from header_augment_core.failures import Failed
from header_augment_core.files import PAUSE_BEFORE_RENAME, write_atomic
from header_augment_core.kinds.oauth2 import MAX_SECRET_FILE_BYTES, HeldToken

ADDON = str(Path(__file__).resolve().parent.parent / "addon")


@pytest.fixture(scope="module")
def server():
    issuer = AuthlibSignIn(expires_in=60)
    yield issuer
    issuer.close()


@pytest.fixture(autouse=True)
def honest(server):
    yield
    server.tamper = None


@pytest.fixture
def token_file(tmp_path, server):
    path = tmp_path / "tokens" / "drive.token"
    path.parent.mkdir()
    path.write_text(server.signed_in() + "\n")
    return path


def every_secret(server) -> list[str]:
    return [*server.refresh_tokens, *server.issued, *server.devices]


def rotated_as(value):
    """A token endpoint that rotates (authlib has, the old token is spent) and answers `value` as the new one."""
    return lambda path, payload: {**payload, "refresh_token": value} if path == "/token" else payload


# -- a hostile token endpoint -----------------------------------------------------------------------------------


def test_a_rotated_token_is_saved_before_the_access_token_beside_it_is_refused(server, token_file):
    refresher = refresher_of(server, token_file, FakeClock())
    server.tamper = lambda path, payload: {**payload, "token_type": "mac"}
    refresher.refresh()
    assert refresher.counts.failed == 1 and refresher.last_error == "token_type is not Bearer"
    # The server rotated: the file holds the new token (the old one is spent), and the next refresh works with it.
    saved = held(token_file)
    assert saved == server.latest() and server.accepts(saved)
    server.tamper = None
    refresher.refresh()
    assert server.presented[-1] == saved != held(token_file) == server.latest()
    assert bearer(refresher) == server.issued[-1]


@pytest.mark.parametrize(
    ("value", "reason_class"),
    [
        ("r" * MAX_SECRET_FILE_BYTES, "size"),  # with its newline, more than the file's reader takes back
        ("rt\nsecond-line", "format"),
        ("rt\x00nul", "format"),
        ("rt-caf\u00e9", "format"),
        ("rt-\x1b[31m-escape", "format"),
        ("", "format"),
        ("   ", "format"),
        (12345, "format"),
        (["rt-a", "rt-b"], "format"),
    ],
)
def test_a_rotated_token_that_could_not_be_read_back_is_refused_and_the_file_kept(
    server, token_file, caplog, value, reason_class
):
    refresher = refresher_of(server, token_file, FakeClock())
    before = held(token_file)
    server.tamper = rotated_as(value)
    with caplog.at_level(logging.DEBUG):
        refresher.refresh()
    assert refresher.counts.failed_by_class[reason_class] == 1 and refresher.snapshot.fields == ()
    assert held(token_file) == before and os.listdir(token_file.parent) == [token_file.name]
    assert "refresh_token in the token response" in refresher.last_error
    if isinstance(value, str) and value.strip():
        assert value not in caplog.text and value not in refresher.last_error


def test_the_longest_rotated_token_accepted_is_read_back_at_the_next_start(server, token_file):
    longest = "r" * (MAX_SECRET_FILE_BYTES - 1)
    refresher = refresher_of(server, token_file, FakeClock())
    server.tamper = rotated_as(longest)
    refresher.refresh()
    assert refresher.last_error == "" and held(token_file) == longest
    assert HeldToken(str(token_file)).current() == longest  # as a restarted proxy reads it


# -- a hostile or broken file system ----------------------------------------------------------------------------


def test_a_rotated_token_kept_in_memory_outlives_its_file_s_directory_being_removed(server, token_file):
    clock = FakeClock()
    refresher = refresher_of(server, token_file, clock)
    client = refresher.client
    with unwritable(token_file.parent):
        refresher.refresh()
    rotated = server.latest()
    assert held(token_file) != rotated and refresher.counts.failed_by_class["file"] == 1
    shutil.rmtree(token_file.parent)
    client.changed()
    assert client.changed()  # gone: a change, looked at by a refresh
    refresher.refresh()
    # The token only memory held is the one used (the file's was spent), and its successor is held in turn.
    assert server.presented[-1] == rotated and bearer(refresher) == server.issued[-1]
    assert refresher.counts.failed_by_class["file"] == 2 and "could not be saved" in refresher.last_error
    # The removal is seen once: the watch does not refresh (and rotate) again and again.
    assert not client.changed() and not client.changed()
    # A sign-in writes the file again: it is used.
    token_file.parent.mkdir()
    signed_in = server.signed_in()
    write_atomic(str(token_file), signed_in.encode() + b"\n")
    client.changed()
    assert client.changed()
    refresher.refresh()
    assert server.presented[-1] == signed_in and held(token_file) == server.latest()
    assert refresher.last_error == ""


def test_a_saved_token_whose_file_is_removed_is_signed_out(server, token_file):
    refresher = refresher_of(server, token_file, FakeClock())
    refresher.refresh()
    token_file.unlink()  # as logout removes it
    presented = len(server.presented)
    refresher.refresh()
    assert len(server.presented) == presented and refresher.last_error.startswith("refresh_token_file: cannot open")


def _sparse(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(10 * 1024 * 1024)
    return path


@pytest.mark.parametrize(
    ("make", "reason_class"),
    [
        (lambda tmp: Path("/dev/zero"), "file"),
        (lambda tmp: Path("/proc/self/environ"), "file"),
        (lambda tmp: (os.mkfifo(tmp / "fifo"), tmp / "fifo")[1], "file"),
        (lambda tmp: (os.mkdir(tmp / "dir"), tmp / "dir")[1], "file"),
        (lambda tmp: _sparse(tmp / "huge"), "size"),
    ],
    ids=["dev-zero", "proc-environ", "fifo", "directory", "10MB"],
)
def test_a_refresh_token_file_that_is_no_token_file_is_neither_read_nor_replaced(server, tmp_path, make, reason_class):
    target = make(tmp_path)
    link = tmp_path / "drive.token"
    link.symlink_to(target)
    before = os.stat(target)
    refresher = refresher_of(server, link, FakeClock())
    refresher.refresh()
    assert refresher.counts.failed_by_class[reason_class] == 1 and "header-augment login" in refresher.last_error
    assert os.stat(target).st_mode == before.st_mode and os.stat(target).st_ino == before.st_ino


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_write_atomic_replaces_a_regular_file_or_nothing(tmp_path, kind):
    target = tmp_path / kind
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    link = tmp_path / "drive.token"
    link.symlink_to(target)
    with pytest.raises(Failed, match="^not a regular file: not replaced$"):
        write_atomic(str(link), b"rt-new\n")
    assert (stat.S_ISFIFO if kind == "fifo" else stat.S_ISDIR)(os.lstat(target).st_mode)
    assert sorted(os.listdir(tmp_path)) == sorted(["drive.token", kind])


def _writer(path: Path, marker: Path) -> subprocess.Popen:
    """A process writing `path`, held between its temporary file and the rename until `marker` is removed."""
    code = "import sys; from header_augment_core.files import write_atomic; write_atomic(sys.argv[1], b'rt-held\\n')"
    env = {**os.environ, "PYTHONPATH": ADDON, PAUSE_BEFORE_RENAME: str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env)
    wait_until(marker.exists, what="the writer holding its temporary file")
    return proc


def test_a_killed_writer_s_temporary_is_removed_by_the_next_write_and_a_live_one_s_is_not(tmp_path):
    path = tmp_path / "drive.token"
    path.write_text("rt-old\n")
    killed = _writer(path, tmp_path / "killed")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (dead,) = {p.name for p in tmp_path.glob(".drive.token.*.tmp")}
    live = _writer(path, tmp_path / "live")
    try:
        (alive,) = {p.name for p in tmp_path.glob(".drive.token.*.tmp")} - {dead}
        young = tmp_path / ".drive.token.abcdefgh.tmp"  # unlocked, but as young as a writer that has not locked yet
        young.write_text("x")
        unrelated = tmp_path / ".drive.token.backup.tmp"  # not a name mkstemp makes
        unrelated.write_text("x")
        old = time.time() - 2 * files.STALE_AFTER
        for name in (dead, alive, unrelated.name):
            os.utime(tmp_path / name, (old, old))
        write_atomic(str(path), b"rt-new\n")
        assert path.read_text() == "rt-new\n"
        left = {p.name for p in tmp_path.iterdir()}
        assert dead not in left and {alive, young.name, unrelated.name} <= left
    finally:
        (tmp_path / "live").unlink()
        assert live.wait(timeout=10) == 0
    assert path.read_text() == "rt-held\n" and alive not in os.listdir(tmp_path)


# -- header-augment login and logout ----------------------------------------------------------------------------


providers = test_login.providers  # the same providers file: its first entry is the person's


def edit(providers, **fields) -> None:
    """Sets `fields` of the entry (None: removes one)."""
    data = json.loads(providers.read_text())
    data["providers"][0].update(fields)
    data["providers"][0] = {k: v for k, v in data["providers"][0].items() if v is not None}
    providers.write_text(json.dumps(data))


def signed_in_file(providers, server) -> tuple[Path, str]:
    path = providers.parent / "person" / "drive.token"
    path.parent.mkdir(exist_ok=True)
    token = server.signed_in()
    path.write_text(token + "\n")
    return path, token


def device_answer(**fields):
    return lambda path, payload: {**payload, **fields} if path == "/device" else payload


@pytest.mark.parametrize(
    ("fields", "unusable"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": 10**9}, "interval"),
        ({"expires_in": 10**9}, "expires_in"),
        ({"user_code": "A" * 5000}, "user_code"),
        ({"user_code": "ABCD\x1b]0;owned\x07"}, "user_code"),
        ({"verification_uri": "https://example.com/\x1b[2J"}, "verification_uri"),
        ({"verification_uri": "javascript:alert(1)"}, "verification_uri"),
        ({"verification_uri": "file:///etc/passwd"}, "verification_uri"),
        ({"device_code": ""}, "device_code"),
    ],
)
def test_a_hostile_device_endpoint_gets_no_sign_in_and_nothing_printed_of_it(
    server, providers, capsys, fields, unusable
):
    server.tamper = device_answer(**fields)
    person = Person()
    assert run(providers, person) == 1
    said = capsys.readouterr()
    assert f"has no usable {unusable}" in said.err and said.out == "" and person.sleeps == []
    assert not (providers.parent / "person").exists()


def test_an_escape_in_verification_uri_complete_is_not_printed_and_the_sign_in_goes_on(server, providers, capsys):
    server.tamper = device_answer(verification_uri_complete="https://example.com/\x1b[8m")
    person = Person(lambda n: server.approve(server.user_codes()[-1]))
    assert run(providers, person) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and " or open " not in out


def test_an_interval_longer_than_the_code_s_life_ends_at_once(server, providers, capsys):
    server.tamper = device_answer(interval=3600, expires_in=1800)
    person = Person()
    assert run(providers, person) == 1
    assert "the code expired before the sign-in was finished" in capsys.readouterr().err
    assert person.sleeps == []  # not an hour's wait for a code dead after half of it


def test_slow_down_past_the_code_s_life_ends_without_waiting_it_out(server, providers, capsys):
    server.tamper = device_answer(interval=20, expires_in=30)
    server.slow_down = 1
    person = Person()
    try:
        assert run(providers, person) == 1
    finally:
        server.slow_down = 0
    assert "the code expired before" in capsys.readouterr().err and person.sleeps == [20]


def test_login_names_an_unreadable_client_secret_and_asks_nothing(server, providers, capsys, tmp_path):
    (tmp_path / "secret").mkdir()
    edit(providers, client_secret_file=str(tmp_path / "secret"))
    asked = len(server.device_requests)
    assert run(providers, Person()) == 1
    err = capsys.readouterr().err
    assert "client_secret_file: not a regular file" in err and "(drive)" in err
    assert len(server.device_requests) == asked


def test_login_does_not_replace_what_is_no_token_file(server, providers, capsys, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    edit(providers, refresh_token_file=str(fifo))
    person = Person(lambda n: server.approve(server.user_codes()[-1]))
    assert run(providers, person) == 1
    assert "refresh_token_file: not a regular file: not replaced" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_second_redirect_does_not_replace_the_first(server, providers):
    class Reloading(Browser):
        """Follows the redirect, then comes back to it with a refusal carrying the same state (a reload, a page)."""

        def __call__(self, url):
            super().__call__(url)
            first = self.landed.url
            with httpx.Client(trust_env=False, timeout=5) as client:
                self.again = client.get(first.copy_set_param("error", "access_denied").copy_remove_param("code"))

    browser = Reloading(server)
    assert run_browser(providers, browser) == 0
    assert browser.landed.status_code == 200 and browser.again.status_code == 409
    assert (providers.parent / "person" / "drive.token").read_text() == server.latest() + "\n"


def test_logout_through_a_symlink_removes_the_file_holding_the_token(server, providers, tmp_path, capsys):
    real, token = signed_in_file(providers, server)
    link = tmp_path / "link.token"
    link.symlink_to(real)
    edit(providers, refresh_token_file=str(link))
    assert run(providers, Person(), "logout") == 0
    assert not real.exists() and not server.accepts(token)
    assert "revoked and removed" in capsys.readouterr().out


def test_logout_whose_revocation_cannot_be_reached_keeps_the_file(server, providers, capsys):
    path, token = signed_in_file(providers, server)
    edit(providers, revocation_url="http://127.0.0.1:9/revoke")  # discard: nobody listens
    assert run(providers, Person(), "logout") == 1
    err = capsys.readouterr().err
    assert "the revocation endpoint:" in err and "is kept, so that logout can be run again" in err
    assert held(path) == token and token not in err


@pytest.mark.parametrize("revocation", [True, False])
def test_logout_removes_nothing_but_a_refresh_token(server, providers, capsys, tmp_path, revocation):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nline two\n")
    for target, said in ((directory, "not a regular file"), (notes, "not a refresh token")):
        edit(providers, refresh_token_file=str(target), revocation_url=server.base + "/revoke" if revocation else None)
        assert run(providers, Person(), "logout") == 1
        assert f"refresh_token_file: {said}" in capsys.readouterr().err
    assert directory.is_dir() and notes.read_text() == "line one\nline two\n"


def test_nothing_secret_reaches_a_log_line_at_debug(server, token_file, providers, caplog, capsys):
    clock = FakeClock()
    refresher = refresher_of(server, token_file, clock)
    with caplog.at_level(logging.DEBUG):
        refresher.refresh()
        with unwritable(token_file.parent):
            refresher.refresh()
        refresher.refresh()
        server.revoke(held(token_file))
        refresher.refresh()
        assert refresher.counts.failed_by_class["auth"] == 1
        assert run(providers, Person(lambda n: server.approve(server.user_codes()[-1]))) == 0
        assert run(providers, Person(), "logout") == 0
    # Everything but the test server's own lines (authlib logs the tokens it issues).
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("authlib"))
    said = logged + "".join(capsys.readouterr()) + refresher.last_error
    assert not [s for s in every_secret(server) if s in said]


def test_a_symlink_pointed_at_another_file_is_followed(server, tmp_path):
    """Kubernetes' `..data` swap, or a person's `ln -sfn`: the file the link names now is the one read."""
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
    (tmp_path / "v1" / "drive.token").write_text(server.signed_in() + "\n")
    (tmp_path / "current").symlink_to("v1")
    refresher = refresher_of(server, tmp_path / "current" / "drive.token", FakeClock())
    refresher.refresh()
    assert held(tmp_path / "v1" / "drive.token") == server.latest()
    signed_in = server.signed_in()
    (tmp_path / "v2" / "drive.token").write_text(signed_in + "\n")
    (tmp_path / "next").symlink_to("v2")
    os.replace(tmp_path / "next", tmp_path / "current")
    shutil.rmtree(tmp_path / "v1")
    refresher.client.changed()
    assert refresher.client.changed()
    refresher.refresh()
    assert server.presented[-1] == signed_in and held(tmp_path / "v2" / "drive.token") == server.latest()
    assert refresher.last_error == ""


def test_a_device_endpoint_that_never_ends_its_answer_ends_the_login_at_the_entry_s_timeout(providers, capsys):
    endless = RawProvider(trickle(http_answer(b"{" + b" " * 10_000 + b"}"), 0.05))
    try:
        edit(providers, device_authorization_url=endless.url, timeout=0.5)
        started = time.monotonic()
        assert run(providers, Person()) == 1
        assert time.monotonic() - started < 3
    finally:
        endless.close()
    err = capsys.readouterr().err
    assert err == f"header-augment login: the device authorization endpoint {endless.url}: timed out\n"
