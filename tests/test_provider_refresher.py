"""The provider client and the refresher against real HTTP servers on 127.0.0.1."""

import http.server
import json
import logging
import os
import random
import socket
import socketserver
import ssl
import threading
import time

import pytest
from servers import DEADLINE, HeldProvider, serve_in_background, wait_until

from header_augment_core.fields import SettingsError
from header_augment_core.refresher import Refresher
from header_augment_core.schedule import Schedule
from header_augment_core.settings import parse_settings


def http_settings(url, **fields):
    return parse_settings({"url": url, "hosts": "*", **fields}, str)


def client(url, **fields):
    settings = http_settings(url, **fields)
    return settings.source.client(settings.timeout)


def test_fetch_success(provider):
    provider.answer({"Authorization": "Bearer x"})
    result = client(provider.url).fetch()
    assert result.ok and result.answer.headers == (("Authorization", "Bearer x"),)
    assert result.max_age is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (dict(status=500), "HTTP 500"),
        (dict(status=404), "HTTP 404"),
        (dict(status=302, response_headers={"Location": "/other"}), "HTTP 302 redirect (not followed)"),
        (dict(body=b""), "not JSON"),
        (dict(body=b"<html>"), "not JSON"),
        (dict(body=b"[]"), "a JSON array, not an object"),
        (dict(body=b" " * (1024 * 1024 + 1)), "body larger than 1048576 bytes"),
    ],
)
def test_fetch_failures(provider, answer, reason):
    provider.answer(**answer)
    result = client(provider.url).fetch()
    assert not result.ok
    assert reason in result.reason


def test_too_large_without_content_length(provider):
    """A chunked body is cut off at the limit, not read to the end."""

    class Chunked(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * 65536
            for _ in range(40):  # 2.5 MiB
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    serve_in_background(server)
    try:
        result = client(f"http://127.0.0.1:{server.server_address[1]}/").fetch()
        assert result.reason == "body larger than 1048576 bytes"
    finally:
        server.shutdown()
        server.server_close()


def test_timeout(provider):
    provider.answer({"A": "b"}, delay=60)
    started = time.monotonic()
    result = client(provider.url, timeout=0.3).fetch()
    assert result.reason == "timed out"
    assert time.monotonic() - started < DEADLINE  # not the minute the answer takes


def test_connection_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = client(f"http://127.0.0.1:{port}/headers").fetch()
    assert result.reason.startswith("ConnectError")


def test_max_age_is_read(provider):
    provider.answer({"A": "b"}, response_headers={"Cache-Control": "private, max-age=42"})
    assert client(provider.url).fetch().max_age == 42


def test_authority_and_no_environment_proxy(provider, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail if honoured
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    provider.answer({"A": "b"})
    assert client(provider.url, authority="sidecar").fetch().ok
    assert provider.requests[-1]["headers"]["Host"] == "sidecar"


def test_unix_socket(tmp_path):
    path = str(tmp_path / "provider.sock")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"X-Via": self.headers["Host"] + self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = UnixServer(path, Handler)
    serve_in_background(server)
    try:
        result = client("http://sidecar/headers", socket=path).fetch()
        assert result.answer.headers == (("X-Via", "sidecar/headers"),)
    finally:
        server.shutdown()
        server.server_close()
        os.unlink(path)


@pytest.fixture
def tls_provider(tls_files, provider):
    """The provider behind TLS that requires a client certificate signed by our test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "cert-combined.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(tls_files / "cert.pem")
    provider.server.socket = context.wrap_socket(provider.server.socket, server_side=True)
    return provider


def test_https_with_ca_client_certificate_and_sni(tls_provider, tls_files):
    tls_provider.answer({"A": "b"})
    url = f"https://127.0.0.1:{tls_provider.port}/headers"
    ok = client(
        url, ca=str(tls_files / "cert.pem"), cert=str(tls_files / "cert-combined.pem"), authority="provider.test"
    )
    assert ok.fetch().ok
    no_cert = client(url, ca=str(tls_files / "cert.pem"))
    assert not no_cert.fetch().ok
    untrusted = client(url, cert=str(tls_files / "cert-combined.pem"))
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.fetch().reason


def test_bad_ca_or_cert_is_a_settings_error(tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(SettingsError) as e:
        client("https://x/", ca=str(bogus))
    assert e.value.field == "ca"
    with pytest.raises(SettingsError) as e:
        client("https://x/", cert=str(tmp_path / "missing.pem"))
    assert e.value.field == "cert"


# -- refresher ----------------------------------------------------------------------------------------------------


def refresher(url, clock=time.monotonic, schedule=None, **fields):
    settings = http_settings(url, **fields)
    return Refresher(settings.source.client(settings.timeout), settings, schedule=schedule, clock=clock)


def test_refresher_publishes_and_refreshes(provider, scheduler):
    provider.answer({"X-Token": "one"})
    r = refresher(provider.url, interval=0.1)
    r.start(scheduler)
    try:
        wait_until(lambda: r.snapshot.fields == ((b"X-Token", b"one"),), what="first snapshot")
        provider.answer({"X-Token": "two"})
        wait_until(lambda: r.snapshot.fields == ((b"X-Token", b"two"),), what="second snapshot")
    finally:
        r.stop()
    assert r.wait_ended(DEADLINE)


class FakeClock:
    """The refresher's injected clock: time moves only when the test says so."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_failure_keeps_last_good_and_backs_off(provider, caplog):
    provider.answer({"X-Token": "good"})
    clock = FakeClock()
    r = refresher(provider.url, clock=clock, schedule=Schedule(30, random.Random(1)), interval=30)
    with caplog.at_level(logging.DEBUG, logger="header_augment"):
        r.refresh()
        good = r.snapshot
        provider.answer(status=500)
        delays = []
        for _ in range(3):
            clock.now += 1
            delays.append(r.refresh())
    assert r.snapshot is good and r.counts.failed_by_reason == {"HTTP 500": 3}
    # Backoff from 1 s (with up to 10% jitter, earlier), doubling; well before the 30 s interval.
    assert 0.9 <= delays[0] <= 1 and 1.8 <= delays[1] <= 2 and 3.6 <= delays[2] <= 4
    warnings = [rec for rec in caplog.records if "refresh failed" in rec.message and rec.levelno == logging.WARNING]
    assert len(warnings) == 1  # not repeated while the state is unchanged


def test_max_age_drives_the_next_refresh(provider):
    provider.answer({"A": "b"}, response_headers={"Cache-Control": "max-age=2"})
    r = refresher(provider.url, schedule=Schedule(3600, random.Random(2)), interval=3600)
    assert 1 <= r.refresh() <= 2  # the first after a start: 5-100% of the period, but never under a second
    assert 1.8 <= r.refresh() <= 2  # then max-age, with up to 10% jitter (earlier)
    assert len(provider.requests) == 2


def test_refresh_now(provider, scheduler):
    provider.answer({"A": "b"})
    r = refresher(provider.url, interval=3600)
    r.start(scheduler)
    try:
        provider.wait_for_requests(1)
        r.refresh_now()
        provider.wait_for_requests(2, timeout=2)
    finally:
        r.stop()


def test_refreshes_asked_for_within_a_second_are_one_fetch_at_the_end_of_it(provider):
    provider.answer({"A": "b"})
    clock = FakeClock()
    r = refresher(provider.url, clock=clock, schedule=Schedule(3600, random.Random(3)), interval=3600)
    r.step()  # the first fetch, at 1000
    scheduled = r.next_fetch_at
    clock.now = 1000.25
    assert [r.refresh_now() for _ in range(3)] == [True, False, False]  # the later ones join the first
    for _ in range(2000):
        r.refresh_now()
    assert r.wake_at() == 1001.0  # not dropped: due a second after the last fetch started
    r.step()
    assert provider.count == 1
    clock.now = 1001.0
    r.step()
    assert provider.count == 2
    assert r.wake_at() == r.next_fetch_at > 1001.0  # served: back to the schedule
    r.step()
    assert provider.count == 2
    clock.now = 1005.0  # more than a second since the last fetch: at once
    assert r.refresh_now() is True and r.wake_at() <= clock.now
    r.step()
    assert provider.count == 3
    assert scheduled > 1005.0  # none of these was the scheduled fetch


def test_a_refresh_asked_for_during_a_fetch_gets_one_of_its_own():
    provider = HeldProvider()
    try:
        provider.answer({"A": "b"})
        clock = FakeClock()
        r = refresher(provider.url, clock=clock, schedule=Schedule(3600, random.Random(4)), interval=3600)
        fetching = threading.Thread(target=r.step)
        fetching.start()
        assert provider.arrived.wait(DEADLINE)  # the fetch has started (at 1000) and is held
        clock.now = 1000.5
        assert r.refresh_now() is True  # the fetch in flight may have read the old secret
        provider.release()
        fetching.join(DEADLINE)
        assert r.wake_at() == 1001.0
        clock.now = 1001.0
        r.step()
        assert provider.count == 2
    finally:
        provider.close()


def test_a_scheduled_fetch_serves_a_refresh_asked_for_before_it(provider):
    provider.answer({"A": "b"})
    clock = FakeClock()
    r = refresher(provider.url, clock=clock, interval=0.1)  # a schedule faster than the refresh gap
    r.step()
    clock.now = r.next_fetch_at - 0.01
    r.refresh_now()
    assert r.wake_at() == r.next_fetch_at  # sooner than a second after the last fetch
    clock.now = r.next_fetch_at
    r.step()
    assert provider.count == 2
    assert r.refresh_now() is True  # nothing waits any more: the scheduled fetch started after the call
    r.step()
    assert provider.count == 2  # and this new one waits for its second


def test_stop_does_not_wait_for_a_hanging_provider(provider, scheduler):
    provider.answer(hang=True)
    r = refresher(provider.url, timeout=60)
    r.start(scheduler)
    provider.wait_for_requests(1)
    started = time.monotonic()
    r.stop()
    assert r.wait_ended(DEADLINE)
    assert time.monotonic() - started < DEADLINE  # not the minute of its call's timeout: the call was aborted
    assert r.snapshot.fields == () and r.counts.failed == 0  # an aborted call is not counted as a failure


def test_stop_before_start_and_twice(provider):
    r = refresher(provider.url)
    r.stop()
    r.stop()
    assert r.ended and r.first_attempt_done
