"""Two nodes (a ``ray.cluster_utils.Cluster``, in a child process so the session's cluster is untouched).

- ``proxy_location: EveryNode`` (the default) runs an HTTP proxy on every node that has replicas,
  all on the same port; HTTP requests are served whichever proxy takes the connection.
- Compiled lanes never cross a node: a graph whose replicas all run on the worker gets its lanes
  from the worker's proxy, and a driver on the head gets none (its requests run on the plan).
- Handles in replicas prefer replicas on their own node; ``max_replicas_per_node`` spreads replicas.

One child starts the cluster once and runs every scenario in it, one application each (a two-node cluster
costs a busy two-core machine about ten seconds to start); each scenario's figures, or its traceback, come
back in one JSON line, and each test reads its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from servegraph.runtime.client.api import proxy_location_name

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, traceback
    import httpx, ray
    from ports import free_port
    from ray.cluster_utils import Cluster
    import servegraph as serve
    from servegraph import InputNode
    from servegraph.runtime.data.lanes import lanes_for


    def proxies_and_lanes(out):
        @serve.deployment(ray_actor_options={"num_cpus": 0.1, "resources": {"worker": 0.01}})
        class Add:
            def __init__(self, k):
                self.k = k
            def __call__(self, x):
                return {"value": x["value"] + self.k, "node": ray.get_runtime_context().get_node_id()}

        with InputNode() as inp:
            graph = Add.options(name="B").bind(10).__call__.bind(Add.options(name="A").bind(1).__call__.bind(inp))
        port = free_port()
        serve.run(graph, name="pipe", route_prefix="/pipe", port=port)

        deadline = time.monotonic() + 60
        while list(serve.status().proxies.values()) != ["HEALTHY"] * 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        out["proxies"] = serve.status().proxies
        answers = []
        deadline = time.monotonic() + 90
        # New connections are spread over the proxies by the kernel (SO_REUSEPORT): keep sending until the
        # worker's proxy owns a lane (its first request claims one), counting every answer.
        while time.monotonic() < deadline:
            reply = httpx.post(f"http://127.0.0.1:{port}/pipe", json={"value": 1}, timeout=60)
            answers.append(reply.json()["value"] if reply.status_code == 200 else reply.status_code)
            path = serve.status().applications["pipe"].path
            if path.get("lane_nodes") and len(answers) >= 20:
                break
        out["http_answers"] = answers
        out["path"] = serve.status().applications["pipe"].path
        handle = serve.get_app_handle("pipe")
        out["driver_answers"] = [handle.remote({"value": 2}).result(timeout_s=60)["value"] for _ in range(10)]
        time.sleep(1.0)  # a claim's answer would have arrived
        out["driver_lanes"] = lanes_for("pipe").active()
        out["driver_reason"] = lanes_for("pipe").reason


    def locality(out):
        @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1})
        class Where:
            def __call__(self):
                return ray.get_runtime_context().get_node_id()

        @serve.deployment(ray_actor_options={"num_cpus": 0.1, "resources": {"worker": 0.01}})
        class Caller:
            def __init__(self, where):
                self.where = where
            async def __call__(self, n):
                return [await self.where.remote() for _ in range(n)]

        serve.run(Caller.bind(Where.bind()), name="local", route_prefix=None, http=False)
        replicas = ray.get(serve.runtime.client.api._controller().status.remote()).applications["local"].deployments["Where"].replicas
        out["where_nodes"] = sorted(r.node_id for r in replicas)
        out["seen"] = serve.get_app_handle("local").remote(20).result(timeout_s=60)
        out["driver_seen"] = [serve.get_deployment_handle("Where", "local").remote().result(timeout_s=60) for _ in range(20)]


    def per_node(out):
        @serve.deployment(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.1})
        class One:
            def __call__(self):
                return ray.get_runtime_context().get_node_id()

        serve.run(One.bind(), name="per-node", route_prefix=None, http=False)
        out["nodes"] = [r.node_id for r in ray.get(serve.runtime.client.api._controller().status.remote())
                        .applications["per-node"].deployments["One"].replicas]
        serve.run(One.options(num_replicas=3).bind(), name="per-node", route_prefix=None, http=False, _blocking=False)
        for _ in range(300):  # bounded: the controller's next passes set the message
            app = serve.status().applications["per-node"]
            if "max_replicas_per_node" in app.deployments["One"].message:
                break
        out["three"] = {"replicas": app.deployments["One"].replica_states, "message": app.deployments["One"].message}


    def lane_sets(out):
        @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1})
        class Step:
            def __init__(self, k):
                self.k = k
            def __call__(self, x):
                return x + self.k

        with InputNode() as inp:
            graph = Step.options(name="Second").bind(10).__call__.bind(Step.options(name="First").bind(1).__call__.bind(inp))
        handle = serve.run(graph, name="sets", route_prefix=None, http=False)
        deployments = ray.get(serve.runtime.client.api._controller().status.remote()).applications["sets"].deployments
        out["nodes"] = {name: sorted(r.node_id for r in deployments[name].replicas) for name in ("First", "Second")}
        answers = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not lanes_for("sets").active():  # the first request claims lanes
            answers.append(handle.remote(1).result(timeout_s=60))
            time.sleep(0.1)
        out["answers"] = sorted(set(answers))
        out["driver_lanes"] = lanes_for("sets").active()


    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2, resources={"worker": 10})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="servegraph", log_to_driver=False, logging_level="ERROR")
    results = {"worker": worker.node_id, "head": ray.get_runtime_context().get_node_id()}
    try:
        for scenario in (proxies_and_lanes, locality, per_node, lane_sets):
            out = results[scenario.__name__] = {}
            try:
                scenario(out)
            except Exception:
                out["error"] = traceback.format_exc()
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Every scenario's figures (see SCRIPT), with the cluster's ``head`` and ``worker`` node ids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    script = tmp_path_factory.mktemp("multinode") / "two_nodes.py"  # a file, so the deployments' code can be read (see _handle_era.py)
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def scenario(results: dict, name: str) -> dict:
    out = results[name]
    assert "error" not in out, out["error"]
    return {**out, "head": results["head"], "worker": results["worker"]}


@pytest.mark.ray
def test_every_node_gets_a_proxy_and_lanes_stay_on_their_node(two_nodes):
    out = scenario(two_nodes, "proxies_and_lanes")
    assert set(out["proxies"]) == {out["head"], out["worker"]}
    assert set(out["proxies"].values()) == {"HEALTHY"}
    assert out["http_answers"] and set(out["http_answers"]) == {12}
    # The only lanes are on the worker, owned there (its proxy); the head's driver got none and used the plan.
    assert out["path"]["kind"] == "compiled" and out["path"]["lane_nodes"] == {out["worker"]: 1}, out["path"]
    assert out["driver_answers"] == [13] * 10
    assert out["driver_lanes"] == 0, out["driver_reason"]


@pytest.mark.ray
def test_a_compiled_graphs_replicas_form_a_full_set_on_each_node(two_nodes):
    out = scenario(two_nodes, "lane_sets")
    both = sorted([out["head"], out["worker"]])
    assert out["nodes"] == {"First": both, "Second": both}, out["nodes"]  # one of each per node: a set each
    assert out["answers"] == [12]
    assert out["driver_lanes"] == 1  # the head's set is the driver's lane


def test_proxy_location_takes_ray_serves_names_and_refuses_others():
    assert proxy_location_name("EveryNode") == "EveryNode"
    assert proxy_location_name("headonly") == "HeadOnly"
    assert proxy_location_name("NoServer") == "Disabled"
    assert proxy_location_name(None) is None
    with pytest.raises(ValueError, match="proxy_location 'FixedNumber' is not one of EveryNode, HeadOnly, Disabled"):
        proxy_location_name("FixedNumber")


@pytest.mark.ray
def test_handles_in_replicas_prefer_replicas_on_their_own_node(two_nodes):
    out = scenario(two_nodes, "locality")
    if out["worker"] not in out["where_nodes"] or len(set(out["where_nodes"])) != 2:
        pytest.skip(f"the replicas did not land one per node ({out['where_nodes']}): nothing to prefer")
    assert out["seen"] == [out["worker"]] * 20  # the caller runs on the worker: every call stayed there
    assert len(set(out["driver_seen"])) == 2  # a driver's handle spreads over both nodes


@pytest.mark.ray
def test_max_replicas_per_node_puts_each_replica_on_its_own_node(two_nodes):
    out = scenario(two_nodes, "per_node")
    assert len(out["nodes"]) == 2 and len(set(out["nodes"])) == 2  # one per node
    assert "max_replicas_per_node=1" in out["three"]["message"], out  # a third has no node to go to
