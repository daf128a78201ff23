"""Which cluster the CLI talks to, bounded connection, Ctrl-C, the port clash, delete: on real sockets and processes.

Commands that may fail while connecting run as real `python -m servegraph`
processes (they leave at once on failure); the rest run in-process against the
session's cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT, TESTS, free_port

import servegraph as serve
from servegraph.cli import main
from servegraph.runtime.client.cluster_record import read_record, write_record


@pytest.fixture(autouse=True)
def cluster_file(tmp_path, monkeypatch):
    """Each test gets its own cluster record, never the user's."""
    path = tmp_path / "cluster.json"
    monkeypatch.setenv("SERVEGRAPH_CLUSTER_FILE", str(path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return path


def servegraph(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A real `servegraph` process (a safety timeout only: outcomes are what the tests assert)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLES), str(TESTS)]), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "servegraph", *args], env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def silent_listener():
    """A real port that accepts TCP connections and never answers: a host that is up but is no Ray cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s


def test_a_closed_port_fails_at_once_with_one_line():
    port = free_port()  # bound and released: nothing listens there
    result = servegraph("status", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: no Ray cluster at 127.0.0.1:{port} (--address): connection refused"
    ]


def test_rayaddress_naming_a_host_that_never_answers_gives_up_after_connect_timeout(silent_listener):
    port = silent_listener.getsockname()[1]
    result = servegraph("status", "--connect-timeout", "3", env_extra={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot connect to the Ray cluster at 127.0.0.1:{port} (RAY_ADDRESS): no answer in time (--connect-timeout)"
    )


def test_ctrl_c_while_connecting_ends_the_command(silent_listener):
    port = silent_listener.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "status", "--address", f"127.0.0.1:{port}", "--connect-timeout", "600"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        conn, _ = silent_listener.accept()  # the command is now connecting
        conn.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "Error: interrupted while connecting" in err


def test_with_no_cluster_named_commands_say_so():
    result = servegraph("status")
    assert result.returncode == 1
    assert "No Ray cluster: pass --address HOST:PORT or set RAY_ADDRESS" in result.stderr
    as_json = servegraph("status", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["cluster"] is None
    down = servegraph("shutdown", "--yes")
    assert down.returncode == 0 and "Nothing to shut down." in down.stdout


def test_commands_find_the_recorded_cluster_and_say_which_it_is(ray_cluster, cluster_file):
    address = ray_cluster.get_runtime_context().gcs_address
    write_record(address, "servegraph run", pid=os.getpid())
    result = servegraph("status", "--json")
    assert result.returncode == 0, result.stderr
    assert f"Ray cluster: {address} (started by servegraph run, pid {os.getpid()})" in result.stderr
    assert "applications" in json.loads(result.stdout)


def test_a_stopped_recorded_cluster_is_reported_and_forgotten(cluster_file):
    port = free_port()
    write_record(f"127.0.0.1:{port}", "servegraph run", pid=1)
    result = servegraph("status")
    assert result.returncode == 1
    assert "it has stopped (record removed)" in result.stderr
    assert read_record() is None


def test_run_fails_at_once_naming_the_port_and_its_holder(ray_cluster):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        address = ray_cluster.get_runtime_context().gcs_address
        result = CliRunner().invoke(
            main, ["run", "hello:language_classifier", "--port", str(port), "--non-blocking", "--address", address]
        )
    assert result.exit_code == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}: the address is already in use (held by pid {os.getpid()}:" in result.output
    assert "Deploying" not in result.output


def test_delete_removes_one_application_and_keeps_the_others(ray_cluster):
    from hello import language_classifier
    from sync_handle import app as sync_app

    serve.run(language_classifier, name="keep-me", route_prefix=None)
    serve.run(sync_app, name="delete-me", route_prefix=None)
    try:
        result = CliRunner().invoke(main, ["delete", "delete-me"])
        assert result.exit_code == 0, result.output
        assert "Deleted application 'delete-me'." in result.output
        running = serve.status().applications
        assert "delete-me" not in running and "keep-me" in running
        missing = CliRunner().invoke(main, ["delete", "no-such-app"])
        assert missing.exit_code == 1
        assert "no application named 'no-such-app'" in missing.output
    finally:
        serve.delete("keep-me")


def test_run_serves_grpc_when_given_a_port_and_servicer_functions(ray_cluster, http_port):
    grpc = pytest.importorskip("grpc")
    from grpc_ingress import SERVICER
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    address = ray_cluster.get_runtime_context().gcs_address
    grpc_port = free_port()
    argv = ["run", "grpc_ingress:app", "--name", "cli-grpc", "--route-prefix", "/cli-grpc", "--port", str(http_port),
            "--grpc-port", str(grpc_port), "--grpc-servicer-functions", SERVICER, "--grpc-disable-reflection",
            "--no-graph-autoscaling", "--non-blocking", "--address", address]  # fmt: skip
    result = CliRunner().invoke(main, argv)
    try:
        assert result.exit_code == 0, result.output
        assert f"gRPC on 127.0.0.1:{grpc_port}" in result.output
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = serve_pb2_grpc.UserDefinedServiceStub(channel)
            reply = stub.Method1(serve_pb2.UserDefinedMessage(name="Cy"), metadata=(("application", "cli-grpc"),), timeout=60)
        assert reply.greeting == "Method1 greets Cy"
    finally:
        serve.delete("cli-grpc")


def test_run_refuses_half_of_the_grpc_options():
    result = CliRunner().invoke(main, ["run", "grpc_ingress:app", "--grpc-port", "9999"])
    assert result.exit_code == 2
    assert "gRPC needs both --grpc-port and --grpc-servicer-functions" in result.output
