"""kind vault against a hostile or broken Vault and a careless operator: a server on 127.0.0.1 (one for the module)
whose every answer the test writes (a trickle, a 2 MiB body, JSON nested too deeply, a login answered without a
token, a redirect to another host, a 403 to everything), settings a careless operator gives (sys/ paths, a URL with a
password or a query, a namespace with `..`), the environment hvac and requests read. The clients are driven directly,
their refresher with an injected clock."""

import collections
import http.server
import json
import os
import threading
import time
import tracemalloc

import pytest
from servers import serve_in_background, wait_until

from header_augment_core.fields import SettingsError
from header_augment_core.kinds.vault import VaultClient
from header_augment_core.refresher import Refresher
from header_augment_core.rules import MAX_BODY_BYTES
from header_augment_core.settings import parse_settings

TOKEN = "s.file-token-never-shown"
SECRET = "gh-secret-never-shown"


class Vault:
    """An HTTP server whose answer to each path is `routes[path](handler)`: (status, headers, body), or None when
    the route wrote the answer itself. Every request is kept in `seen` as (method, path, headers)."""

    def __init__(self) -> None:
        self.routes: dict = {}
        self.seen: list[tuple[str, str, dict]] = []
        vault = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                vault.seen.append((self.command, self.path, dict(self.headers)))
                route = vault.routes.get(self.path, lambda _: (404, {}, b'{"errors":[]}'))
                try:
                    written = route(self)
                    if written is None:
                        return
                    status, headers, body = written
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True  # the client gave up on the answer

            do_GET = do_POST = do_PUT = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_background(self.server)

    def paths(self) -> collections.Counter:
        return collections.Counter(path for _, path, _ in self.seen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server():
    vault = Vault()
    yield vault
    vault.close()


@pytest.fixture
def vault(server):
    server.routes.clear()
    server.seen.clear()
    return server


def answer(document, status: int = 200, headers: dict | None = None):
    body = json.dumps(document).encode()
    return lambda _: (status, headers or {}, body)


def raw(body: bytes, status: int = 200, headers: dict | None = None):
    return lambda _: (status, headers or {}, body)


def kv2(data: dict):
    return answer({"data": {"data": data, "metadata": {"version": 1}}, "lease_duration": 0})


LOOKED_UP = answer({"data": {"ttl": 0, "renewable": False}})  # a root token: it never expires
LOGGED_IN = answer({"auth": {"client_token": "s.login-token", "lease_duration": 3600, "renewable": True}})
DENIED = raw(b'{"errors":["permission denied"]}', 403)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings_for(url: str, auth: dict, **fields):
    values = {"kind": "vault", "url": url, "secret": "secret/data/github", "hosts": "api.example", "auth": auth}
    return parse_settings(values | fields, lambda name: name)


def token_file(tmp_path) -> dict:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return {"token_file": str(path)}


def approle(tmp_path) -> dict:
    path = tmp_path / "secret-id"
    path.write_text("secret-id\n")
    return {"approle": {"role_id": "role", "secret_id_file": str(path)}}


def client_for(settings, clock=time.monotonic) -> VaultClient:
    return VaultClient(settings.source, settings.timeout, clock=clock)


# -- what the server answers ----------------------------------------------------------------------------------------


def test_an_answer_trickled_a_byte_at_a_time_ends_at_the_timeout(vault, tmp_path):
    """requests bounds each socket read, not a call: a byte every 0.2 s held the fetch for 20 s under a 1 s timeout."""

    def trickle(handler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n")
        for _ in range(60):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.1)

    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": trickle}
    started = time.monotonic()
    failed = client_for(settings_for(vault.url, token_file(tmp_path), field="token", timeout=1)).fetch()
    assert failed.reason_class == "timeout" and failed.reason.startswith("read secret/data/github")
    assert time.monotonic() - started < 2.5


def test_a_body_over_the_limit_is_not_read_into_memory(vault, tmp_path):
    body = b'{"data": {"data": {"token": "' + b"a" * (2 * MAX_BODY_BYTES) + b'"}, "metadata": {"version": 1}}}'
    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": raw(body)}
    failed = client_for(settings_for(vault.url, token_file(tmp_path), field="token")).fetch()
    assert (failed.reason_class, failed.reason.split(":")[0]) == ("size", "read secret/data/github")


@pytest.mark.parametrize("path", ["/v1/auth/token/lookup-self", "/v1/secret/data/github"])
def test_json_nested_too_deeply_is_format_not_a_stopped_refresher(vault, tmp_path, path):
    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": kv2({"token": SECRET})}
    vault.routes[path] = raw(b"[" * 100_000 + b"]" * 100_000)
    settings = settings_for(vault.url, token_file(tmp_path), field="token")
    refresher = Refresher(client_for(settings), settings)
    refresher.turn()
    assert not refresher.broken and refresher.counts.failed_by_class == {"format": 1}


@pytest.mark.parametrize(
    "login",
    [
        answer({}),
        answer({"auth": None}),
        answer({"auth": {"client_token": 5}}),
        answer({"auth": {"client_token": "s.a\nb"}}),
        raw(b"<html>a portal</html>", headers={"Content-Type": "text/html"}),
        raw(b"", 204),
        raw(b"", 307, {"Location": "http://127.0.0.1:1/v1/auth/approle/login"}),
    ],
    ids=["no-auth", "auth-null", "token-a-number", "token-a-newline", "html", "204", "307"],
)
def test_a_login_answered_without_a_token_is_format_and_the_refresher_goes_on(vault, tmp_path, login):
    """hvac takes the token out of a login's answer itself: KeyError or TypeError stopped the refresher for good."""
    vault.routes["/v1/auth/approle/login"] = login
    settings = settings_for(vault.url, approle(tmp_path), field="token")
    refresher = Refresher(client_for(settings), settings)
    refresher.turn()
    assert not refresher.broken and refresher.counts.failed_by_class == {"format": 1}
    assert refresher.last_error.startswith("login approle")


def test_a_value_of_a_secret_of_headers_that_is_an_object_is_rejected_not_a_stopped_refresher(vault, tmp_path):
    secret = {"X-Team": "platform", "X-Nested": {"a": "b"}, "X-List": ["a"], "X-Null": None}
    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": kv2(secret)}
    settings = settings_for(vault.url, token_file(tmp_path))
    refresher = Refresher(client_for(settings), settings)
    refresher.turn()
    assert not refresher.broken and refresher.snapshot.lowered == (b"x-team",)
    rejected = client_for(settings).fetch().answer.rejected
    assert [(r.name, "object" in r.reason) for r in rejected][:1] == [("X-Nested", True)]


def test_a_kv1_secret_with_keys_named_data_and_metadata_is_not_taken_for_kv2(vault, tmp_path):
    kv1 = {"data": {"data": {"token": "from-data"}, "metadata": {"owner": "x"}, "token": SECRET}}
    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": answer(kv1)}
    result = client_for(settings_for(vault.url, token_file(tmp_path), field="token")).fetch()
    assert result.ok and list(result.answer.headers) == [("Authorization", f"Bearer {SECRET}")]
    vault.routes["/v1/secret/data/github"] = answer({"data": {"data": {"token": "v2"}, "metadata": {"owner": "x"}}})
    assert client_for(settings_for(vault.url, token_file(tmp_path), field="token")).fetch().reason_class == "not_found"


def test_a_redirect_to_another_host_is_not_followed_and_the_token_stays_home(vault, tmp_path):
    elsewhere = Vault()
    try:
        elsewhere.routes["/v1/secret/data/github"] = kv2({"token": "from-elsewhere"})
        vault.routes |= {
            "/v1/auth/token/lookup-self": LOOKED_UP,
            "/v1/secret/data/github": raw(b"", 307, {"Location": f"{elsewhere.url}/v1/secret/data/github"}),
        }
        failed = client_for(settings_for(vault.url, token_file(tmp_path), field="token")).fetch()
        assert failed.reason_class == "format" and elsewhere.seen == []
    finally:
        elsewhere.close()


def test_a_server_that_refuses_every_read_is_asked_within_the_backoff(vault, tmp_path):
    """A login accepted, every read and lookup-self 403: 60 s of the injected clock make a few logins, not a flood
    (hashicorp/vault#6659)."""
    vault.routes |= {
        "/v1/auth/approle/login": LOGGED_IN,
        "/v1/auth/token/lookup-self": DENIED,
        "/v1/secret/data/github": DENIED,
    }
    clock = Clock()
    settings = settings_for(vault.url, approle(tmp_path), field="token")
    refresher = Refresher(client_for(settings, clock), settings, clock=clock)
    while clock.now < 1060:
        clock.now = max(clock.now, refresher.wake_at())
        refresher.step()
    assert refresher.counts.failed_by_class["auth"] <= 8 and sum(vault.paths().values()) <= 24
    assert set(vault.paths()) == {"/v1/auth/approle/login", "/v1/auth/token/lookup-self", "/v1/secret/data/github"}


def test_the_environment_of_hvac_and_requests_changes_nothing(vault, tmp_path, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "s.from-the-environment")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("VAULT_NAMESPACE", "elsewhere")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "none.pem"))
    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": kv2({"token": SECRET})}
    result = client_for(settings_for(vault.url, token_file(tmp_path), field="token")).fetch()
    assert result.ok
    sent = [(headers.get("X-Vault-Token"), headers.get("X-Vault-Namespace")) for _, _, headers in vault.seen]
    assert sent == [(TOKEN, None), (TOKEN, None)]


# -- what the operator writes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named", "saying"),
    [
        ({"secret": "sys/raw/core/keyring"}, "secret", "not secret engines"),
        ({"secret": "auth/token/lookup-self"}, "secret", "not secret engines"),
        ({"secret": "secret/%2e%2e/sys/x"}, "secret", "not a Vault API path"),
        ({"url": "https://user:hunter2@vault.example:8200"}, "url", "no user or password"),
        ({"url": "https://vault.example:8200/?x=1"}, "url", "no query or fragment"),
        ({"url": "https://vault.example:8200#x"}, "url", "no query or fragment"),
        ({"url": "https://vault.example:8200/v1/"}, "url", "without /v1"),
        ({"namespace": "team/.."}, "namespace", "not a namespace path"),
        ({"namespace": "team\nother"}, "namespace", "not a namespace path"),
    ],
)
def test_a_careless_setting_is_refused_naming_it(fields, named, saying):
    values = {"kind": "vault", "url": "https://vault.example:8200", "secret": "kv/data/a", "hosts": "a"}
    with pytest.raises(SettingsError) as raised:
        parse_settings(values | {"auth": {"token_file": "/t"}} | fields, lambda name: name)
    assert str(raised.value).split(":")[0] == named and saying in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_path_behind_a_reverse_proxy_and_a_namespace_with_slashes_are_kept(vault, tmp_path):
    vault.routes |= {
        "/vault/v1/auth/token/lookup-self": LOOKED_UP,
        "/vault/v1/secret/data/github": kv2({"token": SECRET}),
    }
    settings = settings_for(f"{vault.url}/vault/", token_file(tmp_path), field="token", namespace="/team/child/")
    assert client_for(settings).fetch().ok
    assert [headers.get("X-Vault-Namespace") for _, _, headers in vault.seen] == ["team/child", "team/child"]


def test_no_value_reaches_the_log_of_a_refresher_thread_at_debug(vault, tmp_path, caplog):
    vault.routes |= {"/v1/auth/approle/login": LOGGED_IN, "/v1/secret/data/github": kv2({"token": SECRET})}
    settings = settings_for(vault.url, approle(tmp_path), field="token")
    results = []
    with caplog.at_level("DEBUG"):
        thread = threading.Thread(target=lambda: results.append(client_for(settings).fetch()), name="header-augment-1")
        thread.start()
        thread.join()
    assert results[0].ok
    assert not any(s in caplog.text for s in ("s.login-token", SECRET, "secret-id"))


def trickled(handler) -> None:
    """An answer whose head promises 60 bytes, sent a byte every 0.1 s."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n")
    for _ in range(60):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.1)


def test_an_abort_ends_a_call_in_flight_at_once(vault, tmp_path):
    vault.routes |= {"/v1/auth/token/lookup-self": LOOKED_UP, "/v1/secret/data/github": trickled}
    client = client_for(settings_for(vault.url, token_file(tmp_path), field="token", timeout=30))
    results = []
    thread = threading.Thread(target=lambda: results.append(client.fetch()))
    thread.start()
    wait_until(lambda: vault.paths()["/v1/secret/data/github"] == 1, what="the read to be in flight")
    aborted_at = time.monotonic()
    client.abort()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - aborted_at < 1
    assert not results[0].ok


# -- the AWS kinds against a hostile endpoint (AWS_ENDPOINT_URL) ----------------------------------------------------


@pytest.fixture
def aws(vault, monkeypatch, tmp_path):
    """botocore's chain and endpoint pointed at the test's server."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-never-shown")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", vault.url)
    return vault


def aws_client(timeout: float = 5, kind: str = "aws-secrets-manager"):
    locator = {"secret_id": "github"} if kind == "aws-secrets-manager" else {"parameter": "/github"}
    values = {"kind": kind, "region": "eu-west-1", "hosts": "api.example", "timeout": timeout} | locator
    settings = parse_settings(values, lambda name: name)
    return settings.source.client(settings.timeout)


def test_aws_an_answer_trickled_a_byte_at_a_time_ends_at_the_timeout(aws):
    """botocore's urllib3 bounds each socket read, not a call: 20 s under a 2 s timeout."""
    aws.routes["/"] = trickled
    started = time.monotonic()
    failed = aws_client(timeout=1).fetch()
    assert (failed.reason_class, failed.reason.split(":")[0]) == ("timeout", "github")
    assert time.monotonic() - started < 2.5


def test_aws_a_body_over_the_limit_and_json_nested_too_deeply(aws):
    aws.routes["/"] = raw(json.dumps({"SecretString": "a" * (2 * MAX_BODY_BYTES)}).encode())
    assert aws_client().fetch().reason_class == "size"
    aws.routes["/"] = raw(b"[" * 100_000 + b"]" * 100_000)
    assert aws_client().fetch().reason_class == "format"


def test_aws_an_answer_without_a_value_is_not_called_binary(aws):
    aws.routes["/"] = raw(b"<html>a captive portal</html>", headers={"Content-Type": "text/html"})
    failed = aws_client().fetch()
    assert failed.reason_class == "format" and "SecretString" in failed.reason and "binary" not in failed.reason
    aws.routes["/"] = answer({"SecretBinary": "AAE="})
    assert "binary" in aws_client().fetch().reason
    aws.routes["/"] = answer({"Parameter": {"Value": ["a"]}})
    assert aws_client(kind="aws-ssm-parameter").fetch().reason_class == "format"


def test_aws_an_abort_ends_a_call_in_flight_at_once(aws):
    aws.routes["/"] = trickled
    client = aws_client(timeout=30)
    results = []
    thread = threading.Thread(target=lambda: results.append(client.fetch()))
    thread.start()
    wait_until(lambda: aws.paths()["/"] == 1, what="the call to be in flight")
    aborted_at = time.monotonic()
    client.abort()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - aborted_at < 1
    assert not results[0].ok
    client.close()


def test_aws_many_providers_share_what_botocore_parsed(aws):
    """Each client's own botocore session parsed the service's model and endpoint rules again: 8.7 MB a provider,
    870 MB for 100. Ten clients, each having fetched, hold well under that together."""
    aws.routes["/"] = answer({"SecretString": "aws-token"})
    aws_client().fetch()  # what is shared is made once, before the count
    tracemalloc.start()
    try:
        clients = [aws_client() for _ in range(10)]
        assert all(client.fetch().ok for client in clients)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 20 * 2**20
