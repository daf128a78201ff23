"""Fault scenarios, servegraph and Ray Serve side by side: requests served, failed and hung, and recovery time.

Each (scenario, system) pair runs on a fresh 3-node ``ray.cluster_utils.Cluster`` (a head and two
workers) in this process, with the seed's hello shape (an ingress calling a 2-replica leaf) under a
steady handle load from a few threads. The fault lands after 15% of the requests:

- ``replica``: ``ray.kill`` one of the leaf's two replicas;
- ``controller``: ``ray.kill(controller, no_restart=False)`` (Ray restarts it);
- ``node``: remove a worker node that hosts a leaf replica.

A request is *served* when it returns the right answer, *failed* when it raises, *hung* when it takes
longer than ``--timeout``. *Recovery* is the time from the fault until the leaf is back to 2 running
replicas (status polled every 0.1 s; "-" if not within 60 s).

    python bench/faults.py                       # every scenario, both systems
    python bench/faults.py --scenario node --system servegraph --requests 300 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

SCENARIOS = ("replica", "controller", "node")
SYSTEMS = ("servegraph", "rayserve")


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


# The application, written once per system (servegraph's handles follow the seed; Ray Serve's are the new API).
def servegraph_app():
    import servegraph as serve

    @serve.deployment(num_replicas=2, health_check_period_s=1)
    class Leaf:
        def say_hello(self, name: str) -> str:
            return f"Hola {name}"

        def node(self) -> str:
            return _node_id()

    @serve.deployment
    class Ingress:
        def __init__(self, leaf):
            self.leaf = leaf

        async def __call__(self, body: dict) -> str:
            return await (await self.leaf.say_hello.remote(body["name"]))

    return Ingress.bind(Leaf.bind())


def rayserve_app():
    from ray import serve

    @serve.deployment(num_replicas=2, health_check_period_s=1, ray_actor_options={"num_cpus": 0.1})
    class Leaf:
        def say_hello(self, name: str) -> str:
            return f"Hola {name}"

        def node(self) -> str:
            return _node_id()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Ingress:
        def __init__(self, leaf):
            self.leaf = leaf

        async def __call__(self, body: dict) -> str:
            return await self.leaf.say_hello.remote(body["name"])

    return Ingress.bind(Leaf.bind())


class System:
    """What a scenario needs from a serving system."""

    def __init__(self, name: str):
        self.name = name
        if name == "servegraph":
            import servegraph as serve

            self.serve = serve
            handle = serve.run(servegraph_app(), name="faults", route_prefix=None, http=False)
            self.call = lambda: ray.get(handle.remote({"name": "Dora"}), timeout=ARGS.timeout)
            self.leaf_nodes = lambda: self._leaf_nodes(serve.get_deployment_handle("Leaf", "faults"))
        else:
            from ray import serve

            self.serve = serve
            serve.start(http_options={"host": "127.0.0.1", "port": 0}, proxy_location="Disabled")
            handle = serve.run(rayserve_app(), name="faults", route_prefix=None)
            self.call = lambda: handle.remote({"name": "Dora"}).result(timeout_s=ARGS.timeout)
            self.leaf_nodes = lambda: self._leaf_nodes(serve.get_deployment_handle("Leaf", "faults"))

    @staticmethod
    def _leaf_nodes(handle) -> set[str]:
        return {handle.node.remote().result(timeout_s=30) for _ in range(20)}

    def running(self) -> int:
        try:
            states = self.serve.status().applications["faults"].deployments["Leaf"].replica_states
        except Exception:  # the controller is restarting
            return -1
        return int(states.get("RUNNING", 0)) if sum(states.values()) == states.get("RUNNING", 0) else -1

    def leaf_replica_names(self) -> list[str]:
        prefix = "SERVEGRAPH_REPLICA::faults#Leaf#" if self.name == "servegraph" else "SERVE_REPLICA::faults#Leaf#"
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]

    def namespace(self) -> str:
        return "servegraph" if self.name == "servegraph" else "serve"

    def controller(self):
        if self.name == "servegraph":
            return ray.get_actor("servegraph_controller", namespace="servegraph")
        return ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")

    def shutdown(self) -> None:
        self.serve.shutdown()


def run_one(scenario: str, system_name: str) -> dict:
    # Every node's processes (and the workers they start) inherit this environment, so the deployments'
    # modules are found without a job runtime_env (with one, Ray starts each worker as two processes).
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.path.dirname(here), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="servegraph", log_to_driver=False, logging_level="ERROR")
    try:
        system = System(system_name)
        served = failed = hung = 0
        lock = threading.Lock()
        counter = iter(range(ARGS.requests))
        fault_at = int(ARGS.requests * 0.15)
        fault_time: list[float] = []
        errors: list[str] = []

        def inject() -> None:
            if scenario == "replica":
                victim = ray.get_actor(system.leaf_replica_names()[0], namespace=system.namespace())
                ray.kill(victim)
            elif scenario == "controller":
                ray.kill(system.controller(), no_restart=False)
            else:
                on = system.leaf_nodes()
                victim = next(w for w in workers if w.node_id in on)
                cluster.remove_node(victim)
            fault_time.append(time.monotonic())

        def caller() -> None:
            nonlocal served, failed, hung
            for i in counter:
                if i == fault_at:
                    threading.Thread(target=inject, daemon=True).start()
                start = time.monotonic()
                try:
                    ok = system.call() == "Hola Dora"
                    with lock:
                        served += ok
                        failed += not ok
                except Exception as exc:
                    with lock:
                        if time.monotonic() - start >= ARGS.timeout:
                            hung += 1
                        else:
                            failed += 1
                            errors.append(type(exc).__name__)

        before = set(system.leaf_replica_names())
        threads = [threading.Thread(target=caller) for _ in range(ARGS.threads)]
        for t in threads:
            t.start()
        # Recovery: from the fault to 2 running leaf replicas again (new ones, where replicas were lost).
        recovery = None
        deadline = time.monotonic() + 600
        while not fault_time and time.monotonic() < deadline:
            time.sleep(0.01)
        while fault_time and time.monotonic() - fault_time[0] < 60:
            names = set(system.leaf_replica_names())
            replaced = scenario == "controller" or names - before
            if system.running() == 2 and len(names) == 2 and replaced:
                recovery = time.monotonic() - fault_time[0]
                break
            time.sleep(0.1)
        for t in threads:
            t.join()
        system.shutdown()
        return {
            "scenario": scenario,
            "system": system_name,
            "requests": ARGS.requests,
            "served": served,
            "failed": failed,
            "hung": hung,
            "served_pct": round(100.0 * served / ARGS.requests, 2),
            "recovery_s": None if recovery is None else round(recovery, 2),
            "errors": sorted(set(errors)),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, action="append")
    parser.add_argument("--system", choices=SYSTEMS, action="append")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0, help="a request slower than this counts as hung")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    ARGS = parser.parse_args()
    rows = []
    for scenario in ARGS.scenario or SCENARIOS:
        for system in ARGS.system or SYSTEMS:
            print(f"running {scenario} on {system}...", file=sys.stderr, flush=True)
            row = run_one(scenario, system)
            rows.append(row)
            if ARGS.json:
                print(json.dumps(row), flush=True)
    if ARGS.json:
        return
    print(f"\n{ARGS.requests} handle requests per run, {ARGS.threads} callers, fault after 15%")
    print("| scenario | system | served | failed | hung | served % | back to 2 replicas (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
        print(f"| {r['scenario']} | {r['system']} | {r['served']} | {r['failed']} | {r['hung']} | {r['served_pct']:.2f} | {rec} |")
    recoveries = [r["recovery_s"] for r in rows if r["system"] == "servegraph" and r["recovery_s"] is not None]
    if recoveries:
        print(f"\nservegraph median recovery: {statistics.median(recoveries):.2f} s")


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
