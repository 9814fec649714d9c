"""`paths` (option header_paths): request paths normalised and matched by whole segments, the prefixes checked when
they are read, and the check composed into an entry's scope for the headers it adds and the requests it signs."""

import logging
import re

import header_augment
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons
from test_addon import VALID, give, make_flow
from test_aws_sigv4 import _flow, signing_addon

from header_augment_core.entries import NO_ENTRIES, PathScope, build, warnings
from header_augment_core.fields import SettingsError
from header_augment_core.paths import matcher, normalise, parse_paths
from header_augment_core.settings import parse_settings


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/allowed/x", b"/allowed/x"),
        (b"/allowed/x?list-type=2&prefix=a%2Fb", b"/allowed/x"),
        (b"/secret/secret.txt?x=/allowed/", b"/secret/secret.txt"),  # the query is never the path
        (b"/%41llowed/%7euser/%7E", b"/Allowed/~user/~"),  # escaped unreserved characters are decoded
        (b"/a%2fb/%c3%a9%3b", b"/a%2Fb/%C3%A9%3B"),  # other escapes only upper-cased; %2F stays in its segment
        (b"/donn\xc3\xa9es/x", b"/donn%C3%A9es/x"),  # bytes beyond ASCII escaped, as a client would send them
        (b"/allowed//x", b"/allowed//x"),  # an S3 key may hold empty segments
        (b"/a;v=1/b", b"/a;v=1/b"),
        (b"/.well-known/x", b"/.well-known/x"),  # a name that starts with a dot is no dot segment
        (b"/a/...", b"/a/..."),
        (b"/a%zz/%4", b"/a%zz/%4"),  # not an escape: left as it is
        (b"/a/%2525", b"/a/%2525"),
    ],
)
def test_a_path_is_normalised(target, path):
    assert normalise(target) == path


@pytest.mark.parametrize(
    "target",
    [
        b"/allowed/../secret/secret.txt",
        b"/secret/../allowed/x",  # S3 reads this as the key ../allowed/x in the bucket secret
        b"/allowed/./x",
        b"/allowed/..",
        b"/allowed/.",
        b"/allowed/%2E%2E/secret",
        b"/allowed/%2e%2E/secret",
        b"/allowed/.%2e/secret",
        b"/allowed/..%2Fsecret",  # a dot segment behind an escaped slash, as a server that decodes it sees it
        b"/allowed/%2E%2E%2fsecret",
        b"/allowed/..%5Csecret",
        b"/allowed/..\\secret",
        b"/allowed/..;/secret",  # Tomcat reads `..;` as `..`
        b"/allowed/.;x/secret",
        b"/allowed/%252E%252E/secret",  # `..` to a server that decodes twice
        b"/allowed/..%00/secret",
        b"/allowed/x#/../../secret/y",  # `#` is no part of a request target: servers differ on what follows it
        b"/allowed/x#y",
        b"",
        b"*",  # OPTIONS *
        b"http://127.0.0.1/allowed/x",  # an absolute URL as HTTP/2's :path: sent on as it is
        b"allowed/x",
        b"?x=/allowed/",
    ],
)
def test_a_path_that_servers_read_differently_has_no_normal_form(target):
    assert normalise(target) is None


@pytest.mark.parametrize(
    ("prefixes", "target", "under"),
    [
        (["/v2/"], b"/v2/x", True),
        (["/v2/"], b"/v2/", True),
        (["/v2/"], b"/v2", False),
        (["/v2/"], b"/v2x", False),
        (["/v2"], b"/v2", True),
        (["/v2"], b"/v2/x/y", True),
        (["/v2"], b"/v2?q", True),
        (["/v2"], b"/v2x", False),
        (["/v2"], b"/v1/v2", False),
        (["/v2"], b"/v2%2Fx", False),  # %2F is part of the segment `v2%2Fx`
        (["/v2"], b"/%762/x", True),
        (["/allowed/"], b"/secret/secret.txt?x=/allowed/", False),
        (["/allowed/"], b"/allowed//x", True),
        (["/allowed/"], b"//allowed/x", False),
        (["/allowed/"], b"/allowed/../secret", False),
        (["/allowed/"], b"/Allowed/x", False),  # compared exactly: paths are case-sensitive
        (["/a/", "/b"], b"/b/c", True),
        (["/a/", "/b"], b"/c", False),
        (["/"], b"/anything", True),
        (["/"], b"*", False),
        (["/~user/"], b"/%7Euser/x", True),
        (["/%7euser/"], b"/~user/x", True),
        (["/données/"], b"/donn%C3%A9es/x", True),
        (["/données/"], b"/donn\xc3\xa9es/x", True),
    ],
)
def test_a_prefix_takes_whole_segments(prefixes, target, under):
    assert matcher(parse_paths(prefixes))(target) is under


def test_prefixes_are_normalised_as_request_paths_are():
    assert parse_paths("/%7euser/, /données/,/a%2a/") == ("/~user/", "/donn%C3%A9es/", "/a%2A/")
    assert parse_paths(["/v1/", "/v2", "/v1/"]) == ("/v1/", "/v2")
    assert parse_paths([]) == ()


@pytest.mark.parametrize(
    "value",
    [
        "v2/",
        "*",
        "/a/../b",
        "/a/./b",
        "/a/%2E%2E",
        "/a%2Fb/",
        "/a%5cb/",
        "/a\\b",
        "/a?x=1",
        "/a#b",
        "/a b/",
        "/a\tb",
        "/a%zz",
        "/a%4",
        ["/a", 5],
        5,
    ],
)
def test_a_bad_prefix_is_refused_naming_the_field(value):
    with pytest.raises(SettingsError) as refused:
        parse_settings({"url": "http://127.0.0.1:9/h", "hosts": "api.example.com", "paths": value}, "entry.{}".format)
    assert str(refused.value).startswith("entry.paths: ")


def test_a_bad_prefix_in_an_option_or_a_providers_file_names_the_option_or_the_entry_and_field(tmp_path):
    addon = header_augment.HeaderAugment()
    (tmp_path / "providers.yaml").write_text(
        "- name: api\n  url: http://127.0.0.1:9/h\n  hosts: api.example.com\n  paths: [/v1/, /v1/../admin]\n"
    )
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"^header_paths: '/a%2F' "):
            tctx.configure(addon, **VALID, header_paths=["/a%2F"])
        with pytest.raises(exceptions.OptionsError, match=r"provider 1 \(api\): paths: '/v1/\.\./admin' "):
            tctx.configure(addon, header_providers_file=str(tmp_path / "providers.yaml"))
        addon.done()


def test_an_entry_without_paths_keeps_its_filter_as_it_was():
    def built(**fields):
        settings = parse_settings({"url": "http://127.0.0.1:9/h", "hosts": "api.example.com", **fields}, str)
        (binding,) = build([(settings, str)], NO_ENTRIES, None, "").bindings
        binding.refresher.stop()
        return binding.scope

    assert built() is None
    assert not isinstance(built(scope="~m GET"), PathScope)  # what Binding calls is mitmproxy's filter itself
    assert built(paths="/v1/").filter is None
    assert built(paths="/v1/", scope="~m GET").filter is not None


def _headers_given(addon, path, method="GET") -> bool:
    flow = make_flow()
    flow.request.path, flow.request.method = path, method
    addon.requestheaders(flow)
    return "x-token" in flow.request.headers


def test_headers_are_added_to_requests_under_the_paths_only():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID, header_paths=["/v2", "/public/"])
        give(addon, ("X-Token", "t"))
        given = {
            path: _headers_given(addon, path)
            for path in ("/v2", "/v2/x?a=b", "/public/a", "/v2x", "/public", "/admin?next=/v2/", "/v2/../admin")
        }
        assert given == {
            "/v2": True,
            "/v2/x?a=b": True,
            "/public/a": True,
            "/v2x": False,
            "/public": False,
            "/admin?next=/v2/": False,
            "/v2/../admin": False,
        }
        counters = addon.bindings[0].counters
        assert (counters.given, counters.in_scope) == (3, 3)
        addon.done()


def test_paths_and_the_filter_must_both_match():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID, header_paths=["/v2/"], header_scope="~m GET")
        give(addon, ("X-Token", "t"))
        assert _headers_given(addon, "/v2/x")
        assert not _headers_given(addon, "/v2/x", method="POST")
        assert not _headers_given(addon, "/v1/x")
        addon.done()


@pytest.mark.parametrize(
    ("fields", "attack_signed"),
    [
        ({"scope": '"~u /allowed/"'}, True),  # why `paths` exists: ~u searches the whole URL, query included
        ({"paths": "[/allowed/]"}, False),
    ],
)
def test_a_query_naming_the_prefix_gets_a_request_signed_by_a_u_scope_but_not_by_paths(
    tmp_path, monkeypatch, fields, attack_signed
):
    with signing_addon(tmp_path, monkeypatch, **fields) as addon:
        attack, inside = _flow(path="/secret/secret.txt?x=/allowed/"), _flow(path="/allowed/x")
        for flow in (attack, inside):
            flow.request.method = "GET"
            addon.check_reroute(flow)  # the request hook, where a signing entry signs
        assert ("authorization" in attack.request.headers) is attack_signed
        assert inside.request.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")


def test_a_signing_entry_judges_the_path_as_it_is_when_it_signs(tmp_path, monkeypatch):
    """What the request hook sees is what is sent: a path another addon rewrote before it is judged as rewritten."""
    with signing_addon(tmp_path, monkeypatch, paths="[/allowed/]") as addon:
        away, into = _flow(path="/allowed/x"), _flow(path="/elsewhere/x")
        addon.requestheaders(away)
        addon.requestheaders(into)
        away.request.path, into.request.path = "/secret/x", "/allowed/x"
        addon.check_reroute(away)
        addon.check_reroute(into)
        assert "authorization" not in away.request.headers
        assert "authorization" in into.request.headers


def _built(entries: list[dict]):
    wanted = []
    for i, fields in enumerate(entries):
        values = {"url": f"http://127.0.0.1:9/{i}", "hosts": "api.example.com", **fields}
        wanted.append((parse_settings(values, str), str))
    made = build(wanted, NO_ENTRIES, None, "")
    for binding in made.bindings:
        binding.refresher.stop()
    return made


def test_a_u_scope_is_warned_about_with_the_query_and_paths_named():
    made = _built(
        [
            {"name": "by-url", "scope": "~u /v2/"},
            {"name": "bare-word", "scope": "v2"},
            {"name": "by-domain", "scope": "~d api.example.com"},
            {"name": "u-and-paths", "scope": "~m GET & ~u /v2/", "paths": "/v2/"},
            {"name": "by-method", "scope": "~m POST", "paths": "/v2/"},
            {"name": "paths-only", "paths": "/v2/"},
        ]
    )
    found = warnings(NO_ENTRIES, made)
    of = {b.settings.name: [w for w in found if b.settings.label in w] for b in made.bindings}
    warned = {name for name, about in of.items() if about}
    pointed = {name for name, about in of.items() if any("header_paths" in w for w in about)}
    assert warned == {"by-url", "bare-word", "by-domain", "u-and-paths"}
    assert pointed == {"by-url", "bare-word", "u-and-paths"}
    assert warnings(made, made) == []  # once


def test_a_u_scope_is_logged_once_by_the_addon(caplog):
    addon = header_augment.HeaderAugment()
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=VALID["header_provider_url"], header_scope="~u /v1/")
        tctx.configure(addon, header_merge="append")
        addon.done()
    assert sum(bool(re.search(r"~u /v1/.*header_paths", r.message)) for r in caplog.records) == 1
