"""kinds aws-secrets-manager and aws-ssm-parameter against moto's server (a real process on 127.0.0.1, IAM
authentication on once it is set up, started once for the module), reached through AWS_ENDPOINT_URL as botocore
resolves it: a secret's string and a field of its JSON, a rotated version read at the next fetch, a decrypted
parameter, and the failure classes of a missing secret, a denied policy and a key the server does not know."""

import json
import logging
import os
import sys

import boto3
import pytest
from helpers.doc_recipes import recipe_providers_file
from helpers.moto import moto_server, require_auth
from processes import free_port

from header_augment_core.fields import SettingsError
from header_augment_core.providers_file import load_providers_file
from header_augment_core.refresher import Refresher
from header_augment_core.settings import parse_settings

REGION = "eu-west-1"
READ = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue", "ssm:GetParameter"], "Resource": "*"},
    ],
}
NOTHING = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}
ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's server with a reader, a user allowed nothing of these, a role the reader may assume, two secrets and
    a SecureString parameter; then auth on."""
    with moto_server(REGION) as (url, setup):
        iam = boto3.client("iam", **setup)
        keys = {}
        for user, policy in (("admin", ADMIN), ("reader", READ), ("stranger", NOTHING)):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        stranger = iam.get_user(UserName="stranger")["User"]["Arn"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": stranger}, "Action": "sts:AssumeRole"}],
        }
        role = iam.create_role(RoleName="secrets", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName="secrets", PolicyName="p", PolicyDocument=json.dumps(READ))
        secrets = boto3.client("secretsmanager", **setup)
        secrets.create_secret(Name="github", SecretString="gh-one")
        secrets.create_secret(Name="bundle", SecretString=json.dumps({"token": "js-one", "n": 3}))
        ssm = boto3.client("ssm", **setup)
        ssm.put_parameter(Name="/proxy/token", Value="ssm-one", Type="SecureString")
        require_auth(url)
        admin = {**setup, "aws_access_key_id": keys["admin"]["AccessKeyId"]}
        admin["aws_secret_access_key"] = keys["admin"]["SecretAccessKey"]
        yield {"url": url, "keys": keys, "role": role, "admin": admin}


def use(monkeypatch, tmp_path, moto, user="reader", endpoint="AWS_ENDPOINT_URL"):
    """The environment botocore's chain and endpoint resolution read: this user's keys, moto's endpoint."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    key = moto["keys"][user]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv(endpoint, moto["url"])


def settings(kind: str, **fields):
    values = {"kind": kind, "region": REGION, "hosts": "api.example"} | fields
    return parse_settings(values, lambda name: name)


def fetch(s):
    return s.source.client(s.timeout).fetch()


def headers_of(result):
    assert result.ok, result.reason
    return list(result.answer.headers)


# -- settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "named", "saying"),
    [
        ("aws-secrets-manager", {}, "secret_id", "required"),
        ("aws-ssm-parameter", {"secret_id": "x"}, "secret_id", "not a setting of kind aws-ssm-parameter"),
        ("aws-ssm-parameter", {"parameter": "/p", "role_arn": "secrets"}, "role_arn", "not an ARN"),
        ("aws-secrets-manager", {"secret_id": "s", "format": "headers", "prefix": ""}, "prefix", "format token"),
        ("aws-secrets-manager", {"secret_id": "s", "format": "yaml"}, "format", "not accepted"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(kind, fields, named, saying):
    with pytest.raises(SettingsError) as raised:
        settings(kind, **fields)
    assert str(raised.value).split(":")[0] == named and saying in str(raised.value)


def test_the_region_comes_from_the_environment_or_is_required(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    values = {"kind": "aws-ssm-parameter", "parameter": "/p", "hosts": "a"}
    with pytest.raises(SettingsError, match="^region: required"):
        parse_settings(values, lambda name: name)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert parse_settings(values, lambda name: name).source.region == "ap-south-1"


def test_without_botocore_the_kind_is_refused_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "botocore.session", None)  # what an install without the [aws] extra has
    with pytest.raises(SettingsError) as raised:
        settings("aws-secrets-manager", secret_id="github")
    assert str(raised.value).startswith("secret_id:") and "requirements/aws.txt" in str(raised.value)


# -- Secrets Manager ----------------------------------------------------------------------------------------------


def test_the_secret_string_is_the_token_and_a_rotated_version_is_read_at_the_next_fetch(monkeypatch, tmp_path, moto):
    use(monkeypatch, tmp_path, moto)
    s = settings("aws-secrets-manager", secret_id="github")
    client = s.source.client(s.timeout)
    assert headers_of(client.fetch()) == [("Authorization", "Bearer gh-one")]
    admin = boto3.client("secretsmanager", **moto["admin"])
    admin.put_secret_value(SecretId="github", SecretString="gh-two")  # AWSCURRENT moves, gh-one is AWSPREVIOUS
    try:
        assert headers_of(client.fetch()) == [("Authorization", "Bearer gh-two")]
        previous = settings("aws-secrets-manager", secret_id="github", version_stage="AWSPREVIOUS")
        assert headers_of(fetch(previous)) == [("Authorization", "Bearer gh-one")]
    finally:
        admin.put_secret_value(SecretId="github", SecretString="gh-one")


def test_a_field_of_a_json_secret_and_the_failures_of_a_missing_field_and_a_string(monkeypatch, tmp_path, moto):
    use(monkeypatch, tmp_path, moto)
    s = settings("aws-secrets-manager", secret_id="bundle", field="token", header="X-Token", prefix="")
    assert headers_of(fetch(s)) == [("X-Token", "js-one")]
    missing = fetch(settings("aws-secrets-manager", secret_id="bundle", field="tokn"))
    assert missing.reason_class == "not_found" and "'tokn'" in missing.reason
    number = fetch(settings("aws-secrets-manager", secret_id="bundle", field="n"))
    assert number.reason_class == "format"
    plain = fetch(settings("aws-secrets-manager", secret_id="github", field="token"))
    assert plain.reason_class == "format" and "not JSON" in plain.reason


def test_a_secret_of_headers(monkeypatch, tmp_path, moto):
    use(monkeypatch, tmp_path, moto)
    s = settings("aws-secrets-manager", secret_id="bundle", format="headers")
    result = fetch(s)
    assert headers_of(result) == [("token", "js-one")] and result.answer.rejected_count == 1


def test_failures_are_classed_and_name_the_secret_never_a_value(monkeypatch, tmp_path, moto, caplog):
    caplog.set_level(logging.DEBUG)
    use(monkeypatch, tmp_path, moto)
    missing = settings("aws-secrets-manager", secret_id="gone")
    refresher = Refresher(missing.source.client(missing.timeout), missing)
    refresher.refresh()
    assert refresher.counts.failed_by_class == {"not_found": 1} and "gone" in refresher.last_error
    use(monkeypatch, tmp_path, moto, user="stranger")
    assert fetch(settings("aws-secrets-manager", secret_id="github")).reason_class == "permission"
    assert fetch(settings("aws-ssm-parameter", parameter="/proxy/token")).reason_class == "permission"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")
    denied = fetch(settings("aws-secrets-manager", secret_id="github"))
    assert denied.reason_class == "auth" and "github" in denied.reason
    for value in ("gh-one", "js-one", "ssm-one", moto["keys"]["reader"]["SecretAccessKey"], "not-the-secret-key"):
        assert value not in caplog.text


def test_a_role_assumed_through_sts(monkeypatch, tmp_path, moto):
    use(monkeypatch, tmp_path, moto, user="stranger")  # who may read nothing, but may assume the role
    role = settings("aws-secrets-manager", secret_id="github", role_arn=moto["role"])
    assert headers_of(fetch(role)) == [("Authorization", "Bearer gh-one")]


def test_an_endpoint_of_the_service_alone_and_one_nobody_answers(monkeypatch, tmp_path, moto):
    use(monkeypatch, tmp_path, moto, endpoint="AWS_ENDPOINT_URL_SECRETS_MANAGER")
    assert headers_of(fetch(settings("aws-secrets-manager", secret_id="github"))) == [
        ("Authorization", "Bearer gh-one")
    ]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{free_port()}")
    assert fetch(settings("aws-secrets-manager", secret_id="github")).reason_class == "connect"


# -- Parameter Store ----------------------------------------------------------------------------------------------


def test_a_securestring_parameter_decrypted_and_a_missing_one(monkeypatch, tmp_path, moto):
    use(monkeypatch, tmp_path, moto)
    s = settings("aws-ssm-parameter", parameter="/proxy/token", header="X-Api-Key", prefix="")
    assert headers_of(fetch(s)) == [("X-Api-Key", "ssm-one")]
    missing = fetch(settings("aws-ssm-parameter", parameter="/proxy/gone"))
    assert missing.reason_class == "not_found" and "/proxy/gone" in missing.reason


# The recipe of docs/secret-stores.md
RECIPE = recipe_providers_file("AWS Secrets Manager")  # the README's


def test_the_readme_recipe_secrets_manager(monkeypatch, tmp_path, moto):
    """The recipe of docs/secret-stores.md as written; the endpoint is moto's, through AWS_ENDPOINT_URL."""
    boto3.client("secretsmanager", **moto["admin"]).create_secret(
        Name="prod/egress/openai", SecretString=json.dumps({"api_key": "sk-recipe-0123456789"})
    )
    use(monkeypatch, tmp_path, moto)
    providers = tmp_path / "providers.yaml"
    providers.write_text(RECIPE)
    ((s, _),) = load_providers_file(str(providers))[0]
    assert headers_of(fetch(s)) == [("Authorization", "Bearer sk-recipe-0123456789")]
