"""1f and 1g: what the egress policy and the audit log cost a request, in this process: the request hooks (the
addon's `requestheaders` and the reroute guard's `request`) for a request allowed by a rule and one denied, with 1
and 10,000 allow rules, beside header_egress=pass; and the audit log per flow, on the event loop and on its writer's
thread. 1g counts the same request hooks in instructions under valgrind (`bench.py --egress-run COUNTS`)."""

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from benchparts.common import bench_headers, median

RULES = (1, 10_000)


def variants(rules=RULES) -> tuple:
    """(label, header_egress, allow rules, the request's host). The entry names api.example.com; rule i h<i>."""
    passing = [("pass, the entry's host", "pass", 1, "api.example.com"), ("pass, another host", "pass", 1, "other.org")]
    return tuple(
        passing
        + [
            row
            for n in rules
            for rules_ in (f"{n:,} rule" + "s" * (n != 1),)
            for row in (
                (f"deny, {rules_}, the entry's host", "deny", n, "api.example.com"),
                (f"deny, {rules_}, allowed by the last rule", "deny", n, f"h{n - 1}.example.com"),
                (f"deny, {rules_}, denied", "deny", n, "other.org"),
            )
        ]
    )


VARIANTS = variants()
EGRESS_FLOWS = 2000
EGRESS_WARMUP = 500
_OURS = ("_header_augment_carried", "_header_augment_decision", "_header_augment_audited")


def _providers(directory: Path, mode: str, rules: int) -> Path:
    path = directory / f"providers-{mode}-{rules}.json"
    allow = [{"hosts": [f"h{i}.example.com"]} for i in range(rules)]
    entry = {"url": "http://127.0.0.1:9/never-started", "hosts": "api.example.com"}
    path.write_text(json.dumps({"providers": [entry], "egress": {"default": mode, "allow": allow}}))
    return path


class _Configured:
    """One addon per configuration, in a taddons context of its own, its entry given 10 headers."""

    def __init__(self, directory: Path, mode: str, rules: int, audit: Path | None = None) -> None:
        import header_augment
        from mitmproxy.test import taddons

        from header_augment_core.snapshot import Snapshot

        self.addon = header_augment.HeaderAugment()
        self.context = taddons.context(self.addon)
        tctx = self.context.__enter__()
        options = {"header_providers_file": str(_providers(directory, mode, rules))}
        if audit is not None:
            options["header_audit_log"] = str(audit)
        tctx.configure(self.addon, **options)
        self.addon.bindings[0].refresher.snapshot = Snapshot.build(list(bench_headers(10).items()), time.monotonic(), 0)

    def close(self) -> None:
        self.addon.done()
        self.context.__exit__(None, None, None)


def _flows(host: str, n: int) -> list:
    from mitmproxy.test import tflow

    made = [tflow.tflow() for _ in range(n)]
    for f in made:
        f.request.host = host
    return made


def _reset(flows: list, base: tuple) -> None:
    for f in flows:
        f.request.headers.fields = base
        f.comment = ""
        f.response = None
        for name in _OURS:
            f.__dict__.pop(name, None)


_BASE = ((b"Host", b"x"), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive"))


def egress_cost(rounds: int, flows_per_round: int, rules=RULES) -> dict[str, float]:
    """CPU µs per request of the request hooks for each variant (its rule counts limited to `rules`), in one
    interleaved run."""
    with tempfile.TemporaryDirectory() as tmp:
        configured: dict[tuple, _Configured] = {}
        cases = {}
        for label, mode, n, host in variants(rules):
            key = (mode, n)
            if key not in configured:
                configured[key] = _Configured(Path(tmp), mode, n)
            cases[label] = (configured[key].addon, _flows(host, flows_per_round))
        samples: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(rounds):
            for label in random.sample(list(cases), len(cases)):
                addon, flows = cases[label]
                _reset(flows, _BASE)
                started = time.thread_time()
                for f in flows:
                    addon.requestheaders(f)
                    addon.check_reroute(f)
                samples[label].append((time.thread_time() - started) / len(flows) * 1e6)
        for made in configured.values():
            made.close()
    return {label: median(values) for label, values in samples.items()}


def audit_cost(rounds: int, flows_per_round: int) -> dict[str, float]:
    """CPU µs per flow of the audit log: on the event loop, the request and answer hooks of a flow given our
    headers with a log against without one; on the writer's thread, one line (its JSON, its fingerprint and its
    write), timed by writing lines in this thread through the writer's own handler."""
    from mitmproxy import http

    from header_augment_core import audit

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.log"
        cases = {
            "without a log": _Configured(Path(tmp), "pass", 1),
            "with a log": _Configured(Path(tmp), "pass", 1, log),
        }
        answer = http.Response.make(200, b"ok\n", {"Content-Type": "text/plain"})
        flows = {label: _flows("api.example.com", flows_per_round) for label in cases}
        samples: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(rounds):
            for label in random.sample(list(cases), len(cases)):
                addon = cases[label].addon
                _reset(flows[label], _BASE)
                started = time.thread_time()
                for f in flows[label]:
                    addon.requestheaders(f)
                    addon.check_reroute(f)
                    f.response = answer
                    addon.responseheaders(f)
                    addon.response(f)
                samples[label].append((time.thread_time() - started) / flows_per_round * 1e6)
        results = {f"event loop, {label}": median(values) for label, values in samples.items()}
        ours = cases["with a log"].addon
        writer = ours._path.audit
        given = [(ours.bindings[0], ours.bindings[0].refresher.snapshot)]
        lines = [audit.flow_line(f, "added", None, given) for f in flows["with a log"]]
        written = []
        for _ in range(rounds):
            started = time.thread_time()
            for line in lines:
                writer._file.emit(line)  # what the writer's thread does with each line taken off the queue
            written.append((time.thread_time() - started) / len(lines) * 1e6)
        results["writer's thread, a line"] = median(written)
        for made in cases.values():
            made.close()
    return results


# -- 1g: the same request hooks in instructions, under callgrind -------------------------------------------------


def egress_run(counts: list[int]) -> None:
    """Runs each variant's request hooks on counts[i] of EGRESS_FLOWS flows; every variant is configured and every
    flow made in each run, so only the hook calls differ between runs."""
    import gc

    gc.disable()  # a full collection would land in one run and not the other
    with tempfile.TemporaryDirectory() as tmp:
        configured: dict[tuple, _Configured] = {}
        work = []
        for (_, mode, n, host), count in zip(VARIANTS, counts, strict=True):
            if (mode, n) not in configured:
                configured[(mode, n)] = _Configured(Path(tmp), mode, n)
            flows = _flows(host, EGRESS_FLOWS)
            _reset(flows, _BASE)
            work.append((configured[(mode, n)].addon, flows[:count]))
        for addon, flows in work:
            for f in flows:
                addon.requestheaders(f)
                addon.check_reroute(f)
        for made in configured.values():
            made.close()


def egress_instructions() -> dict[str, float] | None:
    """Instructions per request of each variant's request hooks; None when valgrind is not installed."""
    if shutil.which("valgrind") is None:
        return None
    from benchparts.instructions import _differences  # the counting the other instruction parts use

    return _differences("--egress-run", VARIANTS, EGRESS_FLOWS, EGRESS_WARMUP)
