#!/usr/bin/env python3
"""header-augment benchmarks, measured side by side in one run on 127.0.0.1 only.

This machine is shared and noisy, so every figure is a ratio (or a latency) taken from interleaved rounds and
reduced to a median; absolute throughput is printed only for context.

    scripts/bench            # all parts, about twelve minutes (five of them under valgrind)
    scripts/bench --quick    # fewer, shorter rounds
"""

import argparse
import asyncio
import http.server
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon" / "header_augment.py"
sys.path.insert(0, str(ROOT / "addon"))
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")
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


def bench_headers(n: int, tag: str = "") -> dict[str, str]:
    return {f"X-Bench-{i}": f"value-{i}-{tag}" + "x" * 24 for i in range(n)}


def median(values):
    return statistics.median(values)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# -- servers ----------------------------------------------------------------------------------------------------


class StaticProvider:
    """A loopback provider answering `headers` after `delay` seconds; remembers when each value was first served."""

    def __init__(self, headers: dict[str, str], delay: float = 0.0, track: bool = False) -> None:
        self.headers, self.delay = headers, delay
        self.first_served: dict[str, float] | None = {} if track else None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                if owner.delay:
                    time.sleep(owner.delay)
                headers = owner.headers
                body = json.dumps(headers).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if owner.first_served is not None:
                    for value in headers.values():
                        owner.first_served.setdefault(value, time.monotonic())

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a proxy shut down mid-fetch is part of the benchmark's teardown

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/headers"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Process:
    def __init__(self, args: list[str], port: int, confdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.port = port
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=confdir,
        )
        wait_port(port)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used: less swayed by a busy machine than wall-clock rates."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_mitmdump(confdir: Path, *args: str) -> Process:
    port = free_port()
    cmd = [
        MITMDUMP,
        "-q",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        *args,
    ]
    return Process(cmd, port, confdir)


def start_upstream(confdir: Path) -> Process:
    port = free_port()
    return Process([sys.executable, str(ROOT / "scripts" / "echo_upstream.py"), "--port", str(port)], port, confdir)


# -- load generator (runs in its own process) ------------------------------------------------------------------


async def _connection(proxy_port, request, deadline, limit, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while time.monotonic() < deadline and len(latencies) < limit:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:80] + body[:200])
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(proxy_port, upstream_port, seconds, connections, limit, path, extra_headers):
    request = (
        f"GET http://127.0.0.1:{upstream_port}{path} HTTP/1.1\r\nHost: api.example.com\r\n"
        "User-Agent: bench\r\nAccept: */*\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra_headers.items()) + "\r\n"
    ).encode()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(*(_connection(proxy_port, request, deadline, limit, latencies) for _ in range(connections)))
    return {"requests": len(latencies), "seconds": time.monotonic() - started, "latencies": latencies}


def loadgen(
    proxy_port: int,
    upstream_port: int,
    seconds: float,
    connections: int,
    limit: int = 200_000,
    path: str = "/bench",
    extra_headers: dict[str, str] | None = None,
) -> dict:
    """Run the load generator in a separate process, so it does not share a GIL with anything measured."""
    spec = [proxy_port, upstream_port, seconds, connections, limit, path, extra_headers or {}]
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    return json.loads(out)


def fetch_through(proxy_port: int, upstream_port: int) -> dict:
    with socket.create_connection(("127.0.0.1", proxy_port), 5) as s:
        s.sendall(
            f"GET http://127.0.0.1:{upstream_port}/ HTTP/1.1\r\nHost: api.example.com\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return dict(json.loads(data.split(b"\r\n\r\n", 1)[1])["headers"])


def wait_for_header(proxy_port, upstream_port, name, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in fetch_through(proxy_port, upstream_port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} never arrived through the proxy")


# -- 1. hook cost ------------------------------------------------------------------------------------------------


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
    import tempfile

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


# -- 1b. hook cost in instructions ------------------------------------------------------------------------------

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
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
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


# -- 2. end to end -----------------------------------------------------------------------------------------------


def end_to_end(confdir: Path, rounds: int, seconds: float, connections: int) -> dict:
    """Throughput and the proxy's CPU time per request, four ways, interleaved round by round.

    "client sends them" is plain mitmdump with the client itself sending the same 10 headers: what carrying the
    headers costs mitmproxy whoever adds them, so the floor for any way of adding them. The upstream answers
    /noecho with a short body, so that the echo of the extra headers does not weigh on the figures.
    """
    headers = bench_headers(10)
    provider = StaticProvider(headers)
    upstream = start_upstream(confdir)
    plain = start_mitmdump(confdir)
    proxies = {
        "plain": plain,
        "client sends them": plain,
        "modify_headers": start_mitmdump(
            confdir, *[a for k, v in headers.items() for a in ("--modify-headers", f"/{k}/{v}")]
        ),
        "header_augment": start_mitmdump(
            confdir, "-s", str(ADDON), "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1"
        ),
    }

    def run(name: str, slice_seconds: float) -> dict:
        extra = headers if name == "client sends them" else None
        return loadgen(
            proxies[name].port, upstream.port, slice_seconds, connections, path="/noecho", extra_headers=extra
        )

    try:
        wait_for_header(proxies["header_augment"].port, upstream.port, "X-Bench-9")
        for name in proxies:
            run(name, 0.5)  # warm-up
        rates = {name: [] for name in proxies}
        cpus = {name: [] for name in proxies}
        for _ in range(rounds):
            for name in random.sample(list(proxies), len(proxies)):
                before = proxies[name].cpu_seconds()
                result = run(name, seconds)
                cpus[name].append((proxies[name].cpu_seconds() - before) / result["requests"])
                rates[name].append(result["requests"] / result["seconds"])

        def paired(values, reference):
            """Median of the per-round ratios, with their quartiles (how far apart the rounds were)."""
            q1, q2, q3 = statistics.quantiles([a / b for a, b in zip(values, reference, strict=True)], n=4)
            return q2, q1, q3

        return {
            name: {
                "rate": median(rates[name]),
                "cpu_us": median(cpus[name]) * 1e6,
                "rate_vs_plain": paired(rates[name], rates["plain"]),
                "cpu_vs_plain": paired(cpus[name], cpus["plain"]),
                "rate_vs_floor": paired(rates[name], rates["client sends them"]),
                "cpu_vs_floor": paired(cpus[name], cpus["client sends them"]),
            }
            for name in proxies
        }
    finally:
        for p in {id(p): p for p in proxies.values()}.values():
            p.close()
        upstream.close()
        provider.close()


# -- 3. slow provider --------------------------------------------------------------------------------------------


def slow_provider(confdir: Path, rounds: int, seconds: float) -> dict:
    headers = bench_headers(10)
    providers = {"fast": StaticProvider(headers), "slow": StaticProvider(headers, delay=3.0)}
    upstream = start_upstream(confdir)
    proxies = {
        name: start_mitmdump(
            confdir,
            "-s",
            str(ADDON),
            "--set",
            f"header_provider_url={p.url}",
            "--set",
            "header_hosts=127.0.0.1",
            "--set",
            "header_refresh_interval=1s",
            "--set",
            "header_provider_timeout=10s",
        )
        for name, p in providers.items()
    }
    try:
        for p in proxies.values():
            wait_for_header(p.port, upstream.port, "X-Bench-9")
        latencies = {name: [] for name in proxies}
        for _ in range(rounds):
            for name in random.sample(list(proxies), len(proxies)):
                latencies[name] += loadgen(proxies[name].port, upstream.port, seconds, 1)["latencies"]
        return {name: (percentile(v, 0.5) * 1e3, percentile(v, 0.99) * 1e3, len(v)) for name, v in latencies.items()}
    finally:
        for p in proxies.values():
            p.close()
        upstream.close()
        for p in providers.values():
            p.close()


# -- 4. refresh to visible ---------------------------------------------------------------------------------------


def refresh_to_visible(confdir: Path, changes: int) -> list[float]:
    provider = StaticProvider({"X-Version": "v0"}, track=True)
    upstream = start_upstream(confdir)
    proxy = start_mitmdump(
        confdir,
        "-s",
        str(ADDON),
        "--set",
        f"header_provider_url={provider.url}",
        "--set",
        "header_hosts=127.0.0.1",
        "--set",
        "header_refresh_interval=100ms",
    )
    delays = []
    try:
        wait_for_header(proxy.port, upstream.port, "X-Version")
        with socket.create_connection(("127.0.0.1", proxy.port), 5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = s.makefile("rb")
            request = (f"GET http://127.0.0.1:{upstream.port}/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n").encode()
            for i in range(1, changes + 1):
                value = f"v{i}"
                provider.headers = {"X-Version": value}
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    s.sendall(request)
                    length = 0
                    while (line := stream.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    seen = dict(json.loads(stream.read(length))["headers"]).get("X-Version")
                    if seen == value:
                        delays.append((time.monotonic() - provider.first_served[value]) * 1e3)
                        break
                else:
                    raise RuntimeError(f"{value} never became visible")
        return delays
    finally:
        proxy.close()
        upstream.close()
        provider.close()


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

    provider = StaticProvider(bench_headers(10))
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
                    provider.headers = bench_headers(10, str(i))
                    refresher.refresh()
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


# -- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--hook-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hook_run:
        hook_run(json.loads(args.hook_run))
        return
    if args.loadgen:
        print(json.dumps(asyncio.run(_load(*json.loads(args.loadgen)))))
        return
    if args.memory:
        print(json.dumps(memory(*json.loads(args.memory))))
        return

    quick = args.quick
    print(
        f"header-augment benchmarks — {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        confdir = Path(tmp)

        print("1. Hook cost in-process: CPU µs per flow, median of interleaved rounds (client sends 6 headers)")
        print(f"   {'headers':>7} {'merge':>8} {'scope':>26} {'ours µs':>8} {'modify µs':>10} {'ratio':>6}")
        hook_rows = hook_cost(5 if quick else 9, 2000 if quick else 4000)
        for n, mode, scope, ours, theirs, ratio in hook_rows:
            print(f"   {n:>7} {mode:>8} {scope:>26} {ours:>8.2f} {theirs:>10.2f} {ratio:>6.3f}")

        costs = sigv4_cost(5 if quick else 9, 1000 if quick else 3000)
        print(
            f"\n1a. aws-sigv4: CPU µs per flow signing a 1 KiB PUT (botocore's signer): {costs['aws-sigv4']:.1f}, "
            f"against {costs['headers']:.1f} adding two headers of the same sizes"
        )

        print("\n1c. Once the request has left: markers in the flow and echoes scrubbed, CPU µs per flow (10 headers)")
        for label, us in scrub_cost(3 if quick else 7, 200 if quick else 1000):
            print(f"   {label:>30} {us:>9.2f} µs")

        print("\n1b. Hook cost in instructions per flow, counted by valgrind (10 headers, replace, reroute guard too)")
        counts = hook_instructions()
        if counts is None:
            print("   valgrind is not installed: skipped")
        else:
            theirs = counts["modify_headers"]
            for label, count in counts.items():
                print(f"   {label:>26} {count:>10,.0f}   {count / theirs:.3f}× modify_headers")

        print("\n1d. Hook cost against the number of entries: CPU µs per flow (10 headers), one interleaved run")
        scale, theirs_us = hook_scale(5 if quick else 9, 1000 if quick else 2000)
        print(f"   {'entries':>7} {'last entry host':>16} {'vs 1':>6} {'unnamed host':>13} {'vs 1':>6}")
        for n in SCALE_SIZES:
            named, unnamed = scale[(n, "named")], scale[(n, "unnamed")]
            print(
                f"   {n:>7,} {named:>13.2f} µs {named / scale[(1, 'named')]:>6.2f} {unnamed:>10.2f} µs "
                f"{unnamed / scale[(1, 'unnamed')]:>6.2f}"
            )
        print(
            f"   one entry, its host: {scale[(1, 'named')] / theirs_us:.3f}× modify_headers with ~q "
            f"({theirs_us:.2f} µs)"
        )

        print("\n2. End to end: requests/s through mitmdump, 8 keep-alive connections, loopback upstream")
        e2e = end_to_end(confdir, 3 if quick else 9, 1.5 if quick else 3.0, 8)
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
        # The spread between rounds on a shared machine is wider than the addon's whole cost, so also derive the
        # ratio from what was measured precisely: the hook's CPU time against the proxy's CPU time per request.
        hook_us = next(ours for n, mode, scope, ours, *_ in hook_rows if (n, mode, scope) == HOOK_SHARE_ROW)
        floor_us = e2e["client sends them"]["cpu_us"]
        bound = floor_us / (floor_us + hook_us)
        print(
            f"   hook share: {hook_us:.2f} µs (10 headers, header_hosts set) of {floor_us:.0f} µs CPU per request "
            f"= {hook_us / floor_us:.2%}; throughput bound vs plain with the headers: {bound:.4f}"
        )

        print("\n3. Slow provider (3 s per answer, polled every 1 s) vs fast: request latency, 1 connection")
        slow = slow_provider(confdir, 3 if quick else 5, 1.0 if quick else 2.0)
        for name, (p50, p99, n) in slow.items():
            print(f"   {name:>5}: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({n} requests)")
        print(
            f"   p99 slow / fast: {slow['slow'][1] / slow['fast'][1]:.3f}   "
            f"p50 slow / fast: {slow['slow'][0] / slow['fast'][0]:.3f}"
        )

        print("\n4. Refresh to visible: provider serves a new value → first response carrying it (interval 100ms)")
        delays = refresh_to_visible(confdir, 10 if quick else 20)
        print(f"   median {median(delays):.1f} ms   max {max(delays):.1f} ms   ({len(delays)} changes)")

        print("\n5. Memory: RSS of an in-process proxy addon across flows and real refreshes (after warm-up)")
        n_flows, n_refreshes = (20_000, 2_000) if quick else (100_000, 10_000)
        # In a process of its own, so that nothing measured before weighs on its RSS.
        mem = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--memory", json.dumps([n_flows, n_refreshes])],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout
        )
        print(
            f"   {n_flows} flows + {n_refreshes} refreshes: {mem['before']:.1f} MiB → {mem['after']:.1f} MiB "
            f"(growth {mem['growth']:+.2f} MiB)"
        )


if __name__ == "__main__":
    main()
