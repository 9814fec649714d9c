"""End to end: a real mitmdump with the addon, a real provider and upstream on loopback, real clients."""

import json
import ssl
import subprocess
import urllib.parse

import httpx
import pytest
from conftest import client_for, seen_headers, values_of
from echo_upstream import received
from servers import ROOT, Provider, clean_env, wait_until

TOKEN = "Bearer tok-e2e-5ecr3t-value"


HOSTS = ("--set", "header_hosts=127.0.0.1")  # where the tests' upstreams listen


def start_with(mitmdump, provider, *args):
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS, *args)
    m.wait_for("headers in use")
    return m


def test_injects_provider_headers(mitmdump, provider, upstream):
    provider.answer({"Authorization": TOKEN, "X-Tenant": "acme"})
    m = start_with(mitmdump, provider)
    with client_for(m.proxy) as client:
        response = client.get(upstream.url + "/a")
    assert values_of(response, "Authorization") == [TOKEN]
    assert values_of(response, "X-Tenant") == ["acme"]


def test_curl_client(mitmdump, provider, upstream):
    provider.answer({"X-Token": "t1"})
    m = start_with(mitmdump, provider)
    out = subprocess.run(
        ["curl", "-s", "--max-time", "10", "-x", m.proxy, upstream.url + "/c"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    assert ("X-Token", "t1") in received(json.loads(out))


def test_rotation_and_removal(mitmdump, provider, upstream):
    provider.answer({"X-Token": "one", "X-Gone": "soon"})
    m = start_with(mitmdump, provider, "--set", "header_refresh_interval=200ms")
    with client_for(m.proxy) as client:
        assert values_of(client.get(upstream.url), "X-Token") == ["one"]
        provider.answer({"X-Token": "two"})
        response = wait_until(
            lambda: (r := client.get(upstream.url)) and values_of(r, "X-Token") == ["two"] and r, what="rotated token"
        )
        assert values_of(response, "X-Gone") == []
        provider.answer({})
        wait_until(lambda: values_of(client.get(upstream.url), "X-Token") == [], what="headers removed by {}")


def test_provider_down_at_start_then_up(mitmdump, upstream):
    provider = Provider()
    port = provider.port
    provider.close()  # nothing listens on that port now
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS)
    m.wait_for("refresh failed: ConnectError")
    with client_for(m.proxy) as client:
        assert values_of(client.get(upstream.url), "X-Late") == []  # requests pass untouched meanwhile
        revived = Provider(port=port)
        try:
            revived.answer({"X-Late": "arrived"})
            m.wait_for("headers in use: X-Late")  # found by the backoff retries
            assert values_of(client.get(upstream.url), "X-Late") == ["arrived"]
        finally:
            revived.close()


def test_stale_kept_on_bad_answers(mitmdump, provider, upstream):
    provider.answer({"X-Token": "good"})
    # At debug, every failed refresh is logged (at warning they are rate-limited).
    m = start_with(mitmdump, provider, "--set", "header_refresh_interval=100ms", "--set", "termlog_verbosity=debug")
    with client_for(m.proxy) as client:
        for status, body, reason in [
            (500, b"{}", "HTTP 500"),
            (200, b"", "not JSON"),
            (200, b"[1]", "not an object"),
            (200, b"not json", "not JSON"),
            (302, b"", "redirect"),
        ]:
            mark = m.mark()
            headers = {"Location": "/elsewhere"} if status == 302 else None
            provider.answer(body=body, status=status, response_headers=headers)
            m.wait_for(f"refresh failed: .*{reason}", start=mark)
            assert values_of(client.get(upstream.url), "X-Token") == ["good"]


def test_max_stale_drops_headers(mitmdump, provider, upstream):
    provider.answer({"X-Token": "short-lived"})
    m = start_with(mitmdump, provider, "--set", "header_refresh_interval=100ms", "--set", "header_max_stale=1s")
    with client_for(m.proxy) as client:
        assert values_of(client.get(upstream.url), "X-Token") == ["short-lived"]
        provider.answer(status=503, body=b"down")
        m.wait_for("headers dropped")
        assert values_of(client.get(upstream.url), "X-Token") == []
        provider.answer({"X-Token": "back"})
        wait_until(lambda: values_of(client.get(upstream.url), "X-Token") == ["back"], what="recovery")


def test_require_refuses_without_touching_upstream(mitmdump, provider, upstream):
    provider.answer(status=500)
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS, "--set", "header_require")
    m.wait_for("refresh failed")
    with client_for(m.proxy) as client:
        response = client.get(upstream.url + "/never")
    assert response.status_code == 503
    assert "no valid answer" in response.text
    assert "server connect" not in m.output


def test_scope_narrows_hosts(mitmdump, provider, upstream):
    provider.answer({"X-Token": "scoped"})
    m = start_with(mitmdump, provider, "--set", "header_scope=~u /in/")
    with client_for(m.proxy) as client:
        assert values_of(client.get(upstream.url + "/in/x"), "X-Token") == ["scoped"]
        assert values_of(client.get(upstream.url + "/out/x"), "X-Token") == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("replace", ["ours"]), ("append", ["client", "ours"]), ("keep", ["client"])],
)
def test_merge_modes(mitmdump, provider, upstream, mode, expected):
    provider.answer({"X-Token": "ours", "X-Other": "o"})
    m = start_with(mitmdump, provider, "--set", f"header_merge={mode}")
    with client_for(m.proxy) as client:
        response = client.get(upstream.url, headers={"x-token": "client"})
    assert values_of(response, "X-Token") == expected
    assert values_of(response, "X-Other") == ["o"]


def test_hostile_provider_leaves_requests_intact(mitmdump, provider, upstream):
    hostile = {
        "X-Good": "fine",
        "X-Split": "a\r\nX-Injected: yes",
        "Host": "evil.example",
        "Content-Length": "0",
        "Transfer-Encoding": "chunked",
        "Connection": "close",
        "X-Number": 5,
        "X-Object": {"a": 1},
        "X-Huge": "v" * 9000,
        "Bad Name": "x",
        "X-Nul": "a\x00b",
        "Expect": "100-continue",
        "Content-Encoding": "gzip",
    }
    provider.answer(hostile)
    m = start_with(mitmdump, provider)
    with client_for(m.proxy) as client:
        response = client.post(upstream.url + "/p", content=b"0123456789")
    body = response.json()
    assert body["body_bytes"] == 10
    names = [n.lower() for n, _ in seen_headers(response)]
    assert "x-good" in names
    for bad in ("x-split", "x-injected", "transfer-encoding", "x-number", "x-object", "x-huge", "x-nul", "expect"):
        assert bad not in names
    assert values_of(response, "Connection") == ["keep-alive"]  # the client's own, not the provider's "close"
    assert values_of(response, "Host") == [f"127.0.0.1:{upstream.port}"]
    assert values_of(response, "Content-Length") == ["10"]
    assert "dropped 12 entries" in m.output  # one line for all of them


def test_no_header_value_in_debug_output(mitmdump, provider, upstream):
    secret = "s3cr3t-" + "q" * 20
    provider.answer({"Authorization": f"Bearer {secret}", "X-Bad": f"{secret}\n"})
    m = start_with(mitmdump, provider, "--set", "termlog_verbosity=debug", "--set", "header_refresh_interval=100ms")
    with client_for(m.proxy) as client:
        client.get(upstream.url)
        provider.answer(status=500, body=secret.encode())
        m.wait_for("refresh failed")
        client.get(upstream.url)
    m.stop()
    assert "Authorization" in m.output
    assert secret not in m.output


def test_hanging_provider_delays_neither_requests_nor_shutdown(mitmdump, provider, upstream):
    provider.answer({"X-Token": "t"})
    m = start_with(mitmdump, provider, "--set", "header_provider_timeout=60s", "--set", "header_refresh_interval=100ms")
    provider.answer(hang=True)
    hung = provider.count + 1
    provider.wait_for_requests(hung)  # a fetch is in flight, and stays so until the provider is closed
    with client_for(m.proxy) as client:
        for _ in range(5):
            assert values_of(client.get(upstream.url), "X-Token") == ["t"]
    assert provider.count == hung  # the fetch is still hanging: the requests did not wait for it
    assert m.stop(timeout=30) == 0  # nor does shutdown, which aborts the call (its timeout is 60 s)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "header_require=maybe"], "header_require"),
        (["--set", "header_refresh_interval=10x"], "header_refresh_interval"),
        (["--set", "header_merge=prepend"], "header_merge"),
        (["--set", "header_scope=~q("], "header_scope"),
        (["--set", "header_requir=true"], "did you mean header_require"),
        (["--set", "header_provider_url=ftp://x/y"], "header_provider_url"),
        (["--set", "header_provider_timeout=0s"], "header_provider_timeout"),
        (["--set", "header_refresh_interval=50ms"], "header_refresh_interval"),
        (["--set", "header_refresh_interval=3000000h"], "header_refresh_interval: '3000000h' is too long"),
        (["--set", "header_hosts=https://api.example.com/"], "header_hosts: 'https://api.example.com/' is a URL"),
    ],
)
def test_bad_options_exit_naming_the_option(mitmdump, provider, args, message):
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS, *args, wait_listening=False)
    assert m.wait_exit() != 0
    assert message in m.output


def test_a_provider_without_hosts_is_refused_at_start_up(mitmdump, provider):
    m = mitmdump("--set", f"header_provider_url={provider.url}", wait_listening=False)
    assert m.wait_exit() != 0
    assert "header_hosts: required" in m.output


def test_streamed_upload_gets_headers(mitmdump, provider, upstream):
    provider.answer({"X-Token": "streamed"})
    m = start_with(mitmdump, provider, "--set", "stream_large_bodies=1k")
    with client_for(m.proxy) as client:
        response = client.post(upstream.url + "/upload", content=b"x" * (1 << 20))
    assert response.json()["body_bytes"] == 1 << 20
    assert values_of(response, "X-Token") == ["streamed"]


def test_connection_header_cannot_strip_ours(mitmdump, provider, upstream):
    provider.answer({"X-Token": "kept"})
    m = start_with(mitmdump, provider)
    with client_for(m.proxy) as client:
        response = client.get(upstream.url, headers={"Connection": "keep-alive, X-Token"})
    assert values_of(response, "X-Token") == ["kept"]
    assert all("x-token" not in v.lower() for v in values_of(response, "Connection"))


def test_https_interception_http1_httpx(mitmdump, provider, tls_upstream):
    provider.answer({"X-Token": "over-tls"})
    m = start_with(mitmdump, provider, "--set", "ssl_insecure=true")
    ca = ssl.create_default_context(cafile=m.confdir / "mitmproxy-ca-cert.pem")
    with client_for(m.proxy, verify=ca) as client:
        response = client.get(tls_upstream.url + "/tls")
    assert response.http_version == "HTTP/1.1"
    assert values_of(response, "X-Token") == ["over-tls"]


def test_https_interception_http2_curl(mitmdump, provider, tls_upstream):
    provider.answer({"X-Token": "over-h2"})
    # lazy: mitmproxy answers the client's TLS before dialing the (HTTP/1.1-only) upstream, so HTTP/2 is offered.
    # (httpx prefers http/1.1 in its ALPN through a proxy tunnel, hence curl here.)
    m = start_with(mitmdump, provider, "--set", "ssl_insecure=true", "--set", "connection_strategy=lazy")
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "10",
            "--http2",
            "-x",
            m.proxy,
            "--cacert",
            str(m.confdir / "mitmproxy-ca-cert.pem"),
            "-H",
            "x-token: from-client",
            "-w",
            "\n%{http_version}",
            tls_upstream.url + "/h2",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    body, version = out.rsplit("\n", 1)
    assert version == "2"
    tokens = [v for n, v in received(json.loads(body)) if n.lower() == "x-token"]
    assert tokens == ["over-h2"]  # replace mode, matched case-insensitively against HTTP/2's lower-case names


def console(client, command: str) -> httpx.Response:
    return client.get("http://console.test/" + urllib.parse.quote(command))


def test_runtime_bad_value_is_refused_and_previous_configuration_stays(mitmdump, provider, upstream):
    provider.answer({"X-Token": "steady"})
    m = start_with(
        mitmdump, provider, "-s", str(ROOT / "tests" / "console_set.py"), "--set", "header_refresh_interval=200ms"
    )
    with client_for(m.proxy) as client:
        for command, message in [
            ("set header_refresh_interval soon", "header_refresh_interval"),
            ("set header_merge prepend", "header_merge"),
            ("set header_scope ~q(", "header_scope"),
            ("set header_require maybe", "boolean"),
            ("set header_requir true", "Unknown option"),
        ]:
            response = console(client, command)
            assert response.status_code == 400 and message in response.text, (command, response.text)
        # The refresher kept running at its 200 ms interval, and the headers are still added.
        count = provider.count
        provider.wait_for_requests(count + 3)
        assert provider.requests[-1]["at"] - provider.requests[-2]["at"] < 0.5
        assert values_of(client.get(upstream.url), "X-Token") == ["steady"]
        # A good value is taken at runtime.
        assert console(client, "set header_merge keep").status_code == 200
        response = client.get(upstream.url, headers={"X-Token": "client"})
        assert values_of(response, "X-Token") == ["client"]
