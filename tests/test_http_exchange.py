"""The provider's HTTP client (`HttpExchange`) against hostile and broken providers on 127.0.0.1: no cookies, only
the configured CA, nothing from an answer in the logs, and a reason class for every failure."""

import datetime
import importlib.util
import logging
import socket
import ssl
import threading

import httpx
import pytest
from servers import RawProvider, http_answer

from header_augment_core.failures import REASON_CLASSES
from header_augment_core.http_exchange import THREAD_PREFIX
from header_augment_core.rules import MAX_BODY_BYTES
from header_augment_core.settings import parse_settings


def client(url, **fields):
    settings = parse_settings({"url": url, "hosts": "*", **fields}, str)
    return settings.source.client(settings.timeout)


def fetch(url, **fields):
    c = client(url, **fields)
    try:
        return c.fetch()
    finally:
        c.close()


@pytest.fixture
def raw_provider():
    started = []

    def start(respond):
        provider = RawProvider(respond)
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.close()


def self_signed(directory, name, dns_names=(), ip="127.0.0.1"):
    """A self-signed certificate (its own CA) for `dns_names` and `ip`; returns (cert.pem, cert+key.pem) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), *(x509.DNSName(n) for n in dns_names)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / f"{name}.pem").write_bytes(cert_pem)
    (directory / f"{name}-combined.pem").write_bytes(cert_pem + key_pem)
    return directory / f"{name}.pem", directory / f"{name}-combined.pem"


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
    serve_tls(provider, tls_files / "combined.pem")
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
    serve_tls(provider, tls_files / "combined.pem", client_ca=tls_files / "cert.pem")
    provider.answer({"X-A": "b"})
    url = f"https://127.0.0.1:{provider.port}/headers"
    cases["tls"] = fetch(url)  # the provider's certificate is not trusted
    # TLS 1.3: the provider refuses the missing client certificate after the handshake, on the first read.
    no_client_certificate = fetch(url, ca=str(tls_files / "cert.pem"))
    assert {name: r.reason_class for name, r in cases.items()} == {name: name for name in cases}
    assert no_client_certificate.reason_class == "tls", no_client_certificate.reason
    assert set(cases) <= set(REASON_CLASSES)
