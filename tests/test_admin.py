"""The admin endpoint (header_admin_listen): end to end with a real mitmdump and admin port, in-process for runtime
changes and script reloads, and the metrics collector on its own."""

import asyncio
import itertools
import json
import logging
import os
import re
import resource
import socket
import threading
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
from servers import ADDON, DEADLINE, ROOT, HeldProvider, Provider, TokenEndpoint, wait_until

from header_augment_core.admin import MAX_CONNECTIONS, Address, AdminEndpoint, parse_listen
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
            writer.write(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a kept-alive connection, as a scraper's
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
            ("stuck_past_timeout_seconds", 0, 0),  # not started: no turn, stuck or not (tests/test_stuck_turns.py)
        ):
            expect(if_ours if ours else if_named, f"header_augment_{name}", provider=provider)
    assert samples(text) == expected
    for secret in (VALUE, OTHER_VALUE, QUERY, "free text"):
        assert secret not in text
    help_lines = [line for line in text.splitlines() if line.startswith("# HELP header_augment_fetches_total")]
    assert "share one refresher" in help_lines[0]


# -- hostile clients: a DNS-rebinding page, a burst of refreshes, a flood of idle connections ------------------------

MISDIRECTED = (421, "421 Misdirected Request\n")


def raw_exchange(port: int, request: bytes, address: str = "127.0.0.1") -> bytes:
    with socket.create_connection((address, port), timeout=DEADLINE) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def running_with_admin(mitmdump, provider, *args: str) -> tuple:
    """A mitmdump adding the provider's headers, with its admin endpoint at a free port on 127.0.0.1, and that port;
    once its start-up is over (an answer from the endpoint comes after every running hook: mitmproxy's own load the
    confdir's files then), the provider's first answer is logged, and the endpoint holds no connection."""
    provider.answer({"X-Token": VALUE})
    m = mitmdump(
        "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", "--set",
        "header_refresh_interval=1h", *ADMIN, *args,
    )  # fmt: skip
    port = int(m.wait_for(LISTENING).group(1))
    live = raw_exchange(port, b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert live.startswith(b"HTTP/1.1 200 ")  # read to the end: the endpoint has closed its side
    m.wait_for("headers in use: X-Token")
    return m, port


def test_only_a_host_that_names_the_endpoint_is_answered(mitmdump, provider):
    provider.answer({"X-Token": VALUE})
    m = mitmdump(
        "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", "--set",
        "header_refresh_interval=1h", "--set", "header_admin_listen=0.0.0.0:0",
    )  # fmt: skip
    port = int(m.wait_for(r"admin endpoint listening at 0\.0\.0\.0:(\d+)").group(1))
    provider.wait_for_requests(1)
    # Connected at (address), naming (Host). 127.0.0.2 stands for a pod's address: what a kubelet's probe or a
    # Prometheus scrape connects to and names.
    named = [
        ("127.0.0.1", f"127.0.0.1:{port}"),
        ("127.0.0.1", f"localhost:{port}"),
        ("127.0.0.1", "LocalHost"),
        ("127.0.0.1", f"[::1]:{port}"),  # loopback, and the endpoint listens on every address
        ("127.0.0.1", f"0.0.0.0:{port}"),  # the address it listens at, as written
        ("127.0.0.1", "localhost:8080"),  # through a port forward
        ("127.0.0.2", f"127.0.0.2:{port}"),
    ]
    rebinding = [
        ("127.0.0.1", "attacker.example"),
        ("127.0.0.1", f"attacker.example:{port}"),
        ("127.0.0.1", f"localhost.attacker.example:{port}"),
        ("127.0.0.1", f"127.0.0.1.attacker.example:{port}"),
        ("127.0.0.1", "localhost:admin"),
        ("127.0.0.1", f"[127.0.0.1]:{port}"),
        ("127.0.0.1", "::1"),
        ("127.0.0.1", f"127.0.0.2:{port}"),  # not the address this connection came in at
        ("127.0.0.2", f"127.0.0.3:{port}"),
        ("127.0.0.1", f"10.1.2.3:{port}"),
    ]
    with httpx.Client(trust_env=False, timeout=10) as client:

        def ask(address: str, host: str, method: str = "GET", path: str = "/status") -> httpx.Response:
            return client.request(method, f"http://{address}:{port}{path}", headers={"Host": host})

        for address, host in named:
            response = ask(address, host)
            assert response.status_code == 200, (address, host)
            assert response.json()["providers"][0]["source"] == provider.url
        for address, host in rebinding:
            for method, path in (("GET", "/status"), ("GET", "/metrics"), ("GET", "/ready"), ("POST", "/refresh"),
                                 ("GET", "/nope")):  # fmt: skip
                response = ask(address, host, method, path)
                assert (response.status_code, response.text) == MISDIRECTED, (address, host, path)
    # Without Host (HTTP/1.0): not from a browser, which always names the host it connects to.
    assert raw_exchange(port, b"GET /live HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    two = raw_exchange(port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\n\r\n")
    assert two == b"HTTP/1.1 400 Bad Request\r\n\r\n"  # refused by tornado itself


def test_a_burst_of_refreshes_asks_the_provider_at_most_once_a_second(mitmdump, provider):
    m, port = running_with_admin(mitmdump, provider, "--set", "termlog_verbosity=debug")
    request = f"POST /refresh HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n".encode()
    # One refresh first: the gaps are measured from a fetch on the kept-alive connection, not from the start-up
    # fetch, whose arrival a new connection and the proxy's start-up delay by up to a tenth of a second.
    assert raw_exchange(port, request.replace(b"Content-Length", b"Connection: close\r\nContent-Length")).startswith(
        b"HTTP/1.1 202 "
    )
    provider.wait_for_requests(2)
    mark = m.mark()
    connections = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) for _ in range(4)]
    try:
        started = time.monotonic()
        senders = [threading.Thread(target=c.sendall, args=(request * 500,)) for c in connections]
        for sender in senders:
            sender.start()
        answers = b""
        for connection in connections:
            answer = b""
            while answer.count(b"HTTP/1.1 ") < 500 and (chunk := connection.recv(65536)):
                answer += chunk
            answers += answer
        answered = time.monotonic()
        for sender in senders:
            sender.join()
    finally:
        for connection in connections:
            connection.close()
    assert re.findall(rb"HTTP/1\.1 (\d+)", answers) == [b"202"] * 2000

    def logged():
        lines = [line for line in m.output.splitlines()[mark:] if "refresh requested" in line]
        return len(lines) == 2000 and lines

    lines = wait_until(logged, what="every refresh logged")
    asked = [line for line in lines if "already waiting" not in line]  # the info lines: one per fetch asked for
    provider.wait_for_requests(2 + len(asked))  # none is dropped: each is one fetch
    fetches = [r["at"] for r in provider.requests[1:]]
    assert len(fetches) == 1 + len(asked)
    window = answered - started
    assert 1 <= len(asked) <= 2 + int(window), window  # at most two for a burst shorter than a second
    gaps = [later - earlier for earlier, later in itertools.pairwise(fetches)]
    assert min(gaps) >= 0.9, gaps  # a second between fetch starts, less how long a request takes to arrive
    assert "Traceback" not in m.output


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in itertools.count() if fd not in used)


@pytest.fixture
def many_fds():
    """Room for this test's side of a flood of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def flood(port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` connections, each with the head of a request and not its end, as the attack holds them."""

    async def half_sent() -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        return writer

    return await asyncio.gather(*(half_sent() for _ in range(count)))


@pytest.mark.parametrize("fds", ["1024", "a few free"])
def test_a_flood_of_half_sent_requests_keeps_no_probe_out_and_logs_a_line(mitmdump, provider, many_fds, fds):
    m, port = running_with_admin(mitmdump, provider)
    pid = m.proc.pid
    baseline = len(os.listdir(f"/proc/{pid}/fd"))
    # As reported (the default limit of many systems), or nearly out of descriptors (the rest of the proxy holds
    # them): then an accept fails, and the endpoint closes its oldest connection for the new one.
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    limit = min(1024, hard) if fds == "1024" else lowest_free_fd(pid) + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    mark = m.mark()

    async def scenario():
        held = await flood(port, 1100)
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client:
                for _ in range(3):  # a probe, while all of them are held
                    live = await client.get(f"http://127.0.0.1:{port}/live", headers={"Connection": "close"})
                    assert (live.status_code, live.text) == (200, "live\n")
            return len(os.listdir(f"/proc/{pid}/fd"))
        finally:
            for writer in held:
                writer.close()

    open_fds = asyncio.run(scenario())
    assert open_fds <= min(limit, baseline + MAX_CONNECTIONS + 2)
    logged = m.output.splitlines()[mark:]
    expected = "connections open, its limit" if fds == "1024" else "cannot accept a connection ([Errno 24]"
    assert len(logged) == 1 and expected in logged[0], logged


def test_out_of_descriptors_the_endpoint_waits_without_spinning_or_logging_each_turn(mitmdump, provider):
    m, port = running_with_admin(mitmdump, provider)
    pid = m.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), limits[1]))  # not one descriptor left
    mark = m.mark()
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:  # waits in the listen queue
        sock.sendall(f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        m.wait_for(r"cannot accept a connection \(\[Errno 24\] Too many open files\): not accepting any for 1s")
        cpu = cpu_seconds(pid)
        time.sleep(2.5)  # the time measured: two pauses and more (tornado's accept logged on every turn of the loop)
        assert cpu_seconds(pid) - cpu < 0.5
        assert len(m.output.splitlines()[mark:]) == 1, m.output
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        answer = b""
        while chunk := sock.recv(65536):  # accepted once the pause is over
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nlive\n")
    assert "Traceback" not in m.output


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime and stime


async def closed_by_server(reader: asyncio.StreamReader) -> float:
    """When the server closed the connection (everything it sent before is read and dropped)."""
    while await asyncio.wait_for(reader.read(65536), DEADLINE):
        pass
    return time.monotonic()


def test_idle_and_half_sent_connections_are_closed_after_the_timeout(caplog):
    refreshed = []
    timeout = 0.5

    async def scenario():
        admin = AdminEndpoint(lambda: (), lambda: refreshed.append(1), idle_timeout=timeout, body_timeout=timeout)
        admin.want("127.0.0.1:0")
        admin.serve()
        (port,) = listening_ports(caplog)
        try:
            head = f"POST /refresh HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            cases = {
                "nothing sent": b"",
                "half a head": head.encode(),
                "half a body": f"{head}Content-Length: 10\r\n\r\nabc".encode(),
                "idle after an answer": f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
            }
            opened = {}  # before the server can have started its clock
            readers = {}
            for case, data in cases.items():
                opened[case] = time.monotonic()
                readers[case] = reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
            answer = await asyncio.wait_for(readers["idle after an answer"][0].readuntil(b"live\n"), DEADLINE)
            assert answer.startswith(b"HTTP/1.1 200 ")
            for case, (reader, writer) in readers.items():
                assert await closed_by_server(reader) - opened[case] >= timeout, case
                writer.close()
        finally:
            admin.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert refreshed == []  # the half-sent POST /refresh was never handled
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_malformed_requests_are_answered_without_a_line_each(caplog):
    async def scenario():
        admin = AdminEndpoint(lambda: (), lambda: None)
        admin.want("127.0.0.1:0")
        admin.serve()
        (port,) = listening_ports(caplog)
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client:
                for _ in range(50):
                    bad = await client.post(
                        f"http://127.0.0.1:{port}/refresh",
                        content=b"x",
                        headers={"Content-Type": "multipart/form-data"},
                    )
                    assert bad.status_code == 400
        finally:
            admin.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_beyond_the_limit_a_new_connection_closes_the_oldest(caplog):
    async def scenario():
        admin = AdminEndpoint(lambda: (), lambda: None, idle_timeout=3600, max_connections=4)
        admin.want("127.0.0.1:0")
        admin.serve()
        (port,) = listening_ports(caplog)
        try:
            held = []
            for _ in range(10):  # one after the other: the order they are accepted in is known
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
                await writer.drain()
                held.append((reader, writer))
            for reader, _ in held[:6]:
                await closed_by_server(reader)  # long before the timeout of an hour
            async with httpx.AsyncClient(trust_env=False, timeout=DEADLINE) as client:
                assert (await client.get(f"http://127.0.0.1:{port}/live")).status_code == 200
            for _, writer in held:
                writer.close()
        finally:
            admin.close()

    with caplog.at_level(logging.INFO, logger="header_augment"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "4 connections open, its limit" in warnings[0]
