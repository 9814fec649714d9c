"""Which added values are scrubbed from answers: the credentials' (by name, and the names an entry's secret_headers
adds), in the forms an echo may show them; every added value is still masked in the flow."""

import base64
import gzip
import json
import time
from urllib.parse import quote

import header_augment
import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from header_augment_core import carried
from header_augment_core.secret_headers import is_credential
from header_augment_core.snapshot import MIN_SCRUBBED, Snapshot

TOKEN = "Bearer tok-3f9a1c77e2d54b8a"
MARK = b"<header-augment: Authorization>"
TENANT_MARK = b"<header-augment: X-Tenant>"


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("X-Api-Key", True),
        ("X-Auth-Token", True),
        ("X-Client-Secret", True),
        ("X-Session-Id", True),
        ("X-Hub-Signature-256", True),
        ("X-Amz-Security-Token", True),
        ("X-Goog-Credential", True),
        ("X-Tenant", False),
        ("X-Request-Source", False),
        ("Accept-Language", False),
        ("User-Agent", False),
    ],
)
def test_the_names_of_credentials(name, credential):
    assert is_credential(name) is credential


def forms_of(snapshot: Snapshot) -> set[bytes]:
    return {value for value, _ in snapshot.secrets}


def test_only_credentials_are_secrets_and_every_value_is_masked():
    snapshot = Snapshot.build([("Authorization", TOKEN), ("X-Tenant", "production")], 0, 0)
    assert forms_of(snapshot) == {TOKEN.encode(), b"tok-3f9a1c77e2d54b8a", b"Bearer%20tok-3f9a1c77e2d54b8a"}
    assert snapshot.probes == (b"tok-3f9a1c77e2d54b8a",)
    assert snapshot.masks[(b"x-tenant", b"production")] == TENANT_MARK


def test_a_caller_may_make_every_value_secret_whatever_its_name():
    snapshot = Snapshot.build([("X-Tenant", "production")], 0, 0, secret=lambda name: True)
    assert snapshot.secrets == ((b"production", TENANT_MARK),)


def test_the_forms_an_echo_may_show():
    basic = base64.b64encode(b"robot:pa55word+long").decode()  # padded: "...==", with a "+"
    token = "k+y/9=abcdef12"
    snapshot = Snapshot.build(
        [("Authorization", f"Basic {basic}"), ("X-Api-Key", token), ("Cookie", "sid=abc123def456; lang=en")], 0, 0
    )
    forms = forms_of(snapshot)
    assert {b"robot:pa55word+long", b"pa55word+long", b"robot%3Apa55word%2Blong"} <= forms  # Basic, decoded
    assert {basic.encode(), basic.rstrip("=").encode(), quote(basic, safe="").encode()} <= forms
    assert {token.encode(), quote(token, safe="").encode()} <= forms
    assert b"abc123def456" in forms and b"en" not in forms  # a cookie's value; one too short to search for
    assert all(len(form) >= MIN_SCRUBBED for form in forms)
    for form in forms:
        assert any(probe in form for probe in snapshot.probes)


def test_basic_credentials_that_are_not_base64_are_kept_as_they_are():
    snapshot = Snapshot.build([("Authorization", "Basic not*base64-at-all")], 0, 0)
    assert forms_of(snapshot) == {
        b"Basic not*base64-at-all",
        b"not*base64-at-all",
        b"Basic%20not%2Abase64-at-all",
        b"not%2Abase64-at-all",
    }


def test_an_entry_naming_more_secret_headers_gets_their_forms_too():
    snapshot = Snapshot.build([("Authorization", TOKEN), ("X-Tenant", "production"), ("X-Region", "eu-west-1")], 0, 0)
    assert snapshot.scrubbed(frozenset()) == (snapshot.secrets, snapshot.probes)
    pairs, probes = snapshot.scrubbed(frozenset({"x-tenant", "x-other"}))
    assert dict(pairs) == dict(snapshot.secrets) | {b"production": TENANT_MARK}
    assert set(probes) == {b"production", b"tok-3f9a1c77e2d54b8a"}
    again = frozenset({"x-other", "x-tenant"})  # an equal set, as a reconfiguration makes: made once
    assert snapshot.scrubbed(again) is snapshot.scrubbed(frozenset({"x-tenant", "x-other"}))


# -- through the addon's hooks ---------------------------------------------------------------------------------------


@pytest.fixture
def addon():
    made = header_augment.HeaderAugment()
    with taddons.context(made) as tctx:
        yield made, tctx
        made.done()


def answered(made, host: str, response: http.Response) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.host = host
    made.requestheaders(f)
    made.check_reroute(f)
    f.response = response
    made.responseheaders(f)
    made.response(f)
    return f


SAID = f"deploying to production as {TOKEN}".encode()


def test_secret_headers_names_more_values_to_scrub(addon):
    made, tctx = addon
    tctx.configure(made, header_provider_url="http://127.0.0.1:9/x", header_hosts=["api.example.com"])
    made.bindings[0].refresher.snapshot = Snapshot.build([("Authorization", TOKEN), ("X-Tenant", "production")], 0, 0)
    f = answered(made, "api.example.com", http.Response.make(200, SAID))
    assert f.response.content == b"deploying to production as " + MARK
    tctx.configure(made, header_secret_headers=["X-Tenant"])  # the refresher and its snapshot are kept
    f = answered(made, "api.example.com", http.Response.make(200, SAID))
    assert f.response.content == b"deploying to " + TENANT_MARK + b" as " + MARK
    assert f.request.headers["X-Tenant"] == TENANT_MARK.decode()


def test_entries_sharing_a_provider_scrub_what_each_names(addon, tmp_path):
    made, tctx = addon
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "- url: http://127.0.0.1:9/same\n  hosts: a.example\n"
        "- url: http://127.0.0.1:9/same\n  hosts: b.example\n  secret_headers: X-Tenant\n"
    )
    tctx.configure(made, header_providers_file=str(providers))
    first, second = made.bindings
    assert first.refresher is second.refresher  # one fetch, one snapshot for both
    first.refresher.snapshot = Snapshot.build([("Authorization", TOKEN), ("X-Tenant", "production")], 0, 0)
    assert answered(made, "a.example", http.Response.make(200, SAID)).response.content.startswith(
        b"deploying to production as "
    )
    assert answered(made, "b.example", http.Response.make(200, SAID)).response.content.startswith(
        b"deploying to " + TENANT_MARK
    )


@pytest.fixture
def basic(addon):
    """The addon adding Basic credentials and an API key with characters a URL encodes, for api.example.com."""
    made, tctx = addon
    tctx.configure(made, header_provider_url="http://127.0.0.1:9/x", header_hosts=["api.example.com"])
    credentials = base64.b64encode(b"robot:pa55word+long").decode()
    made.bindings[0].refresher.snapshot = Snapshot.build(
        [("Authorization", f"Basic {credentials}"), ("X-Api-Key", "k+y/9=abcdef12")], time.monotonic(), 0
    )
    return made


def test_a_redirect_carrying_a_value_percent_encoded_is_scrubbed(basic):
    location = "https://app.example/callback?key=" + quote("k+y/9=abcdef12", safe="")
    f = answered(basic, "api.example.com", http.Response.make(302, b"", {"Location": location}))
    assert f.response.headers["Location"] == "https://app.example/callback?key=<header-augment: X-Api-Key>"


def test_basic_credentials_echoed_decoded_are_scrubbed(basic):
    body = json.dumps({"authenticated": True, "user": "robot", "password": "pa55word+long"}).encode()
    f = answered(basic, "api.example.com", http.Response.make(200, body, {"Content-Type": "application/json"}))
    assert json.loads(f.response.content)["password"] == MARK.decode()
    assert json.loads(f.response.content)["user"] == "robot"


def test_a_media_type_never_searched_is_not_decoded(basic, monkeypatch):
    decoded = []
    original = carried._decoded
    monkeypatch.setattr(carried, "_decoded", lambda *a: decoded.append(a[1]) or original(*a))
    picture = gzip.compress(b"\x89PNG pa55word+long")
    response = http.Response.make(200, b"", {"Content-Type": "image/png", "Content-Encoding": "gzip"})
    response.raw_content = picture
    f = answered(basic, "api.example.com", response)
    assert f.response.raw_content == picture and decoded == []
    svg = b"<svg><text>pa55word+long</text></svg>"
    f = answered(basic, "api.example.com", http.Response.make(200, svg, {"Content-Type": "image/svg+xml"}))
    assert f.response.content == b"<svg><text>" + MARK + b"</text></svg>"  # text: searched
