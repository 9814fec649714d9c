"""A provider that floods its answers with invalid entries, against a real mitmdump: the proxy keeps answering
requests and signals, and the log grows by a bounded number of lines per refresh."""

import json
import re
import signal
import time
import uuid

from conftest import client_for, values_of
from servers import wait_until

from header_augment_core.rules import MAX_BODY_BYTES


def flood(n: int) -> bytes:
    """n entries with new names every time, each invalid (a number, not a string), plus one good header."""
    tag = uuid.uuid4().hex[:4]
    entries = {f"X-{tag}-{i}": 0 for i in range(n)}
    entries["X-Good"] = "fine"
    body = json.dumps(entries, separators=(",", ":")).encode()
    assert len(body) <= MAX_BODY_BYTES
    return body


def test_entry_flood_logs_one_line_per_refresh_and_sigint_still_stops_the_proxy(mitmdump, provider, upstream):
    """45,000 invalid entries, new names each time, max-age=1: one warning each queued 37,000 log callbacks on the
    event loop, requests took up to 10 s, and SIGINT and SIGTERM were ignored until SIGKILL."""

    provider.answer(body=flood(45_000), response_headers={"Cache-Control": "max-age=1"})
    m = mitmdump("--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1")
    m.wait_for("headers in use: X-Good")
    with client_for(m.proxy) as client:
        for _ in range(3):
            provider.answer(body=flood(45_000), response_headers={"Cache-Control": "max-age=1"})
            provider.wait_for_requests(provider.count + 1)
            assert values_of(client.get(upstream.url), "X-Good") == ["fine"]
    wait_until(lambda: len(re.findall("dropped 45000 entries", m.output)) >= 3, what="three summaries")
    sent = time.monotonic()
    m.proc.send_signal(signal.SIGINT)
    assert m.wait_exit(timeout=10) == 0
    stopped_after = time.monotonic() - sent
    assert stopped_after < 2.0, f"SIGINT took {stopped_after:.2f}s"
    summaries = len(re.findall("dropped 45000 entries", m.output))
    assert summaries <= provider.count  # at most one line per refresh, whatever the answer holds
    assert len(m.output.splitlines()) < 20 + 2 * provider.count
