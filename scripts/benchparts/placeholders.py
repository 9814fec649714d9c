"""1h: what placeholders cost a request, in this process: the request hooks (the addon's `requestheaders` and the
reroute guard's `request`) for a request that carries no placeholder with 0, 1 and 1,000 placeholder entries for its
host (besides one entry adding 10 headers), and for one that carries a placeholder in Authorization, in a Basic
user:password and in a 64 KiB JSON body. Also the search itself, one pass per field, against a compiled alternation
of the placeholders (the other way to find many needles in one pass), at 1, 100 and 1,000."""

import base64
import json
import math
import random
import re
import secrets
import string
import tempfile
import time
from pathlib import Path

from benchparts.common import bench_headers, median

HOST = "api.example.com"
SIZES = (0, 1, 1000)
_OURS = ("_header_augment_carried", "_header_augment_decision")
_BASE = ((b"Host", HOST.encode()), (b"User-Agent", b"curl/8.5"), (b"Accept", b"*/*"), (b"Connection", b"keep-alive"))
_BASE62 = string.ascii_letters + string.digits


def _placeholder(n: int) -> str:
    return f"ghp_{n:06d}" + "".join(random.choice(_BASE62) for _ in range(30))


class _Configured:
    """One addon in a taddons context of its own: an entry adding 10 headers for HOST, and `n` placeholder entries
    for HOST (each its own client, as per-client placeholders are), each given a token."""

    def __init__(self, directory: Path, n: int) -> None:
        import header_augment
        from mitmproxy.test import taddons

        from header_augment_core.snapshot import Snapshot

        self.placeholders = [_placeholder(i) for i in range(n)]
        entries = [{"url": "http://127.0.0.1:9/never-started", "hosts": HOST}] + [
            {"command": ["true"], "hosts": HOST, "placeholder": p, "substitute": "header,body"}
            for p in self.placeholders
        ]
        path = directory / f"providers-{n}.json"
        path.write_text(json.dumps({"providers": entries}))
        self.addon = header_augment.HeaderAugment()
        self.context = taddons.context(self.addon)
        tctx = self.context.__enter__()
        tctx.configure(self.addon, header_providers_file=str(path))
        now = time.monotonic()
        self.addon.bindings[0].refresher.snapshot = Snapshot.build(list(bench_headers(10).items()), now, 0)
        token = Snapshot.build([("Authorization", "Bearer ghs_" + secrets.token_urlsafe(27))], now, 0)
        for binding in self.addon.bindings[1:]:
            binding.refresher.snapshot = token

    def close(self) -> None:
        self.addon.done()
        self.context.__exit__(None, None, None)


def _flows(n: int, fields: tuple, body: bytes = b"") -> list:
    from mitmproxy.test import tflow

    made = []
    for _ in range(n):
        f = tflow.tflow()
        f.request.host = HOST
        f.request.headers.fields = fields
        f.request.raw_content = body
        made.append(f)
    return made


def _reset(flows: list, fields: tuple, body: bytes) -> None:
    for f in flows:
        f.request.headers.fields = fields
        f.request.path = b"/"
        f.request.raw_content = body
        f.comment = ""
        f.response = None
        for name in _OURS:
            f.__dict__.pop(name, None)


def _entries(n: int) -> str:
    return f"{n:,} placeholder entr" + ("y" if n == 1 else "ies")


def variants(configured: dict[int, "_Configured"]) -> dict[str, tuple]:
    """label → (its configuration, the request's fields, its body)."""
    cases = {f"no placeholder, {_entries(n)}": (configured[n], _BASE, b"") for n in configured}
    for n in (1, 1000):
        if n not in configured:
            continue
        made = configured[n]
        placeholder = made.placeholders[-1]
        basic = base64.b64encode(f"x-access-token:{placeholder}".encode())
        document = {"model": "m", "api_key": placeholder, "items": []}
        while len(json.dumps(document)) < 64 * 1024 - 64:
            document["items"].append({"role": "user", "content": "x" * 40})
        body = json.dumps(document).encode()
        json_fields = (*_BASE, (b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()))
        cases[f"in Authorization, {_entries(n)}"] = (
            made,
            (*_BASE, (b"Authorization", f"Bearer {placeholder}".encode())),
            b"",
        )
        cases[f"in Basic, {_entries(n)}"] = (made, (*_BASE, (b"Authorization", b"Basic " + basic)), b"")
        cases[f"in a 64 KiB JSON body, {_entries(n)}"] = (made, json_fields, body)
    return cases


def placeholder_cost(rounds: int, flows_per_round: int, sizes=SIZES) -> dict[str, float]:
    """CPU µs per request of the request hooks for each variant, in one interleaved run."""
    import asyncio

    with tempfile.TemporaryDirectory() as tmp:
        configured = {n: _Configured(Path(tmp), n) for n in sizes}
        cases = variants(configured)
        flows = {label: _flows(flows_per_round, fields, body) for label, (_, fields, body) in cases.items()}
        samples: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(rounds):
            for label in random.sample(list(cases), len(cases)):
                made, fields, body = cases[label]
                addon = made.addon
                _reset(flows[label], fields, body)
                started = time.thread_time()
                for f in flows[label]:
                    addon.requestheaders(f)
                    if (pending := addon.check_reroute(f)) is not None:  # a body over 64 KiB: a worker thread
                        asyncio.run(pending)
                samples[label].append((time.thread_time() - started) / flows_per_round * 1e6)
                if body and flows[label][0].request.raw_content == body:
                    raise SystemExit(f"1h: {label}: the body's placeholder was not replaced")
        for made in configured.values():
            made.close()
    return {label: median(values) for label, values in samples.items()}


def search_cost(sizes=(1, 100, 1000), repeat: int = 2000) -> dict[str, float]:
    """µs to find every placeholder in a 400-byte header block that holds none: the matcher's one pass against a
    compiled alternation of the escaped placeholders."""
    from types import SimpleNamespace

    from header_augment_core.placeholders import Matcher

    block = b"\n".join(
        [HOST.encode(), b"curl/8.5.0", b"*/*", b"Bearer " + secrets.token_urlsafe(40).encode(), b"application/json"]
        + [b"session=" + secrets.token_urlsafe(90).encode(), b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"]
    )
    entry = SimpleNamespace(settings=SimpleNamespace(substitute=frozenset({"header"})))
    results = {}
    for n in sizes:
        placeholders = [secrets.token_urlsafe(30).encode() for _ in range(n)]
        matcher = Matcher(dict.fromkeys(placeholders, entry))
        alternation = re.compile(b"|".join(re.escape(p) for p in placeholders))
        for label, find in (("one pass", matcher.find), ("alternation", alternation.search)):
            count = repeat if label == "one pass" or n < 1000 else max(repeat // 20, 1)
            best = math.inf
            for _ in range(5):  # the best of five: the least disturbed by the rest of the machine
                started = time.perf_counter()
                for _ in range(count):
                    find(block)
                best = min(best, (time.perf_counter() - started) / count * 1e6)
            results[f"{label}, {n:,}"] = best
    return results
