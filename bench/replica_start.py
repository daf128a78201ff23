"""A replica's start time and memory: servegraph vs Ray Serve, side by side in one run.

For each system, in one local Ray cluster: deploy an application of one deployment with one
replica and time ``serve.run`` until it returns (both return once the replica is ready), call the
replica once to learn its process id, then read that process's memory with psutil:

- **start s**: ``serve.run`` of a new one-replica application, the controller already running
  (each system deploys and deletes one warm-up application first). servegraph's figure includes
  compiling and checking the graph in the caller, as a user sees it.
- **CPU s**: CPU time (user + system) the replica's process used from its start to its first answer: Ray
  starting the worker, importing the framework, constructing the replica. (A worker with a runtime_env
  starts as two processes in one, each importing Ray: setup_worker.py, then the worker it execs.)
- **RSS MiB**: resident memory of the replica's actor process; **USS MiB**: the part no other process
  shares (Ray's worker processes share their libraries' pages, so USS is what a replica adds).
- **modules**: how many Python modules the replica has loaded, and whether networkx is among them.

Systems alternate run by run (the first system changes every run), and each figure is the median
over ``--runs`` runs. Ray Serve rows need the ``bench`` extra (``pip install -e '.[bench]'``).

Run from the repository root::

    python bench/replica_start.py               # 7 runs of each system, about two minutes
    python bench/replica_start.py --runs 3      # quicker
    python bench/replica_start.py --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as `python bench/replica_start.py`: make the checkout's servegraph importable without installing it.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

import servegraph as serve  # noqa: E402

#: Upper bound on any single wait, so a wedged system fails the run instead of hanging it.
TIMEOUT_S = 120.0
MIB = 1024 * 1024


class Model:
    """The one deployment: it answers with what the bench reads about its own process."""

    def __call__(self, _: Any = None) -> dict[str, Any]:
        import os
        import sys

        return {"pid": os.getpid(), "modules": len(sys.modules), "networkx": "networkx" in sys.modules}


def result_of(response: Any) -> Any:
    """A handle call's value, whichever kind of response the handle gives."""
    if isinstance(response, ray.ObjectRef):
        return ray.get(response, timeout=TIMEOUT_S)
    try:
        return response.result(timeout_s=TIMEOUT_S)
    except TypeError:  # a concurrent.futures-style result(timeout)
        return response.result(TIMEOUT_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Servegraph:
    name = "servegraph"

    def __init__(self) -> None:
        self.deployment = serve.deployment(Model)

    def start(self) -> None:
        pass  # the first deploy starts the controller; the warm-up deploy pays for it

    def deploy(self, app_name: str) -> Any:
        return serve.run(self.deployment.bind(), name=app_name, route_prefix=None, http=False)

    def delete(self, app_name: str) -> None:
        serve.delete(app_name)

    def stop(self) -> None:
        serve.shutdown()


class RayServe:
    name = "Ray Serve"

    def __init__(self) -> None:
        from ray import serve as rserve

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # it logs every deploy at INFO
        self.serve = rserve
        self.deployment = rserve.deployment(Model)

    def start(self) -> None:
        # Ray Serve always runs an HTTP proxy: keep it on loopback and off any port in use.
        self.serve.start(http_options={"host": "127.0.0.1", "port": free_port()})

    def deploy(self, app_name: str) -> Any:
        return self.serve.run(self.deployment.bind(), name=app_name, route_prefix=None)

    def delete(self, app_name: str) -> None:
        self.serve.delete(app_name)

    def stop(self) -> None:
        self.serve.shutdown()


def one_start(system: Any, app_name: str) -> dict[str, Any]:
    """Deploy one replica, time it, read its process, delete it."""
    import psutil  # Ray ships it in ray/thirdparty_files, on sys.path once ray is imported

    started = time.perf_counter()
    handle = system.deploy(app_name)
    elapsed = time.perf_counter() - started
    try:
        probe = result_of(handle.remote())
        process = psutil.Process(probe["pid"])
        memory, cpu = process.memory_full_info(), process.cpu_times()
    finally:
        system.delete(app_name)
    return {
        "start_s": elapsed,
        "cpu_s": cpu.user + cpu.system,
        "rss_mib": memory.rss / MIB,
        "uss_mib": memory.uss / MIB,
        "modules": probe["modules"],
        "networkx": probe["networkx"],
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(samples: dict[str, list[dict[str, Any]]]) -> str:
    header = f"{'system':<12} {'runs':>4} {'start s (min-max)':>22} {'CPU s':>6} {'RSS MiB':>9} {'USS MiB':>9} {'modules':>8} {'networkx':>9}"
    lines = [header, "-" * len(header)]
    for name, runs in samples.items():
        if not runs:
            continue
        starts = [r["start_s"] for r in runs]
        span = f"{median(starts):.2f} ({min(starts):.2f}-{max(starts):.2f})"
        lines.append(
            f"{name:<12} {len(runs):>4} {span:>22} {median([r['cpu_s'] for r in runs]):>6.2f} "
            f"{median([r['rss_mib'] for r in runs]):>9.1f} "
            f"{median([r['uss_mib'] for r in runs]):>9.1f} {int(median([r['modules'] for r in runs])):>8} "
            f"{'loaded' if any(r['networkx'] for r in runs) else 'no':>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured starts per system (default 7)")
    parser.add_argument(
        "--systems", default="servegraph,rayserve", help="comma-separated: servegraph, rayserve (default both)"
    )
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs the local Ray cluster advertises")
    parser.add_argument("--json", help="also write every sample to this file")
    args = parser.parse_args(argv)

    systems: list[Any] = []
    wanted = {s.strip() for s in args.systems.split(",") if s.strip()}
    if "servegraph" in wanted:
        systems.append(Servegraph())
    if "rayserve" in wanted:
        try:
            importlib.import_module("ray.serve")
            systems.append(RayServe())
        except ImportError:
            print("Ray Serve is not installed (pip install -e '.[bench]'): skipping its rows.", file=sys.stderr)

    started_at = datetime.datetime.now().astimezone()
    samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    stops: list[Callable[[], None]] = []
    try:
        for system in systems:
            system.start()
            stops.append(system.stop)
            one_start(system, "warmup")  # starts the controller; not counted
        for i in range(args.runs):
            order = systems[i % len(systems) :] + systems[: i % len(systems)]
            for system in order:
                sample = one_start(system, f"start{i}")
                samples[system.name].append(sample)
                print(
                    f"run {i + 1}/{args.runs} {system.name:<10} start {sample['start_s']:.2f} s, "
                    f"RSS {sample['rss_mib']:.1f} MiB, USS {sample['uss_mib']:.1f} MiB, {sample['modules']} modules",
                    flush=True,
                )
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # report the figures even when a teardown fails
                print(f"teardown: {type(exc).__name__}: {exc}", file=sys.stderr)
        ray.shutdown()

    print()
    print(
        f"{started_at:%Y-%m-%d %H:%M %Z}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Ray {ray.__version__}; medians of {args.runs} runs"
    )
    print(table(samples))
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started_at.isoformat(), "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
