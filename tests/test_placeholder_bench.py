"""scripts/bench.py's part 1h (placeholders) at its smallest, as test_bench_smoke.py runs the others: it runs, and
each figure is there and a measurement."""

import json
import subprocess
import sys

from servers import ROOT


def test_part_1h_runs_and_reports_every_figure(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--json", "-", "--part", "1h"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    part = json.loads(run.stdout)["parts"]["1h"]
    hooks = part["request_hooks_us"]
    assert set(hooks) == {
        "no placeholder, 0 placeholder entries",
        "no placeholder, 1 placeholder entry",
        "in Authorization, 1 placeholder entry",
        "in Basic, 1 placeholder entry",
        "in a 64 KiB JSON body, 1 placeholder entry",
    }
    assert all(us > 0 for us in hooks.values())
    assert set(part["search_us"]) == {f"{way}, {n}" for way in ("one pass", "alternation") for n in (1, 100)}
    assert all(us > 0 for us in part["search_us"].values())
