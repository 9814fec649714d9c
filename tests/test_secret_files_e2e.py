"""End to end for OAuth2 secret files swapped (as a mounted secret's symlink is) for what is no secret: one real
mitmdump with a healthy provider beside sixteen OAuth2 entries whose secrets become FIFOs (as many as the refreshers'
workers) and one whose secret becomes /dev/zero. Each fails at once, naming the field; no worker is held, the healthy
provider goes on being fetched and used, and the proxy's memory stays where it was."""

import os
import time
from types import SimpleNamespace

import pytest
from conftest import client_for, values_of
from helpers.procfs import status_number
from servers import Mitmdump, Provider, TokenEndpoint, Upstream, wait_until
from test_admin import ADMIN, admin_client

FIFOS = 16
SECRET = "s3cret-client-secret"
NOT_A_REGULAR_FILE = "client_secret_file: not a regular file"
HEALTHY_INTERVAL = 0.2  # seconds between the healthy provider's fetches
# What a refresh of the /dev/zero entry may add to the proxy's resident memory. Without the bounded read it grew
# 1.5 GB in 3 s.
RSS_SLACK_KIB = 20 * 1024


def point(link, target) -> None:
    """Make `link` a symlink to `target`, swapped in atomically (as the kubelet swaps a mounted secret's `..data`)."""
    staged = link.with_name(link.name + ".new")
    staged.symlink_to(target)
    os.replace(staged, link)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secret-files")
    healthy, endpoint, upstream = Provider(), TokenEndpoint(secret=SECRET, expires_in=3600), Upstream()
    healthy.answer({"X-Healthy": "yes"})
    good = tmp / "client-secret"
    good.write_text(SECRET + "\n")
    links = {}
    entries = [
        f"- {{name: healthy, url: '{healthy.url}', interval: {HEALTHY_INTERVAL}s, hosts: '127.0.0.1:{upstream.port}'}}"
    ]
    for name in [f"fifo-{n}" for n in range(FIFOS)] + ["zero"]:
        links[name] = tmp / f"{name}-secret"
        point(links[name], good)
        entries.append(
            f"- {{name: {name}, kind: oauth2, url: '{endpoint.url}', client_id: proxy, "
            f"client_secret_file: '{links[name]}', hosts: {name}.test}}"
        )
    providers = tmp / "providers.yaml"
    providers.write_text("\n".join(entries) + "\n")
    try:
        m = Mitmdump(tmp / "confdir", "--set", f"header_providers_file={providers}", *ADMIN)
        try:
            with admin_client(m) as admin:
                wait_until(lambda: admin.get("/ready").status_code == 200, what="every provider ready")
                yield SimpleNamespace(m=m, admin=admin, healthy=healthy, upstream=upstream, links=links, tmp=tmp)
        finally:
            m.stop()
    finally:
        for server in (healthy, endpoint, upstream):
            server.close()


def providers_status(admin) -> dict[str, dict]:
    return {p["name"]: p for p in admin.get("/status").json()["providers"]}


def failures_on_the_file(status: dict) -> int:
    """How many of the provider's fetches failed on a file, if its last one failed as not a regular file."""
    return status["fetches"]["failed_by_class"].get("file", 0) if status["last_error"] == NOT_A_REGULAR_FILE else 0


def test_sixteen_secrets_swapped_for_fifos_fail_at_once_and_the_healthy_provider_goes_on(proxy):
    fifos = [name for name in proxy.links if name.startswith("fifo-")]
    for name in fifos:
        fifo = proxy.tmp / f"{name}.fifo"
        os.mkfifo(fifo)  # nobody ever writes to it: a read of it would wait for ever
        point(proxy.links[name], fifo)
    swapped = time.monotonic()
    assert proxy.admin.post("/refresh").status_code == 202
    fetched = proxy.healthy.count
    wait_until(
        lambda: all(failures_on_the_file(providers_status(proxy.admin)[name]) for name in fifos),
        what=f"the {FIFOS} FIFO entries failing on their file",
    )
    failed_after = time.monotonic() - swapped
    wait_until(lambda: proxy.healthy.count >= fetched + 10, what="ten more fetches of the healthy provider")
    window = time.monotonic() - swapped
    print(
        f"{FIFOS} FIFO entries failed within {failed_after:.2f}s of the swap; "
        f"the healthy provider was fetched {proxy.healthy.count - fetched} times in {window:.2f}s"
    )
    status = providers_status(proxy.admin)
    for name in fifos:
        assert status[name]["in_flight_for"] is None  # no turn is left waiting on its FIFO
    assert status["healthy"]["last_error"] is None and status["healthy"]["usable"]
    with client_for(proxy.m.proxy) as client:
        for _ in range(3):
            assert values_of(client.get(proxy.upstream.url), "X-Healthy") == ["yes"]


def test_a_secret_swapped_for_dev_zero_fails_naming_the_field_and_memory_stays_flat(proxy):
    pid = proxy.m.proc.pid
    before = status_number(pid, "VmRSS")
    point(proxy.links["zero"], "/dev/zero")
    for refreshes in range(1, 4):
        assert proxy.admin.post("/refresh").status_code == 202
        wait_until(
            lambda n=refreshes: failures_on_the_file(providers_status(proxy.admin)["zero"]) >= n,
            what=f"refresh {refreshes} of the /dev/zero entry failing on its file",
        )
    after = status_number(pid, "VmRSS")
    print(
        f"mitmdump's RSS, client_secret_file -> /dev/zero: {before / 1024:.1f} MB before, {after / 1024:.1f} MB after"
    )
    assert after - before < RSS_SLACK_KIB
