"""1b: the hook's cost in instructions per flow, counted by valgrind's callgrind (`bench.py --hook-run COUNTS` is
the program it runs): the same count in every run, whatever else the machine does."""

import json
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
    import shutil

    if shutil.which("valgrind") is None:
        return None

    def collected(counts: list[int]) -> int:
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, str(BENCH)]
            + ["--hook-run", json.dumps(counts)],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        return int(run.stderr.split("Collected : ")[1].split()[0])

    warm = [INSTRUCTION_WARMUP] * len(INSTRUCTION_VARIANTS)
    baseline = collected(warm)
    results = {}
    for i, (label, *_) in enumerate(INSTRUCTION_VARIANTS):
        counts = list(warm)
        counts[i] = INSTRUCTION_FLOWS
        results[label] = (collected(counts) - baseline) / (INSTRUCTION_FLOWS - INSTRUCTION_WARMUP)
    return results
