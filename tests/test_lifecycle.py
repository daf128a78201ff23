"""Lifecycles that end: a program that stops servegraph, is interrupted, or loses its cluster exits.

Each test runs ``lifecycle_child.py`` as a real child process, and asserts that the child exited (and how)
before a deadline of tens of seconds; a child still running then has hung, and is killed with everything it
started. A child that stops servegraph and goes on connects to a cluster the module starts (a cluster costs a
busy two-core machine seconds of CPU to start; what is tested there is the child's own threads); the one
interrupted during a deploy and the one whose cluster goes away start their own, whose exit is part of theirs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Long enough for the child to start a cluster, deploy and tear down on a busy two-core machine.
DEADLINE_S = 150.0

pytestmark = pytest.mark.ray  # each child starts a Ray cluster of its own


class Child:
    """``lifecycle_child.py MODE`` in a new session, so that it and whatever it started can be killed."""

    def __init__(self, mode: str, cluster: str | None = None):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH")]))}
        env.pop("RAY_ADDRESS", None)  # the cluster it is given, or one of its own; never one it finds
        env.pop("LIFECYCLE_CLUSTER", None)
        if cluster is not None:
            env["LIFECYCLE_CLUSTER"] = cluster
        if mode == "cluster-gone":
            # Ray's own shutdown waits this long for a GCS that is gone (60 s by default); what is tested is that
            # nothing of servegraph's holds the exit beyond it.
            env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "3"
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "lifecycle_child.py"), mode],
            cwd=TESTS,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def wait_for_line(self, word: str, timeout_s: float) -> bool:
        """Read the child's output until a line starting with ``word`` (False: it ended or the time ran out)."""
        import selectors

        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    return False
                self.lines.append(line.rstrip("\n"))
                if line.startswith(word):
                    return True
            return False
        finally:
            selector.close()

    def finish(self, timeout_s: float = DEADLINE_S) -> tuple[int | None, str, str]:
        """(exit code, or None if it hung and was killed; its stdout; its stderr's end)."""
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
            code: int | None = self.proc.returncode
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            code = None
        stdout = "\n".join(self.lines + out.splitlines())
        return code, stdout, err[-4000:]

    def kill(self) -> None:
        """Kill the child and every process it started (its session: the cluster's head and workers)."""
        import psutil  # Ray ships it (importable once ray is)

        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


#: The modes whose child connects to the module's cluster.
SHARING = ("shutdown", "delete")


@pytest.fixture(scope="module")
def shared_cluster():
    """The address of a cluster the children that leave theirs up connect to (this process does not)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.fixture
def child(shared_cluster):
    import ray  # noqa: F401  # puts Ray's bundled psutil on sys.path for Child.kill

    children: list[Child] = []

    def start(mode: str) -> Child:
        children.append(Child(mode, shared_cluster if mode in SHARING else None))
        return children[-1]

    yield start
    for c in children:
        if c.proc.poll() is None:
            c.kill()


def _field(stdout: str, word: str) -> str:
    return next((line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith(word + " ")), "")


def test_a_program_that_shuts_servegraph_down_and_goes_on_exits_with_no_thread_left(child):
    code, out, err = child("shutdown").finish()
    assert code == 0, f"exit code {code} (None: hung)\n{out}\n{err}"
    assert "lanes 1 4" in out, out + err
    assert _field(out, "threads") == "-", f"servegraph threads alive after shutdown: {_field(out, 'threads')}"
    assert out.rstrip().endswith("exiting")


def test_a_program_that_deletes_its_application_and_goes_on_exits_with_no_lane_thread_left(child):
    code, out, err = child("delete").finish()
    assert code == 0, f"exit code {code} (None: hung)\n{out}\n{err}"
    assert "lanes 1 4" in out, out + err
    # The application's lanes stop with it; the process's client of the controller (which still runs) may stay.
    threads = [t for t in _field(out, "threads").split(",") if t and t != "-"]
    assert [t for t in threads if "lane" in t] == [], threads


def test_ctrl_c_during_a_deploy_leaves_no_hung_process(child):
    c = child("deploy-forever")
    assert c.wait_for_line("deploying", DEADLINE_S), c.finish(1)
    time.sleep(2)  # into serve.run's wait for a replica that never becomes ready
    c.proc.send_signal(signal.SIGINT)
    code, out, err = c.finish()
    assert code is not None, f"hung after Ctrl-C\n{out}\n{err}"
    assert "deployed" not in out
    assert code != 0 and "KeyboardInterrupt" in err, (code, err)


def test_a_program_whose_cluster_went_away_exits(child):
    code, out, err = child("cluster-gone").finish()
    assert code is not None, f"hung after its cluster went away\n{out}\n{err}"
    assert "lanes 1 4" in out and int(_field(out, "killing") or 0) >= 2, out + err  # its GCS and raylet at least
    assert "exiting" in out, out + err
