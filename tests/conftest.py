import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon"))

from servers import Mitmdump, Provider, Upstream


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def mitmdump(tmp_path):
    """Start mitmdump with the addon: `mitmdump(*args)`; every one started is stopped at the end of the test."""
    started: list[Mitmdump] = []

    def start(*args: str, **kwargs) -> Mitmdump:
        m = Mitmdump(tmp_path / "confdir", *args, **kwargs)
        started.append(m)
        return m

    yield start
    for m in started:
        if m.proc.poll() is None:
            m.stop()


def client_for(proxy: str, **kwargs) -> httpx.Client:
    return httpx.Client(proxy=proxy, trust_env=False, timeout=10, **kwargs)


def seen_headers(response: httpx.Response) -> list[tuple[str, str]]:
    """The headers the echo upstream received, in order."""
    assert response.status_code == 200, response.text
    return [(name, value) for name, value in response.json()["headers"]]


def values_of(response: httpx.Response, name: str) -> list[str]:
    return [v for n, v in seen_headers(response) if n.lower() == name.lower()]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (PEM with key), made with the cryptography package mitmproxy uses."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("provider.test")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "combined.pem").write_bytes(cert_pem + key_pem)
    return directory


@pytest.fixture
def tls_upstream(tls_files):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "combined.pem")
    u = Upstream(ssl_context=context)
    yield u
    u.close()
