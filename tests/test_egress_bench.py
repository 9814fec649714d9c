"""scripts/bench.py's part 1f at its smallest, as test_bench_smoke.py runs the others: it runs, and each figure is
there and a measurement."""

import json
import subprocess
import sys

from servers import ROOT


def test_the_egress_part_of_the_bench_runs_and_reports_its_figures(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--json", "-", "--part", "1f"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    part = json.loads(run.stdout)["parts"]["1f"]
    hooks = part["request_hooks_us"]
    assert len(hooks) == 2 + 3 * 2 and all(us > 0 for us in hooks.values())
    assert {"deny, 100 rules, denied", "deny, 1 rule, allowed by the last rule"} <= set(hooks)
    assert set(part["audit_us"]) == {"event loop, without a log", "event loop, with a log", "writer's thread, a line"}
    assert all(us > 0 for us in part["audit_us"].values())
