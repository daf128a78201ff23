"""The README's command-line flow as a user runs it, on clusters servegraph starts itself.

Every command is a real process with a fresh user's environment: no RAY_* variable from the
test session (whose ``ray.init`` sets Ray's authentication mode), a HOME of its own, so Ray's
token and servegraph's cluster record are that user's. ``servegraph run`` serves in one process
(one terminal); ``status``, ``logs``, ``check``, ``build``, ``deploy``, ``delete`` and ``shutdown``
come from others. Ray 2.60 starts these clusters with token authentication on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLES, free_port
from support import running, user_env

from servegraph.runtime.client.cluster_record import ClusterRecord

pytestmark = pytest.mark.ray

#: How long a cluster servegraph starts may take to come up and deploy (Ray starting on a busy machine).
START_TIMEOUT_S = 240


class User:
    """A user at a shell: commands run from ``cwd`` with the user's environment."""

    def __init__(self, home: Path, cwd: Path = EXAMPLES):
        home.mkdir(parents=True, exist_ok=True)
        self.home, self.cwd, self.env = home, cwd, user_env(home)
        self.started: list[subprocess.Popen] = []

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """Run ``servegraph ARGS`` to its end (a safety timeout only: outcomes are what tests assert)."""
        return subprocess.run(
            [sys.executable, "-m", "servegraph", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        """Start ``servegraph ARGS`` in the background (another terminal), its output in ``log``."""
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "servegraph", *args], cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        return proc

    def record(self) -> ClusterRecord | None:
        path = self.home / ".servegraph" / "cluster.json"
        return ClusterRecord(**json.loads(path.read_text())) if path.exists() else None

    def cleanup(self) -> None:
        """Whatever a failed test left running: the processes it started, and the cluster it recorded."""
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.record() is not None:
            self("shutdown", "--yes")


@pytest.fixture
def user(tmp_path):
    user = User(tmp_path / "home")
    yield user
    user.cleanup()


def wait_for(text: str, log: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while text not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    output = log.read_text()
    assert text in output, f"{text!r} not seen:\n{output}"
    return output


def processes_of(user: User, record: ClusterRecord) -> set[int]:
    """The cluster's processes as a user can find them: everything naming its session directory and their
    children, and the replicas `status --json` lists."""
    marker = record.session_dir.encode()
    parents, found = {}, set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.add(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    while children := {pid for pid, parent in parents.items() if parent in found} - found:
        found |= children
    status = user("status", "--json")
    if status.returncode == 0:
        for app in json.loads(status.stdout)["applications"].values():
            found |= {r["pid"] for dep in app["deployments"].values() for r in dep.get("replicas", []) if r.get("pid")}
    return found | {record.pid}


def assert_gone(processes: set[int], record: ClusterRecord) -> None:
    deadline = time.monotonic() + 30  # the last ones may still be exiting when the command returns
    while {p for p in processes if running(p)} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not {p for p in processes if running(p)}, "Ray processes of the stopped cluster still run"
    current = Path("/tmp/ray/ray_current_cluster")
    assert not (current.exists() and current.read_text().strip() == record.address)


def test_the_readme_flow_from_a_second_terminal(user, tmp_path):
    port = free_port()
    log = tmp_path / "run.log"
    run = user.start("run", "hello:language_classifier", "--port", str(port), log=log)
    wait_for("Deployed", log, run)
    record = user.record()
    assert record is not None and record.by == "servegraph run" and record.host
    current = Path("/tmp/ray/ray_current_cluster")  # where `ray start` sends every later bare ray.init()
    assert not (current.exists() and current.read_text().strip() == record.address)
    url = f"http://127.0.0.1:{port}/"
    assert httpx.post(url, json={"language": "spanish", "name": "Dora"}, timeout=60).text == "Hola Dora"
    failed = httpx.post(url, json={"name": "Dora"}, timeout=60)  # no "language": the user's code raises
    assert failed.status_code == 500

    status = user("status")
    assert status.returncode == 0, status.stderr
    assert f"Ray cluster: {record.address} (started by servegraph run, pid {record.pid})" in status.stderr
    assert "default" in status.stdout and "RUNNING" in status.stdout
    assert "gcs_client" not in status.stderr and "Error" not in status.stderr

    logs = user("logs", "default")
    deadline = time.monotonic() + 30  # Ray flushes worker output to its files asynchronously
    while failed.headers["x-request-id"] not in logs.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = user("logs", "default")
    assert logs.returncode == 0, logs.stderr
    request_id = failed.headers["x-request-id"]
    assert "[LanguageClassifier#" in logs.stdout and "KeyError: 'language'" in logs.stdout
    assert logs.stdout.count(f"request {request_id} failed") == 1  # each line once, not once per log file
    assert ":job_id:" not in logs.stdout and ":actor_name:" not in logs.stdout  # Ray's marker lines are not output

    check = user("check", "hello:language_classifier")
    assert check.returncode == 0, check.stderr
    assert f"resources: checking against the Ray cluster at {record.address} (started by servegraph run" in check.stderr

    built = user("build", "hello:language_classifier", "--port", str(port), "-o", str(tmp_path / "hello.yaml"))
    assert built.returncode == 0, built.stderr
    deployed = user("deploy", str(tmp_path / "hello.yaml"))
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.count(": unchanged") == 3, deployed.stdout  # the config spells out what the code ran with

    other = tmp_path / "other.yaml"
    args = ["--name", "other", "--route-prefix", "/other", "--port", str(port), "-o", str(other)]
    assert user("build", "hello:language_classifier", *args).returncode == 0
    created = user("deploy", str(other))
    assert created.returncode == 0, created.stderr
    assert "  LanguageClassifier: created with 1 replica(s)" in created.stdout
    deleted = user("delete", "other")
    assert deleted.returncode == 0 and "Deleted application 'other'." in deleted.stdout
    assert run.poll() is None  # its own application still runs

    # Ray's token stays required: an address given by hand, from a shell without the token, is told how in one line.
    stranger = user_env(tmp_path / "stranger")
    for extra, says in (({}, "RAY_AUTH_MODE is not set"), ({"RAY_AUTH_MODE": "token"}, "this machine has none")):
        refused = subprocess.run(
            [sys.executable, "-m", "servegraph", "status", "--address", record.address],
            env={**stranger, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
        assert f"the Ray cluster at {record.address} (--address) requires Ray's authentication token" in refused.stderr
        assert says in refused.stderr

    processes = processes_of(user, record)
    down = user("shutdown", "--yes")
    assert down.returncode == 0, down.stderr
    assert "Deleted 1 application(s): default." in down.stdout
    assert "Stopped the servegraph controller and its HTTP proxy." in down.stdout
    assert f"The Ray cluster at {record.address} (started by servegraph run, pid {record.pid}) has stopped" in down.stdout
    assert run.wait(timeout=60) == 0
    assert "Application 'default' was deleted or shut down from elsewhere; stopping." in log.read_text()
    assert user.record() is None
    assert_gone(processes, record)
    after = user("status")
    assert after.returncode == 1 and "No Ray cluster" in after.stderr


def test_a_cluster_deploy_starts_is_kept_on_request_and_then_stopped_by_shutdown(user, tmp_path):
    config = tmp_path / "hello.yaml"
    assert user("build", "hello:language_classifier", "--port", str(free_port()), "-o", str(config)).returncode == 0
    deployed = user("deploy", str(config))
    assert deployed.returncode == 0, deployed.stderr
    record = user.record()
    assert record is not None and record.by == "servegraph deploy" and record.owner_pid is None
    assert f"The Ray cluster at {record.address} keeps running; `servegraph shutdown` stops it." in deployed.stderr

    kept = user("shutdown", "--yes", "--keep-cluster")
    assert kept.returncode == 0, kept.stderr
    assert "Deleted 1 application(s): default." in kept.stdout
    assert f"Kept the Ray cluster at {record.address} running (--keep-cluster)" in kept.stdout
    assert running(record.pid)
    again = user("status")
    assert again.returncode == 0 and "No applications are running." in again.stdout

    processes = processes_of(user, record)
    down = user("shutdown", "--yes")
    assert down.returncode == 0, down.stderr
    assert "No applications were running." in down.stdout
    assert f"Stopped the Ray cluster at {record.address} (started by servegraph deploy, pid {record.pid}):" in down.stdout
    assert user.record() is None
    assert_gone(processes, record)


def test_a_foreground_run_ends_when_its_application_is_deleted_elsewhere(user, tmp_path):
    log = tmp_path / "run.log"
    run = user.start("run", "hello:language_classifier", "--port", str(free_port()), log=log)
    wait_for("Deployed", log, run)
    record = user.record()
    assert record is not None
    processes = processes_of(user, record)
    deleted = user("delete", "default")
    assert deleted.returncode == 0, deleted.stderr
    assert run.wait(timeout=120) == 0
    output = log.read_text()
    assert "Application 'default' was deleted or shut down from elsewhere; stopping." in output
    assert f"Stopped the Ray cluster at {record.address}" in output
    assert user.record() is None
    assert_gone(processes, record)


SERVE_RUN_SCRIPT = textwrap.dedent(
    """\
    import sys, time
    import servegraph as serve
    from hello import language_classifier

    serve.run(language_classifier, port=int(sys.argv[1]))
    print("served", flush=True)
    time.sleep(600)
    """
)


def test_commands_reach_the_cluster_serve_run_started_and_leave_it_to_its_script(user, tmp_path):
    script = tmp_path / "serve_hello.py"
    script.write_text(SERVE_RUN_SCRIPT)
    log = tmp_path / "script.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(free_port())],
            cwd=EXAMPLES,
            env={**user.env, "PYTHONPATH": os.pathsep.join([user.env["PYTHONPATH"], str(EXAMPLES)])},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    user.started.append(proc)
    wait_for("served", log, proc)
    record = user.record()
    assert record is not None and record.by == "serve.run" and record.pid == proc.pid

    status = user("status")
    assert status.returncode == 0, status.stderr
    assert f"(started by serve.run, pid {proc.pid})" in status.stderr and "RUNNING" in status.stdout
    down = user("shutdown", "--yes")
    assert down.returncode == 0, down.stderr
    assert "Deleted 1 application(s): default." in down.stdout
    assert f"was started by serve.run in pid {proc.pid}; it ends when that process does." in down.stdout
    assert proc.poll() is None  # the user's script is theirs to end
