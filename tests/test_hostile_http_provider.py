"""A hostile provider against a real mitmdump: it can fail a refresh, never stall it past its timeout or put its
answer into the proxy's log."""

import json
import time

import pytest
from servers import RawProvider, http_answer, trickle, wait_until

HOSTS = ("--set", "header_hosts=127.0.0.1")
BODY = json.dumps({"X-Token": "t"}).encode()


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


def test_a_trickled_head_times_out_at_the_deadline(mitmdump, raw_provider):
    """httpx's own timeout is per read: a head trickled a byte at a time never reached it (nothing failed in 28 s)."""
    head = http_answer(BODY, [("X-Padding", "p" * 300)])
    provider = raw_provider(trickle(head, 0.2))  # the whole head would take over 60 s
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS, "--set", "header_provider_timeout=1s")
    wait_until(lambda: provider.requests, what="the first provider request")
    asked = time.monotonic()
    m.wait_for(r"refresh failed: timed out", timeout=10)
    print(f"\ntrickled head, timeout 1 s: failed {time.monotonic() - asked:.2f} s after the provider was asked")


HEADER_MARKER = "hdr-s3cret-4a9c"
BODY_MARKER = "body-s3cret-81e2"


def test_nothing_from_an_answer_reaches_the_debug_log(mitmdump, raw_provider):
    """At debug, httpcore's trace logged the answer's headers and cookies."""
    headers = [("Set-Cookie", f"session={HEADER_MARKER}; Path=/"), ("X-Echo", HEADER_MARKER)]
    good = http_answer(json.dumps({"X-Token": BODY_MARKER}).encode(), headers)
    bad = http_answer(json.dumps({"error": BODY_MARKER}).encode(), headers, status="500 Internal Server Error")
    provider = raw_provider(lambda sock: sock.sendall(good))
    m = mitmdump(
        "--set",
        f"header_provider_url={provider.url}",
        *HOSTS,
        "--set",
        "header_refresh_interval=100ms",
        "--set",
        "termlog_verbosity=debug",
    )
    m.wait_for("headers in use: X-Token")
    m.wait_for("refreshed 1 headers")  # our own debug line: the log is at debug
    provider.respond = lambda sock: sock.sendall(bad)
    m.wait_for("refresh failed: HTTP 500")
    assert m.stop() == 0
    assert HEADER_MARKER not in m.output and BODY_MARKER not in m.output
