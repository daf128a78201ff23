"""Each replica of a deployment with placement_group_bundles runs in a placement group of its own, on the
session's Ray cluster: what it creates lands in the group, and the group goes when the replica does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import ray
import yaml
from click.testing import CliRunner
from conftest import ROOT, free_port

import servegraph as serve
from servegraph.cli import main
from servegraph.runtime.client.api import _controller
from servegraph.runtime.common.records import CONTROLLER_NAME, NAMESPACE


def wait_for(predicate, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def groups(app: str, deployment: str) -> dict[str, dict]:
    """The live placement groups of one deployment's replicas, by name (they are named as the replicas are)."""
    prefix = f"SERVEGRAPH_REPLICA::{app}#{deployment}#"
    return {
        entry["name"]: entry
        for entry in ray.util.placement_group_table().values()
        if entry["name"].startswith(prefix) and entry["state"] != "REMOVED"
    }


def replica_names(app: str, deployment: str) -> set[str]:
    raw = ray.get(_controller().status.remote()).applications[app].deployments[deployment]
    return {r.actor_name for r in raw.replicas}


def replica_states(app: str, deployment: str) -> dict[str, int]:
    return serve.status().applications[app].deployments[deployment].replica_states


@ray.remote(num_cpus=0.1)
def group_of_a_task() -> str | None:
    group = ray.util.get_current_placement_group()
    return group.id.hex() if group is not None else None


@serve.deployment(
    num_replicas=2,
    ray_actor_options={"num_cpus": 0.1},
    placement_group_bundles=[{"CPU": 0.1}, {"CPU": 0.1}],
    placement_group_strategy="STRICT_PACK",
)
class InGroup:
    def __call__(self) -> dict:
        group = ray.util.get_current_placement_group()
        return {
            "group": group.id.hex() if group is not None else None,
            # Created with no scheduling options: captured into the replica's group (bundle 1 has room).
            "task": ray.get(group_of_a_task.remote()),
        }


def test_each_replica_runs_in_its_own_group_and_what_it_creates_lands_there(serve_app, http_port):
    handle = serve_app.run(InGroup.bind(), name="pg-inside", route_prefix=None, port=http_port)
    found = groups("pg-inside", "InGroup")
    assert set(found) == replica_names("pg-inside", "InGroup")  # one group per replica, named as the replica
    for entry in found.values():
        assert entry["strategy"] == "STRICT_PACK" and entry["state"] == "CREATED"
        assert list(entry["bundles"].values()) == [{"CPU": 0.1}, {"CPU": 0.1}]
    seen: dict[str, dict] = {}

    def both_replicas_answered() -> bool:
        for reply in ray.get([handle.remote() for _ in range(8)], timeout=60):
            seen[reply["group"]] = reply
        return len(seen) == 2

    assert wait_for(both_replicas_answered)
    assert set(seen) == {entry["placement_group_id"] for entry in found.values()}
    for group, reply in seen.items():
        assert reply["task"] == group


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, placement_group_bundles=[{"CPU": 0.1}])
class Grouped:
    def __call__(self) -> str:
        return ray.get_runtime_context().get_actor_name()


def test_groups_follow_their_replicas_through_scaling_death_update_and_delete(serve_app, http_port):
    app = "pg-lifecycle"
    serve_app.run(Grouped.options(num_replicas=3).bind(), name=app, route_prefix=None, port=http_port)
    assert set(groups(app, "Grouped")) == replica_names(app, "Grouped") and len(groups(app, "Grouped")) == 3

    serve_app.run(Grouped.options(num_replicas=1).bind(), name=app, route_prefix=None, port=http_port)  # scale down
    assert wait_for(lambda: replica_states(app, "Grouped") == {"RUNNING": 1} and len(groups(app, "Grouped")) == 1)
    assert set(groups(app, "Grouped")) == replica_names(app, "Grouped")

    (dead,) = replica_names(app, "Grouped")  # a replica dies: its group goes, its successor gets one of its own
    ray.kill(ray.get_actor(dead, namespace=NAMESPACE), no_restart=True)
    assert wait_for(lambda: replica_states(app, "Grouped") == {"RUNNING": 1} and dead not in replica_names(app, "Grouped"))
    assert wait_for(lambda: set(groups(app, "Grouped")) == replica_names(app, "Grouped"))
    assert dead not in groups(app, "Grouped")

    before = set(groups(app, "Grouped"))  # a new strategy is a new version: rolled out with new groups
    serve_app.run(
        Grouped.options(num_replicas=1, placement_group_strategy="SPREAD").bind(), name=app, route_prefix=None, port=http_port
    )
    # The old replica drains (STOPPING) before it ends, its group with it.
    assert wait_for(lambda: replica_states(app, "Grouped") == {"RUNNING": 1} and len(groups(app, "Grouped")) == 1)
    assert set(groups(app, "Grouped")) == replica_names(app, "Grouped")
    assert not before & set(groups(app, "Grouped"))
    assert {e["strategy"] for e in groups(app, "Grouped").values()} == {"SPREAD"}

    serve.delete(app)
    assert groups(app, "Grouped") == {}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, placement_group_bundles=[{"CPU": 0.1}, {"CPU": 1000}])
class TooBig:
    def __call__(self) -> str:
        return "never"


def test_a_group_that_cannot_be_placed_leaves_the_replica_pending_and_says_why(serve_app, http_port):
    app = "pg-pending"
    serve_app.run(TooBig.bind(), name=app, route_prefix=None, port=http_port, _blocking=False, resource_check=False)

    def message() -> str:
        return serve.status().applications[app].deployments["TooBig"].message

    assert wait_for(lambda: "cannot be placed" in message())
    assert "1 replica(s) pending" in message() and "'CPU': 1000.0" in message() and "strategy PACK" in message()
    assert replica_states(app, "TooBig") == {"STARTING": 1}
    assert len(groups(app, "TooBig")) == 1
    shown = CliRunner().invoke(main, ["status"])  # and `servegraph status` says it too
    assert shown.exit_code == 0 and f"{app} TooBig: 1 replica(s) pending" in shown.output, shown.output
    serve.delete(app)
    assert groups(app, "TooBig") == {}


def test_a_restarted_controller_keeps_its_replicas_groups_and_removes_groups_nobody_holds(serve_app, http_port):
    app = "pg-recover"
    serve_app.run(Grouped.options(num_replicas=2).bind(), name=app, route_prefix=None, port=http_port)
    before = set(groups(app, "Grouped"))
    # A group named as a replica that does not exist, as a controller that died between making a replica's
    # group and its actor leaves behind.
    leaked = ray.util.placement_group(
        [{"CPU": 0.1}], name=f"SERVEGRAPH_REPLICA::{app}#Grouped#0000dead", lifetime="detached"
    )
    ray.get(leaked.ready(), timeout=60)
    assert len(groups(app, "Grouped")) == 3
    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    old_pid = ray.get(controller._test_pid.remote())
    ray.kill(controller, no_restart=False)
    assert wait_for(lambda: ray.get(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)._test_pid.remote()) != old_pid)
    assert wait_for(lambda: replica_states(app, "Grouped") == {"RUNNING": 2})
    assert set(groups(app, "Grouped")) == before  # the replicas' own groups kept; the stray one removed
    serve.delete(app)  # and the recovered replicas' groups still go with them
    assert groups(app, "Grouped") == {}


@pytest.fixture
def config(tmp_path, http_port, monkeypatch, ray_cluster):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    built = CliRunner().invoke(
        main, ["build", "deploy_models:app", "--name", "pg-deploy", "--route-prefix", "/pg-deploy", "--port", str(http_port), "-o", str(path)]
    )
    assert built.exit_code == 0, built.output
    yield path
    serve.delete("pg-deploy")


def test_servegraph_deploy_applies_a_configs_placement_group(config):
    data = yaml.safe_load(config.read_text())
    for dep in data["applications"][0]["deployments"]:
        if dep["name"] == "Greeter":
            dep.update(num_replicas=2, placement_group_bundles=[{"CPU": 0.1}, {"CPU": 0.2}], placement_group_strategy="SPREAD")
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["deploy", str(config)])
    assert result.exit_code == 0, result.output
    found = groups("pg-deploy", "Greeter")
    assert set(found) == replica_names("pg-deploy", "Greeter") and len(found) == 2
    assert {e["strategy"] for e in found.values()} == {"SPREAD"}
    assert groups("pg-deploy", "Front") == {}  # only the deployment the config gave a group has one
    reply = serve.get_app_handle("pg-deploy").remote("Ada").result(timeout_s=60)
    assert reply["text"] == "Hola Ada"


SPREAD_SCRIPT = textwrap.dedent(
    """
    import json, os, time
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    import servegraph as serve

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="servegraph", log_to_driver=False, logging_level="ERROR")
    out = {}

    @ray.remote(num_cpus=0.1)
    def node_of_a_task():
        return ray.get_runtime_context().get_node_id()

    try:
        @serve.deployment(ray_actor_options={"num_cpus": 0.1}, placement_group_bundles=[{"CPU": 0.1}, {"CPU": 0.1}],
                          placement_group_strategy="STRICT_SPREAD")
        class Spread:
            def __call__(self):
                group = ray.util.get_current_placement_group()
                in_bundle_1 = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=1)
                return {"replica": ray.get_runtime_context().get_node_id(),
                        "bundle_1": ray.get(node_of_a_task.options(scheduling_strategy=in_bundle_1).remote())}

        handle = serve.run(Spread.bind(), name="spread", route_prefix=None, http=False)
        out["answer"] = ray.get(handle.remote(), timeout=60)
        (entry,) = [e for e in ray.util.placement_group_table().values()
                    if e["name"].startswith("SERVEGRAPH_REPLICA::spread#Spread#") and e["state"] != "REMOVED"]
        out["bundle_nodes"] = entry["bundles_to_node_id"]
        # Three bundles on their own nodes, on two nodes: refused before deploy by the resource check...
        wide = Spread.options(name="Wide", placement_group_bundles=[{"CPU": 0.1}] * 3).bind()
        try:
            serve.run(wide, name="wide", route_prefix=None, http=False)
        except serve.ResourceError as exc:
            out["refused"] = str(exc)
        # ...and without it (a cluster that may grow), deployed, never placed, and the status says so.
        serve.run(wide, name="wide", route_prefix=None, http=False, _blocking=False, resource_check=False)
        for _ in range(600):  # bounded: the controller reports within a few of its passes
            message = serve.status().applications["wide"].deployments["Wide"].message
            if "cannot be placed" in message:
                break
            time.sleep(0.1)
        out["wide"] = message
        serve.shutdown()
        out["left"] = [e["name"] for e in ray.util.placement_group_table().values() if e["state"] != "REMOVED"]
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out))
    """
)


@pytest.mark.ray
def test_strict_spread_puts_a_replicas_bundles_on_two_nodes_and_a_third_bundle_waits():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", SPREAD_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    nodes = out["bundle_nodes"]
    assert len(set(nodes.values())) == 2  # each bundle on its own node
    assert out["answer"] == {"replica": nodes["0"], "bundle_1": nodes["1"]}  # the replica in bundle 0
    assert "could never be placed on this cluster's 2 node(s): STRICT_SPREAD puts each of its 3 bundles" in out["refused"]
    assert "cannot be placed" in out["wide"] and "strategy STRICT_SPREAD" in out["wide"], out["wide"]
    assert out["left"] == []  # shutdown removed every group, the one never placed too


@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")  # Ray Serve's own pydantic idiom
def test_the_same_config_gives_ray_serves_replicas_their_groups_too(config, ray_cluster):
    from ray import serve as ray_serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(config.read_text())
    data["http_options"]["port"] = free_port()
    for dep in data["applications"][0]["deployments"]:
        if dep["name"] == "Greeter":
            dep.update(placement_group_bundles=[{"CPU": 0.1}, {"CPU": 0.2}], placement_group_strategy="SPREAD")
    try:
        serve_start(http_options={"host": "127.0.0.1", "port": data["http_options"]["port"]}).deploy_apps(
            ServeDeploySchema.model_validate(data), _blocking=False
        )
        assert wait_for(lambda: getattr(ray_serve.status().applications.get("pg-deploy"), "status", None) == "RUNNING", 120)
        theirs = [
            e for e in ray.util.placement_group_table().values()
            if e["name"].startswith("SERVE_REPLICA::pg-deploy#Greeter#") and e["state"] != "REMOVED"
        ]
        assert [(e["strategy"], list(e["bundles"].values())) for e in theirs] == [("SPREAD", [{"CPU": 0.1}, {"CPU": 0.2}])]
        assert ray_serve.get_app_handle("pg-deploy").remote("Ada").result(timeout_s=60)["text"] == "Hola Ada"
    finally:
        ray_serve.shutdown()
