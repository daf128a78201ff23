"""Ray compiled graphs under actor kills: across nodes, and on one node (why servegraph's lanes never cross a node).

Plain Ray, no servegraph: a three-actor compiled graph (``experimental_compile``) runs requests from
the driver in a loop while one of its actors is killed. Each round uses a fresh 3-node
``ray.cluster_utils.Cluster`` (a crashed raylet takes its node, and often the cluster, with it):

- ``cross-node``: the three actors on three different nodes (the driver on the head), so results
  cross nodes through the raylets' mutable-object channels;
- ``node-local``: the three actors on the driver's node, so every channel is that node's shared memory.

A round counts a *raylet crash* when any node's raylet log has a fatal line
(``Check failed``, ``FATAL``, ``SIGSEGV``); on Ray 2.60 the cross-node crash reads
``experimental_mutable_object_provider.cc:154 Check failed: ... ChannelError: Channel closed``.

    python bench/cgraph_crash.py                     # 5 rounds of each mode
    python bench/cgraph_crash.py --rounds 10 --mode cross-node
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import threading
import time

import ray
from ray.cluster_utils import Cluster
from ray.dag import InputNode

MODES = ("cross-node", "node-local")
FATAL = ("Check failed", "FATAL", "SIGSEGV")


@ray.remote(num_cpus=0.1)
class Stage:
    def f(self, x: int) -> int:
        return x + 1


def raylet_crash_lines(session_dir: str) -> list[str]:
    hits = []
    for path in sorted(glob.glob(os.path.join(session_dir, "logs", "raylet*.out"))):
        with open(path, errors="replace") as fh:
            hits += [f"{os.path.basename(path)}: {line.strip()[:160]}" for line in fh if any(f in line for f in FATAL)]
    return hits


def one_round(mode: str, rng: random.Random) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False, "resources": {"n0": 10}})
    for i in (1, 2):
        cluster.add_node(num_cpus=2, resources={f"n{i}": 10})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    session_dir = ray._private.worker._global_node.get_session_dir_path()  # where every node's logs are
    victim = rng.choice((1, 2))
    errors: set[str] = set()
    served = 0
    try:
        nodes = ("n0", "n1", "n2") if mode == "cross-node" else ("n0", "n0", "n0")
        actors = [Stage.options(resources={n: 0.01}).remote() for n in nodes]
        ray.get([a.f.remote(0) for a in actors], timeout=60)
        with InputNode() as inp:
            dag = actors[2].f.bind(actors[1].f.bind(actors[0].f.bind(inp)))
        compiled = dag.experimental_compile(_max_inflight_executions=4)
        stop = threading.Event()

        def load() -> None:
            nonlocal served
            while not stop.is_set():
                try:
                    refs = [compiled.execute(i) for i in range(4)]
                    for ref in refs:
                        ref.get(timeout=10)
                        served += 1
                except Exception as exc:
                    errors.add(type(exc).__name__)
                    time.sleep(0.05)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(1.0)
        ray.kill(actors[victim])
        time.sleep(3.0)  # a crashing raylet writes its fatal line within this
        stop.set()
        thread.join(15)
    except Exception as exc:
        errors.add(f"setup: {type(exc).__name__}")
    crashes = raylet_crash_lines(session_dir)
    try:
        ray.shutdown()
    finally:
        cluster.shutdown()
    return {"mode": mode, "killed": f"stage {victim}", "served": served, "errors": sorted(errors), "raylet_crash": bool(crashes),
            "lines": crashes[:2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for mode in args.mode or MODES:
        for i in range(args.rounds):
            row = one_round(mode, rng)
            rows.append(row)
            print(json.dumps(row) if args.json else f"{mode} round {i}: raylet crash={row['raylet_crash']} "
                  f"served={row['served']} errors={row['errors']}", flush=True)
    print("\n| mode | rounds | rounds with a raylet crash |")
    print("|---|---|---|")
    for mode in args.mode or MODES:
        mine = [r for r in rows if r["mode"] == mode]
        print(f"| {mode} | {len(mine)} | {sum(r['raylet_crash'] for r in mine)} |")


if __name__ == "__main__":
    main()
