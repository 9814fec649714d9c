"""The admin endpoint (header_admin_listen): end to end with a real mitmdump and admin port, in-process for runtime
changes and script reloads, and the metrics collector on its own."""

import asyncio
import json
import logging
import re
import socket
import time
import urllib.parse

import header_augment
import httpx
import pytest
from conftest import client_for, values_of
from mitmproxy import exceptions, hooks
from mitmproxy.addons import script
from mitmproxy.test import taddons
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import ADDON, ROOT, HeldProvider, Provider, TokenEndpoint, wait_until

from header_augment_core.admin import Address, parse_listen
from header_augment_core.counters import REQUEST_COUNTERS, REQUEST_EXTRAS, REQUEST_OUTCOMES
from header_augment_core.failures import REASON_CLASSES
from header_augment_core.metrics import ProviderCollector
from header_augment_core.schedule import SPREAD
from header_augment_core.snapshot import Snapshot

ADMIN = ("--set", "header_admin_listen=127.0.0.1:0")
CONSOLE = ("-s", str(ROOT / "tests" / "console_set.py"))
LISTENING = r"admin endpoint listening at 127\.0\.0\.1:(\d+)"
VALUE = "Bearer v4lue-never-shown"
OTHER_VALUE = "other-v4lue-never-shown"
QUERY = "query-t0ken-never-shown"
SECRET = "s3cret-client-secret-never-shown"
NOT_SHOWN = (VALUE, OTHER_VALUE, QUERY, SECRET, "tok-1")


def admin_client(m) -> httpx.Client:
    port = int(m.wait_for(LISTENING).group(1))
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics answer, by name and labels (parsed by prometheus_client's own parser)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(values: dict, name: str, **labels: str) -> float:
    return values[(name, frozenset(labels.items()))]


def metrics(admin: httpx.Client) -> dict:
    response = admin.get("/metrics")
    assert response.status_code == 200, response.text
    return samples(response.text)


# -- end to end: a real mitmdump with a real admin port --------------------------------------------------------------


def test_ready_follows_the_first_answer_and_the_headers_going_stale(mitmdump):
    provider = HeldProvider()
    try:
        provider.answer({"X-Token": VALUE})
        m = mitmdump(
            "--set",
            f"header_provider_url={provider.url}",
            "--set",
            "header_hosts=127.0.0.1",
            "--set",
            "header_refresh_interval=1h",
            "--set",
            "header_provider_timeout=60s",  # the held fetch does not time out, however slow the test is
            *ADMIN,
            *CONSOLE,
        )
        with admin_client(m) as admin:
            assert provider.arrived.wait(10)  # the first fetch is in flight, held by the provider
            ready = admin.get("/ready")
            assert (ready.status_code, ready.text) == (503, f"{provider.url}: waiting\n")
            values = metrics(admin)
            assert sample(values, "header_augment_fetch_in_flight_seconds", provider=provider.url) > 0
            assert sample(values, "header_augment_usable", provider=provider.url) == 0
            assert admin.get("/live").status_code == 200
            provider.release()
            wait_until(lambda: admin.get("/ready").status_code == 200, what="ready after the first answer")
            assert admin.get("/ready").text == "ready\n"
            # Every later fetch fails; a max_stale shorter than the headers' age then drops them.
            provider.answer(status=500)
            with client_for(m.proxy) as client:
                command = urllib.parse.quote("set header_max_stale 1s")
                assert client.get(f"http://console.test/{command}").status_code == 200
            stale = wait_until(lambda: (r := admin.get("/ready")).status_code == 503 and r, what="not ready")
            assert stale.text == f"{provider.url}: stale\n"
            assert admin.get("/live").status_code == 200
            values = metrics(admin)
            assert sample(values, "header_augment_usable", provider=provider.url) == 0
            assert sample(values, "header_augment_headers", provider=provider.url) == 0
            failed = {"provider": provider.url, "result": "failed", "reason_class": "status"}
            assert sample(values, "header_augment_fetches_total", **failed) >= 1
    finally:
        provider.close()


def test_metrics_status_and_refresh_show_counts_and_names_never_values(mitmdump, upstream, tmp_path):
    provider, token_endpoint = Provider(), TokenEndpoint(secret=SECRET, expires_in=3600)
    try:
        provider.answer({"X-Token": VALUE, "X-Other": OTHER_VALUE})
        secret_file = tmp_path / "client-secret"
        secret_file.write_text(SECRET + "\n")
        providers = tmp_path / "providers.yaml"
        providers.write_text(
            f"""
providers:
  - name: internal
    url: {provider.url}?token={QUERY}
    hosts: 127.0.0.1
    interval: 1h
  - name: partner
    kind: oauth2
    url: {token_endpoint.url}
    client_id: proxy
    client_secret_file: {secret_file}
    hosts: localhost
"""
        )
        started = time.time()
        m = mitmdump("--set", f"header_providers_file={providers}", *ADMIN)
        shown: list[httpx.Response] = []
        with admin_client(m) as admin:
            wait_until(lambda: admin.get("/ready").status_code == 200, what="both providers ready")
            shown.append(admin.get("/ready"))
            with client_for(m.proxy) as client:
                for _ in range(3):
                    response = client.get(f"http://127.0.0.1:{upstream.port}/")
                    assert values_of(response, "X-Token") == [VALUE]
                for _ in range(2):
                    assert values_of(client.get(f"http://localhost:{upstream.port}/"), "X-Token") == []

            response = admin.get("/metrics")
            shown.append(response)
            values = samples(response.text)
            for name, given, out_of_scope in (("internal", 3, 2), ("partner", 2, 3)):
                outcomes = {c.attribute: 0 for c in REQUEST_OUTCOMES} | {"given": given, "out_of_scope": out_of_scope}
                for outcome, count in outcomes.items():
                    assert sample(values, "header_augment_requests_total", provider=name, outcome=outcome) == count
                for c in REQUEST_EXTRAS:
                    assert sample(values, f"header_augment_requests_{c.attribute}_total", provider=name) == 0
                assert sample(values, "header_augment_fetches_total", provider=name, result="ok", reason_class="") == 1
                assert sample(values, "header_augment_usable", provider=name) == 1
                assert started <= sample(values, "header_augment_last_success_timestamp_seconds", provider=name)
                assert sample(values, "header_augment_last_success_timestamp_seconds", provider=name) <= time.time()
                assert sample(values, "header_augment_fetch_in_flight_seconds", provider=name) == 0
            assert sample(values, "header_augment_headers", provider="internal") == 2
            assert sample(values, "header_augment_headers", provider="partner") == 1
            next_refresh = sample(values, "header_augment_next_refresh_timestamp_seconds", provider="internal")
            # The first delay after a start is spread over the interval (a fleet restarted together is not in step).
            assert started + 3600 * SPREAD[0] <= next_refresh <= time.time() + 3600

            refreshed = admin.post("/refresh")
            shown.append(refreshed)
            assert (refreshed.status_code, refreshed.text) == (202, "refresh requested\n")
            provider.wait_for_requests(2)
            wait_until(lambda: token_endpoint.issued == 2, what="the refresh reaching the token endpoint")
            ok = {"provider": "internal", "result": "ok", "reason_class": ""}
            wait_until(lambda: sample(metrics(admin), "header_augment_fetches_total", **ok) == 2, what="2 fetches")

            response = admin.get("/status")
            shown.append(response)
            assert response.headers["content-type"] == "application/json"
            internal, partner = response.json()["providers"]
            assert (internal["name"], internal["headers"], internal["source"]) == (
                "internal",
                ["X-Token", "X-Other"],
                provider.url,
            )
            assert (partner["name"], partner["kind"], partner["headers"]) == ("partner", "oauth2", ["Authorization"])
            assert internal["requests"]["given"] == 3 and partner["requests"]["given"] == 2
            shown.append(admin.get("/live"))
            assert shown[-1].status_code == 200

            for path, method, status in (("/nope", "GET", 404), ("/refresh", "GET", 405), ("/ready", "POST", 405)):
                assert admin.request(method, path).status_code == status
            # A web page that makes a browser call the endpoint is refused.
            assert admin.post("/refresh", headers={"Origin": "https://elsewhere.example"}).status_code == 403
        for response in shown:
            everything = response.text + json.dumps(dict(response.headers))
            for secret in NOT_SHOWN:
                assert secret not in everything, (response.request.url, secret)
        assert "reachable from other hosts" not in m.output
    finally:
        provider.close()
        token_endpoint.close()


def test_a_non_loopback_address_is_warned_about(mitmdump, provider):
    m = mitmdump(
        "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", "--set",
        "header_admin_listen=0.0.0.0:0",
    )  # fmt: skip
    port = int(m.wait_for(r"admin endpoint listening at 0\.0\.0\.0:(\d+)").group(1))
    m.wait_for(rf"admin endpoint at 0\.0\.0\.0:{port} is reachable from other hosts and has no authentication")
    with httpx.Client(trust_env=False, timeout=10) as admin:
        assert admin.get(f"http://127.0.0.1:{port}/live").status_code == 200


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that something else listens at."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost", "header_admin_listen: 'localhost' is not host:port"),
        ("admin.example:9901", "header_admin_listen: 'admin.example:9901' is not host:port"),
        ("127.0.0.1:{busy}", "header_admin_listen: cannot listen at 127.0.0.1:{busy} (Address already in use)"),
    ],
)
def test_an_unusable_address_stops_start_up_naming_the_option(mitmdump, provider, busy_port, value, message):
    value, message = value.format(busy=busy_port), message.format(busy=busy_port)
    m = mitmdump(
        "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", "--set",
        f"header_admin_listen={value}", wait_listening=False,
    )  # fmt: skip
    assert m.wait_exit() != 0
    assert message in m.output


# -- in-process: runtime changes and script reloads, on a running event loop -----------------------------------------


def listening_ports(caplog) -> list[int]:
    return [int(p) for p in re.findall(LISTENING, caplog.text)]


async def eventually(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def test_runtime_changes_rebind_and_a_bad_value_keeps_the_endpoint(provider, busy_port, caplog):
    provider.answer({"X-Token": VALUE})

    async def scenario():
        addon = header_augment.HeaderAugment()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_admin_listen="127.0.0.1:0")
            assert listening_ports(caplog) == []  # not before running(): the loop serves it from then on
            addon.running()
            try:
                (first,) = listening_ports(caplog)
                async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                    ready = await client.get(f"http://127.0.0.1:{first}/ready")
                    assert (ready.status_code, ready.text) == (503, "no header provider configured\n")

                    tctx.configure(addon, header_provider_url=provider.url, header_hosts=["*"])
                    assert listening_ports(caplog) == [first]  # other options leave the endpoint alone

                    async def ready_at(port):
                        return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200

                    await eventually(lambda: ready_at(first), "ready")

                    tctx.configure(addon, header_admin_listen="localhost:0")
                    second = listening_ports(caplog)[-1]
                    assert await refused(first)
                    await eventually(lambda: ready_at(second), "ready at the new address")

                    with pytest.raises(exceptions.OptionsError, match="header_admin_listen: '127.0.0.1' is not"):
                        tctx.configure(addon, header_admin_listen="127.0.0.1")
                    assert tctx.options.header_admin_listen == "localhost:0"
                    assert listening_ports(caplog)[-1] == second and await ready_at(second)

                    with pytest.raises(exceptions.OptionsError, match=f"cannot listen at 127.0.0.1:{busy_port}"):
                        tctx.configure(addon, header_admin_listen=f"127.0.0.1:{busy_port}")
                    third = listening_ports(caplog)[-1]  # the rollback serves the previous value again
                    assert await ready_at(third)

                    refresher = addon.bindings[0].refresher
                    refresher.stop()  # as if its thread had died: it is still the provider's refresher
                    live = await client.get(f"http://127.0.0.1:{third}/live")
                    assert (live.status_code, live.text) == (503, f"{provider.url}: stopped\n")
                    ready = await client.get(f"http://127.0.0.1:{third}/ready")
                    assert (ready.status_code, ready.text) == (503, f"{provider.url}: stopped\n")

                    tctx.configure(addon, header_admin_listen="")
                    assert await refused(third)
            finally:
                addon.done()

    with caplog.at_level(logging.INFO, logger="header_augment"):
        asyncio.run(scenario())


def test_script_reload_and_done_close_the_endpoint_and_its_connections(provider, caplog):
    provider.answer({"X-Token": VALUE})

    async def scenario():
        with taddons.context() as tctx:
            sc = script.Script(str(ADDON), False)
            tctx.options.update(header_provider_url=provider.url, header_hosts=["*"], header_admin_listen="127.0.0.1:0")
            # The Script is not in the addon chain here, so hooks reach the script's addons only when sent to them.
            tctx.master.addons.invoke_addon_sync(sc.ns, hooks.ConfigureHook(set(tctx.options.keys())))
            sc.running()
            tctx.master.addons.invoke_addon_sync(sc.ns, hooks.RunningHook())
            (first,) = listening_ports(caplog)
            reader, writer = await asyncio.open_connection("127.0.0.1", first)
            writer.write(b"GET /live HTTP/1.1\r\nHost: admin\r\n\r\n")  # a kept-alive connection, as a scraper's
            await writer.drain()
            assert (await asyncio.wait_for(reader.readuntil(b"live\n"), 10)).startswith(b"HTTP/1.1 200")

            sc.loadscript()  # what the watcher does when the file changes
            assert await refused(first)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the retired addon's server
            writer.close()
            (second,) = listening_ports(caplog)[1:]
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                assert (await client.get(f"http://127.0.0.1:{second}/live")).status_code == 200

            tctx.master.addons.remove(sc.ns)  # runs done()
            assert await refused(second)

    with caplog.at_level(logging.INFO, logger="header_augment"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:9901", Address("127.0.0.1", 9901)),
        ("[::1]:0", Address("::1", 0)),
        ("0.0.0.0:65535", Address("0.0.0.0", 65535)),
        ("localhost:80", Address("localhost", 80)),
        (" ", None),
    ],
)
def test_listen_addresses(value, address):
    assert parse_listen(value) == address


@pytest.mark.parametrize(
    "value",
    ["localhost", "127.0.0.1:", ":9901", "::1:80", "[127.0.0.1]:80", "[localhost]:80", "example.com:80",
     "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:\u0663", "127.0.0.1:80x"],
)  # fmt: skip
def test_bad_listen_values_are_options_errors_naming_the_option(value):
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=re.escape(f"header_admin_listen: {value!r} is not host")):
            tctx.configure(addon, header_admin_listen=value)


def test_addresses_are_shown_as_they_are_written():
    assert (str(Address("::1", 5)), str(Address("127.0.0.1", 5))) == ("[::1]:5", "127.0.0.1:5")


# -- the collector, in-process -----------------------------------------------------------------------------------


def test_collector_reads_the_counters_the_addon_keeps(tmp_path):
    url = "http://127.0.0.1:9/headers"
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"- url: {url}\n  hosts: b.example\n"  # the same fetch as the single provider: one refresher for both
        f"- name: named\n  url: http://127.0.0.1:9/other?token={QUERY}\n  hosts: c.example\n  max_stale: 50s\n"
    )
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=url, header_hosts=["a.example"], header_providers_file=str(providers))
        single, shared, named = addon.bindings
        assert single.refresher is shared.refresher
        refresher = single.refresher
        refresher.snapshot = Snapshot.build([("X-Token", VALUE), ("X-Other", OTHER_VALUE)], 990.0, 0.0)
        refresher.next_fetch_at = 1100.0
        refresher.in_flight_since = 997.5
        refresher.counts.ok = 2
        refresher.counts.count_failure("HTTP 500 (free text)", "status")
        named.refresher.snapshot = Snapshot.build([("X-C", VALUE)], 900.0, 50.0)  # stale since 950
        for number, binding in enumerate(addon.bindings):
            for offset, c in enumerate(REQUEST_COUNTERS):
                setattr(binding.counters, c.attribute, 10 * number + offset)
        registry = CollectorRegistry()
        registry.register(ProviderCollector(lambda: addon.bindings, clock=lambda: 1000.0, wall=lambda: 5000.0))
        text = generate_latest(registry).decode()

    expected = {}

    def expect(value: float, name: str, **labels: str) -> None:
        expected[(name, frozenset(labels.items()))] = value

    labels = ((single, url), (shared, f"{url} #2"), (named, "named"))  # unnamed entries sharing a source stay apart
    for number, (binding, provider) in enumerate(labels):
        for offset, c in enumerate(REQUEST_COUNTERS):
            if c in REQUEST_OUTCOMES:
                expect(10 * number + offset, "header_augment_requests_total", provider=provider, outcome=c.attribute)
            else:
                expect(10 * number + offset, f"header_augment_requests_{c.attribute}_total", provider=provider)
        ours = binding.refresher is refresher
        expect(2 if ours else 0, "header_augment_fetches_total", provider=provider, result="ok", reason_class="")
        for reason_class in REASON_CLASSES:
            count = 1 if ours and reason_class == "status" else 0
            expect(count, "header_augment_fetches_total", provider=provider, result="failed", reason_class=reason_class)
        for name, if_ours, if_named in (
            ("last_success_timestamp_seconds", 4990, 4900),
            ("usable", 1, 0),
            ("headers", 2, 0),
            ("next_refresh_timestamp_seconds", 5100, 0),  # never scheduled: not started
            ("fetch_in_flight_seconds", 2.5, 0),
        ):
            expect(if_ours if ours else if_named, f"header_augment_{name}", provider=provider)
    assert samples(text) == expected
    for secret in (VALUE, OTHER_VALUE, QUERY, "free text"):
        assert secret not in text
    help_lines = [line for line in text.splitlines() if line.startswith("# HELP header_augment_fetches_total")]
    assert "share one refresher" in help_lines[0]
