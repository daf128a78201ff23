"""A load step on a 3-stage pipeline: how fast each system sizes every stage, side by side in one run.

The pipeline: Front -> Middle -> Leaf, each stage an async method waiting 50 ms (no CPU), Middle calling
Leaf twice per request (fan-out 2); every deployment ``max_ongoing_requests=4`` and autoscaling 1..8
(``target_ongoing_requests`` 2, ``upscale_delay_s`` 3, ``look_back_period_s`` 2). The load: 1 caller,
then a step to 24 concurrent callers held ``--hold`` seconds (60), then 1 caller again. Each system
runs in a child process with a cluster of its own (servegraph, then Ray Serve 2.60), so they never
share the machine. Reported for each: when each stage first scaled and when it reached its steady size
(the size at the end of the hold), when every stage was at its steady size, p50/p99 latency in the
first 20 s after the step and over the last 20 s of the hold, requests failed, and replica-seconds used.
A PNG of replicas per stage over time goes to ``--plot`` (needs matplotlib, in the ``bench`` extra).

With ``--zero``: autoscaling 0..8 instead, the graph idles at zero before the step, and the latency of
the first request after idle is reported.

Run from the repository root::

    python bench/graph_autoscaling.py                  # about 6 minutes
    python bench/graph_autoscaling.py --hold 30        # shorter
    python bench/graph_autoscaling.py --zero --hold 20 # from zero
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("Front", "Middle", "Leaf")
STEP_CALLERS = 24


def autoscaling(zero: bool) -> dict[str, Any]:
    return {
        "min_replicas": 0 if zero else 1,
        "initial_replicas": 0 if zero else 1,
        "max_replicas": 8,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 3.0,
        "downscale_delay_s": 10.0 if zero else 30.0,
        "look_back_period_s": 2.0,
        "metrics_interval_s": 0.5,
    }


class Leaf:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        return x


class Middle:
    def __init__(self, leaf: Any):
        self.leaf = leaf

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        first = await self.leaf.remote(x)
        return await self.leaf.remote(first)


class Front:
    def __init__(self, middle: Any):
        self.middle = middle

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        return await self.middle.remote(x)


def child(system: str, args: argparse.Namespace) -> None:
    """Run the step on one system; print JSON: replica samples, request samples, failures."""
    sys.path.insert(0, str(ROOT))
    import logging

    import ray

    ray.init(address="local", num_cpus=32, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    options = {"max_ongoing_requests": 4, "autoscaling_config": autoscaling(args.zero), "ray_actor_options": {"num_cpus": 0.1}}
    if system == "servegraph":
        import servegraph as serve

        def running() -> dict[str, int]:
            deps = serve.status().applications["pipeline"].deployments
            return {n: deps[n].replica_states.get("RUNNING", 0) for n in STAGES}
    else:
        from ray import serve  # type: ignore[no-redef]

        logging.getLogger("ray.serve").setLevel(logging.ERROR)
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        def running() -> dict[str, int]:
            deps = serve.status().applications["pipeline"].deployments
            return {n: deps[n].replica_states.get("RUNNING", 0) for n in STAGES}

    deploy = serve.deployment
    app = deploy(Front, **options).bind(deploy(Middle, **options).bind(deploy(Leaf, **options).bind()))
    handle = serve.run(app, name="pipeline", route_prefix=None)
    handle = handle.options(use_new_handle_api=True) if system == "servegraph" else handle

    records: list[tuple[float, float, bool]] = []  # (sent at, latency s, ok)
    lock = threading.Lock()
    stop = threading.Event()

    def caller(n: int) -> None:
        while not stop.is_set():
            if n > 0 and not step.is_set():
                step.wait(0.1)
                continue
            if n > 0 and done_step.is_set():
                return
            sent = time.monotonic()
            try:
                ok = handle.remote(n).result(timeout_s=120) == n
            except Exception:
                ok = False
            with lock:
                records.append((sent, time.monotonic() - sent, ok))

    step, done_step = threading.Event(), threading.Event()
    if args.zero:  # idle at zero first
        deadline = time.monotonic() + 120
        while sum(running().values()) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        first = time.monotonic()
        handle.remote(0).result(timeout_s=120)
        first_latency = time.monotonic() - first
    else:
        first_latency = None
    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(STEP_CALLERS)]
    for t in threads:
        t.start()
    time.sleep(5)  # one caller, the steady state before the step
    samples: list[tuple[float, dict[str, int]]] = []
    t0 = time.monotonic()
    step.set()
    while time.monotonic() - t0 < args.hold:
        samples.append((time.monotonic() - t0, running()))
        time.sleep(0.5)
    done_step.set()
    tail_end = time.monotonic() + args.tail
    while time.monotonic() < tail_end:
        samples.append((time.monotonic() - t0, running()))
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=130)
    out = {
        "samples": samples,
        "records": [(sent - t0, latency, ok) for sent, latency, ok in records],
        "first_latency": first_latency,
    }
    print("RESULT " + json.dumps(out), flush=True)
    serve.shutdown()
    ray.shutdown()


def summarize(data: dict[str, Any], hold: float) -> dict[str, Any]:
    samples = [(t, counts) for t, counts in data["samples"]]
    during = [(t, c) for t, c in samples if t <= hold]
    final = during[-1][1]
    first_scaled = {}
    reached = {}
    for stage in STAGES:
        start = during[0][1][stage]
        first_scaled[stage] = next((t for t, c in during if c[stage] > start), None)
        # Reached its steady size: from this sample on, it stays at its final size for the rest of the hold.
        reached[stage] = None
        for i, (t, _) in enumerate(during):
            if all(c[stage] == final[stage] for _, c in during[i:]):
                reached[stage] = t
                break
    every = max((v for v in reached.values() if v is not None), default=None) if all(reached.values()) else None
    records = data["records"]
    early = sorted(lat for sent, lat, ok in records if 0 <= sent < 20 and ok)
    late = sorted(lat for sent, lat, ok in records if hold - 20 <= sent < hold and ok)
    failed = sum(1 for _, _, ok in records if not ok)
    replica_seconds = 0.0
    for (t, c), (t2, _) in zip(samples, samples[1:], strict=False):
        replica_seconds += sum(c.values()) * (t2 - t)
    return {
        "final": final,
        "first_scaled": first_scaled,
        "reached": reached,
        "every": every,
        "early_p50": _pct(early, 0.5),
        "early_p99": _pct(early, 0.99),
        "late_p50": _pct(late, 0.5),
        "late_p99": _pct(late, 0.99),
        "failed": failed,
        "served": sum(1 for _, _, ok in records if ok),
        "replica_seconds": replica_seconds,
        "first_latency": data["first_latency"],
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * q))] if q != 0.5 else statistics.median(values)


def _fmt(v: float | None, unit: str = "s") -> str:
    return "–" if v is None else f"{v:.1f} {unit}" if unit == "s" else f"{v * 1e3:.0f} ms"


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.5), sharey=True)
    for ax, (system, data) in zip(axes, results.items(), strict=True):
        for stage in STAGES:
            ax.step([t for t, _ in data["samples"]], [c[stage] for _, c in data["samples"]], where="post", label=stage)
        ax.set_title(system)
        ax.set_xlabel("seconds after the step")
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.legend()
    axes[0].set_ylabel("running replicas")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the 24 callers are held")
    parser.add_argument("--tail", type=float, default=10.0, help="seconds watched after the step ends")
    parser.add_argument("--zero", action="store_true", help="autoscaling from zero: idle at zero before the step")
    parser.add_argument("--plot", default="", help="write replicas per stage over time to this PNG")
    parser.add_argument("--systems", default="servegraph,rayserve")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args)
        return 0
    results: dict[str, dict[str, Any]] = {}
    for system in args.systems.split(","):
        print(f"{system}: deploying, then the load step ...", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--child", system, "--hold", str(args.hold), "--tail", str(args.tail)]
        if args.zero:
            command.append("--zero")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.hold + args.tail + 600)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"{system} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[system] = json.loads(found[-1].removeprefix("RESULT "))
    names = {"servegraph": "servegraph", "rayserve": "Ray Serve 2.60"}
    summaries = {s: summarize(d, args.hold) for s, d in results.items()}
    print(f"\nload step 1 -> {STEP_CALLERS} callers held {args.hold:g} s{' (from zero)' if args.zero else ''}; "
          "times are seconds after the step")  # fmt: skip
    header = "| | " + " | ".join(names[s] for s in summaries) + " |"
    print(header)
    print("|---|" + "---|" * len(summaries))

    def row(label: str, fn: Any) -> None:
        print(f"| {label} | " + " | ".join(fn(v) for v in summaries.values()) + " |")

    for stage in STAGES:
        row(
            f"{stage}: first scaled / at steady size (replicas)",
            lambda v, st=stage: f"{_fmt(v['first_scaled'][st])} / {_fmt(v['reached'][st])} ({v['final'][st]})",
        )
    row("every stage at its steady size", lambda v: _fmt(v["every"]))
    row("p50 / p99, first 20 s after the step", lambda v: f"{_fmt(v['early_p50'], 'ms')} / {_fmt(v['early_p99'], 'ms')}")
    row("p50 / p99, last 20 s of the hold", lambda v: f"{_fmt(v['late_p50'], 'ms')} / {_fmt(v['late_p99'], 'ms')}")
    row("requests served / failed", lambda v: f"{v['served']} / {v['failed']}")
    row("replica-seconds", lambda v: f"{v['replica_seconds']:.0f}")
    if args.zero:
        row("first request after idle at zero", lambda v: _fmt(v["first_latency"], "ms"))
    if "servegraph" in summaries and "rayserve" in summaries:
        sg, rs = summaries["servegraph"], summaries["rayserve"]
        if sg["every"] is not None and rs["every"]:
            print(f"\nevery stage at steady size: {sg['every'] / rs['every']:.2f}x Ray Serve's time")
        if sg["early_p99"] and rs["early_p99"]:
            print(f"p99 in the first 20 s: {sg['early_p99'] / rs['early_p99']:.2f}x Ray Serve's")
    if args.plot:
        plot(results, args.plot)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
