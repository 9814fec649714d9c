"""6: a real mitmdump with thousands of HTTP providers, read from /proc: its threads and memory per entry, and the
longest delay a steady stream of requests sees while a providers file of thousands of entries is swapped in."""

import json
import os
import time
from pathlib import Path

from helpers.waiting import settled
from servers import Provider

from benchparts import loadgen
from benchparts.common import DEADLINE, EchoUpstream, addon_args, median, quiet, start_proxies, wait_until
from benchparts.end_to_end import fetch_through


def providers_file(path: Path, base: str, n: int, first_host: str = "h0.example.com") -> Path:
    """`n` HTTP entries, each a URL of its own under `base` on one provider (so each has a refresher), for hosts
    h<i>.example.com; the first for `first_host`. Written beside and renamed: the addon never reads half a file."""
    entries = [{"url": f"{base}/{i}", "hosts": first_host if i == 0 else f"h{i}.example.com"} for i in range(n)]
    written = path.with_suffix(".new")
    written.write_text(json.dumps(entries))
    os.replace(written, path)
    return path


def scale(confdir: Path, sizes: tuple[int, int], entries: int, phase: float, settle: float = 0.25) -> dict:
    """`footprint` and `reload_delay`, their three proxies started side by side (each takes seconds of imports)."""
    provider = quiet(Provider())
    provider.answer({"X-Bench": "v"}, response_headers={"Connection": "close"})  # no server thread per refresher
    upstream = EchoUpstream(confdir)
    specs = {}
    for n in sizes:
        path = providers_file(confdir / f"footprint-{n}.json", f"{provider.url}/{n}", n)
        specs[n] = addon_args(header_providers_file=str(path))
    # Under a path of their own: the provider also answered the footprint's entries.
    reloaded = providers_file(confdir / "reloaded.json", f"{provider.url}/r", 1, first_host="127.0.0.1")
    specs["reload"] = addon_args(header_providers_file=str(reloaded))
    try:
        proxies = start_proxies(confdir, specs)
        try:
            foot = footprint(provider, {n: proxies[n] for n in sizes}, settle)
            reload = reload_delay(provider, upstream, proxies["reload"], reloaded, entries, phase)
        finally:
            for proxy in proxies.values():
                proxy.close()
    finally:
        upstream.close()
        provider.close()
    return {"footprint": foot, "reload": reload}


def footprint(provider: Provider, proxies: dict, settle: float) -> dict:
    """Threads and RSS of mitmdump with `sizes[0]` and `sizes[1]` HTTP providers (`proxies` by size, told to stop
    here: they do while the reload is measured), once every entry's first fetch is done and both have settled."""
    sizes = tuple(proxies)
    try:
        figures = {}
        for n, proxy in proxies.items():
            wait_until(lambda n=n: provider.paths_asked(f"/headers/{n}/") >= n, DEADLINE * 4, 0.1, f"{n} first fetches")
            figures[n] = {
                "threads": settled(lambda p=proxy: p.status("Threads"), "threads to settle", DEADLINE, settle),
                "rss_kib": settled(lambda p=proxy: p.status("VmRSS") // 256, "RSS to settle", DEADLINE, settle) * 256,
            }
        small, large = sizes
        per_entry = (figures[large]["rss_kib"] - figures[small]["rss_kib"]) / (large - small)
        return {
            "sizes": list(sizes),
            "threads": {str(n): f["threads"] for n, f in figures.items()},
            "rss_mib": {str(n): f["rss_kib"] / 1024 for n, f in figures.items()},
            "kib_per_entry": per_entry,
            "threads_per_entry": (figures[large]["threads"] - figures[small]["threads"]) / (large - small),
        }
    finally:
        for proxy in proxies.values():
            proxy.proc.terminate()


def reload_delay(provider: Provider, upstream: EchoUpstream, proxy, path: Path, entries: int, phase: float) -> dict:
    """A client sends request after request (one connection) through mitmdump, whose providers file has one entry
    for the upstream; the file is then rewritten with `entries` entries (the same first one), which the addon
    applies within a couple of seconds and whose refreshers all make a first fetch. Per-request latency before the
    rewrite, from it until every new entry has been fetched and the proxy answers again, and after, for `phase`
    seconds on either side."""
    stop, answered = path.parent / "reload-stop", path.parent / "reload-answered"
    stop.unlink(missing_ok=True)
    answered.unlink(missing_ok=True)
    try:
        wait_until(lambda: provider.paths_asked("/headers/r/0") >= 1, DEADLINE, 0.05, "the first fetch")
        client = loadgen.start(
            loadgen.spec(
                proxy.port, f"127.0.0.1:{upstream.port}", 600, path="/noecho", until=str(stop), answered=str(answered)
            )
        )
        try:
            wait_until(answered.exists, DEADLINE, 0.01, "the client's first answer")
            time.sleep(phase)  # the steady stream before the rewrite: a phase of the measurement, not a wait
            written = time.monotonic()
            providers_file(path, f"{provider.url}/r", entries, first_host="127.0.0.1")
            wait_until(
                lambda: provider.paths_asked("/headers/r/") >= entries, DEADLINE * 4, 0.05, "the new entries' fetches"
            )
            applied = time.monotonic()
            # The stream's next answers may still be held (by the loop, not the provider): the phase after
            # begins once a request of this process's own has been answered.
            fetch_through(proxy.port, upstream.port, DEADLINE * 4)
            resumed = time.monotonic()
            time.sleep(phase)
            stop.touch()
            result = loadgen.finish(client, DEADLINE)
        finally:
            client.kill()
        threads = proxy.status("Threads")
    finally:
        proxy.close()
    asked = [(r["at"] - written, r["path"]) for r in provider.requests if r["at"] >= written and "/r/" in r["path"]]
    phases = {"before": [], "during": [], "after": []}
    for at, latency in zip(result["starts"], result["latencies"], strict=True):
        phases["before" if at < written else "during" if at < resumed else "after"].append(latency * 1e3)
    return {
        "entries": entries,
        "applied_s": applied - written,
        "resumed_s": resumed - written,
        # When the new configuration began (its first new entry asked) and when the upstream's entry was asked
        # again (its refresher made anew, requests for it waiting on that first fetch), if it was.
        "first_new_fetch_s": min(at for at, path in asked if path != "/headers/r/0"),
        "own_entry_refetched_s": min((at for at, path in asked if path == "/headers/r/0"), default=None),
        "threads_after": threads,
        **{name: {"requests": len(v), "p50_ms": median(v), "max_ms": max(v)} for name, v in phases.items() if v},
    }
