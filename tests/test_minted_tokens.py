"""The kinds that mint their own credentials (github-app, google-service-account) and the OAuth2 grants beyond a
static secret (token exchange, client assertion), each against a token endpoint on 127.0.0.1 that checks what the
real one checks (tests/token_issuers.py), through the refresher with its injected clock."""

import json
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_operating import FakeClock
from token_issuers import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER_ASSERTION,
    JWT_TYPE,
    AuthlibTokenEndpoint,
    FederationEndpoint,
    GitHubApi,
    GoogleTokenEndpoint,
    rsa_key,
    signed,
)

from header_augment_core.fields import SettingsError
from header_augment_core.refresher import TOKEN_REFRESH_AT, Refresher
from header_augment_core.settings import parse_settings

SCOPES = ["https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/devstorage.read_only"]
EMAIL = "egress@my-project.iam.gserviceaccount.com"


def settings_of(**fields):
    return parse_settings({"hosts": "*", **fields}, str)


def refresher_of(clock, **fields):
    settings = settings_of(**fields)
    return Refresher(settings.source.client(settings.timeout), settings, clock=clock)


def bearer(refresher) -> str:
    ((name, value),) = refresher.snapshot.fields
    assert name == b"Authorization"
    return value.decode().removeprefix("Bearer ")


def renews_before_expiry_and_never_sends_it_after(refresher, clock, issuer, lifetime, slack=0):
    """The token is fetched again before `lifetime` is over; once the endpoint fails, it is dropped at its expiry.
    `slack`: how much less than `lifetime` the token may have (an expiry time in whole seconds)."""
    first = refresher.refresh()
    assert bearer(refresher) == issuer.issued[-1]
    assert 0 < first <= lifetime * TOKEN_REFRESH_AT
    clock.now += first
    assert refresher.wake_at() <= clock.now
    refresher.step()
    assert bearer(refresher) == issuer.issued[-1] and len(issuer.issued) == 2
    renewed = clock.now
    issuer.fail_status = 503
    clock.now = renewed + lifetime - 1 - slack
    refresher.refresh_now()
    refresher.step()
    assert refresher.snapshot.usable(clock.now)  # kept while the token is good...
    clock.now = renewed + lifetime
    refresher.step()
    assert not refresher.snapshot.usable(clock.now)  # ...never after


@pytest.fixture
def github_key(tmp_path):
    pem, public = rsa_key()
    path = tmp_path / "app.pem"
    path.write_bytes(pem)
    return path, public


def github_fields(api, key_path, **more):
    return {
        "kind": "github-app",
        "app_id": api.app_id,
        "installation_id": api.installation_id,
        "private_key_file": str(key_path),
        "api_url": api.base,
        **more,
    }


def test_github_app_token_renewed_before_expires_at_and_never_sent_after(github_key, caplog):
    key_path, public = github_key
    api = GitHubApi("123456", "7890", public, expires_in=600)
    try:
        clock = FakeClock()
        refresher = refresher_of(
            clock, **github_fields(api, key_path, repositories=["octo-repo"], permissions={"contents": "read"})
        )
        with caplog.at_level(logging.DEBUG):
            renews_before_expiry_and_never_sends_it_after(refresher, clock, api, 600, slack=1)
        assert set(api.refusals) == {"told to fail"}  # nothing the proxy sent was refused
        assert api.requests[0]["body"] == {"repositories": ["octo-repo"], "permissions": {"contents": "read"}}
        assert refresher.last_error == "HTTP 503"
        for secret in (*api.issued, api.requests[0]["jwt"], key_path.read_text().splitlines()[1]):
            assert secret not in caplog.text
    finally:
        api.close()


def test_github_app_key_replaced_on_disk_is_used_from_the_next_mint(github_key):
    key_path, public = github_key
    api = GitHubApi("Iv23liAbCdEf", "42", public)
    try:
        clock = FakeClock()
        refresher = refresher_of(clock, **github_fields(api, key_path))
        refresher.refresh()
        assert api.requests[0]["body"] == {}  # nothing asked to be narrowed: the installation's own permissions
        pem, new_public = rsa_key()
        key_path.write_bytes(pem)
        api.public_keys = [new_public]  # the old key is deleted in the app's settings
        refresher.refresh()
        assert len(api.issued) == 2 and bearer(refresher) == api.issued[1] and api.refusals == []
    finally:
        api.close()


def google_fields(key_path, **more):
    return {"kind": "google-service-account", "key_file": str(key_path), "scopes": SCOPES, **more}


def test_google_service_account_token_renewed_and_dropped_at_expiry(tmp_path):
    pem, public = rsa_key()
    google = GoogleTokenEndpoint(EMAIL, {"kid-1": public}, SCOPES, subject="admin@example.com", expires_in=3599)
    try:
        key_path = tmp_path / "key.json"
        key_path.write_text(google.key_file(pem, "kid-1"))
        clock = FakeClock()
        refresher = refresher_of(clock, **google_fields(key_path, subject="admin@example.com"))
        renews_before_expiry_and_never_sends_it_after(refresher, clock, google, 3599)
        assert google.requests[0]["header"]["kid"] == "kid-1"

        # A new key (a new private_key_id) replaces the file: the next mint signs with it.
        pem, public = rsa_key()
        google.keys = {"kid-2": public}
        key_path.write_text(google.key_file(pem, "kid-2"))
        google.fail_status = 0
        refresher.refresh()
        assert google.requests[-1]["header"]["kid"] == "kid-2" and bearer(refresher) == google.issued[-1]

        # A key file broken on disk: the mint fails naming the field, and the token in use stays until it expires.
        key_path.write_text('{"type": "service_account"')
        refresher.refresh()
        assert refresher.last_error == "key_file: not a JSON key file"
        assert bearer(refresher) == google.issued[-1] and refresher.snapshot.usable(clock.now)
    finally:
        google.close()


@pytest.fixture
def cluster():
    """The cluster's service-account issuer: its signing key (PEM) and public key."""
    return rsa_key()


def test_token_exchange_uses_the_rotated_subject_token_at_the_next_exchange(tmp_path, cluster):
    pem, public = cluster
    audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/k8s"
    sts = FederationEndpoint(
        public,
        audience,
        "subject_token",
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": JWT_TYPE,
            "audience": audience,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "resource": "https://storage.googleapis.com/",
        },
        expires_in=3600,
    )
    try:
        token_file = tmp_path / "token"
        token_file.write_text(signed(pem, sub="system:serviceaccount:default:app", aud=audience, jti="first"))
        clock = FakeClock()
        refresher = refresher_of(
            clock,
            kind="oauth2",
            grant="token-exchange",
            url=sts.url,
            subject_token_file=str(token_file),
            audience=audience,
            token_scope="https://www.googleapis.com/auth/cloud-platform",
            requested_token_type=ACCESS_TOKEN_TYPE,
            resource="https://storage.googleapis.com/",
        )
        refresher.refresh()
        assert bearer(refresher) == sts.issued[0] and sts.requests[0]["claims"]["jti"] == "first"
        token_file.write_text(signed(pem, sub="system:serviceaccount:default:app", aud=audience, jti="second"))
        refresher.refresh()
        assert sts.requests[1]["claims"]["jti"] == "second" and bearer(refresher) == sts.issued[1]
        assert sts.refusals == []

        # The kubelet's token expired (written by another key, say): refused, and the issued one dropped at expiry.
        token_file.write_text(signed(rsa_key()[0], sub="system:serviceaccount:default:app", aud=audience))
        clock.now += 3600
        refresher.refresh_now()
        refresher.step()
        assert refresher.last_error == "HTTP 400: invalid_grant"
        assert not refresher.snapshot.usable(clock.now)
    finally:
        sts.close()


def test_client_assertion_replaces_the_secret_and_the_basic_header(tmp_path, cluster):
    pem, public = cluster
    assertion_audience = "api://AzureADTokenExchange"
    entra = FederationEndpoint(
        public,
        assertion_audience,
        "client_assertion",
        {
            "grant_type": "client_credentials",
            "client_id": "00000000-1111-2222-3333-444444444444",
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "scope": "https://graph.microsoft.com/.default",
        },
    )
    try:
        token_file = tmp_path / "azure-identity-token"
        token_file.write_text(signed(pem, sub="system:serviceaccount:default:app", aud=assertion_audience) + "\n")
        clock = FakeClock()
        refresher = refresher_of(
            clock,
            kind="oauth2",
            url=entra.url,
            client_id="00000000-1111-2222-3333-444444444444",
            client_assertion_file=str(token_file),
            token_scope="https://graph.microsoft.com/.default",
        )
        renews_before_expiry_and_never_sends_it_after(refresher, clock, entra, 3600)
    finally:
        entra.close()


@pytest.mark.parametrize("client_auth", ["basic", "post"])
def test_a_secret_with_a_space_reaches_authlib_with_either_client_auth(tmp_path, client_auth):
    """authlib decodes Basic credentials with `unquote`: a secret form-encoded (space as +) came out with a + and
    was refused (HTTP 401: invalid_client); percent-encoded (%20) it reads back as it was."""
    secret = "s3cret with spaces+plus/slash%25:colon"
    server = AuthlibTokenEndpoint("client id+1", secret)
    try:
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret + "\n")
        clock = FakeClock()
        refresher = refresher_of(
            clock,
            kind="oauth2",
            url=server.url,
            client_id="client id+1",
            client_secret_file=str(secret_file),
            client_auth=client_auth,
            token_scope="read",
        )
        renews_before_expiry_and_never_sends_it_after(refresher, clock, server, 3600)
        assert server.requests[0]["basic"] == (client_auth == "basic")
    finally:
        server.close()


def test_a_wrong_secret_is_refused_by_authlib_with_its_error_code(tmp_path):
    server = AuthlibTokenEndpoint("proxy", "right secret")
    try:
        secret_file = tmp_path / "secret"
        secret_file.write_text("wrong secret")
        settings = settings_of(kind="oauth2", url=server.url, client_id="proxy", client_secret_file=str(secret_file))
        result = settings.source.client(settings.timeout).fetch()
        assert (result.reason, result.reason_class) == ("HTTP 401: invalid_client", "status")
    finally:
        server.close()


def ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "private_key_file: cannot open it (No such file or directory)"),
        (b"", "private_key_file: not an unencrypted PEM private key"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "private_key_file: not an"),
        ("ec", "private_key_file: not an RSA private key (RS256 needs one)"),
    ],
)
def test_an_unusable_github_app_key_is_refused_naming_the_field(tmp_path, content, reason):
    path = tmp_path / "app.pem"
    if content is not None:
        path.write_bytes(ec_pem() if content == "ec" else content)
    fields = {"kind": "github-app", "app_id": "1", "installation_id": "2", "private_key_file": str(path)}
    with pytest.raises(SettingsError) as refused:
        settings_of(**fields)
    assert str(refused.value).startswith(reason)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda key: "not json", "key_file: not a JSON key file"),
        (lambda key: {**key, "private_key_id": ""}, "key_file: the key has no private_key_id"),
        (lambda key: {k: v for k, v in key.items() if k != "client_email"}, "key_file: the key has no client_email"),
        (lambda key: {**key, "token_uri": "file:///etc/passwd"}, "key_file: the key's token_uri is not an http(s)"),
        (lambda key: {**key, "private_key": ec_pem().decode()}, "key_file: not an RSA private key"),
        (lambda key: {**key, "private_key": "MIIE"}, "key_file: not an unencrypted PEM private key"),
        (lambda key: {**key, "type": "authorized_user"}, "key_file: not a service-account key"),
    ],
)
def test_an_unusable_service_account_key_is_refused_naming_the_field(tmp_path, change, reason):
    pem, _ = rsa_key()
    key = {"type": "service_account", "private_key_id": "k", "private_key": pem.decode(), "client_email": EMAIL}
    changed = change({**key, "token_uri": "https://oauth2.googleapis.com/token"})
    path = tmp_path / "key.json"
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(SettingsError) as refused:
        settings_of(**google_fields(path))
    assert str(refused.value).startswith(reason)
    assert pem.decode().splitlines()[1] not in str(refused.value)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"grant": "token-exchange"}, "subject_token_file: required for grant token-exchange"),
        (
            {"client_id": "c", "resource": "r", "client_secret_file": "SECRET"},
            "resource: only with grant token-exchange",
        ),
        (
            {"client_id": "c", "client_secret_file": "SECRET", "client_assertion_file": "SECRET"},
            "client_assertion_file: not with client_secret_file",
        ),
        ({"client_id": "c", "client_assertion_file": "SECRET", "client_auth": "post"}, "client_auth: only with"),
        ({"client_id": "c"}, "client_secret_file: required for kind oauth2 (or client_assertion_file)"),
        ({"grant": "token-exchange", "subject_token_file": "SECRET", "client_secret_file": "SECRET"}, "client_id: req"),
        ({"grant": "token-exchange", "subject_token_file": "EMPTY"}, "subject_token_file: empty"),
        ({"client_id": "c", "client_assertion_file": "/nonexistent"}, "client_assertion_file: cannot open it"),
        ({"kind": "github-app", "app_id": "1", "private_key_file": "SECRET"}, "installation_id: required"),
        ({"kind": "github-app", "app_id": "1", "installation_id": "x1"}, "installation_id: 'x1' is not an"),
        ({"kind": "google-service-account", "key_file": "SECRET"}, "scopes: required"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path, fields, reason):
    (tmp_path / "secret").write_text("a secret")
    (tmp_path / "empty").write_text("\n")
    files = {"SECRET": str(tmp_path / "secret"), "EMPTY": str(tmp_path / "empty")}
    values = {"kind": "oauth2", "url": "http://127.0.0.1:1/token"} | {k: files.get(v, v) for k, v in fields.items()}
    if values["kind"] != "oauth2":
        del values["url"]
    with pytest.raises(SettingsError) as refused:
        settings_of(**values)
    assert str(refused.value).startswith(reason)
