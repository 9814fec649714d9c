"""scripts/bench.py run as a user runs it, at its smallest (`--smoke`), so that the bench cannot rot: each part chosen
here prints its figures as JSON, and each figure is there and a measurement (positive). Left out for the suite's
time (under 20 s on a busy machine): 1b (valgrind, minutes), 2, 3 and 4 (a mitmdump or more each, started after 6's,
on the same load generator and servers), 7 (moto's server; its signing is tested in test_aws_sigv4_e2e.py)."""

import json
import subprocess
import sys

from servers import ROOT

PARTS = ("1", "1a", "1c", "1d", "5", "6")


def test_the_bench_runs_each_part_and_reports_its_figures(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--json", "-"]
    cmd += [a for part in PARTS for a in ("--part", part)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["mode"] == "smoke"
    parts = report["parts"]
    assert set(parts) == set(PARTS)

    hook = parts["1"]
    assert {(r["headers"], r["merge"]) for r in hook} == {
        (n, m) for n in (1, 10, 50) for m in ("replace", "append", "keep")
    }
    assert all(r["ours_us"] > 0 and r["modify_us"] > 0 for r in hook)
    assert parts["1a"]["sigv4_us"] > 0 and parts["1a"]["headers_us"] > 0
    assert len(parts["1c"]) == 5 and all(us > 0 for us in parts["1c"].values())
    scale = parts["1d"]
    assert set(scale["entries"]) == {"1", "100", "1000"} and scale["modify_headers_us"] > 0
    assert all(row["named_us"] > 0 and row["unnamed_us"] > 0 for row in scale["entries"].values())

    memory = parts["5"]
    assert (memory["flows"], memory["refreshes"]) == (2000, 100) and memory["before"] > 0 and memory["after"] > 0

    footprint, reload = parts["6"]["footprint"], parts["6"]["reload"]
    assert footprint["sizes"] == [1, 20]
    assert all(footprint["threads"][n] > 0 and footprint["rss_mib"][n] > 0 for n in ("1", "20"))
    assert isinstance(footprint["kib_per_entry"], float)  # a difference of two RSS readings: either sign
    assert reload["entries"] == 50 and reload["applied_s"] > 0 and reload["threads_after"] > 0
    for phase in ("before", "during", "after"):
        assert reload[phase]["requests"] > 0 and 0 < reload[phase]["p50_ms"] <= reload[phase]["max_ms"]


def test_proxies_started_side_by_side_find_their_ca_made_already(tmp_path):
    """Each mitmdump makes its CA in the confdir when there is none: the bench's proxies, started side by side in
    one confdir, raced, and one read the PEM file another was still writing (seen once in a full suite run with the
    other core busy). The CA is now there, whole, before the first proxy starts."""
    from benchparts.common import start_proxies
    from mitmproxy.certs import CertStore

    assert start_proxies(tmp_path, {}) == {}
    made = sorted(p.name for p in tmp_path.iterdir())
    assert "mitmproxy-ca.pem" in made and "mitmproxy-ca-cert.pem" in made
    assert CertStore.from_store(tmp_path, "mitmproxy", 2048).default_ca is not None  # whole: it loads
