"""The provider's HTTP client (`HttpExchange`) against hostile and broken providers on 127.0.0.1: one deadline for
the whole call, bounded decoding, no cookies, only the configured CA, nothing from an answer in the logs, and a
reason class for every failure."""

import gzip
import importlib.util
import json
import logging
import socket
import ssl
import threading
import time
import tracemalloc
import zlib

import brotli
import httpcore
import httpx
import pytest
from servers import gzip_bomb, http_answer, self_signed, trickle, wait_until

from header_augment_core.failures import REASON_CLASSES
from header_augment_core.http_exchange import THREAD_PREFIX, _AbortableBackend
from header_augment_core.rules import MAX_BODY_BYTES
from header_augment_core.settings import parse_settings

BODY = json.dumps({"X-A": "b"}).encode()


def client(url, **fields):
    settings = parse_settings({"url": url, "hosts": "*", **fields}, str)
    return settings.source.client(settings.timeout)


def fetch(url, **fields):
    c = client(url, **fields)
    try:
        return c.fetch()
    finally:
        c.close()


def serve_tls(provider, combined, client_ca=None):
    """Put the (http.server) provider behind TLS; returns the server names (SNI) its clients asked for."""
    names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(combined)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    provider.server.socket = context.wrap_socket(provider.server.socket, server_side=True)
    return names


def answering(answer):
    return lambda sock: sock.sendall(answer)


# -- one deadline for the whole call ------------------------------------------------------------------------------


@pytest.mark.parametrize("trickled", ["head", "body"])
def test_one_deadline_bounds_an_answer_trickled_byte_by_byte(raw_provider, trickled):
    """httpx's timeout bounds each read: a head trickled a byte at a time never reached it."""
    answer = http_answer(b'{"X-A": "' + b"b" * 250 + b'"}', [("X-Padding", "p" * 250)])
    at = answer.index(b"\r\n\r\n") + 4 if trickled == "body" else 0

    def respond(sock):
        sock.sendall(answer[:at])
        trickle(answer[at:], 0.05)(sock)  # the rest would take over 12 s

    provider = raw_provider(respond)
    started = time.monotonic()
    result = fetch(provider.url, timeout=0.5)
    elapsed = time.monotonic() - started
    assert (result.reason, result.reason_class) == ("timed out", "timeout")
    assert elapsed < 5, elapsed  # the deadline is 0.5 s; far below the 12 s the answer takes, with a busy machine


def blocking_resolver(calls, release):
    def resolve(*args, **kwargs):
        calls.append(threading.current_thread().name)
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    return resolve


def test_name_resolution_is_bounded_by_the_deadline():
    """getaddrinfo() knows no timeout: it runs on a helper thread, waited for at most what is left of the deadline."""
    calls, release = [], threading.Event()
    backend = _AbortableBackend(resolver=blocking_resolver(calls, release))
    try:
        started = time.monotonic()
        with backend.deadline(0.3), pytest.raises(httpcore.ConnectTimeout):
            backend.connect_tcp("provider.test", 80, timeout=30)
        assert time.monotonic() - started < 15  # the resolver blocks for 30 s
        wait_until(lambda: calls, what="the resolver to be called")
        assert calls[0].startswith(THREAD_PREFIX)  # so its log records are filtered like the refresher's
    finally:
        release.set()


def test_abort_wakes_a_call_waiting_for_name_resolution():
    calls, release = [], threading.Event()
    backend = _AbortableBackend(resolver=blocking_resolver(calls, release))
    outcome = []

    def connect():
        with backend.deadline(30):
            try:
                backend.connect_tcp("provider.test", 80, timeout=30)
            except httpcore.NetworkError as e:
                outcome.append(e)

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        wait_until(lambda: calls, what="the resolver to be called")
        backend.abort()
        thread.join(3)
        assert not thread.is_alive() and isinstance(outcome[0], httpcore.ConnectError)
    finally:
        release.set()
        thread.join()


def test_nothing_is_sent_once_the_deadline_has_passed(provider):
    backend = _AbortableBackend()
    with backend.deadline(5):
        stream = backend.connect_tcp("127.0.0.1", provider.port, timeout=5)
    try:
        with backend.deadline(0), pytest.raises(httpcore.WriteTimeout):
            stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
        with backend.deadline(0), pytest.raises(httpcore.ReadTimeout):
            stream.read(1, timeout=5)
    finally:
        stream.close()
    assert provider.count == 0


def test_a_host_name_is_resolved_and_stays_the_tls_server_name(provider, tmp_path):
    """The connection goes to the resolved address; TLS still verifies and asks for the name (SNI)."""
    ca, combined = self_signed(tmp_path, "localhost", ["localhost"])
    names = serve_tls(provider, combined)
    provider.answer({"X-A": "b"})
    result = fetch(f"https://localhost:{provider.port}/headers", ca=str(ca))
    assert result.ok and names == ["localhost"]


def test_a_trickled_tls_handshake_is_bounded_too(provider, tmp_path):
    """The handshake gets what is left of the deadline (CPython bounds a whole handshake by the socket's timeout)."""
    ca, combined = self_signed(tmp_path, "ca")
    serve_tls(provider, combined)
    relay = socket.create_server(("127.0.0.1", 0))

    def pass_on_slowly():  # the client's hello at once, the provider's bytes one every 50 ms (its handshake: 30 s)
        to_client, _ = relay.accept()
        with to_client, socket.create_connection(("127.0.0.1", provider.port)) as to_provider:
            try:
                to_provider.sendall(to_client.recv(65536))
                while data := to_provider.recv(1):
                    to_client.sendall(data)
                    time.sleep(0.05)
            except OSError:
                pass  # the client gave up

    threading.Thread(target=pass_on_slowly, daemon=True).start()
    with relay:
        started = time.monotonic()
        result = fetch(f"https://127.0.0.1:{relay.getsockname()[1]}/headers", ca=str(ca), timeout=0.5)
    assert (result.reason, result.reason_class) == ("timed out", "timeout")
    assert time.monotonic() - started < 5


# -- compression --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_the_provider_is_asked_for_identity_and_gzip_or_deflate_is_still_read(raw_provider, encoding, compress):
    provider = raw_provider(answering(http_answer(compress(BODY), [("Content-Encoding", encoding)])))
    result = fetch(provider.url)
    assert result.ok and result.answer.headers == (("X-A", "b"),)
    assert b"\r\naccept-encoding: identity\r\n" in provider.requests[0].lower()


@pytest.mark.parametrize(
    ("encoding", "body", "shown"),
    [
        ("br", brotli.compress(BODY), "br"),
        ("BR", brotli.compress(BODY), "br"),
        ("zstd", b"(zstd frames)", "zstd"),
        ("x-s3cret-scheme", BODY, "an unknown encoding"),
        ("gzip, br", BODY, "several encodings"),
        ("gzip, gzip", gzip.compress(gzip.compress(BODY)), "several encodings"),
    ],
    ids=["br", "BR", "zstd", "unknown", "gzip-br", "gzip-gzip"],
)
def test_other_encodings_are_refused(raw_provider, encoding, body, shown):
    provider = raw_provider(answering(http_answer(body, [("Content-Encoding", encoding)])))
    result = fetch(provider.url)
    reason = f"answer is compressed with {shown} (not supported; the provider is asked for identity)"
    assert (result.reason, result.reason_class) == (reason, "body")


def test_two_content_encoding_fields_are_several_encodings(raw_provider):
    answer = http_answer(gzip.compress(BODY), [("Content-Encoding", "gzip"), ("Content-Encoding", "identity")])
    result = fetch(raw_provider(answering(answer)).url)
    assert result.reason.startswith("answer is compressed with several encodings")


def test_a_gzip_bomb_is_decoded_only_up_to_the_limit(raw_provider):
    assert len(gzip_bomb()) < MAX_BODY_BYTES  # so only decoding can stop it
    answer = http_answer(gzip_bomb(), [("Content-Encoding", "gzip")])
    provider = raw_provider(answering(answer))
    c = client(provider.url)
    tracemalloc.start()
    try:
        result = c.fetch()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        c.close()
    assert (result.reason, result.reason_class) == (f"body larger than {MAX_BODY_BYTES} bytes", "size")
    # An unbounded decoder turns each 64 KiB read of this body into 64 MiB.
    assert peak < 8 * MAX_BODY_BYTES, peak


@pytest.mark.parametrize(
    ("encoding", "body", "reason"),
    [
        ("gzip", gzip.compress(BODY)[:-10], "compressed answer is cut short"),
        ("gzip", b"s3cret, not gzip at all", "answer is not valid gzip"),
        ("deflate", b"s3cret, not deflate", "answer is not valid deflate"),
    ],
    ids=["gzip-cut-short", "not-gzip", "not-deflate"],
)
def test_a_broken_compressed_body_fails(raw_provider, encoding, body, reason):
    result = fetch(raw_provider(answering(http_answer(body, [("Content-Encoding", encoding)]))).url)
    assert (result.reason, result.reason_class) == (reason, "body")


# -- cookies, trust, logs -----------------------------------------------------------------------------------------


def test_cookies_are_neither_kept_nor_sent(provider):
    c = client(provider.url)
    try:
        for i in range(3):
            cookies = {"Set-Cookie": f"c{i}=v{i}; Path=/; Max-Age=3600; Domain=127.0.0.1"}
            provider.answer({"X-A": "b"}, response_headers=cookies)
            assert c.fetch().ok
    finally:
        c.close()
    assert [r["headers"].get("Cookie") for r in provider.requests] == [None, None, None]


def test_a_configured_ca_is_the_only_one_trusted(provider, tls_files, tmp_path, monkeypatch):
    """header_provider_ca replaces the default trust store; it is not added to it."""
    serve_tls(provider, tls_files / "cert-combined.pem")
    provider.answer({"X-A": "b"})
    url = f"https://127.0.0.1:{provider.port}/headers"
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files / "cert.pem"))  # what load_default_certs() reads
    with httpx.Client(verify=ssl.create_default_context(), trust_env=False) as system:
        assert system.get(url).status_code == 200  # the premise: the system's default store trusts the provider
    other_ca, _ = self_signed(tmp_path, "other-ca")
    result = fetch(url, ca=str(other_ca))
    assert result.reason_class == "tls" and "CERTIFICATE_VERIFY_FAILED" in result.reason
    assert fetch(url, ca=str(tls_files / "cert.pem")).ok
    # Without one, certifi's store (httpx's default) is the trust store, not the system's.
    assert fetch(url).reason_class == "tls"


MARKER = "s3cret-marker-7f1d"


def fetch_on_thread(name, url):
    results = []
    thread = threading.Thread(target=lambda: results.append(fetch(url)), name=name)
    thread.start()
    thread.join()
    return results[0]


def test_httpcore_trace_of_a_refresher_reaches_no_log(provider, caplog):
    """httpcore's debug trace logs the answer's headers, cookies included."""
    provider.answer({"X-A": "b"}, response_headers={"Set-Cookie": f"session={MARKER}", "X-Echo": MARKER})
    with caplog.at_level(logging.DEBUG):
        assert fetch_on_thread("another thread", provider.url).ok
        assert MARKER in caplog.text  # the premise: at debug, httpcore logs the answer's headers
        caplog.clear()
        assert fetch_on_thread(f"{THREAD_PREFIX} refresher test", provider.url).ok
    assert caplog.records == []


def test_the_log_filters_survive_a_reload():
    """A script reload runs the addon's modules anew (header_augment.py drops them from sys.modules first), with a
    new filter class: each logger still has one filter."""
    spec = importlib.util.find_spec("header_augment_core.http_exchange")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    names = ["httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy"]
    for name in names:
        markers = [f for f in logging.getLogger(name).filters if getattr(f, "marker", None) == "header-augment"]
        assert len(markers) == 1, name


# -- reasons ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Bad header " + MARKER.encode() + b"\r\n\r\n",
        b"HTTP/1.1 2x0 " + MARKER.encode() + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + MARKER.encode() + b"\r\n",
    ],
    ids=["header-line", "status-line", "chunk-header"],
)
def test_a_malformed_answer_is_reported_without_its_content(raw_provider, answer):
    """h11 quotes the bytes it could not parse in its error; they are the provider's, so not in the reason."""
    result = fetch(raw_provider(answering(answer)).url)
    assert result.reason_class == "body" and result.reason.startswith("RemoteProtocolError")
    assert MARKER not in result.reason and "s3cret" not in result.reason


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reason_classes(provider, raw_provider, tls_files):
    cases = {}
    cases["connect"] = fetch(f"http://127.0.0.1:{closed_port()}/")
    cut = http_answer(b'{"X-A": "b"}')[:-5]  # Content-Length promises more than comes
    cases["body"] = fetch(raw_provider(answering(cut)).url)
    cases["status"] = fetch(raw_provider(answering(http_answer(b"", status="500 Oops"))).url)
    cases["size"] = fetch(raw_provider(answering(http_answer(b" " * (MAX_BODY_BYTES + 1)))).url)
    serve_tls(provider, tls_files / "cert-combined.pem", client_ca=tls_files / "cert.pem")
    provider.answer({"X-A": "b"})
    url = f"https://127.0.0.1:{provider.port}/headers"
    cases["tls"] = fetch(url)  # the provider's certificate is not trusted
    # TLS 1.3: the provider refuses the missing client certificate after the handshake, on the first read.
    no_client_certificate = fetch(url, ca=str(tls_files / "cert.pem"))
    assert {name: r.reason_class for name, r in cases.items()} == {name: name for name in cases}
    assert no_client_certificate.reason_class == "tls", no_client_certificate.reason
    assert set(cases) <= set(REASON_CLASSES)
