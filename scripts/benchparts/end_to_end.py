"""Through a real mitmdump, with the load generator in a process of its own: throughput and the proxy's CPU per
request four ways (2), a slow provider against a fast one (3), and how soon a new value is carried (4)."""

import json
import random
import socket
import statistics
import time
from pathlib import Path

from servers import Provider

from benchparts import loadgen
from benchparts.common import (
    DEADLINE,
    EchoUpstream,
    addon_args,
    bench_headers,
    counted_per_request,
    interleaved,
    median,
    percentile,
    quiet,
    start_proxies,
    under_callgrind,
)


def fetch_through(proxy_port: int, upstream_port: int, timeout: float = 5) -> dict:
    """The headers the echo upstream saw of one request through the proxy."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout) as s:
        s.sendall(
            f"GET http://127.0.0.1:{upstream_port}/ HTTP/1.1\r\nHost: api.example.com\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return dict(json.loads(data.split(b"\r\n\r\n", 1)[1])["headers"])


def wait_for_header(proxy_port: int, upstream_port: int, name: str, timeout: float = DEADLINE, each: float = 5) -> None:
    """`each`: how long one request may take (a proxy under valgrind takes many times as long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in fetch_through(proxy_port, upstream_port, each):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} never arrived through the proxy")


def paired(values, reference):
    """Median of the per-round ratios, with their quartiles (how far apart the rounds were)."""
    q1, q2, q3 = statistics.quantiles([a / b for a, b in zip(values, reference, strict=True)], n=4)
    return q2, q1, q3


# -- 2. end to end -----------------------------------------------------------------------------------------------


def end_to_end(confdir: Path, rounds: int, seconds: float, connections: int, warm: float = 0.5) -> dict:
    """Throughput and the proxy's CPU time per request, four ways, interleaved round by round.

    "client sends them" is plain mitmdump with the client itself sending the same 10 headers: what carrying the
    headers costs mitmproxy whoever adds them, so the floor for any way of adding them. The upstream answers
    /noecho with a short body, so that the echo of the extra headers does not weigh on the figures.
    """
    headers = bench_headers(10)
    provider = Provider()
    provider.answer(headers)
    upstream = EchoUpstream(confdir)
    started = start_proxies(
        confdir,
        {
            "plain": [],
            "modify_headers": [a for k, v in headers.items() for a in ("--modify-headers", f"/{k}/{v}")],
            "header_augment": addon_args(header_provider_url=provider.url, header_hosts="127.0.0.1"),
        },
    )
    proxies = {
        "plain": started["plain"],
        "client sends them": started["plain"],
        "modify_headers": started["modify_headers"],
        "header_augment": started["header_augment"],
    }

    def run(name: str, slice_seconds: float) -> dict:
        extra = headers if name == "client sends them" else {}
        target = f"127.0.0.1:{upstream.port}"
        return loadgen.load(
            loadgen.spec(proxies[name].port, target, slice_seconds, connections, path="/noecho", headers=extra)
        )

    try:
        wait_for_header(proxies["header_augment"].port, upstream.port, "X-Bench-9")
        for name in proxies:
            run(name, warm)  # warm-up
        cpus, rates, _ = interleaved(proxies, run, rounds, seconds)
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
        for p in started.values():
            p.close()
        upstream.close()
        provider.close()


def instructions_per_request(confdir: Path, requests: int, warm: int, idle: float) -> dict | None:
    """Part 2 in instructions per request, counted by valgrind's callgrind (`counted_per_request`), where the CPU
    time's rounds straddle the addon's whole cost: plain mitmdump with the client sending the 10 headers, the addon
    adding them (none of them named as a credential, so nothing is searched for in answers), and the addon with
    every one of them a credential (`header_secret_headers`; what every value of 8 characters or more was before
    only credentials were scrubbed). One connection, the upstream's short /noecho answer, as in part 2. None when
    valgrind is not installed."""
    import shutil

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return None
    headers = bench_headers(10)
    provider = Provider()
    provider.answer(headers)
    upstream = EchoUpstream(confdir)
    # No refresh (an HTTP exchange of its own) lands among the requests counted.
    options = {"header_provider_url": provider.url, "header_hosts": "127.0.0.1", "header_refresh_interval": "168h"}
    specs = {
        "client sends them": [],
        "header_augment": addon_args(**options),
        "header_augment, all secret": addon_args(**options, header_secret_headers=",".join(headers)),
    }
    out = {name: confdir / f"callgrind-e2e-{n}.out" for n, name in enumerate(specs)}
    try:
        proxies = start_proxies(confdir, specs, under=under_callgrind(out), timeout=900)
    except BaseException:
        upstream.close()
        provider.close()
        raise

    def load(name: str, port: int, limit: int) -> dict:
        extra = headers if name == "client sends them" else {}
        target = f"127.0.0.1:{upstream.port}"
        return loadgen.load(loadgen.spec(port, target, 3600, 1, limit=limit, path="/noecho", headers=extra))

    try:
        for name, proxy in proxies.items():
            if name != "client sends them":
                wait_for_header(proxy.port, upstream.port, "X-Bench-9", 600, 300)
        counts = counted_per_request(proxies, out, load, requests, warm, idle)
    finally:
        for proxy in proxies.values():
            proxy.close()
        upstream.close()
        provider.close()
    floor = counts["client sends them"][0]
    return {name: {"instructions": count, "vs_client_sent": count / floor} for name, (count, _) in counts.items()}


# -- 3. slow provider --------------------------------------------------------------------------------------------


def slow_provider(confdir: Path, rounds: int, seconds: float) -> dict:
    headers = bench_headers(10)
    providers = {"fast": quiet(Provider()), "slow": quiet(Provider())}
    providers["fast"].answer(headers)
    providers["slow"].answer(headers, delay=3.0)
    upstream = EchoUpstream(confdir)
    options = {"header_hosts": "127.0.0.1", "header_refresh_interval": "1s", "header_provider_timeout": "10s"}
    proxies = start_proxies(
        confdir, {name: addon_args(header_provider_url=p.url, **options) for name, p in providers.items()}
    )
    try:
        for p in proxies.values():
            wait_for_header(p.port, upstream.port, "X-Bench-9")
        latencies = {name: [] for name in proxies}
        for _ in range(rounds):
            for name in random.sample(list(proxies), len(proxies)):
                s = loadgen.spec(proxies[name].port, f"127.0.0.1:{upstream.port}", seconds)
                latencies[name] += loadgen.load(s)["latencies"]
        return {name: (percentile(v, 0.5) * 1e3, percentile(v, 0.99) * 1e3, len(v)) for name, v in latencies.items()}
    finally:
        for p in proxies.values():
            p.close()
        upstream.close()
        for p in providers.values():
            p.close()


# -- 4. refresh to visible ---------------------------------------------------------------------------------------


def refresh_to_visible(confdir: Path, changes: int) -> list[float]:
    provider = Provider()
    provider.answer({"X-Version": "v0"})
    upstream = EchoUpstream(confdir)
    options = {"header_provider_url": provider.url, "header_hosts": "127.0.0.1", "header_refresh_interval": "100ms"}
    proxy = start_proxies(confdir, {"proxy": addon_args(**options)})["proxy"]
    delays = []
    try:
        wait_for_header(proxy.port, upstream.port, "X-Version")
        with socket.create_connection(("127.0.0.1", proxy.port), 5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = s.makefile("rb")
            request = (f"GET http://127.0.0.1:{upstream.port}/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n").encode()
            for i in range(1, changes + 1):
                value = f"v{i}"
                # The first request the provider records from here on is served the new value: it is asked every
                # 100 ms, so one arriving between these two lines (microseconds apart) is all but impossible.
                served = provider.count
                provider.answer({"X-Version": value})
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    s.sendall(request)
                    length = 0
                    while (line := stream.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    seen = dict(json.loads(stream.read(length))["headers"]).get("X-Version")
                    if seen == value:
                        delays.append((time.monotonic() - provider.requests[served]["at"]) * 1e3)
                        break
                else:
                    raise RuntimeError(f"{value} never became visible")
        return delays
    finally:
        proxy.close()
        upstream.close()
        provider.close()
