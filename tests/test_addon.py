"""The mitmproxy-facing layer, in-process, with mitmproxy's own taddons and tflow."""

import asyncio
import dataclasses
import logging
import re
import threading

import header_augment
import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addons import script
from mitmproxy.http import Headers
from mitmproxy.test import taddons, tflow
from servers import ADDON, wait_until

from header_augment_core.entries import Entries
from header_augment_core.options import OPTION_NAMES
from header_augment_core.snapshot import NOTHING, Snapshot

# Never started in these tests; a fetch driven by a test finds nothing listening on port 9.
VALID = {"header_provider_url": "http://127.0.0.1:9/headers", "header_hosts": ["api.example.com"]}


def make_flow(headers=(), host="api.example.com"):
    f = tflow.tflow()
    f.request.host = host
    f.request.headers = Headers([(b"Host", host.encode())] + [(k.encode(), v.encode()) for k, v in headers])
    return f


def give(addon, *headers, max_stale=0.0, at=None):
    import time

    binding = addon.bindings[0]
    binding.refresher.snapshot = Snapshot.build(list(headers), time.monotonic() if at is None else at, max_stale)


def test_options_are_declared_with_help():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        for name in OPTION_NAMES:
            assert name in tctx.options
            assert tctx.options._options[name].help
        assert tctx.options.header_refresh_interval == "360s"
        assert tctx.options.header_provider_timeout == ""  # the kind's default: 5s, 30s for commands
        assert tctx.options.header_merge == "replace"
        assert tctx.options.header_require is False
    assert header_augment.addons and isinstance(header_augment.addons[0], header_augment.HeaderAugment)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("header_provider_url", "ftp://x/", "header_provider_url"),
        ("header_provider_url", "http:///nohost", "header_provider_url"),
        ("header_provider_url", "http://x:99999/", "header_provider_url"),
        ("header_provider_timeout", "0", "header_provider_timeout"),
        ("header_provider_timeout", "soon", "header_provider_timeout"),
        ("header_refresh_interval", "99ms", "header_refresh_interval: '99ms' is too short: it must be at least 100ms"),
        ("header_max_stale", "-1s", "header_max_stale"),
        ("header_merge", "prepend", "accepted: replace, append, keep"),
        ("header_scope", "~d(", "header_scope"),
        ("header_provider_ca", "/nonexistent/ca.pem", "header_provider_ca"),
        ("header_provider_cert", "/nonexistent/cert.pem", "header_provider_cert"),
        ("header_provider_authority", "a/b", "header_provider_authority"),
        ("header_refresh_interval", "3000000h", "header_refresh_interval: '3000000h' is too long"),
        ("header_provider_timeout", "3000000h", "header_provider_timeout: '3000000h' is too long"),
        ("header_max_stale", "999999h", "header_max_stale: '999999h' is too long"),
        ("header_hosts", ["api.example.com/path"], "header_hosts: 'api.example.com/…' has a path: give the host alone"),
        ("header_hosts", ["*", "a.example"], "header_hosts: '*' (every host) cannot be combined"),
        ("header_hosts", [], "header_hosts: required"),
        ("header_aws_region", "eu-west-1", "header_aws_region: not used with header_provider_url"),
        ("header_aws_service", "s3", "header_provider_url and header_aws_service are both set"),
    ],
)
def test_bad_values_raise_options_error_naming_the_option(option, value, message):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        url = (
            "https://127.0.0.1/h"
            if option in ("header_provider_ca", "header_provider_cert")
            else VALID["header_provider_url"]
        )
        with pytest.raises(exceptions.OptionsError, match=re.escape(message)):
            tctx.configure(addon, **{**VALID, "header_provider_url": url, option: value})


def test_no_url_is_idle_with_one_warning(caplog):
    addon = header_augment.HeaderAugment()
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, header_merge="append")
        f = make_flow()
        addon.requestheaders(f)
        assert addon.bindings == ()
    assert sum("header-augment is idle" in r.message for r in caplog.records) == 1


def test_every_host_is_explicit_and_warned_once(caplog):
    addon = header_augment.HeaderAugment()
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, **{**VALID, "header_hosts": ["*"]})
        tctx.configure(addon, header_merge="append")
        addon.done()
    assert sum("header_hosts is *" in r.message and "every host" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("scope", "warned"),
    [("~d api.example.com", True), ("!~h x", True), ("~u /v1/", True), ("api", True), ("~m POST & ~q", False)],
)
def test_scope_that_searches_hosts_is_warned_about(caplog, scope, warned):
    addon = header_augment.HeaderAugment()
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=VALID["header_provider_url"], header_scope=scope)
        addon.done()
    assert any("header_hosts" in r.message and "Host header" in r.message for r in caplog.records) is warned


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("replace", [b"ours"]), ("append", [b"client", b"ours"]), ("keep", [b"client"])],
)
def test_merge_modes(mode, expected):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_merge=mode, **VALID)
        give(addon, ("X-Token", "ours"))
        f = make_flow((("x-token", "client"),))
        addon.requestheaders(f)
        assert [v for k, v in f.request.headers.fields if k.lower() == b"x-token"] == expected


def test_hosts_and_scope_must_both_match():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_scope="~m GET", **VALID)
        give(addon, ("X-Token", "t"))
        inside, other_host, other_method = make_flow(), make_flow(host="other.example.com"), make_flow()
        other_method.request.method = "POST"
        for f in (inside, other_host, other_method):
            addon.requestheaders(f)
        assert inside.request.headers["X-Token"] == "t"
        assert "X-Token" not in other_host.request.headers and "X-Token" not in other_method.request.headers
        assert addon.bindings[0].counters.out_of_scope == 2


def test_hosts_match_the_routed_destination_never_the_host_header():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        give(addon, ("X-Token", "t"))
        spoofed = make_flow(host="127.0.0.1")
        spoofed.request.headers["Host"] = "api.example.com"
        addon.requestheaders(spoofed)
        assert "X-Token" not in spoofed.request.headers


def test_a_host_idna_reads_as_two_names_gets_nothing_and_its_comment_says_why():
    """x.xn--bank-cwr.example reaches the hook as x.ba\u115fnk.example (mitmproxy decodes it with IDNA 2003), which
    IDNA 2008 reads as x.bank.example while the connection resolves x.xn--bank-cwr.example again."""
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=VALID["header_provider_url"], header_hosts=["*.bank.example"])
        give(addon, ("X-Token", "secret-value"))
        two_names, named, other = (make_flow(host=h) for h in ("x.ba\u115fnk.example", "x.bank.example", "a.test"))
        for f in (two_names, named, other):
            addon.requestheaders(f)
        assert "X-Token" not in two_names.request.headers and "X-Token" not in other.request.headers
        assert named.request.headers["X-Token"] == "secret-value"
        assert addon.bindings[0].counters.out_of_scope == 2
        assert two_names.comment.startswith("header-augment: not sent: ") and "secret-value" not in two_names.comment
        assert other.comment == ""  # an ordinary host out of scope is not worth a note


def test_require_refuses_until_an_answer_and_after_max_stale():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_require=True, header_max_stale="1s", **VALID)
        addon.bindings[0].refresher.refresh()  # a real first fetch: nothing listens, so it fails
        f = make_flow()
        addon.requestheaders(f)
        assert f.response.status_code == 503
        assert b"no valid answer" in f.response.content
        give(addon)  # {}: a valid answer with no headers is not a reason to refuse
        f = make_flow()
        addon.requestheaders(f)
        assert f.response is None
        give(addon, ("X-Token", "t"), max_stale=1, at=0)  # fetched long ago (monotonic 0)
        f = make_flow()
        addon.requestheaders(f)
        assert f.response.status_code == 503 and b"expired" in f.response.content
        assert b"X-Token" not in f.response.content and b"t\n" not in f.response.content


def test_out_of_scope_requests_are_not_refused():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_require=True, **VALID)
        f = make_flow(host="elsewhere.example.com")
        addon.requestheaders(f)
        assert f.response is None


def test_flows_with_response_error_or_not_live_are_left_alone():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        give(addon, ("X-Token", "t"))
        answered = tflow.tflow(resp=True)
        errored = tflow.tflow(err=True)
        dead = tflow.tflow(live=False)
        for f in (answered, errored, dead):
            before = f.request.headers.fields
            addon.requestheaders(f)
            assert f.request.headers.fields == before


def test_snapshot_swap_is_seen_by_the_next_request():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        addon.bindings[0].refresher.refresh()
        f = make_flow()
        addon.requestheaders(f)
        assert "X-Token" not in f.request.headers
        give(addon, ("X-Token", "one"))
        f = make_flow()
        addon.requestheaders(f)
        assert f.request.headers["X-Token"] == "one"
        give(addon, ("X-Other", "two"))
        f = make_flow()
        addon.requestheaders(f)
        assert "X-Token" not in f.request.headers and f.request.headers["X-Other"] == "two"


def test_unexpected_error_passes_the_flow_untouched(caplog):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        give(addon, ("X-Token", "secret-value"))

        def broken_scope(flow):
            raise RuntimeError("boom")

        addon._path.entries = Entries.of((dataclasses.replace(addon.bindings[0], scope=broken_scope),))
        f = make_flow()
        before = f.request.headers.fields
        addon.requestheaders(f)
        assert f.request.headers.fields == before and f.response is None
    assert "unexpected error applying" in caplog.text
    assert "secret-value" not in caplog.text


def test_unexpected_error_refuses_when_require_is_set(caplog):
    """A scope that raises on every request (`!!!…~q`, too deep to evaluate) made the hook fail open."""
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_require=True, header_scope="!" * 2000 + "~q", **VALID)
        give(addon, ("X-Token", "secret-value"))
        flows = [make_flow() for _ in range(50)]
        for f in flows:
            addon.requestheaders(f)
        assert all(f.response.status_code == 503 and "X-Token" not in f.request.headers for f in flows)
        assert addon.bindings[0].counters.refused == 50
    assert sum("unexpected error applying" in r.message for r in caplog.records) == 1  # not one per request


def test_runtime_changes_keep_or_replace_the_refresher():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        first = addon.bindings[0].refresher
        tctx.configure(addon, header_merge="keep", header_scope="~m GET", header_require=True)
        assert addon.bindings[0].refresher is first  # applying differently needs no new fetch
        tctx.configure(addon, header_refresh_interval="10s")
        assert addon.bindings[0].refresher is not first
        addon.done()


def test_transport_change_keeps_serving_the_cached_headers():
    """Changing only the timeout of a header_require provider dropped its headers: 503s until the next answer."""
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_require=True, **VALID)
        give(addon, ("X-Token", "cached"))
        tctx.configure(addon, header_provider_timeout="2s", header_refresh_interval="1m", header_max_stale="1h")
        assert addon.bindings[0].settings.timeout == 2
        f = make_flow()
        addon.requestheaders(f)
        assert f.response is None and f.request.headers["X-Token"] == "cached"
        tctx.configure(addon, header_provider_url="http://127.0.0.1:9/other")  # other credentials: not kept
        assert addon.bindings[0].refresher.snapshot is NOTHING
        addon.done()


def test_flow_comments_name_what_was_done():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        give(addon, ("Authorization", "Bearer secret-value"), ("X-Tenant", "acme"))
        plain, mine = make_flow(), make_flow((("authorization", "mine"),))
        mine.comment = "earlier note"
        for f in (plain, mine):
            addon.requestheaders(f)
        assert plain.comment == "header-augment: added Authorization, X-Tenant"
        assert mine.comment == "earlier note\nheader-augment: added X-Tenant; replaced Authorization"
        tctx.configure(addon, header_require=True)
        addon.bindings[0].refresher.snapshot = NOTHING
        addon.bindings[0].refresher.refresh()
        refused = make_flow()
        addon.requestheaders(refused)
        assert refused.comment == "header-augment: refused: no valid answer yet"
        assert "secret-value" not in plain.comment + mine.comment + refused.comment


def test_bad_runtime_value_keeps_the_previous_configuration():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_merge="append", **VALID)
        before = addon.bindings
        with pytest.raises(exceptions.OptionsError, match="header_refresh_interval"):
            tctx.configure(addon, header_refresh_interval="fast")
        assert addon.bindings == before
        assert tctx.options.header_refresh_interval == "360s"


def test_deferred_bad_values_and_unknown_names_are_logged_as_errors(caplog):
    with caplog.at_level(logging.ERROR), taddons.context() as tctx:
        tctx.options.set(
            "header_require=maybe", "header_requir=true", "header_xyzzy_wombat_quux=1", "other=1", defer=True
        )
        tctx.options.set("header_scope=a", "header_scope=b", defer=True)
        tctx.master.addons.register(header_augment.HeaderAugment())
        assert "other" in tctx.options.deferred  # not ours to judge
        assert not any(k.startswith("header_") for k in tctx.options.deferred)
        assert tctx.options.header_require is False
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("header_require: 'maybe' is not accepted" in m and "true, false" in m for m in messages)
    assert any("unknown option header_requir; did you mean header_require?" in m for m in messages)
    assert any("unknown option header_xyzzy_wombat_quux; header-augment's options:" in m for m in messages)
    assert any("header_scope" in m and "multiple values" in m for m in messages)


@pytest.mark.parametrize("spec", ["header_require", "header_require=true", "header_require=false"])
def test_deferred_good_boolean_spellings_still_work(spec, caplog):
    with caplog.at_level(logging.ERROR), taddons.context() as tctx:
        tctx.options.set(spec, defer=True)
        tctx.master.addons.register(header_augment.HeaderAugment())
        assert tctx.options.header_require is (spec != "header_require=false")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_config_file_values_are_checked_too(caplog):
    with caplog.at_level(logging.ERROR), taddons.context() as tctx:
        tctx.options.update_defer(header_require="yes please", header_merge="append", header_refresh_interval=30)
        tctx.master.addons.register(header_augment.HeaderAugment())
        assert tctx.options.header_merge == "append"
        assert tctx.options.header_refresh_interval == "30"  # a YAML number is a number of seconds
    assert "header_require: 'yes please' is not accepted" in caplog.text


def refresher_threads():
    return [t for t in threading.enumerate() if t.name.startswith("header-augment")]


def test_done_and_hot_reload_leave_no_thread(provider):
    asyncio.run(hot_reload_scenario(provider))


async def hot_reload_scenario(provider):
    """In a running event loop, as in mitmproxy: `running()` starts a task on it."""
    provider.answer({"X-Token": "t"})
    with taddons.context() as tctx:
        sc = script.Script(str(ADDON), False)  # loads and registers the script's addons
        tctx.options.update(header_provider_url=provider.url, header_hosts=["*"])
        # The Script is not in the addon chain here, so hooks reach the script's addons only when sent to them.
        tctx.master.addons.invoke_addon_sync(sc.ns, hooks.ConfigureHook({"header_provider_url", "header_hosts"}))
        sc.running()
        tctx.master.addons.invoke_addon_sync(sc.ns, hooks.RunningHook())
        wait_until(lambda: len(refresher_threads()) == 1, what="refresher thread")
        old = refresher_threads()[0]
        sc.loadscript()  # what the watcher does when the file changes
        # done() does not wait on the loop for the threads: they end once their scheduler is closed.
        wait_until(lambda: not old.is_alive(), what="the old script's thread to end")
        wait_until(lambda: len(refresher_threads()) == 1 and refresher_threads()[0] is not old, what="new thread")
        tctx.master.addons.remove(sc.ns)  # runs done()
        wait_until(lambda: refresher_threads() == [], what="every thread to end")


def test_nothing_is_the_initial_snapshot():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **VALID)
        assert addon.bindings[0].refresher.snapshot is NOTHING


def test_start_up_errors_never_show_a_url_query_or_userinfo(caplog):
    """A URL's query (which can carry a token) was echoed in errors."""
    with caplog.at_level(logging.ERROR), taddons.context() as tctx:
        tctx.options.set(
            "header_provider_url=http://a/?token=SECRET-1",
            "header_provider_url=http://user:SECRET-2@b:99/x?token=SECRET-3",
            defer=True,
        )
        tctx.master.addons.register(header_augment.HeaderAugment())
    assert "header_provider_url" in caplog.text
    assert "SECRET" not in caplog.text


def test_runtime_errors_never_show_a_url_query_or_userinfo():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        for url in ("http://a:99999/?token=SECRET-4", "ftp://user:SECRET-5@a/?token=SECRET-6"):
            with pytest.raises(exceptions.OptionsError) as e:
                tctx.configure(addon, header_provider_url=url, header_hosts=["a"])
            assert "header_provider_url" in str(e.value) and "SECRET" not in str(e.value)


def test_a_refresher_that_died_is_replaced_on_reconfiguration(provider, caplog):
    provider.answer({"X-Token": "t"})

    async def scenario():
        addon = header_augment.HeaderAugment()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_provider_url=provider.url, header_hosts=["api.example.com"])
            dying = addon.bindings[0].refresher

            def bug():
                raise RuntimeError("a bug in a client")

            dying.client.fetch = bug  # an unexpected error inside the thread, as a bug would raise
            addon.running()
            try:
                assert await asyncio.to_thread(dying.wait_ended, 5)
                assert dying.broken
                tctx.configure(addon, header_merge="keep")  # any change: a new refresher takes over
                fresh = addon.bindings[0].refresher
                assert fresh is not dying and fresh.started and not fresh.stopping
                await asyncio.to_thread(wait_until, lambda: fresh.counts.ok, 5)
            finally:
                addon.done()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "refresher stopped by an unexpected error" in caplog.text
