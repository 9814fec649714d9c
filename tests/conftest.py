import httpx
import pytest
from echo_upstream import received
from servers import Mitmdump, Provider, RawProvider, Upstream, self_signed

from header_augment_core.scheduler import Scheduler


@pytest.fixture
def scheduler():
    """The refreshers' threads, as an addon owns them: closed (its workers end) after the test."""
    made = Scheduler()
    yield made
    made.close()


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
    return received(response.json())


def values_of(response: httpx.Response, name: str) -> list[str]:
    return [v for n, v in seen_headers(response) if n.lower() == name.lower()]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and provider.test: cert.pem, and cert-combined.pem with its key."""
    directory = tmp_path_factory.mktemp("tls")
    self_signed(directory, "127.0.0.1", ("provider.test",), stem="cert")
    return directory


@pytest.fixture
def raw_provider():
    """Start a `RawProvider(respond)`: `raw_provider(respond)`; every one started is closed at the end."""
    started = []

    def start(respond):
        provider = RawProvider(respond)
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.close()


@pytest.fixture
def tls_upstream(tls_files):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "cert-combined.pem")
    u = Upstream(ssl_context=context)
    yield u
    u.close()
