"""Thousands of providers in one real mitmdump: threads and memory per entry read from /proc, and what a request stream
sees while a providers file of 5,000 entries is swapped in. (The hook's cost per entry is a benchmark: scripts/bench,
part 1d; the figures of this test's measurements are its part 6.)"""

import json
import os
import threading
import time
from pathlib import Path

from conftest import client_for
from helpers.procfs import status_number
from helpers.waiting import settled
from servers import DEADLINE, wait_until

# Targets of the fleet issue, for 2,000 HTTP providers against one.
MORE_THREADS = 32
KIB_PER_ENTRY = 40
# Built on the loop, the reload held requests 20 s (with a thread per entry; 1.9 s to build alone). Built on a
# worker thread: 0.27 s alone, 0.25-0.29 s with the other core busy, 1.04 s in a full suite run with the other core
# busy (the loop shares the GIL with 16 fetching workers and the CPU with two other processes). The bound catches the
# old behaviour; the 0.3 s target is the bench's figure (part 6), not a timed test's.
LONGEST_DELAY = 3.0


def write_entries(path: Path, base: str, n: int) -> None:
    """`n` entries, each a URL of its own (so each has a refresher); the first for 127.0.0.1, the upstream. Renamed
    into place: the addon never reads half a file."""
    entries = [{"url": f"{base}/{i}", "hosts": "127.0.0.1" if i == 0 else f"h{i}.example.com"} for i in range(n)]
    written = path.with_suffix(".new")
    written.write_text(json.dumps(entries))
    os.replace(written, path)


def test_threads_memory_and_a_reload_with_thousands_of_providers(mitmdump, provider, upstream, tmp_path):
    provider.answer({"X-Fleet": "v"}, response_headers={"Connection": "close"})
    path = tmp_path / "providers.json"
    write_entries(path, f"{provider.url}/one", 1)
    m = mitmdump("--set", f"header_providers_file={path}")
    pid = m.proc.pid
    provider.wait_for_requests(1)
    one = settled(lambda: status_number(pid, "Threads")), settled(lambda: status_number(pid, "VmRSS"))

    mark = m.mark()
    write_entries(path, f"{provider.url}/many", 2000)
    m.wait_for("changed: 2000 provider", DEADLINE, mark)
    wait_until(lambda: provider.paths_asked("/headers/many/") >= 2000, DEADLINE * 2, 0.1, "2,000 first fetches")
    many = settled(lambda: status_number(pid, "Threads")), settled(lambda: status_number(pid, "VmRSS"))
    assert many[0] - one[0] <= MORE_THREADS, (one, many)
    assert (many[1] - one[1]) / 1999 <= KIB_PER_ENTRY, (one, many)

    # A steady stream of requests while 5,000 entries are read, built and swapped in.
    latencies: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def stream():
        with client_for(f"http://127.0.0.1:{m.port}") as client:
            while not stop.is_set():
                started = time.monotonic()
                status = client.get(f"http://127.0.0.1:{upstream.port}/noecho").status_code
                latencies.append((started, time.monotonic() - started, status))

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(latencies) >= 20, what="the stream to flow")
        mark = m.mark()
        written = time.monotonic()
        write_entries(path, f"{provider.url}/more", 5000)
        m.wait_for("changed: 5000 provider", DEADLINE, mark)
        wait_until(lambda: provider.paths_asked("/headers/more/") >= 500, DEADLINE, 0.05, "the first fetches under way")
        seen = len(latencies)
        wait_until(lambda: len(latencies) >= seen + 20, what="the stream to go on")
    finally:
        stop.set()
        sender.join(DEADLINE)
    assert {status for _, _, status in latencies} == {200}
    during = [latency for started, latency, _ in latencies if started >= written]
    assert during and max(during) <= LONGEST_DELAY, max(during)
    assert "Traceback" not in m.output
