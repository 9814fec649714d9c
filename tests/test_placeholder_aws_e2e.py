"""kind aws-sigv4 with a placeholder access key id: boto3 is given the placeholder and any secret, and the proxy
signs again, with the real credentials, only the requests signed with it; moto's server (IAM authentication on)
verifies every signature. A request signed with another key goes as it came; the placeholder toward a host no entry
covers is refused."""

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import client_for
from servers import Mitmdump
from test_aws_sigv4_e2e import FORM, IDENTITY_FORM, REGION, moto  # noqa: F401 (the module's own moto server)

PLACEHOLDER = "AKIA" + "PLACEHOLDER2345" + "7"  # 20 characters: AKIA and 16 of A-Z 2-7


@pytest.fixture(scope="module")
def proxy(moto, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("aws-placeholder")
    providers = tmp / "providers.yaml"
    providers.write_text(
        f"""
- name: sts
  kind: aws-sigv4
  service: sts
  region: {REGION}
  hosts: 127.0.0.1:{moto["port"]}
  placeholder: {PLACEHOLDER}
"""
    )
    env = {"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]}
    m = Mitmdump(tmp / "confdir", "--set", f"header_providers_file={providers}", env=env)
    yield m
    m.stop()


def sts(proxy, url: str, key: str):
    return boto3.client(
        "sts",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key="any-secret-the-sdk-wants",
        config=Config(proxies={"http": proxy.proxy}, retries={"max_attempts": 1}),
    )


def test_boto3_signing_with_the_placeholder_is_signed_again_and_verified(moto, proxy):  # noqa: F811
    identity = sts(proxy, moto["url"], PLACEHOLDER).get_caller_identity()
    assert identity["Arn"] == "arn:aws:iam::123456789012:user/proxy"


def test_a_request_signed_with_another_key_goes_untouched(moto, proxy):  # noqa: F811
    with pytest.raises(ClientError) as refused:
        sts(proxy, moto["url"], "AKIA" + "OTHERKEY234567ABC").get_caller_identity()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403  # moto's, for the client's signature


def test_the_placeholder_toward_a_host_no_entry_covers_is_refused(proxy):
    url = "http://127.0.0.2:9/"  # nothing listens there: nothing may be sent
    request = AWSRequest("POST", url, data=IDENTITY_FORM, headers=FORM)
    SigV4Auth(Credentials(PLACEHOLDER, "any-secret"), "sts", REGION).add_auth(request)
    with client_for(proxy.proxy) as client:
        answer = client.post(url, content=IDENTITY_FORM, headers=dict(request.headers.items()))
    first = answer.text.splitlines()[0]
    assert answer.status_code == 403 and first.startswith("header-augment: placeholder of sts refused")
