"""The cluster host's start of a local Ray cluster when Ray gives up on its own node (Ray-free: a stand-in ``ray``).

Ray 2.60 raises "The current node timed out during startup" when the raylet it started has not registered
within a fixed 30 s, as on a machine whose cores are all busy. The host stops what that try started and tries
once more; any other error is the user's to see. Run in a child process, since the host stops every process
below its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

CHILD = textwrap.dedent(
    """
    import json, subprocess, sys
    from servegraph.runtime.client import cluster_host
    from servegraph.runtime.client.cluster_record import pid_alive

    class FakeRay:
        def __init__(self, errors):
            self.errors, self.calls, self.left = list(errors), [], []

        def init(self, **options):
            self.calls.append(options["address"])
            if self.errors:
                # What a failed try leaves: a process of its own below the host (here, a sleeping one).
                self.left.append(subprocess.Popen(
                    [sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                ).pid)
                raise self.errors.pop(0)

    errors = {
        "timeout": [Exception("The current node timed out during startup. This could happen because ...")],
        "other": [RuntimeError("port 6379 is taken")],
    }[sys.argv[1]]
    fake = FakeRay(errors)
    try:
        cluster_host._start_ray(fake)
        raised = None
    except Exception as exc:
        raised = str(exc)
    alive = [pid_alive(p) for p in fake.left]
    for pid in fake.left:  # this check's own leftovers (a start error that is not retried stops nothing)
        subprocess.run(["kill", "-9", str(pid)], check=False)
    print(json.dumps({"calls": fake.calls, "raised": raised, "left_alive": alive}))
    """
)


def run(case: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"stderr": out.stderr}


def test_a_node_that_timed_out_is_stopped_and_the_start_tried_once_more():
    row = run("timeout")
    assert row["calls"] == ["local", "local"] and row["raised"] is None
    assert row["left_alive"] == [False]  # what the first try started is gone before the second
    assert "starting once more" in row["stderr"]


def test_any_other_start_error_is_not_retried():
    row = run("other")
    assert row["calls"] == ["local"] and row["raised"] == "port 6379 is taken"
