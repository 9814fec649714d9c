"""The provider's HTTP client (`HttpExchange`) against hostile and broken providers on 127.0.0.1: no cookies, only
the configured CA."""

import datetime
import ssl

import httpx

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
