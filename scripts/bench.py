#!/usr/bin/env python3
"""header-augment benchmarks, measured side by side in one run on 127.0.0.1 only.

This machine is shared and noisy, so every figure is a ratio (or a latency) taken from interleaved rounds and
reduced to a median; absolute throughput is printed only for context. The parts are modules of scripts/benchparts/.

    scripts/bench                    # all parts, about twenty minutes (thirteen of them under valgrind)
    scripts/bench --quick            # fewer, shorter rounds
    scripts/bench --part 1d --part 6 # some parts only
    scripts/bench --smoke --json -   # the least that runs each part (for the smoke test: figures mean nothing)
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this has only scripts/ on its path; the parts import the tests' servers and helpers and the addon
# by name, as the tests do (pyproject.toml's pythonpath), rather than keeping copies of their own.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "addon"), str(ROOT / "scripts")]

# Rounds and sizes by mode: (full, quick, smoke).
MODES = ("full", "quick", "smoke")


def sized(mode: str, full, quick, smoke):
    return {"full": full, "quick": quick, "smoke": smoke}[mode]


def part_1(mode, confdir, results):
    from benchparts.inprocess import hook_cost

    print("1. Hook cost in-process: CPU µs per flow, median of interleaved rounds (client sends 6 headers)")
    print(f"   {'headers':>7} {'merge':>8} {'scope':>26} {'ours µs':>8} {'modify µs':>10} {'ratio':>6}")
    rows = hook_cost(sized(mode, 9, 5, 1), sized(mode, 4000, 2000, 100))
    for n, merge, scope, ours, theirs, ratio in rows:
        print(f"   {n:>7} {merge:>8} {scope:>26} {ours:>8.2f} {theirs:>10.2f} {ratio:>6.3f}")
    return [dict(zip(("headers", "merge", "scope", "ours_us", "modify_us", "ratio"), row, strict=True)) for row in rows]


def part_1a(mode, confdir, results):
    from benchparts.inprocess import sigv4_cost

    costs = sigv4_cost(sized(mode, 9, 5, 1), sized(mode, 3000, 1000, 100))
    print(
        f"1a. aws-sigv4: CPU µs per flow signing a 1 KiB PUT (botocore's signer): {costs['aws-sigv4']:.1f}, "
        f"against {costs['headers']:.1f} adding two headers of the same sizes"
    )
    return {"sigv4_us": costs["aws-sigv4"], "headers_us": costs["headers"]}


def part_1b(mode, confdir, results):
    from benchparts.instructions import hook_instructions

    print("1b. Hook cost in instructions per flow, counted by valgrind (10 headers, replace, reroute guard too)")
    counts = hook_instructions()
    if counts is None:
        print("   valgrind is not installed: skipped")
        return None
    theirs = counts["modify_headers"]
    for label, count in counts.items():
        print(f"   {label:>26} {count:>10,.0f}   {count / theirs:.3f}× modify_headers")
    return counts


def part_1c(mode, confdir, results):
    from benchparts.inprocess import scrub_cost

    print("1c. Once the request has left: markers in the flow and echoes scrubbed, CPU µs per flow (10 headers)")
    rows = scrub_cost(sized(mode, 7, 3, 1), sized(mode, 1000, 200, 20))
    for label, us in rows:
        print(f"   {label:>30} {us:>9.2f} µs")
    return dict(rows)


def part_1e(mode, confdir, results):
    from benchparts.instructions import answer_instructions

    print("1e. Once the request has left, in instructions per flow, counted by valgrind (10 headers, one of them")
    print("    Authorization; 'all secret': the other nine named in header_secret_headers)")
    counts = answer_instructions()
    if counts is None:
        print("   valgrind is not installed: skipped")
        return None
    for label, count in counts.items():
        print(f"   {label:>32} {count:>10,.0f}")
    return counts


def part_1d(mode, confdir, results):
    from benchparts.inprocess import SCALE_SIZES, hook_scale

    print("1d. Hook cost against the number of entries: CPU µs per flow (10 headers), one interleaved run")
    sizes = sized(mode, SCALE_SIZES, SCALE_SIZES, (1, 100, 1_000))
    scale, theirs_us = hook_scale(sized(mode, 9, 5, 1), sized(mode, 2000, 1000, 100), sizes)
    print(f"   {'entries':>7} {'last entry host':>16} {'vs 1':>6} {'unnamed host':>13} {'vs 1':>6}")
    for n in sizes:
        named, unnamed = scale[(n, "named")], scale[(n, "unnamed")]
        print(
            f"   {n:>7,} {named:>13.2f} µs {named / scale[(1, 'named')]:>6.2f} {unnamed:>10.2f} µs "
            f"{unnamed / scale[(1, 'unnamed')]:>6.2f}"
        )
    print(f"   one entry, its host: {scale[(1, 'named')] / theirs_us:.3f}× modify_headers with ~q ({theirs_us:.2f} µs)")
    return {
        "entries": {str(n): {"named_us": scale[(n, "named")], "unnamed_us": scale[(n, "unnamed")]} for n in sizes},
        "modify_headers_us": theirs_us,
    }


def part_1f(mode, confdir, results):
    from benchparts.egress import RULES, audit_cost, egress_cost

    rules = sized(mode, RULES, RULES, (1, 100))
    print("1f. Deny by default and the audit log: CPU µs per request of the request hooks (requestheaders and the")
    print("    reroute guard's request), median of interleaved rounds; one entry (api.example.com), rule i h<i>")
    costs = egress_cost(sized(mode, 9, 5, 1), sized(mode, 2000, 1000, 100), rules)
    for label, us in costs.items():
        print(f"   {label:>44} {us:>8.2f} µs")
    print("    the audit log, per flow given our headers (request and answer hooks; the writer's line apart):")
    audit = audit_cost(sized(mode, 7, 3, 1), sized(mode, 2000, 1000, 100))
    for label, us in audit.items():
        print(f"   {label:>44} {us:>8.2f} µs")
    return {"request_hooks_us": costs, "audit_us": audit}


def part_1g(mode, confdir, results):
    from benchparts.egress import egress_instructions

    print("1g. Part 1f's request hooks in instructions per request, counted by valgrind (minutes)")
    counts = egress_instructions()
    if counts is None:
        print("   valgrind is not installed: skipped")
        return None
    for label, count in counts.items():
        print(f"   {label:>44} {count:>10,.0f}")
    return counts


def part_1h(mode, confdir, results):
    from benchparts.placeholders import SIZES, placeholder_cost, search_cost

    sizes = sized(mode, SIZES, SIZES, (0, 1))
    print("1h. Placeholders: CPU µs per request of the request hooks (requestheaders and the reroute guard's request),")
    print("    median of interleaved rounds; one entry adding 10 headers and N placeholder entries for the same host")
    costs = placeholder_cost(sized(mode, 9, 5, 1), sized(mode, 1000, 500, 20), sizes)
    for label, us in costs.items():
        print(f"   {label:>44} {us:>8.2f} µs")
    if 1000 in sizes:
        ratio = costs["no placeholder, 1,000 placeholder entries"] / costs["no placeholder, 1 placeholder entry"]
        print(f"   no placeholder, 1,000 entries against 1: {ratio:.3f}×")
    print("    the search alone, a 400-byte header block holding none (µs):")
    search = search_cost(sized(mode, (1, 100, 1000), (1, 100, 1000), (1, 100)), sized(mode, 2000, 1000, 10))
    for label, us in search.items():
        print(f"   {label:>44} {us:>8.2f} µs")
    return {"request_hooks_us": costs, "search_us": search}


def part_2(mode, confdir, results):
    from benchparts.end_to_end import end_to_end
    from benchparts.inprocess import HOOK_SHARE_ROW

    print("2. End to end: requests/s through mitmdump, 8 keep-alive connections, loopback upstream")
    e2e = end_to_end(confdir, sized(mode, 9, 3, 1), sized(mode, 3.0, 1.5, 0.3), 8, sized(mode, 0.5, 0.5, 0.1))
    print("   ratios: median of per-round pairs [quartiles]; CPU = the proxy process's CPU time per request")
    print("   'client sends them': plain mitmdump, the client itself sending the same 10 headers")

    def shown(q):
        return f"{q[0]:.3f} [{q[1]:.2f}–{q[2]:.2f}]"

    print(
        f"   {'':>18} {'req/s':>6} {'CPU µs':>7} | {'req/s vs plain':>20} {'CPU vs plain':>20} | "
        f"{'req/s vs client-sent':>20} {'CPU vs client-sent':>20}"
    )
    for name, row in e2e.items():
        print(
            f"   {name:>18} {row['rate']:6.0f} {row['cpu_us']:7.0f} | {shown(row['rate_vs_plain']):>20} "
            f"{shown(row['cpu_vs_plain']):>20} | {shown(row['rate_vs_floor']):>20} {shown(row['cpu_vs_floor']):>20}"
        )
    if "1" in results:
        # The spread between rounds on a shared machine is wider than the addon's whole cost, so also derive the
        # ratio from what was measured precisely: the hook's CPU time against the proxy's CPU time per request.
        row = next(r for r in results["1"] if (r["headers"], r["merge"], r["scope"]) == HOOK_SHARE_ROW)
        hook_us, floor_us = row["ours_us"], e2e["client sends them"]["cpu_us"]
        bound = floor_us / (floor_us + hook_us)
        print(
            f"   hook share: {hook_us:.2f} µs (10 headers, header_hosts set) of {floor_us:.0f} µs CPU per request "
            f"= {hook_us / floor_us:.2%}; throughput bound vs plain with the headers: {bound:.4f}"
        )
    return e2e


def part_2b(mode, confdir, results):
    from benchparts.end_to_end import instructions_per_request

    print("2b. Part 2 in instructions per request, counted by valgrind (1 connection, /noecho; minutes)")
    requests, warm, idle = sized(mode, 300, 100, 5), sized(mode, 40, 20, 2), sized(mode, 10.0, 5.0, 1.0)
    counts = instructions_per_request(confdir, requests, warm, idle)
    if counts is None:
        print("   valgrind is not installed: skipped")
        return None
    for name, row in counts.items():
        count, ratio = row["instructions"], row["vs_client_sent"]
        print(f"   {name:>26}: {count:>12,.0f} instructions/request   {ratio:.4f}× client-sent")
    return counts


def part_3(mode, confdir, results):
    from benchparts.end_to_end import slow_provider

    print("3. Slow provider (3 s per answer, polled every 1 s) vs fast: request latency, 1 connection")
    slow = slow_provider(confdir, sized(mode, 5, 3, 1), sized(mode, 2.0, 1.0, 0.3))
    for name, (p50, p99, n) in slow.items():
        print(f"   {name:>5}: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({n} requests)")
    print(
        f"   p99 slow / fast: {slow['slow'][1] / slow['fast'][1]:.3f}   "
        f"p50 slow / fast: {slow['slow'][0] / slow['fast'][0]:.3f}"
    )
    return {name: {"p50_ms": p50, "p99_ms": p99, "requests": n} for name, (p50, p99, n) in slow.items()}


def part_4(mode, confdir, results):
    from benchparts.common import median
    from benchparts.end_to_end import refresh_to_visible

    print("4. Refresh to visible: provider serves a new value → first response carrying it (interval 100ms)")
    delays = refresh_to_visible(confdir, sized(mode, 20, 10, 3))
    print(f"   median {median(delays):.1f} ms   max {max(delays):.1f} ms   ({len(delays)} changes)")
    return {"median_ms": median(delays), "max_ms": max(delays), "changes": len(delays)}


def part_5(mode, confdir, results):
    from benchparts.inprocess import memory_apart

    print("5. Memory: RSS of an in-process proxy addon across flows and real refreshes (after warm-up)")
    n_flows, n_refreshes = sized(mode, (100_000, 10_000), (20_000, 2_000), (2_000, 100))
    mem = memory_apart(n_flows, n_refreshes)
    print(
        f"   {n_flows} flows + {n_refreshes} refreshes: {mem['before']:.1f} MiB → {mem['after']:.1f} MiB "
        f"(growth {mem['growth']:+.2f} MiB)"
    )
    return {"flows": n_flows, "refreshes": n_refreshes, **mem}


def part_6(mode, confdir, results):
    from benchparts.scale import scale

    small, large = 1, sized(mode, 2_000, 2_000, 20)
    print(f"6. Scale, a real mitmdump read from /proc: {small} vs {large:,} HTTP providers (one URL each)")
    entries = sized(mode, 5_000, 5_000, 50)
    figures = scale(confdir, (small, large), entries, sized(mode, 3.0, 2.0, 0.5), sized(mode, 0.25, 0.25, 0.05))
    foot, reload = figures["footprint"], figures["reload"]
    threads, rss = foot["threads"], foot["rss_mib"]
    print(
        f"   threads {threads[str(small)]} vs {threads[str(large)]} ({foot['threads_per_entry']:.2f} per entry); "
        f"RSS {rss[str(small)]:.1f} vs {rss[str(large)]:.1f} MiB ({foot['kib_per_entry']:.1f} KiB per entry)"
    )
    print(f"   a steady request stream (1 connection) while the providers file grows from 1 to {entries:,} entries:")
    for name in ("before", "during", "after"):
        if name in reload:
            row = reload[name]
            print(f"   {name:>7}: p50 {row['p50_ms']:7.2f} ms   max {row['max_ms']:8.2f} ms   ({row['requests']} req.)")
    refetched = reload["own_entry_refetched_s"]
    print(
        f"   from the rewrite: first new entry asked {reload['first_new_fetch_s']:.2f} s, every new entry fetched "
        f"{reload['applied_s']:.2f} s, the proxy answering again {reload['resumed_s']:.2f} s, the upstream's entry "
        "asked anew "
        + ("never" if refetched is None else f"{refetched:.2f} s")
        + f"; threads after: {reload['threads_after']}"
    )
    return figures


def part_7(mode, confdir, results):
    from benchparts.sigv4 import cpu_per_request, latency_beside_a_large_put

    size = 1024
    print(f"7. aws-sigv4 end to end: the proxy's CPU per {size // 1024} KiB S3 PUT, moto's server verifying")
    print("   (2 connections; 'plain, client-signed': plain mitmdump, the client sending the same request signed)")
    cpu = cpu_per_request(confdir, sized(mode, 9, 3, 1), sized(mode, 3.0, 1.5, 0.3), 2, size)
    for name, row in cpu.items():
        q = row["cpu_vs_plain"]
        print(
            f"   {name:>22}: {row['rate']:6.0f} req/s  CPU {row['cpu_us']:6.0f} µs/request  "
            f"{q[0]:.3f} [{q[1]:.2f}–{q[2]:.2f}]× plain  ({row['errors']} answered 5xx by moto)"
        )
    large = sized(mode, 64, 64, 4)
    print(f"   small GETs' latency (1 connection) beside {large} MiB PUTs one after another through the same proxy:")
    beside = latency_beside_a_large_put(confdir, sized(mode, 5, 3, 1), sized(mode, 4.0, 2.0, 0.5), large << 20)
    for name in ("alone", "beside a signed PUT", "beside an unsigned PUT"):
        row = beside[name]
        print(f"   {name:>22}: p50 {row['p50_ms']:6.2f} ms   p99 {row['p99_ms']:7.2f} ms   ({row['requests']} req.)")
    print(f"   PUTs completed: {beside['puts']['signed']} signed, {beside['puts']['unsigned']} unsigned")
    return {"cpu": cpu, "large_put_mib": large, "beside": beside}


def part_7b(mode, confdir, results):
    from benchparts.sigv4 import instructions_per_request

    size = 1024
    print(f"7b. aws-sigv4 end to end in instructions per {size // 1024} KiB S3 PUT, counted by valgrind")
    print("    (moto verifying, 1 connection; the proxy's idle instructions a second taken off; minutes)")
    counts = instructions_per_request(
        confdir, sized(mode, 300, 100, 5), size, sized(mode, 40, 20, 2), sized(mode, 10.0, 5.0, 1.0)
    )
    if counts is None:
        print("   valgrind is not installed: skipped")
        return None
    for name, row in counts.items():
        print(
            f"   {name:>22}: {row['instructions']:>12,.0f} instructions/request   {row['vs_plain']:.3f}× plain"
            + (f"  ({row['errors']} answered 5xx by moto)" if row["errors"] else "")
        )
    return counts


def part_8(mode, confdir, results):
    from benchparts.command_chain import side_by_side

    print("8. The header-augment command against mitmdump -s addon/header_augment.py: CPU per request, side by side")
    print("   (-q, the same options, 10 headers added, 8 keep-alive connections; median of per-round ratios)")
    figures = side_by_side(confdir, sized(mode, 5, 3, 1), sized(mode, 3.0, 1.5, 0.3), 8, sized(mode, 0.5, 0.5, 0.1))
    for name, row in figures["proxies"].items():
        median_, low, high = row["cpu_vs_stock"]
        print(
            f"   {name:>30} {row['rate']:6.0f} req/s {row['cpu_us']:7.0f} CPU µs/request  "
            f"{median_:.3f}× [{low:.2f}–{high:.2f}]" + (f"  ({row['errors']} errors)" if row["errors"] else "")
        )
    print(
        f"   saved {figures['saved']:.0f} µs/request: dispatching {figures['left_out']} hookless addons costs "
        f"{figures['dispatch']:.0f} µs ({figures['dispatch_per_addon']:.1f} µs each), the left-out addons' "
        f"own hooks the other {figures['addons_work']:.0f} µs"
    )
    return figures


def part_8b(mode, confdir, results):
    from benchparts.command_chain import instructions

    print("8b. Part 8 in instructions per request, counted by valgrind (1 connection, /noecho; minutes)")
    counts = instructions(confdir, sized(mode, 300, 100, 5), sized(mode, 40, 20, 2), sized(mode, 10.0, 5.0, 1.0))
    if counts is None:
        print("   valgrind is not installed: skipped")
        return None
    for name, row in counts["proxies"].items():
        print(f"   {name:>30}: {row['instructions']:>12,.0f} instructions/request   {row['vs_stock']:.3f}× stock")
    print(
        f"   saved {counts['saved']:,.0f}: dispatching {counts['left_out']} hookless addons {counts['dispatch']:,.0f} "
        f"({counts['dispatch_per_addon']:,.0f} each), the left-out addons' own hooks {counts['addons_work']:,.0f}"
    )
    return counts


def part_9(mode, confdir, results):
    from benchparts.secret_stores import fetch_cost, report

    print("9. CPU per refresh by kind, on the fetching thread only (the servers' own time excluded)")
    costs = fetch_cost(confdir, sized(mode, 9, 5, 1), sized(mode, 100, 50, 2))
    report(costs)
    return costs


# In the order they run: 1a and 1c before 1b and 1e as always (valgrind's parts are the slowest).
PARTS = {
    "1": part_1,
    "1a": part_1a,
    "1c": part_1c,
    "1b": part_1b,
    "1e": part_1e,
    "1d": part_1d,
    "1f": part_1f,
    "1g": part_1g,
    "1h": part_1h,
    "2": part_2,
    "2b": part_2b,
    "3": part_3,
    "4": part_4,
    "5": part_5,
    "6": part_6,
    "7": part_7,
    "7b": part_7b,
    "8": part_8,
    "8b": part_8b,
    "9": part_9,
}


def child_modes(args) -> bool:
    """The bench's own child processes: the load generator, part 5's process, the program valgrind counts."""
    if args.loadgen:
        from benchparts import loadgen

        loadgen.main(args.loadgen)
    elif args.memory:
        from benchparts.inprocess import memory

        print(json.dumps(memory(*json.loads(args.memory))))
    elif args.hook_run:
        from benchparts.instructions import hook_run

        hook_run(json.loads(args.hook_run))
    elif args.answer_run:
        from benchparts.instructions import answer_run

        answer_run(json.loads(args.answer_run))
    elif args.egress_run:
        from benchparts.egress import egress_run

        egress_run(json.loads(args.egress_run))
    else:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--smoke", action="store_true", help="the least that runs each part: figures mean nothing")
    parser.add_argument("--part", action="append", choices=list(PARTS), help="run this part (repeatable); all without")
    parser.add_argument("--json", metavar="PATH", help="also write every part's figures as JSON to PATH (- for stdout)")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--hook-run", help=argparse.SUPPRESS)
    parser.add_argument("--answer-run", help=argparse.SUPPRESS)
    parser.add_argument("--egress-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if child_modes(args):
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    chosen = [name for name in PARTS if not args.part or name in args.part]
    out = sys.stderr if args.json == "-" else sys.stdout  # stdout then carries the JSON alone
    sys.stdout = out
    print(
        f"header-augment benchmarks ({mode}) — {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            print()
            started = time.monotonic()
            results[name] = PARTS[name](mode, Path(tmp), results)
            print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
    sys.stdout = sys.__stdout__
    if args.json:
        text = json.dumps({"mode": mode, "parts": results}, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
