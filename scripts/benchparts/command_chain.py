"""Part 8: the `header-augment` command (mitmproxy with only the addons that have work, chain.py) against stock
`mitmdump -s addon/header_augment.py`, the same options and the same 10 headers, side by side; and where the saving
comes from: the same command with as many hookless addons appended as it leaves out of the chain measures the addon
manager's dispatch alone (the rest of the saving is those addons' own hooks)."""

import sys
from pathlib import Path

from helpers.ports import free_port
from servers import ROOT, Provider, clean_env

from benchparts import loadgen
from benchparts.common import (
    EchoUpstream,
    Program,
    Proxy,
    addon_args,
    bench_headers,
    counted_per_request,
    interleaved,
    median,
    under_callgrind,
)
from benchparts.end_to_end import paired, wait_for_header

# Appended to the chain once the proxy runs, as our reroute guard is: addons with no hook at all, each dispatched
# every event of every flow like any other member.
HOOKLESS = """\
import os
from mitmproxy import ctx

class Hookless:
    def running(self):
        count = int(os.environ["BENCH_HOOKLESS_ADDONS"])
        ctx.master.addons.add(*[type(f"hookless{i}", (), {})() for i in range(count)])

addons = [Hookless()]
"""


class Command(Proxy):
    """`header-augment -q` from the clone (`python -m header_augment_core.cli`, as test_readme runs it), on
    127.0.0.1; it loads the addon itself."""

    def __init__(
        self, confdir: Path, *args: str, env: dict[str, str] | None = None, under: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        cmd = [*under, sys.executable, "-m", "header_augment_core.cli", "-q", "--listen-host", "127.0.0.1"]
        cmd += ["--listen-port", str(self.port), "--set", f"confdir={confdir}", *args]
        env = {**clean_env(), "PYTHONPATH": str(ROOT / "addon"), **(env or {})}
        Program.__init__(self, cmd, cwd=confdir, env=env)


def left_out() -> int:
    """How many of mitmdump's addons the command keeps out of the chain with -q and these options."""
    from header_augment_core import chain

    stock = chain.stock_addons()
    for addon in stock:
        if hasattr(addon, "logger"):
            addon.logger.uninstall()  # TermLog's and ErrorCheck's handlers, installed as they were made
    return len(stock) - len(chain.CORE)


def ratio(values: list[float], reference: list[float]) -> tuple[float, float, float]:
    """The median of the per-round ratios and their quartiles (the one ratio, thrice, from a single round)."""
    if len(values) > 1:
        return paired(values, reference)
    return (values[0] / reference[0],) * 3


STOCK, COMMAND = "mitmdump -s addon", "header-augment"


def three_proxies(confdir: Path, provider_url: str, under: dict | None = None) -> tuple[dict, int]:
    """Stock mitmdump with the addon, the command, and the command with as many hookless addons as it leaves out,
    started side by side with the same options (no refresh lands among the requests counted); and that number."""
    from mitmproxy.certs import CertStore

    options = {"header_provider_url": provider_url, "header_hosts": "127.0.0.1", "header_refresh_interval": "168h"}
    sets = [word for name, value in options.items() for word in ("--set", f"{name}={value}")]
    hookless = confdir / "hookless_addons.py"
    hookless.write_text(HOOKLESS)
    count = left_out()
    names = [STOCK, COMMAND, f"{COMMAND} + {count} hookless"]
    under = under or {}
    CertStore.from_store(confdir, "mitmproxy", 2048)  # one CA for all, before they start side by side
    proxies = {
        names[0]: Proxy(confdir, *addon_args(**options), under=under.get(names[0], ())),
        names[1]: Command(confdir, *sets, under=under.get(names[1], ())),
        names[2]: Command(
            confdir,
            *sets,
            "-s",
            str(hookless),
            env={"BENCH_HOOKLESS_ADDONS": str(count)},
            under=under.get(names[2], ()),
        ),
    }
    return proxies, count


def split(per_request: dict[str, float], count: int) -> dict:
    """The saving, and how much of it dispatching `count` hookless addons accounts for."""
    saved = per_request[STOCK] - per_request[COMMAND]
    dispatch = per_request[f"{COMMAND} + {count} hookless"] - per_request[COMMAND]
    return {
        "left_out": count,
        "saved": saved,
        "dispatch": dispatch,
        "dispatch_per_addon": dispatch / count,
        "addons_work": saved - dispatch,
    }


def side_by_side(confdir: Path, rounds: int, seconds: float, connections: int, warm: float) -> dict:
    """CPU per request of each proxy, interleaved round by round, and each one's ratio to stock mitmdump."""
    headers = bench_headers(10)
    provider = Provider()
    provider.answer(headers)
    upstream = EchoUpstream(confdir)
    proxies, count = three_proxies(confdir, provider.url)
    try:
        for proxy in proxies.values():
            proxy.ready()
            wait_for_header(proxy.port, upstream.port, "X-Bench-9")

        def run(name: str, slice_seconds: float) -> dict:
            target = f"127.0.0.1:{upstream.port}"
            return loadgen.load(loadgen.spec(proxies[name].port, target, slice_seconds, connections, path="/noecho"))

        for name in proxies:
            run(name, warm)
        cpus, rates, errors = interleaved(proxies, run, rounds, seconds)
    finally:
        for proxy in proxies.values():
            proxy.close()
        upstream.close()
        provider.close()
    stock = STOCK
    rows = {
        name: {
            "cpu_us": median(cpus[name]) * 1e6,
            "rate": median(rates[name]),
            "cpu_vs_stock": ratio(cpus[name], cpus[stock]),
            "errors": errors[name],
        }
        for name in proxies
    }
    return {"proxies": rows, **split({name: row["cpu_us"] for name, row in rows.items()}, count)}


def instructions(confdir: Path, requests: int, warm: int, idle: float) -> dict | None:
    """The same three in instructions per request, each under callgrind (`counted_per_request`: one connection,
    the proxy's idle instructions a second taken off), where the CPU time's rounds move by more than the split.
    None without valgrind."""
    import shutil

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return None
    provider = Provider()
    provider.answer(bench_headers(10))
    upstream = EchoUpstream(confdir)
    out = {}
    try:
        names = [STOCK, COMMAND, f"{COMMAND} + {left_out()} hookless"]
        out = {name: confdir / f"callgrind-chain-{n}.out" for n, name in enumerate(names)}
        proxies, count = three_proxies(confdir, provider.url, under=under_callgrind(out))
    except BaseException:
        upstream.close()
        provider.close()
        raise

    def load(name: str, port: int, limit: int) -> dict:
        target = f"127.0.0.1:{upstream.port}"
        return loadgen.load(loadgen.spec(port, target, 3600, 1, limit=limit, path="/noecho"))

    try:
        for proxy in proxies.values():
            proxy.ready(900)
            wait_for_header(proxy.port, upstream.port, "X-Bench-9", 600, 300)
        counts = counted_per_request(proxies, out, load, requests, warm, idle)
    finally:
        for proxy in proxies.values():
            proxy.close()
        upstream.close()
        provider.close()
    per_request = {name: count_ for name, (count_, _) in counts.items()}
    return {
        "proxies": {name: {"instructions": n, "vs_stock": n / per_request[STOCK]} for name, n in per_request.items()},
        **split(per_request, count),
    }
