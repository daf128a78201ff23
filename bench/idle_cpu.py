"""What a deployed graph costs while nobody calls it: CPU of the whole local cluster, side by side in one run.

Each row runs in a child process of its own with a new local Ray cluster (so no row pays for another's
processes): it deploys the pipeline example (an InputNode graph of four deployments: preprocess, two
models, combine), sends ``--requests`` requests, waits ``--settle`` seconds, then sums the CPU time of
every process of that cluster (the child and everything it started: GCS, raylet, controller, proxy,
replicas) over ``--window`` seconds of no traffic, and reports it as a share of one core.

- **servegraph**: the graph as servegraph runs it: its requests take the compiled path (a Ray compiled
  graph per lane), whose stages stop spinning once idle.
- **servegraph, spinning lanes**: the same with ``SERVEGRAPH_LANE_IDLE_S`` set beyond the window, so every
  stage waits for its next value as Ray's compiled graphs do, by spinning.
- **servegraph, plan path**: the same graph deployed with ``serve.run(..., compiled=False)`` (no lanes).
- **Ray Serve**: Ray Serve 2.60 running the same deployments (``.bind()`` graph through its DAGDriver-free
  handle API: a plain ingress calling the three others), from the ``bench`` extra.
- **bare cluster**: a Ray cluster with nothing deployed, for the floor.

Rows alternate over ``--rounds`` rounds; each figure is the median. Run from the repository root::

    python bench/idle_cpu.py                # 3 rounds of 5 rows, each row a cluster start + 22 s
    python bench/idle_cpu.py --rounds 1 --systems servegraph,spinning
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = {
    "bare": "bare cluster",
    "servegraph": "servegraph",
    "spinning": "servegraph, spinning lanes",
    "plan": "servegraph, plan path",
    "rayserve": "Ray Serve",
}
TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every process descended from it."""
    from latency import tree_cpu_ticks  # bench/ is on sys.path when run as a script

    return tree_cpu_ticks(root) / TICK


def _child(system: str, requests: int, settle: float, window: float) -> None:
    """Run in the child: deploy, call, settle, measure; print one JSON line."""
    sys.path[:0] = [str(ROOT), str(ROOT / "examples")]
    import ray

    ray.init(num_cpus=8, include_dashboard=False, namespace=f"idle-{system}", log_to_driver=False)
    if system == "rayserve":
        import pipeline as example
        from ray import serve as rserve

        @rserve.deployment
        class Ingress:
            def __init__(self, preprocess, length, vowels, combine):
                self.steps = (preprocess, length, vowels, combine)

            async def __call__(self, request: dict) -> dict:
                preprocess, length, vowels, combine = self.steps
                clean = await preprocess.remote(request["text"])
                n, v = await length.predict.remote(clean), await vowels.predict.remote(clean)
                return await combine.remote(n, v)

        def to_ray(d):
            return rserve.deployment(d.func_or_class, name=d.name)

        app = Ingress.bind(
            to_ray(example.preprocess).bind(),
            to_ray(example.LengthModel).bind(1.0),
            to_ray(example.VowelModel).bind(),
            to_ray(example.combine).bind(),
        )
        handle = rserve.run(app, name="pipeline", route_prefix=None)
        for _ in range(requests):
            assert handle.remote({"text": "Hello World"}).result(timeout_s=60)["score"] == 14.0
    elif system != "bare":
        import pipeline as example

        import servegraph as serve

        handle = serve.run(example.app, name="pipeline", route_prefix=None, http=False, compiled=system != "plan")
        for _ in range(requests):
            assert ray.get(handle.remote({"text": "Hello World"}), timeout=60)["score"] == 14.0
    time.sleep(settle)
    before = _tree_cpu_s(os.getpid())
    time.sleep(window)
    used = _tree_cpu_s(os.getpid()) - before
    print(json.dumps({"system": system, "cores": used / window}), flush=True)
    os._exit(0)  # the cluster goes with this process; no teardown is measured


def _run(system: str, args: argparse.Namespace) -> float:
    env = dict(os.environ)
    if system == "spinning":
        env["SERVEGRAPH_LANE_IDLE_S"] = str(10 * (args.settle + args.window))
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            system,
            "--requests",
            str(args.requests),
            "--settle",
            str(args.settle),
            "--window",
            str(args.window),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return float(json.loads(line)["cores"])
    raise RuntimeError(f"{system} gave no figure:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="requests sent before the quiet spell")
    parser.add_argument("--settle", type=float, default=12.0, help="seconds from the last request to the window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of quiet measured")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.requests, args.settle, args.window)
        return
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    figures: dict[str, list[float]] = {s: [] for s in systems}
    for round_ in range(args.rounds):
        order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
        for system in order:
            figures[system].append(_run(system, args))
            print(
                f"round {round_ + 1}: {SYSTEMS[system]}: {figures[system][-1]:.2f} cores", file=sys.stderr, flush=True
            )
    print(
        f"\nIdle CPU of a local cluster serving the pipeline example (median of {args.rounds} rounds; "
        f"{args.window:g} s measured {args.settle:g} s after the last of {args.requests} requests)\n"
    )
    print(f"{'system':<30} {'cores':>7}")
    for system in systems:
        print(f"{SYSTEMS[system]:<30} {statistics.median(figures[system]):>7.2f}")


if __name__ == "__main__":
    main()
