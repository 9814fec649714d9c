"""`header-augment login` and `header-augment logout`: a person signs in once for an entry of kind oauth2 with grant
refresh-token, and the proxy holds the refresh token from then on (kinds/oauth2.py).

    header-augment login --providers-file providers.yaml drive     # device authorization grant (RFC 8628)
    header-augment login --browser --providers-file providers.yaml drive   # authorization code, PKCE, loopback
    header-augment logout --providers-file providers.yaml drive    # revocation (RFC 7009), then the file removed

`login` prints the verification URI and the user code, never the device code or a token; it polls the token endpoint
at the server's interval (5 s more after each slow_down). `login --browser`, for the providers that refuse the device
grant the scopes people need, sends the browser to the authorization endpoint with a PKCE challenge (RFC 7636, S256)
and takes the code at a loopback redirect on 127.0.0.1 (RFC 8252 §7.3). Either writes the refresh token to the
entry's refresh_token_file the way the proxy writes a rotated one (files.write_atomic): a failed sign-in writes
nothing. A running proxy reads the new file within a second.
"""

import argparse
import base64
import dataclasses
import hashlib
import http.server
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
import webbrowser
from collections.abc import Callable
from typing import TextIO

from .failures import Failed
from .fields import SettingsError, shown
from .files import read_regular, write_atomic
from .http_exchange import HttpExchange, redact_url
from .kinds.oauth2 import (
    MAX_SECRET_FILE_BYTES,
    OAuth2Source,
    client_authentication,
    oauth_error,
    refresh_token_of,
    token_json,
)
from .providers_file import load_providers_file

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5  # RFC 8628 §3.2: when the server gives none
SLOW_DOWN = 5  # RFC 8628 §3.5: added to the interval at each slow_down, for this and every later poll
# What the device authorization endpoint sends to be shown: printed to a terminal, so checked to hold nothing but
# visible ASCII (no escape sequence), and short.
_SHOWN = re.compile(r"[\x21-\x7e]{1,2048}")
_URI = re.compile(r"https?://[\x21-\x7e]{1,2040}")
# How long `login --browser` waits for the browser to come back to the loopback redirect.
BROWSER_WAIT = 300.0


class LoginError(Exception):
    """Why the command ends without success, for the person running it."""


def main(
    args: list[str],
    *,
    out: TextIO | None = None,
    sleep=time.sleep,
    clock=time.monotonic,
    open_browser: Callable[[str], object] = webbrowser.open,
) -> int:
    """Runs `login` or `logout` (the first of `args`); returns the exit status. `sleep` and `clock` are injected by
    the tests, which poll in no real time, and `open_browser` by those that play the person's browser."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="header-augment", description="Sign a person in or out for an entry.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("login", "get the entry's first refresh token (device authorization grant, RFC 8628)"),
        ("logout", "revoke the entry's refresh token (RFC 7009, where the entry has a revocation_url); remove it"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--providers-file", required=True, help="the providers file that has the entry")
        command.add_argument("name", help="the entry's name (kind oauth2, grant refresh-token)")
        if name == "login":
            command.add_argument(
                "--browser",
                action="store_true",
                help="sign in in a browser (authorization code with PKCE, loopback redirect) at authorization_url",
            )
    options = parser.parse_args(args)
    try:
        source, timeout = _entry(options.providers_file, options.name)
        if options.command == "login" and options.browser:
            _save(source, _browser_login(source, timeout, out, open_browser), out)
        elif options.command == "login":
            _save(source, _device_login(source, timeout, out, sleep, clock), out)
        else:
            _logout(source, timeout, out)
    except (SettingsError, Failed, LoginError) as e:
        print(f"header-augment {options.command}: {e}", file=sys.stderr)
        return 1
    return 0


def _entry(path: str, name: str) -> tuple[OAuth2Source, float]:
    entries, _ = load_providers_file(path, "--providers-file")
    for settings, label in entries:
        if settings.name == name:
            source = settings.source
            if not isinstance(source, OAuth2Source) or source.grant != "refresh-token":
                raise LoginError(f"{label('kind')}: login and logout are for kind oauth2 with grant refresh-token")
            return source, settings.timeout
    names = ", ".join(s.name for s, _ in entries if s.name) or "none"
    raise LoginError(f"{path}: no provider named {shown(name)} (named: {names})")


def _exchange(source: OAuth2Source, url: str, timeout: float) -> HttpExchange:
    """A client for another endpoint of the entry, reached the way its token endpoint is (CA, certificate, socket)."""
    return HttpExchange(dataclasses.replace(source, url=url), timeout, "application/json")


def _device_login(source: OAuth2Source, timeout: float, out: TextIO, sleep: Callable, clock: Callable) -> dict:
    if not source.device_authorization_url:
        raise LoginError("the entry has no device_authorization_url (the provider's RFC 8628 endpoint)")
    device = _exchange(source, source.device_authorization_url, timeout)
    try:
        form = {"scope": source.token_scope} if source.token_scope else {}
        headers = client_authentication(source, form)
        try:
            answer = device.send("POST", headers=headers, data=form)
        except Failed as e:
            where = redact_url(source.device_authorization_url)
            raise LoginError(f"the device authorization endpoint {where}: {e.reason}") from None
    finally:
        device.close()
    if answer.status != 200:
        error = oauth_error(answer)
        raise LoginError(f"the device authorization endpoint answered HTTP {answer.status}{f': {error}' * bool(error)}")
    grant = _device_grant(answer.body)
    print(f"To sign in, open {grant['verification_uri']} and enter the code {grant['user_code']}", file=out)
    if "verification_uri_complete" in grant:
        print(f"  or open {grant['verification_uri_complete']}", file=out)
    print(f"Waiting for the sign-in (the code is good for {grant['expires_in']:.0f} s)...", file=out, flush=True)
    return _poll(source, timeout, grant, sleep, clock)


def _save(source: OAuth2Source, token: dict, out: TextIO) -> None:
    """Writes the refresh token of a finished sign-in's token response to the entry's file."""
    refresh = token.get("refresh_token")
    if not isinstance(refresh, str):
        raise LoginError(
            "signed in, but the token endpoint gave no refresh token: the provider may want offline access asked "
            "for in token_scope (offline_access, or its own word)"
        )
    refresh = refresh_token_of(refresh, "refresh_token in the token response")
    directory = os.path.dirname(os.path.abspath(os.path.expanduser(source.refresh_token_file)))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise LoginError(f"refresh_token_file: cannot make its directory ({e.strerror})") from None
    try:
        write_atomic(source.refresh_token_file, refresh.encode() + b"\n")
    except Failed as e:
        raise LoginError(f"refresh_token_file: {e.reason}") from None
    print(f"Signed in: the refresh token is in {source.refresh_token_file}", file=out)


def _device_grant(body: bytes) -> dict:
    """The device authorization response (RFC 8628 §3.2), checked. Google names the URI verification_url."""
    try:
        grant = json.loads(body)
    except (ValueError, RecursionError):
        grant = None
    if not isinstance(grant, dict):
        raise LoginError("the device authorization response is not a JSON object")
    if "verification_uri" not in grant and "verification_url" in grant:
        grant["verification_uri"] = grant["verification_url"]
    for field, pattern in (("device_code", _SHOWN), ("user_code", _SHOWN), ("verification_uri", _URI)):
        if not isinstance(grant.get(field), str) or not pattern.fullmatch(grant[field]):
            raise LoginError(f"the device authorization response has no usable {field}")
    complete = grant.get("verification_uri_complete")
    if not isinstance(complete, str) or not _URI.fullmatch(complete):
        grant.pop("verification_uri_complete", None)
    for field, default in (("expires_in", None), ("interval", DEFAULT_INTERVAL)):
        value = grant.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86400:
            raise LoginError(f"the device authorization response has no usable {field}")
        grant[field] = value
    return grant


def _poll(source: OAuth2Source, timeout: float, grant: dict, sleep: Callable, clock: Callable) -> dict:
    """Asks the token endpoint until the person has approved (the token response), or raises LoginError."""
    deadline = clock() + grant["expires_in"]
    interval = grant["interval"]
    endpoint = _exchange(source, source.url, timeout)
    try:
        while True:
            # Not a wait past the code's life (an interval the server or slow_down made longer than what is left).
            if clock() + interval > deadline:
                raise LoginError("the code expired before the sign-in was finished: run header-augment login again")
            sleep(interval)
            form = {"grant_type": DEVICE_CODE_GRANT, "device_code": grant["device_code"]}
            try:
                answer = endpoint.send("POST", headers=client_authentication(source, form), data=form)
            except Failed as e:
                if e.reason_class not in ("timeout", "connect"):
                    raise
                interval *= 2  # RFC 8628 §3.5: back off on a connection that timed out
                continue
            if answer.status == 200:
                return token_json(answer.body)
            error = oauth_error(answer)
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += SLOW_DOWN
                continue
            if error == "access_denied":
                raise LoginError("the sign-in was refused (access_denied)")
            if error == "expired_token":
                raise LoginError("the code expired (expired_token): run header-augment login again")
            raise LoginError(f"the token endpoint answered HTTP {answer.status}{f': {error}' * bool(error)}")
    finally:
        endpoint.close()


class _Redirect(http.server.BaseHTTPRequestHandler):
    """The loopback redirect: takes the first GET that carries the expected state (a code or an error)."""

    server: "_Loopback"

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        given = {k: v[0] for k, v in query.items() if len(v) == 1}
        if not secrets.compare_digest(given.get("state", ""), self.server.state):
            self._answer(400, "This is not the answer to the sign-in that header-augment started.")
            return
        with self.server.lock:  # the first answer is the one used: a second (a reload) does not replace it
            first = not self.server.done.is_set()
            if first:
                self.server.answer = given
                self.server.done.set()
        if not first:
            self._answer(409, "header-augment already has the answer to this sign-in.")
            return
        self._answer(200, "header-augment: you can close this window and go back to the terminal.")

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass  # the request line holds the code


class _Loopback(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Redirect)
        self.state = state
        self.answer: dict[str, str] = {}
        self.done = threading.Event()
        self.lock = threading.Lock()


def _browser_login(source: OAuth2Source, timeout: float, out: TextIO, open_browser: Callable) -> dict:
    if not source.authorization_url:
        raise LoginError("the entry has no authorization_url (the provider's authorization endpoint)")
    verifier = secrets.token_urlsafe(64)  # RFC 7636 §4.1: 43 to 128 characters of the unreserved set
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    loopback = _Loopback(secrets.token_urlsafe(16))
    serving = threading.Thread(
        target=loopback.serve_forever, args=(0.05,), name="header-augment login redirect", daemon=True
    )
    serving.start()
    try:
        redirect_uri = f"http://127.0.0.1:{loopback.server_address[1]}/"
        query = {
            "response_type": "code",
            "client_id": source.client_id,
            "redirect_uri": redirect_uri,
            "state": loopback.state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if source.token_scope:
            query["scope"] = source.token_scope
        separator = "&" if urllib.parse.urlsplit(source.authorization_url).query else "?"
        url = source.authorization_url + separator + urllib.parse.urlencode(query)
        print(f"To sign in, open this address in a browser on this machine:\n  {url}", file=out, flush=True)
        open_browser(url)
        if not loopback.done.wait(BROWSER_WAIT):
            raise LoginError(f"no answer from the browser within {BROWSER_WAIT:.0f} s: run header-augment login again")
    finally:
        loopback.shutdown()
        loopback.server_close()
    answer = loopback.answer
    if "code" not in answer:
        error = answer.get("error", "")
        shown_error = error if re.fullmatch(r"[a-z_]{1,64}", error) else "no code"
        raise LoginError(f"the sign-in did not give a code ({shown_error})")
    form = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    endpoint = _exchange(source, source.url, timeout)
    try:
        reply = endpoint.send("POST", headers=client_authentication(source, form), data=form)
    finally:
        endpoint.close()
    if reply.status != 200:
        error = oauth_error(reply)
        raise LoginError(f"the token endpoint answered HTTP {reply.status}{f': {error}' * bool(error)}")
    return token_json(reply.body)


def _logout(source: OAuth2Source, timeout: float, out: TextIO) -> None:
    path = source.refresh_token_file
    # The file that holds the token, as the proxy and `login` find it: through a symlink, its target (removing
    # the link alone would leave the token on disk, and in use).
    target = os.path.realpath(os.path.expanduser(path))
    if not os.path.lexists(target):
        print(f"Not signed in: there is no {path}", file=out)
        return
    kept = f"{path} is kept, so that logout can be run again"
    try:
        # Read even without a revocation: what is removed must be a refresh token (not a file a symlink points
        # at by mistake).
        data, _ = read_regular(target, MAX_SECRET_FILE_BYTES)
        token = refresh_token_of(data.decode("latin-1"), "refresh_token_file")
    except Failed as e:
        raise LoginError(f"refresh_token_file: {e.reason.removeprefix('refresh_token_file: ')}: not removed") from None
    if source.revocation_url:
        form = {"token": token, "token_type_hint": "refresh_token"}
        endpoint = _exchange(source, source.revocation_url, timeout)
        try:
            answer = endpoint.send("POST", headers=client_authentication(source, form), data=form)
        except Failed as e:
            raise LoginError(f"the revocation endpoint: {e.reason}; {kept}") from None
        finally:
            endpoint.close()
        if answer.status != 200:  # RFC 7009 §2.2: 200 even for a token the server no longer knows
            error = oauth_error(answer)
            said = f"HTTP {answer.status}{f': {error}' * bool(error)}"
            raise LoginError(f"the revocation endpoint answered {said}; {kept}")
    try:
        os.unlink(target)
    except OSError as e:
        raise LoginError(f"refresh_token_file: cannot remove it ({e.strerror})") from None
    revoked = "revoked and " if source.revocation_url else "not revoked (no revocation_url), "
    print(f"Signed out: the refresh token was {revoked}removed from {path}", file=out)
