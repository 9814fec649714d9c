"""The hooks timed in this process through mitmproxy's taddons/tflow: the request hook against modify_headers (1),
aws-sigv4 signing (1a), what a flow pays once its request has left (1c), the hook against the number of entries
(1d), and memory across flows and real refreshes (5, in a process of its own: `bench.py --memory`)."""

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import Provider

from benchparts.common import BENCH, bench_headers, median

# How the in-process hook is scoped: (label, header_hosts, header_scope, modify_headers' filter for the same flows).
# `~d` is what a scope on hosts used to look like (a regex search, which also sees the Host header); header_hosts
# is the exact match that replaced it.
SCOPES = (
    ("hosts *", ["*"], "", ""),
    ("hosts api.example.com", ["api.example.com"], "", "~d api.example.com"),
    ("hosts *.example.com", ["*.example.com"], "", "~d example.com"),
    ("scope ~d api.example.com", ["*"], "~d api.example.com", "~d api.example.com"),
)
HOOK_SHARE_ROW = (10, "replace", "hosts api.example.com")


def hook_cost(rounds: int, flows_per_round: int) -> list[tuple]:
    import header_augment
    from mitmproxy.addons.modifyheaders import ModifyHeaders
    from mitmproxy.test import taddons, tflow

    from header_augment_core.snapshot import Snapshot

    base = (
        (b"Host", b"api.example.com"),
        (b"User-Agent", b"curl/8.5"),
        (b"Accept", b"*/*"),
        (b"Accept-Encoding", b"gzip"),
        (b"Connection", b"keep-alive"),
        (b"X-Request-Id", b"4bf92f3577b34da6"),
    )
    flows = []
    for _ in range(flows_per_round):
        f = tflow.tflow()
        f.request.host = "api.example.com"
        flows.append(f)

    def timed(hook) -> float:
        for f in flows:
            f.request.headers.fields = base
            f.comment = ""
        # This thread's CPU time: time spent descheduled on a busy machine does not count against either side.
        started = time.thread_time()
        for f in flows:
            hook(f)
        return (time.thread_time() - started) / len(flows) * 1e6

    rows = []
    ours, theirs = header_augment.HeaderAugment(), ModifyHeaders()
    with taddons.context(theirs, ours) as tctx:
        for n in (1, 10, 50):
            headers = bench_headers(n)
            for label, hosts, scope, their_filter in SCOPES:
                tctx.configure(
                    ours, header_provider_url="http://127.0.0.1:9/never-started", header_hosts=hosts, header_scope=scope
                )
                ours.bindings[0].refresher.snapshot = Snapshot.build(list(headers.items()), time.monotonic(), 0)
                prefix = f"/{their_filter}" if their_filter else ""
                tctx.configure(theirs, modify_headers=[f"{prefix}/{k}/{v}" for k, v in headers.items()])
                samples = {"replace": [], "append": [], "keep": [], "modify_headers": []}
                for _ in range(rounds):
                    for key in random.sample(list(samples), len(samples)):
                        if key == "modify_headers":
                            samples[key].append(timed(theirs.requestheaders))
                        else:
                            tctx.configure(ours, header_merge=key)  # keeps the refresher and its snapshot
                            samples[key].append(timed(ours.requestheaders))
                theirs_us = median(samples.pop("modify_headers"))
                for mode, values in samples.items():
                    us = median(values)
                    rows.append((n, mode, label, us, theirs_us, us / theirs_us))
        ours.done()
    return rows


# -- 1c. what a flow pays once its request has left: masking and scrubbing --------------------------------------

SCRUB_CASES = (  # (label, in scope, body size, echoes our values, Content-Encoding)
    ("not in scope, 1 KiB", False, 1024, True, ""),
    ("in scope, 1 KiB, no echo", True, 1024, False, ""),
    ("in scope, 1 KiB, echo", True, 1024, True, ""),
    ("in scope, 64 KiB gzip, echo", True, 64 * 1024, True, "gzip"),
    ("in scope, 1 MiB, no echo", True, 1024 * 1024, False, ""),
)


def scrub_cost(rounds: int, flows_per_round: int) -> list[tuple[str, float]]:
    """CPU µs per flow of `responseheaders` + `response` (markers in the flow, echoes scrubbed from the answer),
    10 headers added, on a JSON body the size given. A body over 64 KiB is scrubbed on a worker thread: its cost is
    counted here all the same, with the coroutine run to completion."""
    import gc

    import header_augment
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    from header_augment_core.snapshot import Snapshot

    headers = [*bench_headers(9).items(), ("Authorization", "Bearer tok-3f9a1c77e2d54b8a90")]
    rows = []
    ours = header_augment.HeaderAugment()
    with taddons.context(ours) as tctx:
        tctx.configure(ours, header_provider_url="http://127.0.0.1:9/never-started", header_hosts=["api.example.com"])
        ours.bindings[0].refresher.snapshot = Snapshot.build(headers, time.monotonic(), 0)
        for label, in_scope, size, echo, encoding in SCRUB_CASES:
            n = max(20, flows_per_round * 1024 // size)
            filler = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(size // 40 + 1)])
            body = ((json.dumps(dict(headers)) if echo else "") + filler).encode()[:size]
            samples = []
            for _ in range(rounds):
                flows = []
                for _ in range(n):
                    f = tflow.tflow()
                    f.request.host = "api.example.com" if in_scope else "elsewhere.example"
                    ours.requestheaders(f)
                    ours.check_reroute(f)
                    f.response = http.Response.make(200, body, {"Content-Type": "application/json"})
                    if encoding:
                        f.response.encode(encoding)
                    flows.append(f)
                gc.collect()  # a collection of the flows just made must not land in the timed loop
                gc.disable()
                started = time.thread_time()
                for f in flows:
                    ours.responseheaders(f)
                    pending = ours.response(f)
                    if pending is not None:
                        asyncio.run(pending)
                samples.append((time.thread_time() - started) / n * 1e6)
                gc.enable()
            rows.append((label, median(samples)))
        ours.done()
    return rows


def sigv4_cost(rounds: int, flows_per_round: int) -> dict[str, float]:
    """CPU µs per flow of an aws-sigv4 entry signing a 1 KiB PUT (the request hooks, botocore's signer in them),
    beside a header entry adding two headers of the same sizes; median of interleaved rounds."""

    import header_augment
    from mitmproxy.test import taddons, tflow

    from header_augment_core.snapshot import Snapshot

    saved = dict(os.environ)
    token = "t" * 400
    os.environ.update(
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEY000001",
        AWS_SECRET_ACCESS_KEY="s" * 40,
        AWS_SESSION_TOKEN=token,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    body = os.urandom(1024)
    hosts = {"aws-sigv4": "bucket.s3.eu-west-1.amazonaws.com", "headers": "api.example.com"}
    flows: dict[str, list] = {key: [] for key in hosts}
    for key, host in hosts.items():
        for _ in range(flows_per_round):
            f = tflow.tflow()
            f.request.scheme, f.request.host, f.request.port = "https", host, 443
            f.request.method, f.request.path = "PUT", "/report.csv"
            flows[key].append(f)

    def timed(addon, key: str) -> float:
        base = ((b"Host", hosts[key].encode()), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*"))
        for f in flows[key]:
            f.request.headers.fields = base
            f.request.content = body
            f.comment = ""
            f.__dict__.pop("_header_augment_carried", None)
        started = time.thread_time()
        for f in flows[key]:
            addon.requestheaders(f)
            addon.check_reroute(f)
        return (time.thread_time() - started) / len(flows[key]) * 1e6

    try:
        with tempfile.TemporaryDirectory() as tmp:
            providers = Path(tmp) / "aws.yaml"
            providers.write_text(
                "- kind: aws-sigv4\n  service: s3\n  region: eu-west-1\n  hosts: '*.s3.eu-west-1.amazonaws.com'\n"
            )
            # One addon with both entries, each flow in scope of one: as a proxy that holds both would run.
            addon = header_augment.HeaderAugment()
            samples: dict[str, list[float]] = {key: [] for key in hosts}
            with taddons.context(addon) as tctx:
                tctx.configure(
                    addon,
                    header_providers_file=str(providers),
                    header_provider_url="http://127.0.0.1:9/never-started",
                    header_hosts=["api.example.com"],
                )
                adding, signing = addon.bindings  # the single provider comes first
                signing.refresher.refresh()  # the chain read once, from the environment
                auth = "AWS4-HMAC-SHA256 Credential=" + "c" * 60 + ", SignedHeaders=host, Signature=" + "a" * 64
                headers = [("Authorization", auth), ("X-Amz-Security-Token", token)]
                adding.refresher.snapshot = Snapshot.build(headers, time.monotonic(), 0)
                for _ in range(rounds):
                    for key in random.sample(list(samples), len(samples)):
                        samples[key].append(timed(addon, key))
                addon.done()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {key: median(values) for key, values in samples.items()}


# -- 1d. hook cost against the number of entries -----------------------------------------------------------------

SCALE_SIZES = (1, 100, 1_000, 10_000)


def hook_scale(rounds: int, flows_per_round: int, sizes=SCALE_SIZES) -> tuple[dict, float]:
    """CPU µs per flow of our hook with `sizes` entries in a providers file (entry i for h<i>.example.com, 10
    headers each), for the last entry's host and for a host no entry names, all in one interleaved run; and
    modify_headers with 10 headers and its cheapest filter (~q) for scale. Refreshers are made, never started."""
    import header_augment
    from mitmproxy.addons.modifyheaders import ModifyHeaders
    from mitmproxy.test import taddons, tflow

    from header_augment_core.snapshot import Snapshot

    headers = list(bench_headers(10).items())
    base = ((b"Host", b"x"), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive"))

    def flows_to(host: str) -> list:
        made = [tflow.tflow() for _ in range(flows_per_round)]
        for f in made:
            f.request.host = host
        return made

    def timed(hook, flows) -> float:
        for f in flows:
            f.request.headers.fields = base
            f.comment = ""
            vars(f).pop("_header_augment_carried", None)  # a fresh flow each round: no record of a first pass
        started = time.thread_time()
        for f in flows:
            hook(f)
        return (time.thread_time() - started) / len(flows) * 1e6

    cases, addons = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"providers-{n}.json"
            entries = [{"url": f"http://127.0.0.1:9/p{i}", "hosts": f"h{i}.example.com"} for i in range(n)]
            path.write_text(json.dumps(entries))
            ours = header_augment.HeaderAugment()
            context = taddons.context(ours)
            context.__enter__()
            context.configure(ours, header_providers_file=str(path))
            for binding in ours.bindings:
                binding.refresher.snapshot = Snapshot.build(headers, time.monotonic(), 0)
            addons.append((ours, context))
            cases[(n, "named")] = (ours.requestheaders, flows_to(f"h{n - 1}.example.com"))
            cases[(n, "unnamed")] = (ours.requestheaders, flows_to("nobody.example.org"))
    theirs = ModifyHeaders()
    with taddons.context(theirs) as tctx:
        tctx.configure(theirs, modify_headers=[f"/~q/{k}/{v}" for k, v in headers])
        cases["modify_headers"] = (theirs.requestheaders, flows_to("h0.example.com"))
        samples = {key: [] for key in cases}
        for _ in range(rounds):
            for key in random.sample(list(cases), len(cases)):
                samples[key].append(timed(*cases[key]))
    for ours, context in addons:
        ours.done()
        context.__exit__(None, None, None)
    theirs_us = median(samples.pop("modify_headers"))
    return {key: median(values) for key, values in samples.items()}, theirs_us


# -- 5. memory ---------------------------------------------------------------------------------------------------


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(flows: int, refreshes: int) -> dict:
    import gc

    import header_augment
    from mitmproxy.test import taddons, tflow

    provider = Provider()
    provider.answer(bench_headers(10))
    addon = header_augment.HeaderAugment()
    pool = [tflow.tflow() for _ in range(1000)]
    base = ((b"Host", b"api.example.com"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive"))
    try:
        with taddons.context(addon) as tctx:
            tctx.configure(addon, header_provider_url=provider.url, header_hosts=["api.example.com"])
            refresher = addon.bindings[0].refresher  # driven from here: each refresh() is a real fetch and swap

            def run(n_flows, n_refreshes):
                for i in range(n_flows):
                    f = pool[i % len(pool)]
                    f.request.headers.fields = base
                    f.comment = ""
                    addon.requestheaders(f)
                for i in range(n_refreshes):
                    provider.answer(bench_headers(10, str(i)))
                    refresher.refresh()
                    provider.requests.clear()  # the test provider's record of requests would grow with them
                    if i % 100 == 0:
                        # mitmproxy delivers log records through its event loop: let it run, as in a live proxy.
                        tctx.master.event_loop.run_until_complete(asyncio.sleep(0))

            run(2000, 200)  # warm-up: imports, connection pool, caches
            gc.collect()
            before = rss_mib()
            run(flows, refreshes)
            gc.collect()
            after = rss_mib()
            assert refresher.counts.ok == 200 + refreshes, refresher.counts.failed_by_reason
            refresher.client.close()
        return {"before": before, "after": after, "growth": after - before}
    finally:
        provider.close()


def memory_apart(flows: int, refreshes: int) -> dict:
    """`memory` in a process of its own, so that nothing measured before weighs on its RSS."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--memory", json.dumps([flows, refreshes])],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return json.loads(out)
