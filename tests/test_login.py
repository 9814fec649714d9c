"""`header-augment login` (the device authorization grant, RFC 8628) and `logout` (revocation, RFC 7009) against
authlib's own device endpoint, device-code grant and revocation endpoint (tests/token_issuers.py). The test plays the
person between polls; sleep and clock are injected, so polling takes no real time."""

import json
import stat
import urllib.parse

import httpx
import pytest
from token_issuers import AuthlibSignIn

from header_augment_core import cli, login


@pytest.fixture(scope="module")
def server():
    issuer = AuthlibSignIn()
    yield issuer
    issuer.close()


@pytest.fixture
def providers(tmp_path, server):
    path = tmp_path / "providers.json"
    entry = {
        "name": "drive",
        "hosts": "www.googleapis.com",
        "kind": "oauth2",
        "grant": "refresh-token",
        "url": server.url,
        "device_authorization_url": server.base + "/device",
        "revocation_url": server.base + "/revoke",
        "authorization_url": server.base + "/authorize",
        "client_id": server.client_id,
        "token_scope": "drive",
        "refresh_token_file": str(tmp_path / "person" / "drive.token"),
    }
    other = {"name": "static", "hosts": "example.com", "url": server.base + "/headers"}
    path.write_text(json.dumps({"providers": [entry, other]}))
    return path


class Person:
    """The injected sleep and clock: each sleep moves the clock on, and `act(n)` does what the person does during
    the n-th wait (from 1)."""

    def __init__(self, act=lambda n: None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.act = act

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.act(len(self.sleeps))

    def clock(self) -> float:
        return self.now


def run(providers, person, command="login", name="drive") -> int:
    return login.main([command, "--providers-file", str(providers), name], sleep=person.sleep, clock=person.clock)


def token_file(providers):
    return providers.parent / "person" / "drive.token"


def test_an_approved_sign_in_writes_the_refresh_token_and_prints_only_the_code_and_uri(server, providers, capsys):
    person = Person(lambda n: n == 2 and server.approve(server.user_codes()[-1]))
    assert run(providers, person) == 0
    out = capsys.readouterr().out
    device_code = next(reversed(server.devices))
    user_code = server.devices[device_code]["user_code"]
    assert f"open {server.base}/activate and enter the code {user_code}" in out
    assert f"{server.base}/activate?user_code={user_code}" in out  # verification_uri_complete
    assert device_code not in out and server.latest() not in out and server.issued[-1] not in out
    assert person.sleeps == [5, 5]  # the server's interval, before each poll
    assert server.device_requests[-1] == {"client_id": server.client_id, "scope": "drive"}
    path = token_file(providers)
    assert path.read_text() == server.latest() + "\n" and server.accepts(server.latest())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_slow_down_adds_five_seconds_to_this_and_every_later_poll(server, providers):
    server.slow_down = 1
    person = Person(lambda n: n == 3 and server.approve(server.user_codes()[-1]))
    assert run(providers, person) == 0
    assert person.sleeps == [5, 10, 10]


@pytest.mark.parametrize(
    ("act", "said"),
    [
        (lambda server: server.deny(server.user_codes()[-1]), "the sign-in was refused (access_denied)"),
        (lambda server: server.expire(server.user_codes()[-1]), "the code expired (expired_token)"),
    ],
)
def test_a_denied_or_expired_sign_in_ends_non_zero_and_writes_nothing(server, providers, capsys, act, said):
    path = token_file(providers)
    path.parent.mkdir()
    path.write_text("rt-from-before\n")
    person = Person(lambda n: n == 2 and act(server))
    assert run(providers, person) == 1
    assert said in capsys.readouterr().err
    assert path.read_text() == "rt-from-before\n" and len(person.sleeps) == 2


def test_a_person_who_never_answers_ends_at_the_code_s_expiry(server, providers, capsys):
    person = Person()
    server.device_lifetime = 30
    try:
        assert run(providers, person) == 1
    finally:
        server.device_lifetime = 1800
    assert "the code expired before the sign-in was finished" in capsys.readouterr().err
    assert person.sleeps == [5] * 6 and not token_file(providers).exists()


def test_logout_revokes_the_token_and_removes_the_file(server, providers, capsys):
    path = token_file(providers)
    path.parent.mkdir()
    token = server.signed_in(scope="drive")
    path.write_text(token + "\n")
    assert run(providers, Person(), "logout") == 0
    assert not server.accepts(token) and not path.exists()
    assert "revoked and removed" in capsys.readouterr().out
    assert run(providers, Person(), "logout") == 0  # nothing to do


@pytest.mark.parametrize(
    ("name", "said"),
    [("nobody", "no provider named 'nobody' (named: drive, static)"), ("static", "login and logout are for kind")],
)
def test_an_entry_that_cannot_sign_in_is_named_through_the_header_augment_command(providers, capsys, name, said):
    with pytest.raises(SystemExit) as ended:
        cli.main(["login", "--providers-file", str(providers), name])
    assert ended.value.code == 1
    assert said in capsys.readouterr().err


class Browser:
    """The person's browser: signs in at the authorization endpoint (authlib's, in `server.authorize`) and follows its
    redirect to the loopback address the command listens on."""

    def __init__(self, server, user="alice", redirect=None) -> None:
        self.server, self.user, self.redirect = server, user, redirect
        self.opened: list[str] = []

    def __call__(self, url: str) -> None:
        self.opened.append(url)
        location = self.redirect(url) if self.redirect else self.server.authorize(url, self.user)
        with httpx.Client(trust_env=False, timeout=5) as client:
            self.landed = client.get(location)


def run_browser(providers, browser) -> int:
    return login.main(["login", "--browser", "--providers-file", str(providers), "drive"], open_browser=browser)


def test_a_browser_sign_in_with_pkce_and_a_loopback_redirect_writes_the_refresh_token(server, providers, capsys):
    browser = Browser(server)
    assert run_browser(providers, browser) == 0
    (url,) = browser.opened
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith(server.base + "/authorize?") and url in capsys.readouterr().out
    assert query["code_challenge_method"] == "S256" and query["scope"] == "drive"
    assert query["redirect_uri"].startswith("http://127.0.0.1:") and browser.landed.status_code == 200
    assert server.requests[-1]["form"]["grant_type"] == "authorization_code"
    assert "code_verifier" in server.requests[-1]["form"]  # authlib checked it against the challenge
    assert token_file(providers).read_text() == server.latest() + "\n"
    assert not server.codes  # the code was used, once


def test_a_browser_sign_in_refused_or_answered_with_another_state_writes_nothing(server, providers, capsys):
    assert run_browser(providers, Browser(server, user=None)) == 1
    assert "the sign-in did not give a code (access_denied)" in capsys.readouterr().err

    def forged(url):  # a redirect that another page made the browser follow: not this sign-in's state
        location = server.authorize(url)
        return location.replace("state=", "state=forged")

    forged_browser = Browser(server, redirect=forged)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(login, "BROWSER_WAIT", 0.2)
        assert run_browser(providers, forged_browser) == 1
    assert forged_browser.landed.status_code == 400
    assert "no answer from the browser" in capsys.readouterr().err
    assert not token_file(providers).exists()
