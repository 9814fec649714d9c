"""What the parts share: the figures' helpers, the programs they start (mitmdump, the echo upstream, moto's server)
and what /proc says of them. The programs run on the tests' process runner (tests/helpers/running.py)."""

import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from helpers.ports import free_port
from helpers.procfs import status_number
from helpers.running import Running
from helpers.waiting import DEADLINE, wait_until
from servers import ADDON, MITMDUMP, ROOT, clean_env

BENCH = ROOT / "scripts" / "bench.py"


def bench_headers(n: int, tag: str = "") -> dict[str, str]:
    return {f"X-Bench-{i}": f"value-{i}-{tag}" + "x" * 24 for i in range(n)}


def median(values):
    return statistics.median(values)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def quiet(server):
    """A test server that says nothing of a peer gone mid-answer: a proxy closed while a provider is still
    answering it is how the bench ends a measurement."""
    server.server.handle_error = lambda request, client_address: None
    return server


class Program(Running):
    """A program the bench measures or talks to, in a session of its own; `close()` ends it and its group."""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used: less swayed by a busy machine than wall-clock rates."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self, name: str) -> int:
        """A number from /proc/<pid>/status (`Threads`, `VmRSS` in KiB, …)."""
        return status_number(self.proc.pid, name)


class Proxy(Program):
    """A real mitmdump on 127.0.0.1, quiet (`-q`: no line per flow to write, as a production proxy runs), without
    the addon unless the arguments load it (`-s`, see `addon_args`). Started at once; `ready()` waits until it
    listens, so that several start side by side."""

    def __init__(
        self, confdir: Path, *args: str, env: dict[str, str] | None = None, under: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()  # -q hides the line naming the port mitmdump picked: the port is chosen here
        cmd = [*under, str(MITMDUMP), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(self.port)]
        cmd += ["--set", f"confdir={confdir}", *args]
        super().__init__(cmd, cwd=confdir, env={**clean_env(), **(env or {})})

    def ready(self, timeout: float = DEADLINE) -> "Proxy":
        wait_until(lambda: self.proc.poll() is not None or connectable(self.port), timeout, 0.05, "mitmdump")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mitmdump ended at start:\n{self.output}")
        return self


def addon_args(**options: str) -> list[str]:
    args = ["-s", str(ADDON)]
    for name, value in options.items():
        args += ["--set", f"{name}={value}"]
    return args


def start_proxies(
    confdir: Path,
    specs: dict[str, list[str]],
    env: dict[str, str] | None = None,
    under: dict[str, tuple[str, ...]] | None = None,
    timeout: float = DEADLINE,
) -> dict[str, Proxy]:
    """Proxies started side by side (each takes seconds of imports), returned once all listen. `under`: the command
    each is run under, by name (valgrind's)."""
    from mitmproxy.certs import CertStore

    # Each mitmdump makes its CA in the shared confdir if there is none: started side by side, one read the file
    # another was still writing ("Unable to load PEM file": seen once in a full suite run with the other core busy).
    # mitmproxy's own CertStore makes it first, as mitmdump would (its basename and default key size).
    CertStore.from_store(confdir, "mitmproxy", 2048)
    proxies = {name: Proxy(confdir, *args, env=env, under=(under or {}).get(name, ())) for name, args in specs.items()}
    try:
        for proxy in proxies.values():
            proxy.ready(timeout)
    except BaseException:
        for proxy in proxies.values():
            proxy.close()
        raise
    return proxies


class EchoUpstream(Program):
    """scripts/echo_upstream.py in a process of its own, so that it shares a GIL with nothing the bench runs."""

    def __init__(self, confdir: Path) -> None:
        super().__init__(
            [sys.executable, str(ROOT / "scripts" / "echo_upstream.py"), "--port", "0"], cwd=confdir, env=clean_env()
        )
        self.port = int(self.wait_for(r"listening on http://127\.0\.0\.1:(\d+)/").group(1))


def interleaved(proxies: dict, run, rounds: int, seconds: float) -> tuple[dict, dict, dict]:
    """`rounds` of `run(name, seconds)` for every proxy, in a new random order each round (the machine's speed drifts
    within a round): per name, the proxy's CPU seconds per request and the request rate of each round, and the
    number of errors the runs reported."""
    cpus = {name: [] for name in proxies}
    rates = {name: [] for name in proxies}
    errors = dict.fromkeys(proxies, 0)
    for _ in range(rounds):
        for name in random.sample(list(proxies), len(proxies)):
            before = proxies[name].cpu_seconds()
            result = run(name, seconds)
            cpus[name].append((proxies[name].cpu_seconds() - before) / result["requests"])
            rates[name].append(result["requests"] / result["seconds"])
            errors[name] += len(result["errors"])
    return cpus, rates, errors


class Callgrind:
    """The counters of a program running under valgrind's callgrind, zeroed and read while it runs
    (`callgrind_control`); each read is a dump, written to `out`.1, `out`.2, ..."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out, self.dumps = pid, out, 0

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", str(self.pid)], check=True, capture_output=True, timeout=300)

    def read(self) -> int:
        """Instructions executed since the counters were last zeroed."""
        subprocess.run(["callgrind_control", "-d", str(self.pid)], check=True, capture_output=True, timeout=300)
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")

        def summary() -> str | None:  # the totals line ends a dump
            text = dump.read_text() if dump.exists() else ""
            found = re.search(r"^summary: (\d+)$", text, re.M)
            return found.group(1) if found and re.search(r"^totals: ", text, re.M) else None

        wait_until(lambda: summary() is not None, 300, 0.2, f"callgrind's dump {dump.name}")
        return int(summary())


def under_callgrind(out: dict[str, Path]) -> dict[str, tuple[str, ...]]:
    """`start_proxies`' `under` for proxies each counted by callgrind into its own `out` file."""
    return {name: ("valgrind", "--tool=callgrind", f"--callgrind-out-file={path}") for name, path in out.items()}


def counted_per_request(
    proxies: dict[str, Proxy], out: dict[str, Path], load, requests: int, warm: int, idle: float
) -> dict[str, tuple[float, int]]:
    """Instructions per request of each proxy, running under callgrind from its start (`under_callgrind`), and the
    errors its load reported: (count, errors) by name. `load(name, port, limit)` sends `limit` requests one after
    another and returns the load generator's result. After `warm` requests a proxy's counters are zeroed and it is
    left alone for `idle` seconds: what its timers cost per second, taken off the requests' count for their wall
    time (under valgrind a request takes some 50 times as long). Then it carries `requests`. A full garbage
    collection lands in a run or not: `requests` should be hundreds."""
    counts = {}
    for name, proxy in proxies.items():
        load(name, proxy.port, warm)
        counter = Callgrind(proxy.proc.pid, out[name])
        counter.zero()
        started = time.monotonic()
        time.sleep(idle)  # the measurement itself: what the proxy does with no request
        per_second = counter.read() / (time.monotonic() - started)
        counter.zero()
        started = time.monotonic()
        result = load(name, proxy.port, requests)
        wall = time.monotonic() - started
        counts[name] = ((counter.read() - per_second * wall) / result["requests"], len(result["errors"]))
    return counts
