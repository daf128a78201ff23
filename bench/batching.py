"""Throughput of a batched model vs the same model unbatched, 64 concurrent callers, servegraph and
Ray Serve side by side.

The model costs a fixed time per call whatever the batch size and runs one call at a time (as a GPU
forward pass roughly does), so grouping requests with ``@serve.batch`` multiplies throughput. Both systems get the same code, one
replica per model, ``max_ongoing_requests`` high enough for 64 callers.

    python bench/batching.py [--requests 640] [--concurrency 64] [--cost-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

MAX_BATCH_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.005


def models(serve: Any, cost_s: float) -> tuple[Any, Any]:
    """(unbatched, batched) applications written against ``serve`` (servegraph or ray.serve)."""
    options = {"max_ongoing_requests": 128, "ray_actor_options": {"num_cpus": 0.1}}

    # One model call at a time per replica (a lock), as one accelerator runs one forward pass at a time.
    @serve.deployment(**options)
    class Unbatched:
        def __init__(self) -> None:
            self.device = asyncio.Lock()

        async def __call__(self, x: int) -> int:
            async with self.device:
                await asyncio.sleep(cost_s)
            return x * 2

    @serve.deployment(**options)
    class Batched:
        def __init__(self) -> None:
            self.device = asyncio.Lock()

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
        async def __call__(self, xs: list) -> list:
            async with self.device:
                await asyncio.sleep(cost_s)
            return [x * 2 for x in xs]

    return Unbatched.bind(), Batched.bind()


def throughput(call: Callable[[int], Any], requests: int, concurrency: int) -> float:
    """Requests per second with ``concurrency`` callers each sending one request at a time."""
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(concurrency)))  # warm up: every caller once
        started = time.perf_counter()
        results = list(pool.map(call, range(requests)))
        elapsed = time.perf_counter() - started
    assert results == [2 * i for i in range(requests)], "a wrong answer"
    return requests / elapsed


def run_servegraph(cost_s: float, requests: int, concurrency: int) -> dict[str, float]:
    import servegraph as serve

    out = {}
    for label, app in zip(("unbatched", "batched"), models(serve, cost_s), strict=True):
        handle = serve.run(app, name=f"bench-{label}", route_prefix=None, http=False)
        out[label] = throughput(lambda x, h=handle: ray.get(h.remote(x)), requests, concurrency)
        serve.delete(f"bench-{label}")
    serve.shutdown()
    return out


def run_ray_serve(cost_s: float, requests: int, concurrency: int) -> dict[str, float]:
    from ray import serve

    out = {}
    for label, app in zip(("unbatched", "batched"), models(serve, cost_s), strict=True):
        handle = serve.run(app, name=f"bench-{label}", route_prefix=None)
        out[label] = throughput(lambda x, h=handle: h.remote(x).result(), requests, concurrency)
        serve.delete(f"bench-{label}")
    serve.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cost-ms", type=float, default=20.0, help="time one model call takes, any batch size")
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--systems", default="servegraph,rayserve")
    args = parser.parse_args()
    cost_s = args.cost_ms / 1000
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    rows = []
    try:
        for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
            run = {"servegraph": run_servegraph, "rayserve": run_ray_serve}[system]
            result = run(cost_s, args.requests, args.concurrency)
            rows.append((system, result["unbatched"], result["batched"]))
    finally:
        ray.shutdown()
    print(
        f"{args.requests} requests, {args.concurrency} concurrent callers, model call {args.cost_ms:g} ms, "
        f"max_batch_size={MAX_BATCH_SIZE}, batch_wait_timeout_s={BATCH_WAIT_TIMEOUT_S}"
    )
    print("| system | unbatched req/s | batched req/s | batched / unbatched |")
    print("|---|---|---|---|")
    for system, unbatched, batched in rows:
        print(f"| {system} | {unbatched:.0f} | {batched:.0f} | {batched / unbatched:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
