"""Operating it: status and refresh commands, counters, the providers file, OAuth2 client credentials."""

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
import urllib.parse

import header_augment
import pytest
from conftest import client_for, values_of
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow
from servers import DEADLINE, ROOT, HeldProvider, Provider, TokenEndpoint, wait_until

from header_augment_core import entries
from header_augment_core.fields import SettingsError
from header_augment_core.providers_file import load_providers_file
from header_augment_core.refresher import Refresher
from header_augment_core.settings import parse_settings
from header_augment_core.status import status

SECRET = "s3cret-client-secret"


@pytest.fixture
def token_endpoint():
    endpoint = TokenEndpoint(secret=SECRET)
    yield endpoint
    endpoint.close()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "client-secret"
    path.write_text(SECRET + "\n")
    return path


def oauth2_settings(endpoint, secret_file, **fields):
    return parse_settings(
        {
            "kind": "oauth2",
            "url": endpoint.url,
            "client_id": "proxy",
            "client_secret_file": str(secret_file),
            "hosts": "*",
            **fields,
        },
        str,
    )


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def oauth2_refresher(endpoint, secret_file, clock=time.monotonic, **fields):
    settings = oauth2_settings(endpoint, secret_file, **fields)
    return Refresher(settings.source.client(settings.timeout), settings, clock=clock)


def flow_to(host):
    f = tflow.tflow()
    f.request.host = host
    f.request.headers["Host"] = host
    return f


# -- counters and commands, in-process -----------------------------------------------------------------------------


def test_counters_and_status(provider):
    provider.answer({"Authorization": "Bearer do-not-show", "X-Tenant": "acme"})
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            header_provider_url=provider.url + "?token=query-secret",
            header_hosts=["api.example.com"],
            header_merge="keep",
            header_require=True,
        )
        binding = addon.bindings[0]
        binding.refresher.refresh()  # one real fetch, driven from here
        addon.requestheaders(flow_to("api.example.com"))
        present = flow_to("api.example.com")
        present.request.headers["X-Tenant"] = "mine"
        addon.requestheaders(present)
        addon.requestheaders(flow_to("elsewhere.example.com"))
        binding.refresher.snapshot = dataclasses.replace(binding.refresher.snapshot, usable_until=0)
        refused = flow_to("api.example.com")
        addon.requestheaders(refused)
        assert refused.response.status_code == 503
        provider.answer(status=500)
        binding.refresher.refresh()
        data = status(addon.bindings, time.monotonic())["providers"][0]
        text = tctx.command(addon.status)
    assert data["requests"] == {
        "given": 2,
        "out_of_scope": 1,
        "refused": 1,
        "without": 0,
        "already_present": 1,
        "waited": 0,
        "unauthorized": 0,
        "reasked": 0,
        "placeholder_refused": 0,
    }
    assert data["fetches"] == {
        "ok": 1,
        "failed": 1,
        "failed_by_reason": {"HTTP 500": 1},
        "failed_by_class": {"status": 1},
    }
    assert (data["kind"], data["hosts"], data["merge"], data["require"]) == ("http", ["api.example.com"], "keep", True)
    assert (data["state"], data["headers"], data["last_error"]) == ("stale", ["Authorization", "X-Tenant"], "HTTP 500")
    assert data["source"] == provider.url
    for shown in (json.dumps(data), text):
        assert "do-not-show" not in shown and "acme" not in shown and "query-secret" not in shown
    assert f"[1] {provider.url}  kind=http hosts=api.example.com merge=keep require" in text


def test_status_when_idle():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        assert "idle" in tctx.command(addon.status)


def test_refresh_command_does_not_block():
    provider = HeldProvider()  # holds every answer until released
    try:
        provider.answer({"X-A": "1"})
        asyncio.run(refresh_scenario(provider))
    finally:
        provider.close()


async def refresh_scenario(provider):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=provider.url, header_hosts=["*"], header_refresh_interval="1h")
        addon.running()
        try:
            await asyncio.to_thread(provider.arrived.wait, DEADLINE)  # the first fetch, held at the provider
            tctx.command(addon.refresh)  # returns while that fetch cannot finish: it did not wait for it
            assert addon.bindings[0].refresher.counts.ok == 0
            provider.release()
            await asyncio.to_thread(provider.wait_for_requests, 2)  # and the refresh it asked for happens
        finally:
            addon.done()


# -- the providers file ---------------------------------------------------------------------------------------------


def write(path, text):
    path.write_text(text)
    return str(path)


def test_providers_file_yaml_and_json(tmp_path, provider, token_endpoint, secret_file):
    yaml_file = write(
        tmp_path / "p.yaml",
        f"""
providers:
  - name: internal
    url: {provider.url}
    hosts: "internal.example, *.internal.example"
    interval: 30s
    max_stale: 10m
    merge: append
  - name: partner
    kind: oauth2
    url: {token_endpoint.url}
    client_id: proxy
    client_secret_file: {secret_file}
    token_scope: read write
    audience: partner-api
    require: true
    hosts: [api.partner.example]
""",
    )
    ((internal, _), (partner, _)), _ = load_providers_file(yaml_file)
    assert (internal.name, internal.interval, internal.max_stale, internal.merge.value, internal.kind) == (
        "internal",
        30,
        600,
        "append",
        "http",
    )
    assert internal.hosts.patterns == ("internal.example", "*.internal.example")
    source = partner.source
    assert (partner.kind, partner.require, source.token_scope, source.audience, partner.hosts.patterns) == (
        "oauth2",
        True,
        "read write",
        "partner-api",
        ("api.partner.example",),
    )
    json_file = write(
        tmp_path / "p.json", json.dumps([{"url": provider.url, "interval": 5, "require": "true", "hosts": ["*"]}])
    )
    ((only, _),), _ = load_providers_file(json_file)
    assert only.interval == 5 and only.require is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("providers: 3", "expected a list of providers"),
        ("- {url: 'http://a/', hosts: a}\n- 5", "provider 2: expected a mapping"),
        (
            "- {url: 'http://a/', hosts: a}\n- name: b\n  url: http://b/\n  intervall: 5s",
            "provider 2 (b): unknown field 'intervall'; did you mean interval?",
        ),
        (
            "- {url: 'http://a/', hosts: a}\n- {name: b, url: 'http://b/', hosts: b, interval: 5x}",
            "provider 2 (b): interval: '5x' is not a",
        ),
        ("- name: a\n  url: ftp://a/", "provider 1 (a): url:"),
        ("- {url: 'http://a/', hosts: a, merge: prepend}", "provider 1: merge: 'prepend' is not a merge mode"),
        ("- {url: 'http://a/', kind: saml}", "provider 1: kind: 'saml' is not accepted (accepted: http, oauth2"),
        ("- {url: 'http://a/', kind: oauth2}", "provider 1: client_id: required for kind oauth2"),
        (
            "- {url: 'http://a/', kind: oauth2, client_id: x, client_secret_file: /nonexistent}",
            "provider 1: client_secret_file: cannot open it (No such file or directory)",
        ),
        ("- {url: 'http://a/', client_id: x}", "provider 1: client_id: not a setting of kind http"),
        (
            "- {name: a, url: 'http://a/', hosts: a}\n- {name: a, url: 'http://b/', hosts: b}",
            "provider 2 (a): name: 'a' is used",
        ),
        ("- {url: 'http://a/', hosts: a, interval: .inf}", "provider 1: interval: inf is not a finite duration"),
        ("- {url: 'http://a/', hosts: a, interval: 3000000h}", "provider 1: interval: '3000000h' is too long"),
        ("- {url: 'http://a/'}", "provider 1: hosts: required"),
        ("- {url: 'http://a/', hosts: 'a.example/x'}", "provider 1: hosts: 'a.example/…' has a path"),
        ("[unclosed", "not valid YAML"),
    ],
)
def test_bad_providers_file_names_entry_and_field(tmp_path, text, message):
    path = write(tmp_path / "p.yaml", text)
    with pytest.raises(SettingsError) as e:
        load_providers_file(path)
    assert f"header_providers_file {path}: " in str(e.value)
    assert message in str(e.value)


def test_missing_providers_file_is_an_options_error(tmp_path):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="cannot open it"):
            tctx.configure(addon, header_providers_file=str(tmp_path / "missing.yaml"))


def test_a_fifo_is_not_read_as_the_providers_file(tmp_path):
    """A FIFO given as the providers file hung start-up (and SIGINT with it)."""
    fifo = tmp_path / "providers.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SettingsError, match="not a regular file"):
        load_providers_file(str(fifo))


def test_syntax_errors_and_bad_urls_never_quote_the_file(tmp_path):
    """The URL's query (which can carry a token) was echoed for a bad port, a bad scheme and a YAML error."""
    for text in (
        "- {url: 'http://a:99999/?token=SECRET-1', hosts: a}",
        "- {url: 'ftp://user:SECRET-1@a/?token=SECRET-1', hosts: a}",
        "- url: http://a/?token=SECRET-1\n  hosts: [unclosed",
        '[{"url": "http://a/?token=SECRET-1", "hosts": "a",}]',
    ):
        path = write(tmp_path / ("p.json" if text.startswith("[{") else "p.yaml"), text)
        with pytest.raises(SettingsError) as e:
            load_providers_file(path)
        assert "SECRET" not in str(e.value), str(e.value)


def reload_checks(addon, n=2):
    """The ticker's checks: a change is applied once the file has stopped changing (the same on two checks)."""
    for _ in range(n):
        asyncio.run(addon._reload_providers_file())


def test_file_reload_applies_changes_and_refuses_bad_files(tmp_path, provider, caplog):
    provider.answer({"X-A": "1"})
    path = tmp_path / "providers.yaml"
    write(path, f"- name: one\n  url: {provider.url}\n  hosts: one.example\n")
    addon = header_augment.HeaderAugment()
    with caplog.at_level(logging.INFO), taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(path))
        first = addon.bindings[0].refresher
        write(
            path,
            f"- name: one\n  url: {provider.url}\n  hosts: two.example\n- {{url: '{provider.url}?2', hosts: '*'}}\n",
        )
        asyncio.run(addon._reload_providers_file())
        assert [b.settings.hosts.patterns for b in addon.bindings] == [("one.example",)]  # not settled yet
        asyncio.run(addon._reload_providers_file())
        assert [b.settings.hosts.patterns for b in addon.bindings] == [("two.example",), ("*",)]
        assert addon.bindings[0].refresher is first  # same source: refresher and cache kept
        before = addon.bindings
        write(path, "- name: one\n  url: ftp://nope/\n")
        reload_checks(addon)
        assert addon.bindings == before
        reload_checks(addon)  # unchanged bad file: reported once
        addon.done()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "provider 1 (one): url: 'ftp://nope/'" in errors[0] and "keeping the previous configuration" in errors[0]


def test_a_file_written_in_two_steps_is_never_applied_half_written(tmp_path, provider):
    """An entry written without its hosts line first carried the token to every host for 70 requests."""
    path = tmp_path / "providers.yaml"
    write(path, f"- {{name: one, url: '{provider.url}', hosts: one.example}}\n")
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(path))
        before = addon.bindings
        with open(path, "a") as f:
            f.write(f"- name: two\n  url: {provider.url}?two\n")  # the first step: no hosts yet
            f.flush()
            asyncio.run(addon._reload_providers_file())  # the ticker sees the change...
            f.write("  hosts: two.example\n")  # ...and the second step lands before it settles
        asyncio.run(addon._reload_providers_file())
        assert addon.bindings == before
        asyncio.run(addon._reload_providers_file())
        assert [b.settings.hosts.patterns for b in addon.bindings] == [("one.example",), ("two.example",)]
        addon.done()


def test_entries_with_the_same_source_share_a_refresher_but_count_their_own_requests(tmp_path, provider):
    """Two entries with the same URL were counted as one after a reload (beta's counts lost)."""
    provider.answer({"X-A": "1"})
    path = tmp_path / "providers.yaml"
    text = (
        f"- {{name: alpha, url: '{provider.url}', hosts: a.example}}\n"
        f"- {{name: beta, url: '{provider.url}', hosts: b.example}}\n"
    )
    write(path, text)
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(path))
        alpha, beta = addon.bindings
        assert alpha.refresher is beta.refresher and alpha.counters is not beta.counters
        alpha.refresher.refresh()
        for host in ("a.example", "b.example", "b.example"):
            addon.requestheaders(flow_to(host))
        write(path, text + "# a comment changes the file, not the providers\n")
        reload_checks(addon)
        assert [(b.settings.name, b.counters.given) for b in addon.bindings] == [("alpha", 1), ("beta", 2)]
        assert addon.bindings[0].refresher is addon.bindings[1].refresher is alpha.refresher
        addon.done()


# -- OAuth2 against a real token endpoint ------------------------------------------------------------------------


def test_oauth2_token_becomes_bearer_and_refreshes_before_expiry(token_endpoint, secret_file, caplog):
    token_endpoint.expires_in = 20
    clock = FakeClock()
    refresher = oauth2_refresher(token_endpoint, secret_file, clock, token_scope="read", audience="api")
    with caplog.at_level(logging.DEBUG):
        first_delay = refresher.refresh()
        assert refresher.snapshot.fields == ((b"Authorization", b"Bearer tok-1"),)
        clock.now += first_delay
        second_delay = refresher.refresh()
        assert refresher.snapshot.fields == ((b"Authorization", b"Bearer tok-2"),)
    # At 80% of expires_in: the first spread over 5-100% of that (a fleet restarted together), then with up to
    # 10% jitter, earlier.
    assert 1 <= first_delay <= 16 and 14.4 <= second_delay <= 16
    first = token_endpoint.requests[0]
    assert first["form"] == {"grant_type": "client_credentials", "scope": "read", "audience": "api"}
    assert first["basic"]
    snapshot = refresher.snapshot
    assert snapshot.usable_until - snapshot.fetched_at == pytest.approx(20)  # never past the token's lifetime
    assert SECRET not in caplog.text and "tok-" not in caplog.text


def test_oauth2_client_secret_post(token_endpoint, secret_file):
    settings = oauth2_settings(token_endpoint, secret_file, client_auth="post")
    result = settings.source.client(settings.timeout).fetch()
    assert result.ok
    assert token_endpoint.requests[0]["form"]["client_secret"] == SECRET and not token_endpoint.requests[0]["basic"]


def test_oauth2_revoked_client_drops_the_token_at_expiry(token_endpoint, secret_file, caplog):
    token_endpoint.expires_in = 10
    clock = FakeClock()
    refresher = oauth2_refresher(token_endpoint, secret_file, clock)
    with caplog.at_level(logging.DEBUG):
        refresher.refresh()
        token_endpoint.revoked = True
        clock.now += 8
        refresher.refresh_now()  # 8 s after the last fetch: at once
        refresher.step()
        assert refresher.counts.failed_by_reason == {"HTTP 401: invalid_client": 1}
        assert refresher.snapshot.usable(clock.now)  # kept while it is valid
        clock.now += 2
        assert refresher.wake_at() <= clock.now  # the loop wakes for the expiry...
        refresher.step()
        assert not refresher.snapshot.usable(clock.now)
    assert "headers dropped" in caplog.text  # ...and says so
    assert SECRET not in caplog.text  # not even from the endpoint's error_description


def test_oauth2_server_error_keeps_the_token_until_it_expires(token_endpoint, secret_file):
    token_endpoint.expires_in = 60
    refresher = oauth2_refresher(token_endpoint, secret_file)
    refresher.refresh()
    token_endpoint.fail_status = 500
    refresher.refresh()
    assert refresher.last_error == "HTTP 500: server_error"
    assert refresher.snapshot.fields == ((b"Authorization", b"Bearer tok-1"),)
    assert refresher.snapshot.usable(time.monotonic())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"access_token": "t", "token_type": "mac"}, "token_type is not Bearer"),
        ({"token_type": "Bearer"}, "no access_token"),
        ({"access_token": "t\r\nX-Evil: 1", "token_type": "Bearer"}, "other than visible ASCII"),
        ({"access_token": "t", "token_type": "Bearer", "expires_in": "soon"}, "expires_in is not a positive"),
    ],
)
def test_oauth2_bad_token_responses(provider, secret_file, body, reason):
    provider.answer(body)
    settings = oauth2_settings(provider, secret_file)
    result = settings.source.client(settings.timeout).fetch()
    assert not result.ok and reason in result.reason


# -- end to end ----------------------------------------------------------------------------------------------------


def test_two_providers_each_host_gets_only_its_own(mitmdump, upstream, tmp_path, token_endpoint, secret_file):
    provider = Provider()
    try:
        provider.answer({"X-Internal": "i-value"})
        token_endpoint.expires_in = 3600
        path = write(
            tmp_path / "providers.yaml",
            f"""
providers:
  - name: internal
    url: {provider.url}
    hosts: 127.0.0.1
  - name: partner
    kind: oauth2
    url: {token_endpoint.url}
    client_id: proxy
    client_secret_file: {secret_file}
    hosts: localhost
""",
        )
        m = mitmdump("--set", f"header_providers_file={path}", "-s", str(ROOT / "tests" / "console_set.py"))
        m.wait_for("internal .*headers in use: X-Internal")
        m.wait_for("partner .*headers in use: Authorization")
        with client_for(m.proxy) as client:
            by_ip = client.get(f"http://127.0.0.1:{upstream.port}/")
            by_name = client.get(f"http://localhost:{upstream.port}/")
            assert values_of(by_ip, "X-Internal") == ["i-value"] and values_of(by_ip, "Authorization") == []
            assert values_of(by_name, "Authorization") == ["Bearer tok-1"] and values_of(by_name, "X-Internal") == []
            status = client.get("http://console.test/" + urllib.parse.quote("augment.status")).text
            assert "header-augment: 2 providers" in status and "[2] partner" in status
            # Each provider gave one request its headers; the other request, and this status request, were not theirs.
            assert status.count("requests: 1 given headers, 2 out of scope") == 2, status
            refreshed = client.get("http://console.test/augment.refresh")
            assert refreshed.status_code == 200
            wait_until(lambda: token_endpoint.issued == 2, what="refresh command reaching the token endpoint")
        m.stop()
        assert SECRET not in m.output and "tok-1" not in m.output and "i-value" not in m.output
    finally:
        provider.close()


def test_bad_providers_file_stops_startup(mitmdump, tmp_path):
    path = write(tmp_path / "providers.yaml", "- name: a\n  url: http://127.0.0.1:9/\n  interval: often\n")
    m = mitmdump("--set", f"header_providers_file={path}", wait_listening=False)
    assert m.wait_exit() != 0
    assert "provider 1 (a): interval: 'often' is not a duration" in m.output


def test_counters_are_logged_periodically(provider, caplog, monkeypatch):
    monkeypatch.setattr(header_augment, "COUNTERS_LOG_INTERVAL", 0.05)
    monkeypatch.setattr(header_augment, "FILE_CHECK_INTERVAL", 0.01)
    provider.answer({"X-A": "1"})

    async def scenario():
        addon = header_augment.HeaderAugment()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_provider_url=provider.url, header_hosts=["*"])
            addon.running()
            try:
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if "requests: 0 given headers" in caplog.text:
                        break
            finally:
                addon.done()

    with caplog.at_level(logging.DEBUG, logger="header_augment"):
        asyncio.run(scenario())
    assert "requests: 0 given headers, 0 out of scope" in caplog.text and "fetches: " in caplog.text


def test_providers_file_reload_in_a_running_proxy(mitmdump, upstream, tmp_path):
    provider = Provider()
    try:
        provider.answer({"X-Reloaded": "yes"})
        path = tmp_path / "providers.yaml"
        write(path, f"- name: first\n  url: {provider.url}\n  hosts: localhost\n")
        m = mitmdump("--set", f"header_providers_file={path}")
        m.wait_for("first .*headers in use: X-Reloaded")
        with client_for(m.proxy) as client:
            assert values_of(client.get(f"http://127.0.0.1:{upstream.port}/"), "X-Reloaded") == []
            mark = m.mark()
            write(path, f"- name: first\n  url: {provider.url}\n  hosts: 127.0.0.1\n")
            m.wait_for("changed: 1 provider", start=mark)
            assert values_of(client.get(f"http://127.0.0.1:{upstream.port}/"), "X-Reloaded") == ["yes"]
            mark = m.mark()
            write(path, "- name: first\n  url: http://127.0.0.1:9/\n  merge: sideways\n")
            m.wait_for(r"provider 1 \(first\): merge: 'sideways' is not a merge mode.*keeping the previous", start=mark)
            assert values_of(client.get(f"http://127.0.0.1:{upstream.port}/"), "X-Reloaded") == ["yes"]
    finally:
        provider.close()


def test_the_periodic_check_survives_an_unexpected_error(provider, tmp_path, caplog, monkeypatch):
    """An unexpected error in the providers-file ticker ended file reloading, silently."""
    monkeypatch.setattr(header_augment, "FILE_CHECK_INTERVAL", 0.01)
    provider.answer({"X-A": "1"})
    path = tmp_path / "providers.yaml"
    write(path, f"- {{name: one, url: '{provider.url}', hosts: one.example}}\n")

    async def scenario():
        addon = header_augment.HeaderAugment()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_providers_file=str(path))
            check = addon._file.check
            calls = []

            def broken_once():
                calls.append(1)
                if len(calls) == 1:
                    raise RuntimeError("a bug")
                return check()

            monkeypatch.setattr(addon._file, "check", broken_once)
            addon.running()
            try:
                write(path, f"- {{name: one, url: '{provider.url}', hosts: two.example}}\n")
                for _ in range(1000):
                    await asyncio.sleep(0.01)
                    if addon.bindings[0].settings.hosts.patterns == ("two.example",):
                        break
                return addon.bindings[0].settings.hosts.patterns, len(calls)
            finally:
                addon.done()

    with caplog.at_level(logging.ERROR, logger="header_augment"):
        hosts, calls = asyncio.run(scenario())
    assert hosts == ("two.example",) and calls >= 3
    assert "unexpected error in the periodic check" in caplog.text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{hosts: a}",
            "provider 1: kind: not given, so one of url, path, command, service must name the source (none is given)",
        ),
        (
            "{hosts: a, url: 'http://a/', path: /x}",
            "provider 1: kind: not given, so one of url, path, command, service must name the source "
            "(url and path are both given)",
        ),
    ],
)
def test_an_entry_without_one_source_is_refused_naming_the_fields_once(tmp_path, entry, message):
    with pytest.raises(SettingsError) as e:
        load_providers_file(write(tmp_path / "p.yaml", f"- {entry}\n"))
    assert str(e.value).endswith(message) and str(e.value).count("provider 1") == 1


def test_flows_seen_while_a_reload_is_built_are_not_the_new_entries_out_of_scope(tmp_path, provider, monkeypatch):
    provider.answer({"X-A": "1"})
    path = tmp_path / "providers.yaml"
    one = f"- {{name: one, url: '{provider.url}', hosts: one.example}}\n"
    write(path, one)
    addon = header_augment.HeaderAugment()
    real_build = entries.build

    def build_while_flows_pass(*args):
        built = real_build(*args)
        addon._path.seen.count += 7  # flows the loop handled while the worker thread built the entries
        return built

    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(path))
        monkeypatch.setattr(entries, "build", build_while_flows_pass)
        write(path, one + f"- {{url: '{provider.url}?2', hosts: b}}\n")
        reload_checks(addon)
        assert [b.counters.out_of_scope for b in addon.bindings] == [7, 0]  # the old entry saw them, the new did not
        addon.done()


def test_a_reload_cancelled_while_it_builds_stops_what_it_made(tmp_path, provider, monkeypatch):
    provider.answer({"X-A": "1"})
    path = tmp_path / "providers.yaml"
    write(path, f"- {{url: '{provider.url}', hosts: one.example}}\n")
    addon = header_augment.HeaderAugment()
    real_build, made, building, release = entries.build, [], threading.Event(), threading.Event()

    def slow_build(*args):
        built = real_build(*args)
        made.append(built)
        building.set()
        assert release.wait(DEADLINE)
        return built

    async def scenario():
        await addon._reload_providers_file()  # the change is seen; it is applied once the file has settled
        reload = asyncio.ensure_future(addon._reload_providers_file())
        assert await asyncio.to_thread(building.wait, DEADLINE)
        reload.cancel()  # as done() cancels the ticker
        with pytest.raises(asyncio.CancelledError):
            await reload
        release.set()
        [new] = [b.refresher for b in made[0].bindings]
        assert await asyncio.to_thread(new.wait_ended, DEADLINE)  # its client closed, nothing left running

    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(path))
        monkeypatch.setattr(entries, "build", slow_build)
        write(path, f"- {{url: '{provider.url}?2', hosts: two.example}}\n")
        asyncio.run(scenario())  # the loop goes on after the cancel, as mitmproxy's does after a script's done()
        assert [b.settings.hosts.patterns for b in addon.bindings] == [("one.example",)]
        addon.done()
