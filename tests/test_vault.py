"""kind vault against a real OpenBao server (`bao server -dev` on 127.0.0.1, its data in memory, started once for
the module): KV 2 read with a token from a file, AppRole, JWT auth with a key the test made, renewal of a short-TTL
token, the failure classes a wrong path, a denied policy and a revoked token get, and the last good value kept
through a restart. The clients are driven directly (their fetch, a refresher with an injected clock); one test runs
a real mitmdump."""

import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import hvac
import jwt
import pytest
from conftest import client_for, values_of
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.doc_recipes import recipe_providers_file
from processes import Running, free_port
from servers import ROOT, wait_until

from header_augment_core.counters import RequestCounters
from header_augment_core.fields import SettingsError
from header_augment_core.kinds.vault import VaultClient
from header_augment_core.providers_file import load_providers_file
from header_augment_core.refresher import Refresher
from header_augment_core.schedule import Schedule
from header_augment_core.settings import parse_settings
from header_augment_core.status import provider_status

BAO = Path(sys.executable).parent / "bao"
READER = """
path "secret/data/github" { capabilities = ["read"] }
path "secret/data/headers" { capabilities = ["read"] }
path "secret/data/missing" { capabilities = ["read"] }
path "secret/data/e2e" { capabilities = ["read"] }
"""
AUDIENCE = "header-augment-tests"


class Bao:
    """`bao server -dev` on 127.0.0.1:`port`, its token helper's file in `home`; in memory, so a restart is empty."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = "root-" + secrets.token_hex(8)
        self.start()

    def start(self) -> None:
        env = {"HOME": str(self.home), "PATH": os.environ["PATH"]}
        self.server = Running(
            [
                str(BAO),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root}",
            ],
            cwd=self.home,
            env=env,
        )

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/v1/sys/health", trust_env=False, timeout=1).status_code == 200
            except httpx.HTTPError:
                assert self.server.proc.poll() is None, self.server.output
                return False

        wait_until(healthy, what="bao to answer /v1/sys/health")
        self.api = hvac.Client(url=self.url, token=self.root)

    def stop(self) -> None:
        self.server.kill_group()

    def token(self, policies: list[str], **kwargs) -> str:
        return self.api.auth.token.create(policies=policies, **kwargs)["auth"]["client_token"]

    def put(self, path: str, data: dict) -> None:
        self.api.secrets.kv.v2.create_or_update_secret(path=path, secret=data)


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    server = Bao(tmp_path_factory.mktemp("bao"))
    try:
        api = server.api
        api.sys.create_or_update_policy("reader", READER)
        server.put("github", {"token": "gh-one", "other": "x"})
        server.put("headers", {"X-Api-Key": "key-one", "X-Team": "blue", "X-Count": 3})
        server.put("elsewhere", {"token": "not-for-reader"})
        api.sys.enable_auth_method("approle")
        api.auth.approle.create_or_update_approle("proxy", token_policies=["reader"], token_ttl="1h")
        api.auth.approle.create_or_update_approle(
            "short", token_policies=["reader"], token_ttl="3s", token_max_ttl="4s"
        )
        api.auth.approle.create_or_update_approle(
            "batch", token_policies=["reader"], token_type="batch", token_ttl="1h"
        )
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        api.sys.enable_auth_method("jwt")
        api.auth.jwt.configure(jwt_validation_pubkeys=[public.decode()])
        api.auth.jwt.create_role(
            "proxy",
            role_type="jwt",
            user_claim="sub",
            bound_audiences=[AUDIENCE],
            token_policies=["reader"],
            claim_mappings={"build": "build"},
            allowed_redirect_uris=[],
        )
        # The README's recipe logs in with a service-account token at auth/kubernetes. That method asks the cluster's
        # TokenReview API, which no test has; the JWT method mounted there takes the same login (role and jwt) and
        # checks the token's signature with the key the test's "cluster" signs with.
        api.sys.enable_auth_method("jwt", path="kubernetes")
        api.auth.jwt.configure(jwt_validation_pubkeys=[public.decode()], path="kubernetes")
        api.auth.jwt.create_role(
            "egress-proxy",
            role_type="jwt",
            user_claim="sub",
            bound_audiences=["vault"],
            bound_subject="system:serviceaccount:egress:proxy",
            token_policies=["reader"],
            allowed_redirect_uris=[],
            path="kubernetes",
        )
        server.key = key
        yield server
    finally:
        server.stop()


def settings_for(bao: Bao, auth: dict, **fields):
    values = {"kind": "vault", "url": bao.url, "secret": "secret/data/github", "hosts": "api.example", "auth": auth}
    return parse_settings(values | fields, lambda name: name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for_settings(settings, clock=time.monotonic) -> VaultClient:
    return VaultClient(settings.source, settings.timeout, clock=clock)


def token_file(tmp_path: Path, token: str, name: str = "token") -> str:
    path = tmp_path / name
    path.write_text(token + "\n")
    return str(path)


def headers_of(result) -> list[tuple[str, str]]:
    assert result.ok, result.reason
    return list(result.answer.headers)


# -- settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "fields", "named", "saying"),
    [
        ({"token_file": "/t", "approle": {}}, {}, "auth", "one key"),
        ({"ldap": {"username": "u"}}, {}, "auth", "'ldap' is not an auth method"),
        ({"approle": {"role_id": "r"}}, {}, "auth", "approle.secret_id_file: required"),
        ({"jwt": {"role": "r", "jwt_file": "/j", "audience": "a"}}, {}, "auth", "jwt.'audience': not a field"),
        ({"kubernetes": {"role": "r", "mount": "../x"}}, {}, "auth", "kubernetes.mount"),
        ({"token_file": "/t"}, {"secret": "secret/data/x?version=1"}, "secret", "not a Vault API path"),
        ({"token_file": "/t"}, {"secret": "/v1/secret/data/x"}, "secret", "without /v1/"),
        ({"token_file": "/t"}, {"format": "token"}, "format", "without field"),
        ({"token_file": "/t"}, {"prefix": "Token "}, "prefix", "only with format token"),
        ({"token_file": "/t"}, {"url": ""}, "url", "not an http:// or https:// URL"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(auth, fields, named, saying):
    values = {"kind": "vault", "url": "http://127.0.0.1:1", "secret": "secret/data/x", "hosts": "a", "auth": auth}
    with pytest.raises(SettingsError) as raised:
        parse_settings(values | fields, lambda name: name)
    assert str(raised.value).split(":")[0] == named and saying in str(raised.value)


def test_kubernetes_defaults_to_the_pods_service_account_token_and_its_own_mount():
    settings = parse_settings(
        {"kind": "vault", "url": "https://vault:8200", "secret": "kv/data/a", "hosts": "a", "field": "t"}
        | {"auth": {"kubernetes": {"role": "proxy"}}},
        lambda name: name,
    )
    auth = settings.source.auth
    assert (auth.file, auth.mount, auth.role) == (
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "kubernetes",
        "proxy",
    )
    assert settings.source.format == "token" and settings.source.header == "Authorization"


def test_without_hvac_the_kind_is_refused_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "hvac", None)  # what an install without the [vault] extra has
    with pytest.raises(SettingsError) as raised:
        settings_for(SimpleNamespace(url="http://127.0.0.1:1"), {"token_file": "/t"})
    assert str(raised.value).startswith("kind:") and "requirements/vault.txt" in str(raised.value)


def test_a_ca_that_cannot_be_loaded_is_refused_naming_the_field(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    settings = settings_for(SimpleNamespace(url="https://127.0.0.1:1"), {"token_file": "/t"}, ca=str(bogus))
    with pytest.raises(SettingsError) as raised:
        settings.source.client(settings.timeout)
    assert raised.value.field == "ca"


# -- token_file, KV 2 -----------------------------------------------------------------------------------------------


def test_kv2_field_with_a_token_file_and_a_new_version_read_within_the_interval(bao, tmp_path):
    path = token_file(tmp_path, bao.token(["reader"]))
    settings = settings_for(bao, {"token_file": path}, field="token", interval="30s")
    clock = Clock()
    refresher = Refresher(client_for_settings(settings, clock), settings, clock=clock)
    refresher.step()
    assert refresher.snapshot.fields == ((b"Authorization", b"Bearer gh-one"),)
    bao.put("github", {"token": "gh-two"})
    assert refresher.next_fetch_at <= clock.now + 30.0
    clock.now = refresher.next_fetch_at - 0.01
    refresher.step()
    assert refresher.snapshot.fields == ((b"Authorization", b"Bearer gh-one"),)  # not due yet: no request
    clock.now += 0.01
    refresher.step()
    assert refresher.snapshot.fields == ((b"Authorization", b"Bearer gh-two"),)
    assert refresher.counts.failed == 0
    bao.put("github", {"token": "gh-one", "other": "x"})


def test_without_field_the_secret_is_an_object_of_headers_checked_as_an_answer(bao, tmp_path):
    path = token_file(tmp_path, bao.token(["reader"]))
    client = client_for_settings(settings_for(bao, {"token_file": path}, secret="secret/data/headers"))
    result = client.fetch()
    assert sorted(headers_of(result)) == [("X-Api-Key", "key-one"), ("X-Team", "blue")]
    assert [(r.name, "number" in r.reason) for r in result.answer.rejected] == [("X-Count", True)]


def test_a_header_and_prefix_of_its_own(bao, tmp_path):
    path = token_file(tmp_path, bao.token(["reader"]))
    settings = settings_for(bao, {"token_file": path}, field="token", header="X-GitHub-Token", prefix="")
    assert headers_of(client_for_settings(settings).fetch()) == [("X-GitHub-Token", "gh-one")]


def test_a_new_token_in_the_file_is_used_and_a_revoked_one_fails_as_auth(bao, tmp_path):
    first = bao.token(["reader"])
    path = token_file(tmp_path, first)
    client = client_for_settings(settings_for(bao, {"token_file": path}, field="token"))
    assert client.fetch().ok
    bao.api.auth.token.revoke(first)
    failed = client.fetch()
    assert failed.reason_class == "auth" and "secret/data/github" in failed.reason
    token_file(tmp_path, bao.token(["reader"]))
    assert headers_of(client.fetch()) == [("Authorization", "Bearer gh-one")]


def test_a_token_from_a_file_is_renewed_at_two_thirds_of_its_ttl_when_it_renews(bao, tmp_path):
    renewing, fixed = bao.token(["reader"], ttl="60s"), bao.token(["reader"], ttl="60s", renewable=False)
    for token in (renewing, fixed):
        clock = Clock()
        client = client_for_settings(
            settings_for(bao, {"token_file": token_file(tmp_path, token)}, field="token"), clock
        )
        first = client.fetch()
        assert first.ok and first.max_age == pytest.approx(40.0, abs=1.0)
        clock.now += first.max_age
        second = client.fetch()
        assert second.ok and second.max_age == pytest.approx(40.0 if token == renewing else 20.0, abs=1.0)
        looked = bao.api.auth.token.lookup(token)["data"]
        assert bool(looked.get("last_renewal_time")) == (token == renewing)


def test_a_namespace(bao, tmp_path):
    bao.api.adapter.post("/v1/sys/namespaces/team")
    team = hvac.Client(url=bao.url, token=bao.root, namespace="team")
    team.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})

    def written() -> bool:
        # A new KV 2 mount answers 400 ("Upgrading from non-versioned to versioned data") for a moment.
        try:
            team.secrets.kv.v2.create_or_update_secret(path="github", secret={"token": "team-one"})
        except hvac.exceptions.InvalidRequest:
            return False
        return True

    wait_until(written, what="the new KV 2 mount to take a write")
    path = token_file(tmp_path, bao.root)
    settings = settings_for(bao, {"token_file": path}, field="token", namespace="team")
    assert headers_of(client_for_settings(settings).fetch()) == [("Authorization", "Bearer team-one")]
    assert "namespace team" in settings.label


def test_a_wrong_path_a_missing_field_and_a_denied_policy_are_classed_and_named_in_the_status(bao, tmp_path):
    path = token_file(tmp_path, bao.token(["reader"]))
    cases = {
        "not_found": settings_for(bao, {"token_file": path}, secret="secret/data/missing", field="token"),
        "permission": settings_for(bao, {"token_file": path}, secret="secret/data/elsewhere", field="token"),
    }
    missing = settings_for(bao, {"token_file": path}, field="tokn")
    for expected, settings in cases.items():
        refresher = Refresher(client_for_settings(settings), settings)
        refresher.refresh()
        entry = SimpleNamespace(settings=settings, refresher=refresher, counters=RequestCounters())
        status = provider_status(entry, time.monotonic())
        assert status["fetches"]["failed_by_class"] == {expected: 1}
        assert settings.source.secret in status["last_error"]
        assert "not-for-reader" not in json.dumps(status)
    result = client_for_settings(missing).fetch()
    assert result.reason_class == "not_found" and "'tokn'" in result.reason


def test_an_aborted_client_asks_the_server_nothing_more(bao, tmp_path):
    client = client_for_settings(settings_for(bao, {"token_file": token_file(tmp_path, bao.token(["reader"]))}))
    client.abort()
    failed = client.fetch()
    assert failed.reason_class == "connect" and "aborted" not in failed.reason  # never the exception's text
    client.close()


def test_an_unreachable_server_is_connect(tmp_path):
    path = token_file(tmp_path, "s.nothing")
    settings = settings_for(SimpleNamespace(url=f"http://127.0.0.1:{free_port()}"), {"token_file": path})
    assert client_for_settings(settings).fetch().reason_class == "connect"


# -- logins ---------------------------------------------------------------------------------------------------------


def approle(bao: Bao, tmp_path: Path, role: str = "proxy") -> dict:
    role_id = bao.api.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = bao.api.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    return {"approle": {"role_id": role_id, "secret_id_file": token_file(tmp_path, secret_id, f"{role}-secret-id")}}


def test_approle_logs_in_and_a_wrong_secret_id_is_auth(bao, tmp_path):
    auth = approle(bao, tmp_path)
    client = client_for_settings(settings_for(bao, auth, field="token"))
    assert headers_of(client.fetch()) == [("Authorization", "Bearer gh-one")]
    token_file(tmp_path, "not-the-secret-id", "proxy-secret-id")
    other = client_for_settings(settings_for(bao, auth, field="token"))
    failed = other.fetch()
    assert (failed.reason_class, failed.reason.split(":")[0]) == ("auth", "login approle")


def test_a_token_that_does_not_renew_is_replaced_by_a_login_at_two_thirds_of_its_ttl(bao, tmp_path):
    clock = Clock()
    client = client_for_settings(settings_for(bao, approle(bao, tmp_path, "batch"), field="token"), clock)
    first = client.fetch()
    assert first.ok and 0 < first.max_age <= 3600 * 2 / 3
    token = client._vault.token  # the token this client holds (never shown anywhere else)
    clock.now += first.max_age
    assert client.fetch().ok
    assert client._vault.token != token


def test_a_short_ttl_token_is_renewed_past_its_first_ttl_then_replaced_near_its_max_ttl(bao, tmp_path):
    """Role `short`: a 3 s TTL, 4 s at most. Renewed at 2 s, to what its max leaves (less than the 3 s asked for),
    the token still reads after its first 3 s; its max being near, the next renewal is a login."""
    client = client_for_settings(settings_for(bao, approle(bao, tmp_path, "short"), field="token"))
    first = client.fetch()
    issued = time.monotonic()  # the server issued the token before this
    token = client._vault.token
    assert first.ok and first.max_age == pytest.approx(2.0, abs=0.3)
    wait_until(lambda: time.monotonic() >= issued + first.max_age, what="2/3 of the TTL")
    renewed = client.fetch()
    renewed_at = time.monotonic()
    assert renewed.ok and client._vault.token == token and 0 < renewed.max_age < 2.0
    wait_until(lambda: time.monotonic() >= issued + 3.05, what="the first TTL to pass")
    assert hvac.Client(url=bao.url, token=token).secrets.kv.v2.read_secret_version(
        "github", raise_on_deleted_version=True
    )["data"]["data"]
    wait_until(lambda: time.monotonic() >= renewed_at + renewed.max_age, what="2/3 of what the max TTL left")
    assert client.fetch().ok and client._vault.token != token


def sign(bao: Bao, build: str) -> str:
    now = int(time.time())
    claims = {"sub": "proxy", "aud": AUDIENCE, "iat": now, "exp": now + 600, "build": build}
    return jwt.encode(claims, bao.key, algorithm="ES256")


def test_jwt_login_and_a_replaced_jwt_file_logs_in_again_at_once(bao, tmp_path):
    path = tmp_path / "jwt"
    path.write_text(sign(bao, "one"))
    client = client_for_settings(settings_for(bao, {"jwt": {"role": "proxy", "jwt_file": str(path)}}, field="token"))
    assert headers_of(client.fetch()) == [("Authorization", "Bearer gh-one")]
    assert not client.changed()
    meta = hvac.Client(url=bao.url, token=client._vault.token).auth.token.lookup_self()["data"]["meta"]
    assert meta["build"] == "one"
    replacement = tmp_path / "jwt.new"
    replacement.write_text(sign(bao, "two"))
    replacement.rename(path)  # as the kubelet swaps a projected token
    wait_until(client.changed, what="the new JWT to be seen, settled")
    assert client.fetch().ok
    meta = hvac.Client(url=bao.url, token=client._vault.token).auth.token.lookup_self()["data"]["meta"]
    assert meta["build"] == "two"


def test_a_jwt_the_server_does_not_trust_is_auth(bao, tmp_path):
    stranger = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwt"
    now = int(time.time())
    path.write_text(jwt.encode({"sub": "x", "aud": AUDIENCE, "exp": now + 60}, stranger, algorithm="ES256"))
    client = client_for_settings(settings_for(bao, {"jwt": {"role": "proxy", "jwt_file": str(path)}}, field="token"))
    failed = client.fetch()
    assert (failed.reason_class, failed.reason.split(":")[0]) == ("auth", "login jwt")


RECIPE = recipe_providers_file("Vault or OpenBao from Kubernetes")  # the README's


def test_the_readme_recipe_kubernetes_auth(bao, tmp_path):
    """The README's recipe, with the test server's address and a service-account token the test signed where the
    kubelet would mount one."""
    account = tmp_path / "token"
    now = int(time.time())
    claims = {"sub": "system:serviceaccount:egress:proxy", "aud": "vault", "iat": now, "exp": now + 3600}
    account.write_text(jwt.encode(claims, bao.key, algorithm="ES256"))
    providers = tmp_path / "providers.yaml"
    text = RECIPE.replace("https://vault.vault.svc:8200", bao.url).replace("  ca: /var/run/secrets/vault/ca.crt\n", "")
    providers.write_text(text.replace("{role: egress-proxy}", f"{{role: egress-proxy, jwt_file: {account}}}"))
    entries, _ = load_providers_file(str(providers))
    ((settings, _),) = entries
    assert settings.source.auth.method == "kubernetes" and not settings.source.ca
    assert headers_of(settings.source.client(settings.timeout).fetch()) == [("Authorization", "Bearer gh-one")]


# -- nothing from the store is shown ----------------------------------------------------------------------------------


def test_no_value_reaches_the_log_at_debug(bao, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    token = bao.token(["reader"])
    path = token_file(tmp_path, token)
    for fields in ({"field": "token"}, {"secret": "secret/data/headers"}, {"secret": "secret/data/elsewhere"}):
        settings = settings_for(bao, {"token_file": path}, **fields)
        refresher = Refresher(client_for_settings(settings), settings)
        refresher.refresh()
        refresher.refresh()
    text = caplog.text
    assert "headers in use" in text and "refresh failed" in text
    for value in (token, "gh-one", "key-one", "not-for-reader", bao.root):
        assert value not in text


# -- a restart --------------------------------------------------------------------------------------------------------


def test_the_last_good_value_is_kept_while_the_server_restarts(tmp_path):
    server = Bao(tmp_path)
    try:
        server.put("github", {"token": "before"})
        path = token_file(tmp_path, server.root)
        settings = settings_for(server, {"token_file": path}, field="token", max_stale="1h")
        clock = Clock()
        refresher = Refresher(client_for_settings(settings, clock), settings, schedule=Schedule(60.0), clock=clock)
        refresher.step()
        server.stop()
        clock.now += 60.0
        refresher.step()
        assert refresher.counts.failed_by_class == {"connect": 1}
        assert refresher.snapshot.usable(clock.now)
        assert refresher.snapshot.fields == ((b"Authorization", b"Bearer before"),)
        server.start()  # empty: in memory; the same root token
        server.put("github", {"token": "after"})
        clock.now = refresher.next_fetch_at
        refresher.step()
        assert refresher.snapshot.fields == ((b"Authorization", b"Bearer after"),)
    finally:
        server.stop()


# -- end to end ---------------------------------------------------------------------------------------------------


def test_a_vault_secret_arrives_upstream_through_mitmdump_as_a_header_and_for_a_placeholder(
    bao, tmp_path, mitmdump, upstream
):
    providers = tmp_path / "providers.yaml"
    auth = approle(bao, tmp_path)["approle"]
    placeholder = "ph-vault-" + secrets.token_hex(12)
    token = "ghs_" + secrets.token_hex(16)
    bao.put("e2e", {"token": token})
    entry = f"""
    kind: vault
    url: {bao.url}
    secret: secret/data/e2e
    field: token
    auth:
      approle: {{role_id: {auth["role_id"]}, secret_id_file: {auth["secret_id_file"]}}}
    hosts: 127.0.0.1:{upstream.port}
    require: true"""
    providers.write_text(
        f"providers:\n  - name: github{entry}\n    paths: /direct\n  - name: stand-in{entry}\n"
        f"    placeholder: {placeholder}\n"
    )
    proxy = mitmdump("--set", f"header_providers_file={providers}", "--set", "termlog_verbosity=debug", cwd=ROOT)
    with client_for(proxy.proxy) as client:
        direct = client.get(f"http://127.0.0.1:{upstream.port}/direct")
        stood_in = client.get(f"http://127.0.0.1:{upstream.port}/x", headers={"Authorization": f"Bearer {placeholder}"})
    assert values_of(direct, "Authorization") == [f"Bearer {token}"]
    assert values_of(stood_in, "Authorization") == [f"Bearer {token}"]
    # The echoes come back with the token scrubbed: masked, or the placeholder again.
    assert token not in direct.text and token not in stood_in.text and placeholder in stood_in.text
    assert token not in proxy.output
