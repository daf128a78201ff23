"""Mixed faults under load on servegraph (bench/chaos.py, 24 s): nothing hangs, no raylet crashes, all back.

The bench starts its own 3-node ``ray.cluster_utils.Cluster`` in a child process (so the session's cluster is
untouched), runs the hello app over HTTP and a 3-stage InputNode graph through a DeploymentHandle while seed 1's
faults land every 4 s (a replica killed, the controller killed, a worker node replaced, a redeploy), and prints
one JSON row. Only outcomes are asserted; speed is the bench's business.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def run_chaos(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *args, "--json"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.ray
def test_mixed_faults_under_load_hang_nothing_crash_no_raylet_and_every_deployment_comes_back():
    # Seed 1 over 24 s at one fault every 4 s: the controller killed, a replica killed, a redeploy, the controller
    # again, then a worker node replaced.
    row = run_chaos("--systems", "servegraph", "--duration", "24", "--interval", "4", "--seed", "1")
    summary = {k: row.get(k) for k in ("error", "faults", "apps", "hung", "raylet_crash_lines", "recovery_s", "post_check", "at_end", "logs_dir")}
    assert row["error"] is None, summary
    assert row["faults"] and all(f["error"] is None for f in row["faults"]), summary
    assert row["hung"] == 0, summary
    assert row["raylet_crashes"] == 0 and not row["head_raylet_died"], summary
    assert row["post_check"] == {"hello": 100, "chain": 100}, summary
    assert row["served_pct"] >= 99.0, summary
    assert row["recovery_s"] is not None, summary  # every deployment of both apps back at its target
