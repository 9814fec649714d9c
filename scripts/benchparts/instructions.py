"""1b and 1e: the request hook's and the answer hooks' cost in instructions per flow, counted by valgrind's callgrind
(`bench.py --hook-run COUNTS` and `--answer-run COUNTS` are the programs it runs): the same count in every run,
whatever else the machine does."""

import json
import os
import shutil
import subprocess
import sys
import time

from benchparts.common import BENCH, bench_headers

# (label, header_hosts, header_scope) for our hook; modify_headers gets the `~d` filter, as in part 1.
INSTRUCTION_VARIANTS = (
    ("hosts api.example.com", ["api.example.com"], ""),
    ("scope ~d api.example.com", ["*"], "~d api.example.com"),
    ("modify_headers", None, ""),
)
INSTRUCTION_FLOWS = 3000
INSTRUCTION_WARMUP = 1000  # calls made in every run: the first calls of a function cost more (caches, specialisation)


def hook_run(counts: list[int]) -> None:
    """Applies each variant's hook to counts[i] of INSTRUCTION_FLOWS flows: every variant is configured and every
    flow made in each run, whatever the counts, so only the hook calls differ between runs."""
    import gc

    import header_augment
    from mitmproxy.addons.modifyheaders import ModifyHeaders
    from mitmproxy.test import taddons, tflow

    from header_augment_core.snapshot import Snapshot

    # A full garbage collection walks every object of the process (tens of millions of instructions), and when one
    # comes depends on how much was allocated before: it would land in one run and not the other.
    gc.disable()
    base = ((b"Host", b"api.example.com"), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*"))
    flows = [tflow.tflow() for _ in range(INSTRUCTION_FLOWS)]
    for f in flows:
        f.request.host = "api.example.com"  # once: setting it also rewrites the Host header, at a cost per header
    headers = bench_headers(10)
    ours, theirs = header_augment.HeaderAugment(), ModifyHeaders()
    with taddons.context(theirs, ours) as tctx:
        tctx.configure(theirs, modify_headers=[f"/~d api.example.com/{k}/{v}" for k, v in headers.items()])
        for (_, hosts, scope), n in zip(INSTRUCTION_VARIANTS, counts, strict=True):
            if hosts is not None:
                tctx.configure(ours, header_provider_url="http://127.0.0.1:9/x", header_hosts=hosts, header_scope=scope)
                ours.bindings[0].refresher.snapshot = Snapshot.build(list(headers.items()), time.monotonic(), 0)
            for f in flows:
                f.request.headers.fields = base
                f.comment = ""
            for f in flows[:n]:
                if hosts is None:
                    theirs.requestheaders(f)
                else:
                    ours.requestheaders(f)
                    ours.check_reroute(f)  # the reroute guard's share, in mitmproxy's `request` hook
        ours.done()


def hook_instructions() -> dict[str, float] | None:
    """Instructions per flow, counted by valgrind's callgrind: the same in every run, whatever else the machine does
    (the timings of part 1 are medians of a noisy machine). A run with INSTRUCTION_WARMUP calls of each variant, then
    one per variant with INSTRUCTION_FLOWS of its calls: the difference is that variant's, warmed up. None when
    valgrind is not installed."""
    if shutil.which("valgrind") is None:
        return None
    return _differences("--hook-run", INSTRUCTION_VARIANTS, INSTRUCTION_FLOWS, INSTRUCTION_WARMUP)


# -- 1e. what a flow pays once its request has left, in instructions ----------------------------------------------

# (label, in scope, body, Content-Type, every added header named in header_secret_headers). The 10 headers are
# nine X-Bench-* and an Authorization; "all secret" makes the nine credentials too, as every value of 8 characters
# or more was before only credentials were scrubbed.
_FILLER = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(30)]).encode()[:1024]
ANSWER_VARIANTS = (
    ("out of scope, 1 KiB JSON", False, _FILLER, "application/json", False),
    ("3 bytes (part 2's /noecho)", True, b"ok\n", "text/plain", False),
    ("3 bytes, all secret", True, b"ok\n", "text/plain", True),
    ("1 KiB JSON, no echo", True, _FILLER, "application/json", False),
    ("1 KiB JSON, no echo, all secret", True, _FILLER, "application/json", True),
    ("1 KiB JSON, echo", True, None, "application/json", False),
    ("1 KiB PNG", True, bytes(range(256)) * 4, "image/png", False),
)
ANSWER_FLOWS = 700
ANSWER_WARMUP = 100


def answer_headers() -> list[tuple[str, str]]:
    return [*bench_headers(9).items(), ("Authorization", "Bearer tok-3f9a1c77e2d54b8a90")]


def answer_run(counts: list[int]) -> None:
    """Runs each variant's `responseheaders` + `response` on counts[i] of ANSWER_FLOWS flows, each flow sent through
    the request hooks first; every variant is configured and every flow made and sent in each run, so only the
    answer hooks' calls differ between runs."""
    import gc

    import header_augment
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    from header_augment_core.snapshot import Snapshot

    gc.disable()  # as in hook_run: a full collection would land in one run and not the other
    headers = answer_headers()
    echo = (json.dumps(dict(headers)).encode() + _FILLER)[:1024]
    base = ((b"Host", b"api.example.com"), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*"))
    template = tflow.tflow()
    ours = header_augment.HeaderAugment()
    with taddons.context(ours) as tctx:
        for (label, in_scope, body, content_type, all_secret), n in zip(ANSWER_VARIANTS, counts, strict=True):
            secret = [name for name, _ in headers] if all_secret else []
            tctx.configure(
                ours,
                header_provider_url="http://127.0.0.1:9/x",
                header_hosts=["api.example.com"],
                header_secret_headers=secret,
            )
            ours.bindings[0].refresher.snapshot = Snapshot.build(headers, time.monotonic(), 0)
            host = "api.example.com" if in_scope else "elsewhere.example"
            content = echo if body is None else body
            answer = ((b"Content-Type", content_type.encode()), (b"Content-Length", str(len(content)).encode()))
            flows = []
            for _ in range(ANSWER_FLOWS):  # made directly: tflow and Response.make cost several times more
                f = http.HTTPFlow(template.client_conn, template.server_conn, live=True)
                f.request = http.Request(
                    host, 80, b"GET", b"http", b"", b"/", b"HTTP/1.1", http.Headers(base), b"", None, 0, 0
                )
                ours.requestheaders(f)
                ours.check_reroute(f)
                if ("Authorization" in f.request.headers) is not in_scope:  # a flow not live would get nothing
                    raise RuntimeError(f"{label}: the request hook did not do what the variant says")
                f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(answer), content, None, 0, 0)
                flows.append(f)
            for f in flows[:n]:
                ours.responseheaders(f)
                ours.response(f)
        ours.done()


def answer_instructions() -> dict[str, float] | None:
    """Instructions per flow of the answer hooks, as `hook_instructions` counts the request hook. None when valgrind
    is not installed."""
    if shutil.which("valgrind") is None:
        return None
    return _differences("--answer-run", ANSWER_VARIANTS, ANSWER_FLOWS, ANSWER_WARMUP)


def _differences(flag: str, variants: tuple, flows: int, warmup: int) -> dict[str, float]:
    """Runs `bench.py FLAG COUNTS` under callgrind: once with `warmup` calls of each variant, then once per variant
    with `flows` of its calls; the difference, per call, is that variant's, warmed up."""
    # Two runs of the same counts differed by 2 million instructions (more than 1,000 a call over the calls a
    # variant's count is divided by), and by 29,000 with string hashing fixed and address space randomisation off:
    # the hashes of strings and of objects (their addresses) decide how dictionaries and sets collide.
    steady = ["setarch", "-R"] if shutil.which("setarch") else []

    def collected(counts: list[int]) -> int:
        run = subprocess.run(
            [*steady, "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, str(BENCH)]
            + [flag, json.dumps(counts)],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        return int(run.stderr.split("Collected : ")[1].split()[0])

    warm = [warmup] * len(variants)
    baseline = collected(warm)
    results = {}
    for i, (label, *_) in enumerate(variants):
        counts = list(warm)
        counts[i] = flows
        results[label] = (collected(counts) - baseline) / (flows - warmup)
    return results
