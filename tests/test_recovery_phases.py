"""A controller stopped at each point of a replica's lifecycle comes back with every replica in the state it claims.

The controller is ended deterministically by its test hook (``_test_crash_at``: it writes its
checkpoint and exits the moment it reaches the chosen point, with the replica in the phase the
point names); Ray restarts it, and it recovers from the checkpoint. Each test then checks outcomes:
the application runs at its target, every replica answers with its user object in the state the
last deploy asked for (no replica serves before its constructor ran, the bug these tests guard
against), and no replica actor is left over.
"""

from __future__ import annotations

import os
import time

import pytest
import ray

import servegraph as serve
from servegraph import InputNode

pytestmark = pytest.mark.ray


def controller():
    return ray.get_actor("servegraph_controller", namespace="servegraph")


def crash_at(point: str) -> int:
    """Arm the hook; the controller's pid now."""
    return ray.get(controller()._test_crash_at.remote(point))


def wait_restarted(old_pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ray.get(controller()._test_pid.remote(), timeout=5) != old_pid:
                return
        except Exception:  # restarting
            pass
        time.sleep(0.1)
    raise AssertionError("the controller did not restart")


def wait_running(app: str, counts: dict[str, int], timeout_s: float = 60) -> None:
    """Until every deployment has exactly its count of replicas, all RUNNING."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = serve.status().applications.get(app)
        except Exception:
            last = None
        if last is not None and all(
            last.deployments.get(d) is not None and last.deployments[d].replica_states == {"RUNNING": n}
            for d, n in counts.items()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"{app} did not come back to {counts}: {last}")


def replica_actors(app: str) -> list[str]:
    prefix = f"SERVEGRAPH_REPLICA::{app}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def answers(handle, n: int = 30) -> set:
    return set(ray.get([handle.remote() for _ in range(n)], timeout=60))


@serve.deployment(num_replicas=1)
class Slow:
    """A threaded replica whose constructor and reconfigure take a while, so each phase can be caught."""

    def __init__(self, delay: float = 1.0):
        time.sleep(delay)
        self.value = "constructed"
        self.config = None

    def reconfigure(self, config: dict) -> None:
        if self.config is not None:
            time.sleep(1.0)
        self.config = config["v"]

    def __call__(self) -> tuple:
        return (self.value, self.config)


def test_a_replica_created_before_the_stop_is_initialized_by_the_restarted_controller(serve_app):
    serve.run(Slow.options(user_config={"v": 1}).bind(0.0), name="phase-created", route_prefix=None)
    pid = crash_at("replica-created")
    handle = serve.run(
        Slow.options(num_replicas=2, user_config={"v": 1}).bind(0.0), name="phase-created", route_prefix=None
    )
    wait_restarted(pid)
    wait_running("phase-created", {"Slow": 2})
    assert answers(handle) == {("constructed", 1)}
    assert len(replica_actors("phase-created")) == 2


def test_a_replica_caught_initializing_finishes_its_constructor_before_it_serves(serve_app):
    serve.run(Slow.options(user_config={"v": 1}).bind(1.0), name="phase-init", route_prefix=None)
    pid = crash_at("replica-initializing")
    handle = serve.run(Slow.options(num_replicas=2, user_config={"v": 1}).bind(1.0), name="phase-init", route_prefix=None)
    wait_restarted(pid)
    wait_running("phase-init", {"Slow": 2})
    assert answers(handle) == {("constructed", 1)}
    assert len(replica_actors("phase-init")) == 2


def test_a_replica_caught_reconfiguring_ends_with_the_new_config(serve_app):
    serve.run(Slow.options(num_replicas=2, user_config={"v": 1}).bind(0.0), name="phase-config", route_prefix=None)
    pid = crash_at("replica-reconfiguring")
    handle = serve.run(Slow.options(num_replicas=2, user_config={"v": 2}).bind(0.0), name="phase-config", route_prefix=None)
    wait_restarted(pid)
    wait_running("phase-config", {"Slow": 2})
    assert answers(handle) == {("constructed", 2)}
    assert len(replica_actors("phase-config")) == 2


@serve.deployment(num_replicas=2, graceful_shutdown_timeout_s=5)
class Draining:
    def __init__(self, marker_dir: str):
        self.marker_dir = marker_dir

    def __call__(self) -> str:
        return "ok"

    def __del__(self) -> None:
        time.sleep(1.0)  # the controller is stopped while this replica drains
        with open(os.path.join(self.marker_dir, f"del-{os.getpid()}"), "a") as fh:
            fh.write("x")


def test_a_replica_caught_draining_is_stopped_once_and_not_lost(serve_app, tmp_path):
    serve.run(Draining.bind(str(tmp_path)), name="phase-drain", route_prefix=None)
    pid = crash_at("replica-draining")
    handle = serve.run(Draining.options(num_replicas=1).bind(str(tmp_path)), name="phase-drain", route_prefix=None)
    wait_restarted(pid)
    wait_running("phase-drain", {"Draining": 1})
    deadline = time.monotonic() + 30
    while len(replica_actors("phase-drain")) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(replica_actors("phase-drain")) == 1  # the drained one was ended, not left running
    assert answers(handle) == {"ok"}
    markers = list(tmp_path.iterdir())
    assert len(markers) == 1 and markers[0].read_text() == "x"  # its __del__ ran, once


def test_a_rollout_caught_halfway_completes_to_the_new_version(serve_app):
    serve.run(Slow.options(num_replicas=2, version="1", user_config={"v": 1}).bind(0.3), name="phase-roll", route_prefix=None)
    pid = crash_at("rollout")
    handle = serve.run(
        Slow.options(num_replicas=2, version="2", user_config={"v": 2}).bind(0.3), name="phase-roll", route_prefix=None
    )
    wait_restarted(pid)
    wait_running("phase-roll", {"Slow": 2})
    assert answers(handle) == {("constructed", 2)}
    assert len(replica_actors("phase-roll")) == 2


@serve.deployment
class Add:
    def __init__(self, n: int):
        self.n = n

    def __call__(self, x: int) -> int:
        return x + self.n


def lanes_come_back(app: str, handle, timeout_s: float) -> bool:
    """Whether the application's status shows a compiled lane within ``timeout_s``, sending requests meanwhile
    (lanes go to processes that send them). Judged on the status read that saw it: a restarted controller may
    number its lanes anew a moment later, and the lane is then compiled again (see lanes.LaneSet.update)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.status().applications[app].path.get("lanes", 0) >= 1:
            return True
        handle.remote(0).result(timeout_s=60)
        time.sleep(0.2)
    return False


def test_lanes_caught_forming_come_back_and_lose_no_request(serve_app):
    with InputNode() as inp:
        graph = Add.bind(100).__call__.bind(Add.options(name="First").bind(1).__call__.bind(inp))
    serve.run(graph, name="phase-lanes", route_prefix=None)
    pid = crash_at("lanes-formed")
    handle = serve.get_app_handle("phase-lanes")  # its first request claims lanes: forming them stops the controller
    results = [handle.remote(i).result(timeout_s=60) for i in range(40)]
    wait_restarted(pid)
    results += [handle.remote(i).result(timeout_s=60) for i in range(40)]
    assert results == [i + 101 for i in range(40)] * 2
    assert lanes_come_back("phase-lanes", handle, 30)


def test_many_controller_restarts_leave_replicas_their_control_threads_and_lanes(serve_app):
    with InputNode() as inp:
        graph = Add.bind(100).__call__.bind(Add.options(name="First").bind(1).__call__.bind(inp))
    serve.run(graph, name="phase-restarts", route_prefix=None)
    handle = serve.get_app_handle("phase-restarts")
    for _ in range(6):  # more restarts than a replica has control threads (4)
        pid = ray.get(controller()._test_pid.remote())
        ray.kill(controller(), no_restart=False)
        wait_restarted(pid)
        assert handle.remote(1).result(timeout_s=60) == 102
    wait_running("phase-restarts", {"Add": 1, "First": 1})
    for name in replica_actors("phase-restarts"):  # a dead controller's watch holds no control thread
        ray.get(ray.get_actor(name, namespace="servegraph").check_health.remote(), timeout=10)
    assert lanes_come_back("phase-restarts", handle, 60)
