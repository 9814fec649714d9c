"""`paths` end to end: one real mitmdump for the module, in front of moto's S3 (IAM authentication on: an unsigned
request is refused with 403) and of the echo upstream. The aws-sigv4 entry may sign under /allowed/ only; the bucket
`secret` beside it must stay out of reach however the path or the query is written."""

import json

import boto3
import pytest
from echo_upstream import received
from servers import Mitmdump, Upstream
from test_aws_sigv4_e2e import REGION, _curl, moto  # noqa: F401 (a fixture)

SECRET = b"the secret object"
TOKEN = "tok-paths-0001"


@pytest.fixture(scope="module")
def s3(moto):  # noqa: F811 (the fixture imported above)
    """Moto's S3 as the proxy's own user reaches it: the buckets `allowed` and `secret`, an object in each."""
    client = boto3.client(
        "s3",
        endpoint_url=moto["url"],
        region_name=REGION,
        aws_access_key_id=moto["key"],
        aws_secret_access_key=moto["secret"],
    )
    for bucket in ("allowed", "secret"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="allowed", Key="x", Body=b"allowed x")
    client.put_object(Bucket="secret", Key="secret.txt", Body=SECRET)
    return client


@pytest.fixture(scope="module")
def echo():
    upstream = Upstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def proxy(moto, s3, echo, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("paths")
    (tmp / "token").write_text(TOKEN)
    providers = tmp / "providers.yaml"
    providers.write_text(
        f"""
- name: s3-allowed
  kind: aws-sigv4
  service: s3
  region: {REGION}
  hosts: 127.0.0.1:{moto["port"]}
  paths: [/allowed/]
  require: true
- name: s3-style-echo
  kind: aws-sigv4
  service: s3
  region: {REGION}
  hosts: 127.0.0.1:{echo.port}
  paths: [/allowed/]
- name: token
  path: {tmp / "token"}
  format: token
  hosts: 127.0.0.1:{echo.port}
  paths: [/api/v2, /public/]
"""
    )
    at = f"//127.0.0.1:{moto['port']}"
    m = Mitmdump(
        tmp / "confdir",
        *("--set", f"header_providers_file={providers}"),
        *("--map-remote", f"|{at}/renamed/|{at}/allowed/"),
        *("--map-remote", f"|{at}/allowed/moved-away/|{at}/secret/"),
        env={"AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]},
    )
    yield m
    m.stop()


def test_a_query_naming_the_allowed_prefix_is_not_signed_and_moto_refuses_it(moto, proxy):  # noqa: F811
    """The attack a `~u /allowed/` scope let through: the query holds the prefix, the path names the secret."""
    status, body = _curl(proxy, f"{moto['url']}/secret/secret.txt?x=/allowed/")
    assert status == 403
    assert SECRET.decode() not in body
    assert _curl(proxy, f"{moto['url']}/allowed/x?x=/secret/") == (200, "allowed x")


def _sent(proxy, url: str) -> tuple[str, list[tuple[str, str]]]:
    """What the echo upstream got for `url` (curl --path-as-is): its path and headers."""
    status, body = _curl(proxy, "--path-as-is", url)
    assert status == 200, body
    answer = json.loads(body)
    return answer["path"], received(answer)


@pytest.mark.parametrize(
    ("path", "signed"),
    [
        ("/allowed/x", True),
        ("/allowed/x?x=/secret/", True),
        ("/%61llowed/x", True),  # an escaped `a` is an `a`
        ("/allowed//x", True),
        ("/secret/x?x=/allowed/", False),
        ("/allowed", False),
        ("/allowedx", False),
        ("/allowed/../secret/x", False),
        ("/allowed/x/../../secret/x", False),
        ("/allowed/%2E%2E/secret/x", False),
        ("/allowed/..%2Fsecret/x", False),
        ("/allowed/..;/secret/x", False),
        ("/allowed/%252e%252e/secret/x", False),
        ("/secret/../allowed/x", False),  # S3's key ../allowed/x in the bucket secret (see below)
    ],
)
def test_a_signing_entry_signs_under_its_paths_only_however_the_path_is_written(echo, proxy, path, signed):
    arrived, headers = _sent(proxy, f"{echo.url}{path}")
    assert arrived.partition("?")[0] == path.partition("?")[0]  # sent on as written (a signed query is re-encoded)
    ours = [name for name, value in headers if name.lower() == "authorization" and value.startswith("AWS4-HMAC-")]
    assert (ours != []) is signed


def test_dot_segments_into_the_prefix_are_not_signed_either_as_s3_keeps_them_in_the_key(moto, s3, proxy):  # noqa: F811
    """S3 (and moto) read /secret/../allowed/planted as the key `../allowed/planted` in the bucket `secret`: resolving
    the dot segments (it would be /allowed/planted) and signing would have written into `secret`."""
    put = ("-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary", "planted")
    for path in ("/secret/../allowed/planted", "/secret/%2e%2e/allowed/planted"):
        # Unsigned: refused (moto's IAM check answers 500 for a key with `..` where it would answer 403).
        assert _curl(proxy, "--path-as-is", *put, f"{moto['url']}{path}")[0] != 200
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="secret")["Contents"]] == ["secret.txt"]
    assert _curl(proxy, *put, f"{moto['url']}/allowed/planted")[0] == 200
    assert s3.get_object(Bucket="allowed", Key="planted")["Body"].read() == b"planted"


def test_a_path_rewritten_by_map_remote_is_judged_as_it_is_sent(moto, proxy):  # noqa: F811
    assert _curl(proxy, f"{moto['url']}/renamed/x") == (200, "allowed x")  # sent to /allowed/x: signed
    status, body = _curl(proxy, f"{moto['url']}/allowed/moved-away/secret.txt")  # sent to /secret/secret.txt
    assert status == 403
    assert SECRET.decode() not in body


@pytest.mark.parametrize(
    ("path", "given"),
    [
        ("/api/v2", True),
        ("/api/v2/orders?limit=1", True),
        ("/public/", True),
        ("/%70ublic/a", True),
        ("/api/v2x", False),
        ("/api/v1?next=/api/v2/", False),
        ("/public", False),
        ("/public/../admin", False),
        ("/public/%2e%2e/admin", False),
        ("/api/v2/..%2F..%2Fadmin", False),
    ],
)
def test_a_header_adding_entry_adds_its_headers_under_its_paths_only(echo, proxy, path, given):
    arrived, headers = _sent(proxy, f"{echo.url}{path}")
    assert arrived == path
    assert (("Authorization", f"Bearer {TOKEN}") in headers) is given
