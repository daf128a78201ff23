"""The compiled path against the plan path and Ray's own compiled graph, in one run.

Rows (answers checked):

- **chain5**: five stages, each adding one; servegraph compiled (through a DeploymentHandle, and
  through the seed's sync handle, whose ObjectRef costs an object-store round trip), servegraph plan
  (``compiled=False``), Ray Compiled Graphs over five plain actors, raw actors chained by ObjectRef.
  p50/p99 of requests sent one at a time.
- **pipeline**: ``examples/pipeline.py`` (preprocess -> two models -> combine) on both paths:
  p50 of sequential requests, and requests/s with ``--callers`` threads (default 64) each sending
  requests back to back.

Blocks of requests alternate between rows so a drifting machine treats them alike; the table
prints medians. Run from the repository root::

    python bench/compiled.py            # ~1 minute
    python bench/compiled.py --quick
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "examples"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import ray  # noqa: E402
from latency import wait_for_lanes  # noqa: E402  (bench/ is on sys.path when run as a script)

import servegraph as serve  # noqa: E402
from servegraph import InputNode  # noqa: E402

CHAIN_LENGTH = 5


class Stage:
    def __call__(self, x: int) -> int:
        return x + 1


def latencies(call: Callable[[int], Any], expected: Callable[[int], Any], count: int, out: list[float]) -> None:
    for i in range(count):
        start = time.perf_counter()
        got = call(i)
        out.append(time.perf_counter() - start)
        if got != expected(i):
            raise AssertionError(f"got {got!r}, expected {expected(i)!r}")


def throughput(call: Callable[[int], Any], callers: int, per_caller: int) -> float:
    """Requests/s with ``callers`` threads each sending ``per_caller`` requests back to back."""
    barrier = threading.Barrier(callers + 1)

    def caller(_: int) -> None:
        barrier.wait()
        for i in range(per_caller):
            call(i)

    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(caller, n) for n in range(callers)]
        barrier.wait()
        start = time.perf_counter()
        for future in futures:
            future.result()
        return callers * per_caller / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers for the throughput rows")
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks per row")
    args = parser.parse_args(argv)
    block = 100 if args.quick else 300
    per_caller = 10 if args.quick else 30

    ray.init(num_cpus=16, include_dashboard=False, namespace="servegraph", log_to_driver=False)
    import pipeline

    deployment = serve.deployment(Stage)
    with InputNode() as inp:
        node = inp
        for i in range(CHAIN_LENGTH):
            node = deployment.options(name=f"Stage{i}").bind().__call__.bind(node)
    compiled = serve.run(node, name="chain", route_prefix=None, http=False)
    plan = serve.run(node, name="chain-plan", route_prefix=None, http=False, compiled=False)
    pipe = serve.run(pipeline.app, name="pipeline", route_prefix=None, http=False)
    pipe_plan = serve.run(pipeline.app, name="pipeline-plan", route_prefix=None, http=False, compiled=False)
    wait_for_lanes("chain")
    wait_for_lanes("pipeline")

    actors = [ray.remote(Stage).options(num_cpus=0.1).remote() for _ in range(CHAIN_LENGTH)]
    with ray.dag.InputNode() as rinp:
        rnode: Any = rinp
        for actor in actors:
            rnode = actor.__call__.bind(rnode)
    ray_cg = rnode.experimental_compile(_max_inflight_executions=64)

    def raw(x: int) -> Any:
        ref: Any = x
        for actor in actors:
            ref = actor.__call__.remote(ref)
        return ray.get(ref)

    text = {"text": "  Hello World  "}
    want = ray.get(pipe_plan.remote(text))
    compiled_new = compiled.options(use_new_handle_api=True)
    pipe_new = pipe.options(use_new_handle_api=True)
    rows: dict[str, tuple[Callable[[int], Any], Callable[[int], Any]]] = {
        "chain5 servegraph compiled, DeploymentHandle": (
            lambda x: compiled_new.remote(x).result(),
            lambda x: x + CHAIN_LENGTH,
        ),
        "chain5 servegraph compiled, sync handle (ObjectRef)": (
            lambda x: ray.get(compiled.remote(x)),
            lambda x: x + CHAIN_LENGTH,
        ),
        "chain5 servegraph plan": (lambda x: ray.get(plan.remote(x)), lambda x: x + CHAIN_LENGTH),
        "chain5 Ray Compiled Graphs": (lambda x: ray.get(ray_cg.execute(x)), lambda x: x + CHAIN_LENGTH),
        "chain5 raw actors (ObjectRefs)": (raw, lambda x: x + CHAIN_LENGTH),
        "pipeline servegraph compiled, DeploymentHandle": (lambda _: pipe_new.remote(text).result(), lambda _: want),
        "pipeline servegraph compiled, sync handle": (lambda _: ray.get(pipe.remote(text)), lambda _: want),
        "pipeline servegraph plan": (lambda _: ray.get(pipe_plan.remote(text)), lambda _: want),
    }
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for call, expected in rows.values():  # warm up, answers checked
        latencies(call, expected, 20, [])
    for _ in range(args.rounds):
        for name, (call, expected) in rows.items():
            latencies(call, expected, block // args.rounds, samples[name])
    rates: dict[str, list[float]] = {
        "pipeline servegraph compiled, DeploymentHandle": [],
        "pipeline servegraph compiled, sync handle": [],
        "pipeline servegraph plan": [],
    }
    for _ in range(max(1, args.rounds // 2)):
        for name in rates:
            rates[name].append(throughput(rows[name][0], args.callers, per_caller))

    floor = statistics.median(samples["chain5 Ray Compiled Graphs"])
    print(f"\nRay {ray.__version__}, {len(samples['chain5 servegraph plan'])} requests a row, medians; "
          f"throughput: {args.callers} callers x {per_caller} requests")
    print("| row | p50 ms | p99 ms | p50 vs Ray CG | req/s |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        values.sort()
        p50 = statistics.median(values)
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        rate = f"{statistics.median(rates[name]):.0f}" if name in rates else "-"
        print(f"| {name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {p50 / floor:.2f}x | {rate} |")
    ratio = statistics.median(samples["chain5 servegraph compiled, DeploymentHandle"]) / floor
    print(f"\nchain5 compiled at {ratio:.2f}x Ray Compiled Graphs' p50 (goal <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")
    ray_cg.teardown()
    serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
