"""A hostile provider against a real mitmdump: it can fail a refresh, never stall it past its timeout, grow the
proxy's memory or put its answer into the proxy's log."""

import json
import re
import time

import pytest
from servers import brotli_bomb, gzip_bomb, http_answer, peak_rss_kib, trickle, wait_until

from header_augment_core.rules import MAX_BODY_BYTES

HOSTS = ("--set", "header_hosts=127.0.0.1")
BODY = json.dumps({"X-Token": "t"}).encode()
# The bound that matters: far above what the proxy needs (see the baseline printed by the tests), far below what
# decoding a bomb takes (2.25 GB RSS for an 809-byte brotli body before the answers were read undecoded).
PEAK_RSS_LIMIT_KIB = 150 * 1024


def test_a_trickled_head_times_out_at_the_deadline(mitmdump, raw_provider):
    """httpx's own timeout is per read: a head trickled a byte at a time never reached it (nothing failed in 28 s)."""
    head = http_answer(BODY, [("X-Padding", "p" * 300)])
    provider = raw_provider(trickle(head, 0.2))  # the whole head would take over 60 s
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS, "--set", "header_provider_timeout=1s")
    wait_until(lambda: provider.requests, what="the first provider request")
    asked = time.monotonic()
    m.wait_for(r"refresh failed: timed out", timeout=10)
    print(f"\ntrickled head, timeout 1 s: failed {time.monotonic() - asked:.2f} s after the provider was asked")


@pytest.mark.parametrize(
    ("encoding", "make", "reason"),
    [
        ("br", brotli_bomb, "answer is compressed with br (not supported; the provider is asked for identity)"),
        ("gzip", gzip_bomb, f"body larger than {MAX_BODY_BYTES} bytes"),
    ],
    ids=["br", "gzip"],
)
def test_a_compression_bomb_does_not_grow_the_proxy(mitmdump, raw_provider, encoding, make, reason):
    assert len(make()) < MAX_BODY_BYTES  # so only decoding can stop it
    bomb = http_answer(make(), [("Content-Encoding", encoding)])
    provider = raw_provider(lambda sock: sock.sendall(http_answer(BODY)))
    m = mitmdump("--set", f"header_provider_url={provider.url}", *HOSTS, "--set", "header_refresh_interval=100ms")
    m.wait_for("headers in use: X-Token")
    baseline = peak_rss_kib(m.proc.pid)
    mark = m.mark()
    provider.respond = lambda sock: sock.sendall(bomb)
    m.wait_for("refresh failed: " + re.escape(reason), start=mark)
    peak = peak_rss_kib(m.proc.pid)
    print(f"\n{encoding} bomb: mitmdump peak RSS {baseline / 1024:.1f} MiB before, {peak / 1024:.1f} MiB after")
    assert peak < PEAK_RSS_LIMIT_KIB, (baseline, peak)


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
