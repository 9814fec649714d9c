"""No failures at start-up: in-scope requests that arrive while a provider's first fetch is in flight wait for it
(bounded by its timeout), without holding up the event loop or any other request."""

import asyncio
import threading

import header_augment
import httpx
from conftest import client_for, values_of
from mitmproxy.test import taddons, tflow
from servers import HeldProvider, Provider


def test_requests_wait_for_the_first_fetch_and_nothing_else_waits(mitmdump, upstream):
    """With header_require, requests sent before the first answer got 503. Now they wait for it; a request to
    another host, sent at the same moment, goes through while the first fetch is still held."""
    provider = HeldProvider()  # holds every answer until released
    try:
        provider.answer({"Authorization": "Bearer first"})
        m = mitmdump(
            "--set",
            f"header_provider_url={provider.url}",
            "--set",
            "header_hosts=127.0.0.1",
            "--set",
            "header_require",
            "--set",
            "header_provider_timeout=20s",
            # Each hook call logged: how the test knows the request has reached the proxy and is held there.
            "--set",
            "proxy_debug=true",
            "--set",
            "termlog_verbosity=debug",
        )
        assert provider.arrived.wait(10)  # the first fetch is in flight, held at the provider
        results: dict[str, httpx.Response] = {}

        def send(name: str, url: str) -> None:
            with client_for(m.proxy) as client:
                results[name] = client.get(url)

        mark = m.mark()
        in_scope = threading.Thread(target=send, args=("in", f"http://127.0.0.1:{upstream.port}/first"))
        in_scope.start()
        m.wait_for(r"<< HttpRequestHeadersHook\(flow=", start=mark)  # it has reached our hook, held there
        send("out", f"http://localhost:{upstream.port}/other")  # another host: not held
        assert results["out"].status_code == 200 and values_of(results["out"], "Authorization") == []
        assert "in" not in results  # still waiting for the first answer, which the provider holds
        provider.release()
        in_scope.join(20)
        assert results["in"].status_code == 200, results["in"].text
        assert values_of(results["in"], "Authorization") == ["Bearer first"]
    finally:
        provider.close()


def test_once_the_first_attempt_failed_nobody_waits(mitmdump, upstream):
    provider = Provider()
    provider.answer(status=500)
    try:
        m = mitmdump(
            "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", "--set", "header_require"
        )
        m.wait_for("refresh failed: HTTP 500")
        provider.answer(hang=True)  # later fetches hang: a request that waited for them would time out
        with client_for(m.proxy) as client:
            response = client.get(upstream.url)
        assert response.status_code == 503 and "no valid answer" in response.text
    finally:
        provider.close()


def test_the_wait_is_bounded_by_the_fetch_timeout():
    """In-process: a refresher that never finishes its first attempt holds a request at most timeout + grace."""
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            header_provider_url="http://127.0.0.1:9/never-started",
            header_hosts=["api.example.com"],
            header_provider_timeout="100ms",
            header_require=True,
        )
        flow = tflow.tflow()
        flow.request.host = "api.example.com"
        waiting = addon.requestheaders(flow)
        assert waiting is not None and flow.response is None  # a coroutine for mitmproxy to await
        asyncio.run(waiting)  # the refresher never runs here: the wait ends at its bound
        assert flow.response.status_code == 503
        assert addon.bindings[0].counters.waited == 1 and addon.bindings[0].counters.refused == 1
        addon.done()


def test_waiting_requests_resume_when_the_first_fetch_finishes(provider):
    provider.answer({"X-Token": "t"})

    async def scenario():
        addon = header_augment.HeaderAugment()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_provider_url=provider.url, header_hosts=["api.example.com"])
            flows = [tflow.tflow() for _ in range(3)]
            waits = []
            for flow in flows:
                flow.request.host = "api.example.com"
                waits.append(asyncio.ensure_future(addon.requestheaders(flow)))
            await asyncio.sleep(0)
            assert not any(w.done() for w in waits)
            addon.running()  # starts the refresher: its first fetch releases all three
            try:
                await asyncio.wait_for(asyncio.gather(*waits), 10)
            finally:
                addon.done()
            return flows

    flows = asyncio.run(scenario())
    assert [f.request.headers.get("X-Token") for f in flows] == ["t", "t", "t"]
    assert [f.comment for f in flows] == ["header-augment: added X-Token"] * 3
