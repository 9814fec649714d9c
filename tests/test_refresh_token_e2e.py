"""End to end for a person's refresh token held by a real mitmdump: killed (SIGKILL) between the token endpoint's
answer and the rename of the rotated token, it restarts from what the file holds and refreshes; a revoked token
fails closed once its access token expires (503 with require); a sign-in with `header-augment login` is taken up
by the running proxy within a second. The server is authlib's (tests/token_issuers.py), which rotates at every use
and accepts a token rotated away for 30 s (as Okta and Auth0 do): the old token in the file after the kill."""

import json
import time
from types import SimpleNamespace

import pytest
from conftest import client_for, values_of
from servers import Mitmdump, Upstream, wait_until
from test_admin import ADMIN, admin_client
from token_issuers import AuthlibSignIn

from header_augment_core import login
from header_augment_core.files import PAUSE_BEFORE_RENAME

LIFETIME = 2  # seconds: the proxy refreshes at 80% of it, and the revoked case fails closed within it


@pytest.fixture(scope="module")
def killed_and_restarted(tmp_path_factory):
    """A proxy killed while it held a rotated token not yet renamed into place, and one started after it."""
    tmp = tmp_path_factory.mktemp("refresh-token")
    server, upstream = AuthlibSignIn(expires_in=LIFETIME), Upstream()
    # Another provider, whose tokens last an hour: only a look at its file can make the proxy refresh within the test.
    steady, steady_upstream = AuthlibSignIn(expires_in=3600), Upstream()
    token_file = tmp / "drive.token"
    first = server.signed_in(scope="drive")
    token_file.write_text(first + "\n")
    steady_file = tmp / "mail.token"
    steady_file.write_text(steady.signed_in(scope="mail") + "\n")
    providers = tmp / "providers.json"
    entry = {
        "name": "drive",
        "kind": "oauth2",
        "grant": "refresh-token",
        "url": server.url,
        "device_authorization_url": server.base + "/device",
        "client_id": server.client_id,
        "refresh_token_file": str(token_file),
        "hosts": f"127.0.0.1:{upstream.port}",
        "require": True,
    }
    mail = {
        **entry,
        "name": "mail",
        "url": steady.url,
        "device_authorization_url": steady.base + "/device",
        "refresh_token_file": str(steady_file),
        "hosts": f"127.0.0.1:{steady_upstream.port}",
    }
    providers.write_text(json.dumps({"providers": [entry, mail]}))
    marker = tmp / "paused"
    args = ("--set", f"header_providers_file={providers}", *ADMIN)
    try:
        killed = Mitmdump(tmp / "confdir", *args, env={PAUSE_BEFORE_RENAME: str(marker)})
        try:
            wait_until(marker.exists, what="the rotated token written to a temporary file, not renamed yet")
            killed.proc.kill()
            killed.wait_exit()
        finally:
            killed.kill_group()
        after_kill = SimpleNamespace(held=token_file.read_text().strip(), rotated=server.latest())
        m = Mitmdump(tmp / "confdir", *args)
        try:
            with admin_client(m) as admin:
                yield SimpleNamespace(
                    m=m,
                    admin=admin,
                    server=server,
                    upstream=upstream,
                    steady=steady,
                    steady_upstream=steady_upstream,
                    first=first,
                    after_kill=after_kill,
                    token_file=token_file,
                    providers=providers,
                )
        finally:
            m.stop()
    finally:
        for closing in (server, upstream, steady, steady_upstream):
            closing.close()


def bearer_seen(proxy, upstream=None) -> str | None:
    with client_for(proxy.m.proxy) as client:
        response = client.get((upstream or proxy.upstream).url)
    if response.status_code == 503:
        return None
    (value,) = values_of(response, "Authorization")
    return value.removeprefix("Bearer ")


def test_a_proxy_killed_mid_rotation_restarts_from_the_old_token_and_refreshes(killed_and_restarted):
    proxy = killed_and_restarted
    # Killed after the server had answered with a new token and before the rename: the file holds the old one.
    assert proxy.after_kill.held == proxy.first != proxy.after_kill.rotated
    assert bearer_seen(proxy) in proxy.server.issued
    assert proxy.server.presented[:2] == [proxy.first, proxy.first]  # the killed proxy's refresh, then the new one's
    assert proxy.token_file.read_text().strip() in proxy.server.refresh_tokens
    assert proxy.server.accepts(proxy.token_file.read_text().strip())


def sign_in(proxy, server, name) -> None:
    def approve_at_once(_seconds):
        server.approve(server.user_codes()[-1])

    assert login.main(["login", "--providers-file", str(proxy.providers), name], sleep=approve_at_once) == 0


def test_a_sign_in_is_taken_up_by_the_running_proxy_within_a_second(killed_and_restarted):
    proxy, steady = killed_and_restarted, killed_and_restarted.steady
    first = bearer_seen(proxy, proxy.steady_upstream)
    assert first == steady.issued[-1]
    sign_in(proxy, steady, "mail")  # its access token has an hour left: nothing but the file's change is due
    signed_in = time.monotonic()
    wait_until(lambda: bearer_seen(proxy, proxy.steady_upstream) != first, timeout=5, what="the new sign-in used")
    assert time.monotonic() - signed_in < 2.5  # two looks 0.5 s apart, the refresh; a slack for a busy machine
    assert steady.presented[-1] == steady.issued_by_device[-1]  # the sign-in's own refresh token


def test_a_revoked_token_fails_closed_then_a_sign_in_serves_again(killed_and_restarted):
    proxy, server = killed_and_restarted, killed_and_restarted.server
    wait_until(lambda: bearer_seen(proxy) is not None, what="a bearer token")
    server.revoke_all()
    wait_until(lambda: bearer_seen(proxy) is None, timeout=3 * LIFETIME, what="503 once the access token expired")
    status = next(p for p in proxy.admin.get("/status").json()["providers"] if p["name"] == "drive")
    assert status["fetches"]["failed_by_class"]["auth"] >= 1 and "header-augment login" in status["last_error"]
    sign_in(proxy, server, "drive")
    wait_until(lambda: bearer_seen(proxy) is not None, timeout=5, what="the new sign-in used")
    # Nothing secret in the proxy's output, the status or the metrics.
    shown = proxy.m.output + proxy.admin.get("/status").text + proxy.admin.get("/metrics").text
    secrets = [*server.refresh_tokens, *server.issued, *server.devices, *proxy.steady.refresh_tokens]
    assert not [s for s in secrets if s in shown]
