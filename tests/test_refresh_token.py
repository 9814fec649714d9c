"""`kind: oauth2` with `grant: refresh-token`: a person's refresh token held in a file, rotated at every use by
authlib's own RefreshTokenGrant (tests/token_issuers.py), written crash-safely before the access token it came with
is used. The refresher is driven with an injected clock; the token endpoint is real."""

import contextlib
import logging
import os
import stat
import subprocess
import threading

import pytest
from token_issuers import AuthlibSignIn

from header_augment_core.failures import Failed
from header_augment_core.fields import SettingsError
from header_augment_core.files import write_atomic
from header_augment_core.kinds.file import WATCH_INTERVAL
from header_augment_core.refresher import Refresher
from header_augment_core.settings import parse_settings

LIFETIME = 60


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def server():
    issuer = AuthlibSignIn(expires_in=LIFETIME)
    yield issuer
    issuer.close()


@pytest.fixture
def token_file(tmp_path, server):
    path = tmp_path / "tokens" / "drive.token"
    path.parent.mkdir()
    path.write_text(server.signed_in(scope="drive mail") + "\n")
    path.chmod(0o600)
    return path


def settings_of(server, token_file, **fields):
    return parse_settings(
        {
            "hosts": "www.googleapis.com",
            "kind": "oauth2",
            "grant": "refresh-token",
            "url": server.url,
            "client_id": server.client_id,
            "refresh_token_file": str(token_file),
            **fields,
        },
        str,
    )


def refresher_of(server, token_file, clock, **fields):
    settings = settings_of(server, token_file, **fields)
    return Refresher(settings.source.client(settings.timeout), settings, clock=clock)


def bearer(refresher) -> str:
    ((name, value),) = refresher.snapshot.fields
    assert name == b"Authorization"
    return value.decode().removeprefix("Bearer ")


def held(path) -> str:
    return path.read_text().strip()


@contextlib.contextmanager
def unwritable(directory):
    """`directory` refuses new files, even to root (for whom no mode does: the immutable attribute then)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("root, and the file system has no immutable attribute (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_ten_refreshes_each_rotate_the_token_and_the_file_holds_the_latest_after_each(server, token_file):
    clock = FakeClock()
    refresher = refresher_of(server, token_file, clock)
    for _ in range(10):
        before = held(token_file)
        clock.now = max(clock.now, refresher.next_fetch_at)
        refresher.step()
        assert server.presented[-1] == before  # what the file held is what was used
        assert held(token_file) == server.latest() != before
        assert bearer(refresher) == server.issued[-1]
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert not refresher.client.changed()  # its own write is not a change from outside
    assert refresher.counts.ok == 10 and refresher.counts.failed == 0
    assert len(set(server.presented[-10:])) == 10
    assert os.listdir(token_file.parent) == [token_file.name]  # no temporary file left
    # Refreshed at 80% of the lifetime: never used past its expiry.
    assert refresher.snapshot.usable_until == refresher.snapshot.fetched_at + LIFETIME


def test_a_rotated_token_that_cannot_be_saved_is_loud_used_and_kept_in_memory(server, token_file, caplog):
    clock = FakeClock()
    refresher = refresher_of(server, token_file, clock)
    first = held(token_file)
    with unwritable(token_file.parent):
        with caplog.at_level(logging.WARNING, "header_augment"):
            refresher.refresh()
        rotated = server.latest()
        assert held(token_file) == first != rotated
        # The new access token is in use, and the failure is counted, shown and logged.
        assert bearer(refresher) == server.issued[-1]
        assert refresher.counts.ok == 1 and refresher.counts.failed_by_class["file"] == 1
        assert "could not be saved" in refresher.last_error and "header-augment login" in refresher.last_error
        assert "could not be saved" in caplog.text
        assert rotated not in caplog.text and rotated not in refresher.last_error
        assert os.listdir(token_file.parent) == [token_file.name]
        # Service goes on with the token held in memory: the next refresh presents it, not the file's.
        clock.now = refresher.next_fetch_at
        refresher.step()
        assert server.presented[-1] == rotated and bearer(refresher) == server.issued[-1]
        assert refresher.counts.failed_by_class["file"] == 2
    clock.now = refresher.next_fetch_at
    refresher.step()  # the directory can be written again: the token held is saved
    assert held(token_file) == server.latest() and refresher.last_error == ""


def test_a_revoked_token_is_an_auth_failure_naming_login_and_the_entry_fails_closed_at_expiry(server, token_file):
    clock = FakeClock()
    refresher = refresher_of(server, token_file, clock)
    refresher.refresh()
    server.revoke(held(token_file))
    clock.now = refresher.next_fetch_at
    refresher.step()
    assert refresher.counts.failed_by_class["auth"] == 1
    assert refresher.last_error.startswith("HTTP 400: invalid_grant") and "header-augment login" in refresher.last_error
    assert refresher.snapshot.usable(clock.now)  # the access token is still good
    clock.now = refresher.snapshot.fetched_at + LIFETIME
    assert not refresher.snapshot.usable(clock.now)


def test_two_entries_sharing_one_file_refresh_one_at_a_time_each_with_the_latest_token(server, token_file):
    clock = FakeClock()
    # Different scopes: two refreshers, two clients, one file.
    drive = refresher_of(server, token_file, clock, token_scope="drive")
    mail = refresher_of(server, token_file, clock, token_scope="mail")
    assert drive.client is not mail.client
    server.hold, server.most_in_flight = 0.5, 0  # a refresh waits that long for another to arrive
    presented = len(server.presented)
    try:
        threads = [threading.Thread(target=r.refresh) for r in (drive, mail)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.hold = 0.0
    assert server.most_in_flight == 1
    assert drive.counts.ok == mail.counts.ok == 1
    used = server.presented[presented:]
    assert len(used) == 2 and len(set(used)) == 2  # the second used the token the first had saved
    assert held(token_file) == server.latest()


def test_a_file_replaced_from_outside_is_read_at_the_next_refresh(server, token_file):
    clock = FakeClock()
    refresher = refresher_of(server, token_file, clock)
    client = refresher.client
    assert client.watch_interval == WATCH_INTERVAL
    refresher.refresh()
    assert not client.changed() and not client.changed()
    signed_in_again = server.signed_in(scope="drive")
    write_atomic(str(token_file), signed_in_again.encode() + b"\n")  # as `header-augment login` writes it
    assert not client.changed()  # seen once: not settled yet
    assert client.changed()
    refresher.refresh()
    assert server.presented[-1] == signed_in_again and held(token_file) == server.latest()


def test_a_missing_file_says_to_sign_in_and_is_used_once_it_is_there(server, tmp_path):
    clock = FakeClock()
    path = tmp_path / "later.token"
    refresher = refresher_of(server, path, clock)  # a missing file is not refused: login may write it later
    refresher.refresh()
    assert refresher.counts.failed_by_class["file"] == 1
    assert refresher.last_error.startswith("refresh_token_file: cannot open it") and "login" in refresher.last_error
    assert not refresher.client.changed()
    write_atomic(str(path), server.signed_in().encode())
    refresher.client.changed()
    assert refresher.client.changed()
    refresher.refresh()
    assert bearer(refresher) == server.issued[-1] and held(path) == server.latest()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"refresh_token_file": ""}, "refresh_token_file: required for grant refresh-token"),
        ({"client_id": ""}, "client_id: required for kind oauth2"),
        ({"subject_token_file": "/x"}, "subject_token_file: only with grant token-exchange"),
        ({"grant": "client-credentials", "client_secret_file": "/x"}, "refresh_token_file: only with grant"),
        ({"device_authorization_url": "ftp://x"}, "device_authorization_url: 'ftp://x' is not an http"),
    ],
)
def test_settings_of_the_grant_are_checked(server, token_file, fields, message):
    with pytest.raises(SettingsError, match="^" + message):
        settings_of(server, token_file, **fields)


def test_a_public_client_or_a_confidential_one(server, token_file, tmp_path):
    assert settings_of(server, token_file).source.client_secret_file == ""
    secret = tmp_path / "secret"
    secret.write_text("s")
    assert settings_of(server, token_file, client_secret_file=str(secret), client_auth="post").source


def test_write_atomic_replaces_the_target_of_a_symlink_and_leaves_nothing_on_failure(tmp_path):
    real = tmp_path / "real.token"
    real.write_text("old")
    link = tmp_path / "link.token"
    link.symlink_to(real)
    got = write_atomic(str(link), b"new\n")
    assert link.is_symlink() and real.read_bytes() == b"new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert got == (real.stat().st_dev, real.stat().st_ino, 4, real.stat().st_mtime_ns)
    with pytest.raises(Failed, match=r"^cannot write it \(No such file or directory\)"):
        write_atomic(str(tmp_path / "gone" / "x.token"), b"x")
    assert sorted(os.listdir(tmp_path)) == ["link.token", "real.token"]


def test_entries_sharing_one_file_must_be_one_client_at_one_endpoint(server, token_file, tmp_path):
    """Another client's refresh with the token is refused (invalid_grant, "sign in again", which no sign-in cures):
    refused at configuration instead, naming both entries, however the file is spelled."""
    from header_augment_core.entries import NO_ENTRIES, build

    link = tmp_path / "link.token"
    link.symlink_to(token_file)

    def entry(name, path, **fields):
        settings = settings_of(server, path, **fields)
        return settings, lambda field, name=name: f"{name}: {field}"

    with pytest.raises(SettingsError) as refused:
        build([entry("drive", token_file), entry("mail", link, client_id="another")], NO_ENTRIES, None, "")
    assert "mail: refresh_token_file" in str(refused.value) and "drive: refresh_token_file" in str(refused.value)
    other_url = f"{server.url}/elsewhere"
    with pytest.raises(SettingsError):
        build([entry("drive", token_file), entry("mail", link, url=other_url)], NO_ENTRIES, None, "")
    built = build([entry("drive", token_file), entry("mail", link, token_scope="mail")], NO_ENTRIES, None, "")
    try:
        assert len(built.bindings) == 2
    finally:
        for binding in built.bindings:
            binding.refresher.stop()
