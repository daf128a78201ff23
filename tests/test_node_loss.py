"""A worker node removed from a multi-node ``ray.cluster_utils.Cluster`` under load: replicas are rescheduled.

The scenario is the one ``bench/faults.py`` measures (it starts its own 3-node cluster in a child
process, so the session's cluster is untouched); here it runs on servegraph with a few hundred
requests and the outcomes are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.ray  # a 3-node cluster of its own, in a child process


def run_scenario(scenario: str, requests: int = 300) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults.py"), "--scenario", scenario, "--system", "servegraph",
         "--requests", str(requests), "--timeout", "30", "--json"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_removed_worker_node_loses_no_application_and_its_replicas_come_back_elsewhere():
    row = run_scenario("node")
    assert row["hung"] == 0
    # Only requests in flight on the node when it went can fail (a handle's ObjectRef cannot be re-sent).
    assert row["failed"] <= 8, row
    assert row["served"] + row["failed"] == row["requests"]
    assert row["recovery_s"] is not None, row  # back to 2 running replicas, on the nodes that remain
