"""End to end for the credentials the proxy mints itself: a real mitmdump with the addon and a providers file of a
GitHub App, a Google service-account key, a token exchange of a projected token and a client assertion, each
against a loopback endpoint that verifies what it is sent (tests/token_issuers.py), echo upstreams and a client."""

from conftest import client_for, values_of
from servers import wait_until
from test_kinds_e2e import CONSOLE, upstreams  # noqa: F401 (a fixture)
from token_issuers import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER_ASSERTION,
    JWT_TYPE,
    FederationEndpoint,
    GitHubApi,
    GoogleTokenEndpoint,
    rsa_key,
    signed,
)

WIF_AUDIENCE = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/k8s"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
AZURE_CLIENT = "00000000-1111-2222-3333-444444444444"
SUBJECT = "system:serviceaccount:default:app"


def test_each_minting_kind_through_mitmdump_and_nothing_secret_in_its_output(mitmdump, upstreams, tmp_path):  # noqa: F811
    to_github, to_google, to_gcp, to_azure = upstreams(4)
    app_pem, app_public = rsa_key()
    sa_pem, sa_public = rsa_key()
    cluster_pem, cluster_public = rsa_key()
    github = GitHubApi("123456", "7890", app_public)
    google = GoogleTokenEndpoint("egress@my-project.iam.gserviceaccount.com", {"kid-1": sa_public}, [CLOUD_PLATFORM])
    sts = FederationEndpoint(
        cluster_public,
        WIF_AUDIENCE,
        "subject_token",
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": JWT_TYPE,
            "audience": WIF_AUDIENCE,
            "scope": CLOUD_PLATFORM,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        },
    )
    entra = FederationEndpoint(
        cluster_public,
        AZURE_AUDIENCE,
        "client_assertion",
        {
            "grant_type": "client_credentials",
            "client_id": AZURE_CLIENT,
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "scope": "https://graph.microsoft.com/.default",
        },
    )
    try:
        (tmp_path / "app.pem").write_bytes(app_pem)
        (tmp_path / "key.json").write_text(google.key_file(sa_pem, "kid-1"))
        subject_tokens = [signed(cluster_pem, sub=SUBJECT, aud=WIF_AUDIENCE, jti="first")]
        (tmp_path / "gcp-token").write_text(subject_tokens[0])
        assertion = signed(cluster_pem, sub=SUBJECT, aud=AZURE_AUDIENCE)
        (tmp_path / "azure-token").write_text(assertion)
        providers = tmp_path / "providers.yaml"
        entries = f"""
- name: github
  kind: github-app
  app_id: 123456
  installation_id: 7890
  private_key_file: {tmp_path / "app.pem"}
  api_url: {github.base}
  permissions: {{contents: read}}
  hosts: 127.0.0.1:{to_github.port}
- name: google
  kind: google-service-account
  key_file: {tmp_path / "key.json"}
  scopes: [{CLOUD_PLATFORM}]
  hosts: 127.0.0.1:{to_google.port}
- name: gcp
  kind: oauth2
  grant: token-exchange
  url: {sts.url}
  subject_token_file: {tmp_path / "gcp-token"}
  audience: "{WIF_AUDIENCE}"
  token_scope: {CLOUD_PLATFORM}
  requested_token_type: {ACCESS_TOKEN_TYPE}
  hosts: 127.0.0.1:{to_gcp.port}
- name: azure
  kind: oauth2
  url: {entra.url}
  client_id: {AZURE_CLIENT}
  client_assertion_file: {tmp_path / "azure-token"}
  token_scope: https://graph.microsoft.com/.default
  hosts: 127.0.0.1:{to_azure.port}
"""
        providers.write_text(entries)
        m = mitmdump(
            *("--set", f"header_providers_file={providers}", "-s", CONSOLE),
            *("--set", "termlog_verbosity=debug", "--set", "flow_detail=0"),
        )
        with client_for(m.proxy) as client:
            for upstream, issuer in [(to_github, github), (to_google, google), (to_gcp, sts), (to_azure, entra)]:
                assert values_of(client.get(upstream.url), "Authorization") == [f"Bearer {issuer.issued[-1]}"]
            assert github.requests[0]["body"] == {"permissions": {"contents": "read"}}

            # The kubelet rotates the projected token: the next exchange sends the new one.
            subject_tokens.append(signed(cluster_pem, sub=SUBJECT, aud=WIF_AUDIENCE, jti="second"))
            (tmp_path / "gcp-token").write_text(subject_tokens[1])
            assert client.get("http://console.test/augment.refresh").status_code == 200
            wait_until(lambda: len(sts.issued) == 2, what="a second exchange")
            assert sts.requests[1]["claims"]["jti"] == "second"
            wait_until(lambda: values_of(client.get(to_gcp.url), "Authorization") == [f"Bearer {sts.issued[1]}"])

            # A key that is no longer usable: the reload is refused naming the field, the previous one stays.
            (tmp_path / "broken.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
            mark = m.mark()
            providers.write_text(entries.replace(str(tmp_path / "app.pem"), str(tmp_path / "broken.pem")))
            m.wait_for(
                r"provider 1 \(github\): private_key_file: not an unencrypted PEM private key; keeping", start=mark
            )
            assert values_of(client.get(to_github.url), "Authorization") == [f"Bearer {github.issued[-1]}"]
            status = client.get("http://console.test/augment.status").text
            assert "] github (github-app 123456 installation 7890 at " in status
        assert m.stop() == 0
        assert not (github.refusals or google.refusals or sts.refusals or entra.refusals)
        secrets = [
            *[line for pem in (app_pem, sa_pem) for line in pem.decode().splitlines()[1:-1]],
            *(r["jwt"] for r in github.requests),
            *(r["assertion"] for r in google.requests),
            *subject_tokens,
            assertion,
            *(issuer.issued for issuer in (github, google, sts, entra)),
        ]
        for secret in secrets:
            for value in [secret] if isinstance(secret, str) else secret:
                assert value not in m.output and value not in status
        for value in ["ghs_", "ya29.", "fed-", "eyJ"]:  # not even a piece of a token or a JWT
            assert value not in m.output and value not in status
    finally:
        for issuer in (github, google, sts, entra):
            issuer.close()


def test_an_unusable_key_stops_start_up_naming_the_field(mitmdump, tmp_path):
    (tmp_path / "key.json").write_text('{"type": "service_account", "client_email": "a@b"}')
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"- {{name: google, kind: google-service-account, key_file: {tmp_path / 'key.json'}, scopes: [s], hosts: a}}\n"
    )
    m = mitmdump("--set", f"header_providers_file={providers}", wait_listening=False)
    assert m.wait_exit() != 0
    assert "provider 1 (google): key_file: the key has no private_key" in m.output
