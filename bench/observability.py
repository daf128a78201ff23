"""What metrics cost: the same requests with servegraph's metrics on and off, side by side in one run.

Metrics are read by every process of a cluster when it starts (``SERVEGRAPH_METRICS``), so each side runs
in a child process with a cluster of its own; rounds alternate which side goes first, and each row's
figure is the median over rounds. Rows:

- **hello, handle**: the hello graph (classifier -> Spanish/French responder) through a DeploymentHandle;
- **hello, HTTP**: the same graph over HTTP through the proxy (keep-alive connection);
- **chain5, plan** / **chain5, compiled**: five stages of an InputNode graph, on the plan and on the
  compiled path.

Before those rows, what metrics add per hop is measured in-process, where it is not lost in noise: a
replica's bookkeeping around one request (context, timing, the recorded event) with metrics on and off,
and what the flusher then pays Ray for each recorded request (``ray.util.metrics`` observe and inc).

Each row gives sequential latency (p50, p99 of requests sent one at a time) and throughput (requests/s
with ``--callers`` threads sending back to back). Traces and JSON logs are off on both sides (they are
off by default).

Run from the repository root::

    python bench/observability.py            # 5 rounds, about 7 minutes
    python bench/observability.py --quick    # 1 round, fewer requests
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHAIN_LENGTH = 5
ROWS = ("hello, handle", "hello, HTTP", "chain5, plan", "chain5, compiled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequential(call: Callable[[int], Any], count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def throughput(make_call: Callable[[], Callable[[int], Any]], callers: int, per_caller: int) -> float:
    """Requests/s with ``callers`` threads, each with its own caller (an HTTP connection, say), back to back."""
    barrier = threading.Barrier(callers + 1)

    def caller(_: int) -> None:
        call = make_call()
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


def child(args: argparse.Namespace) -> None:
    """One side: a cluster of its own, the four rows, JSON on stdout."""
    sys.path.insert(0, str(ROOT))
    import ray

    import servegraph as serve
    from servegraph import InputNode

    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False, logging_level="ERROR")

    @serve.deployment
    class SpanishResponder:
        def say_hello(self, name: str) -> str:
            return f"Hola {name}"

    @serve.deployment
    class FrenchResponder:
        def say_hello(self, name: str) -> str:
            return f"Bonjour {name}"

    @serve.deployment
    class Classifier:
        def __init__(self, spanish: Any, french: Any):
            self.spanish, self.french = spanish, french

        async def __call__(self, request: Any) -> str:
            body = request if isinstance(request, dict) else await request.json()
            responder = self.spanish if body["language"] == "spanish" else self.french
            return await (await responder.say_hello.remote(body["name"]))

    @serve.deployment
    class Stage:
        def __call__(self, x: int) -> int:
            return x + 1

    port = free_port()
    hello = serve.run(Classifier.bind(SpanishResponder.bind(), FrenchResponder.bind()), name="hello", port=port)
    with InputNode() as inp:
        node = inp
        for i in range(CHAIN_LENGTH):
            node = Stage.options(name=f"Stage{i}").bind().__call__.bind(node)
    compiled = serve.run(node, name="chain", route_prefix=None, http=False).options(use_new_handle_api=True)
    plan = serve.run(node, name="chain-plan", route_prefix=None, http=False, compiled=False)
    from servegraph.runtime.data.lanes import lanes_for

    lanes = lanes_for("chain")
    deadline = time.monotonic() + 60
    while lanes.active() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    body = {"language": "spanish", "name": "Dora"}
    hello_new = hello.options(use_new_handle_api=True)

    def http_caller() -> Callable[[int], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        payload = json.dumps(body)

        def call(_: int) -> None:
            conn.request("POST", "/", payload, {"content-type": "application/json"})
            response = conn.getresponse()
            assert response.read() == b"Hola Dora", response.status

        return call

    def checked(call: Callable[[int], Any], want: Callable[[int], Any]) -> Callable[[int], Any]:
        def run(i: int) -> None:
            got = call(i)
            assert got == want(i), (got, want(i))

        return run

    rows: dict[str, Callable[[], Callable[[int], Any]]] = {
        "hello, handle": lambda: checked(lambda _: hello_new.remote(body).result(), lambda _: "Hola Dora"),
        "hello, HTTP": http_caller,
        "chain5, plan": lambda: checked(lambda x: ray.get(plan.remote(x)), lambda x: x + CHAIN_LENGTH),
        "chain5, compiled": lambda: checked(lambda x: compiled.remote(x).result(), lambda x: x + CHAIN_LENGTH),
    }
    out: dict[str, dict[str, float]] = {}
    for name, make in rows.items():
        call = make()
        sequential(call, 30)  # warm up
        samples = sorted(sequential(call, args.requests))
        rate = throughput(make, args.callers, args.per_caller)
        out[name] = {
            "p50_ms": statistics.median(samples),
            "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            "rps": rate,
        }
    print("RESULT " + json.dumps(out), flush=True)
    serve.shutdown()
    ray.shutdown()


def per_hop_costs() -> dict[str, float]:
    """Microseconds of what a replica does per request for metrics, measured in this process."""
    import timeit

    sys.path.insert(0, str(ROOT))
    from servegraph.runtime.actors import replica
    from servegraph.runtime.common import records, telemetry

    class Replica:
        _app, _deployment, _replica_id = "app", "B", "r1"

    header = records.call_header("predict", ("id", "/", "app", ""), ("A",), time.time())

    def handled() -> None:
        with replica._handling(Replica, header):  # type: ignore[arg-type]
            pass

    n = 100_000
    saved = telemetry.ENABLED
    try:
        telemetry.ENABLED = True
        on = timeit.timeit(handled, number=n) / n * 1e6
        telemetry.ENABLED = False
        off = timeit.timeit(handled, number=n) / n * 1e6
    finally:
        telemetry.ENABLED = saved
        telemetry._events.clear()
    return {"handling_on_us": on, "handling_off_us": off}


def ray_metric_costs() -> dict[str, float]:
    """Microseconds per ``ray.util.metrics`` observe and inc (what the flusher pays per recorded request)."""
    import timeit

    import ray
    from ray.util import metrics

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tags = {"deployment": "B", "replica": "r1", "application": "app", "route": "/"}
    histogram = metrics.Histogram("bench_latency_ms", description="bench", boundaries=[1, 10, 100], tag_keys=tuple(tags))
    counter = metrics.Counter("bench_requests", description="bench", tag_keys=tuple(tags))
    n = 20_000
    observe = timeit.timeit(lambda: histogram.observe(3.0, tags=tags), number=n) / n * 1e6
    inc = timeit.timeit(lambda: counter.inc(1, tags=tags), number=n) / n * 1e6
    ray.shutdown()
    return {"observe_us": observe, "inc_us": inc}


def run_side(metrics_on: bool, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    env = {**os.environ, "SERVEGRAPH_METRICS": "1" if metrics_on else "0", "PYTHONPATH": str(ROOT)}
    env.pop("SERVEGRAPH_TRACING", None)
    command = [sys.executable, __file__, "--child", "--requests", str(args.requests), "--callers", str(args.callers),
               "--per-caller", str(args.per_caller)]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"the {'metrics on' if metrics_on else 'metrics off'} side failed:\n{proc.stderr[-3000:]}")
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not found:
        raise SystemExit(f"the {'metrics on' if metrics_on else 'metrics off'} side printed no result:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(found[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, fewer requests")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs both sides, alternating which goes first")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per row and side")
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers for throughput")
    parser.add_argument("--per-caller", type=int, default=40, help="requests per caller for throughput")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.rounds, args.requests, args.per_caller = 1, 150, 20
    hop = per_hop_costs()
    ray_costs = ray_metric_costs()
    print(
        f"per hop, in-process: a replica's bookkeeping {hop['handling_on_us']:.2f} us with metrics on, "
        f"{hop['handling_off_us']:.2f} us off (+{hop['handling_on_us'] - hop['handling_off_us']:.2f} us); the flusher then pays Ray "
        f"{ray_costs['observe_us']:.1f} us per observed latency (two per hop: the deployment's and the edge's) and "
        f"{ray_costs['inc_us']:.1f} us per counter update (one per event kind and flush, not per request)"
    )
    results: dict[bool, list[dict[str, dict[str, float]]]] = {True: [], False: []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for side in order:
            print(f"round {r + 1}/{args.rounds}: metrics {'on' if side else 'off'} ...", file=sys.stderr, flush=True)
            results[side].append(run_side(side, args))

    def median(side: bool, row: str, key: str) -> float:
        return statistics.median(run[row][key] for run in results[side])

    print(f"\nmetrics on vs off, medians of {args.rounds} round(s); {args.requests} sequential requests a row; "
          f"throughput with {args.callers} callers x {args.per_caller}")  # fmt: skip
    print("| row | p50 on ms | p50 off ms | p50 cost | p99 on ms | p99 off ms | req/s on | req/s off | throughput cost |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for row in ROWS:
        p50_on, p50_off = median(True, row, "p50_ms"), median(False, row, "p50_ms")
        rps_on, rps_off = median(True, row, "rps"), median(False, row, "rps")
        p50_cost = p50_on / p50_off - 1
        rps_cost = 1 - rps_on / rps_off
        worst = max(worst, p50_cost, rps_cost)
        print(
            f"| {row} | {p50_on:.2f} | {p50_off:.2f} | {p50_cost:+.1%} | {median(True, row, 'p99_ms'):.2f} | "
            f"{median(False, row, 'p99_ms'):.2f} | {rps_on:.0f} | {rps_off:.0f} | {rps_cost:+.1%} |"
        )
    print(f"\nlargest cost: {worst:+.1%} (budget 5%: {'within' if worst <= 0.05 else 'OVER'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
