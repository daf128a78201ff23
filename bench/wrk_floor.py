"""HTTP throughput under wrk: servegraph's proxy, Ray Serve 2.60's, and the floor, side by side in one run.

Every system serves the hello graph (a classifier forwarding each request to a Spanish or French
responder) over HTTP on 127.0.0.1, and wrk POSTs ``{"language": "spanish", "name": "Dora"}`` to it
(64 connections, 15 s by default). The **floor** is what the same work costs without a serving layer:
one plain uvicorn + starlette process (this one) whose handler awaits the same two raw Ray actor calls
(an async classifier actor, which awaits a responder actor). Each system's answer is checked first.

- servegraph and Ray Serve run at their default ``max_ongoing_requests`` (5) and at each value in
  ``--max-ongoing`` (default also 100), set on every deployment.
- The floor's actors are async actors with Ray's default concurrency, reserving 0.1 CPU each. The floor runs
  as is (every connection's request in flight at once) and, for each limit below the connection count, with
  that many requests in flight at most (the handler holds an ``asyncio.Semaphore`` around the classifier
  call, as a replica with that ``max_ongoing_requests`` holds the rest back): the ``vs same`` column
  compares each row with the floor that keeps the same number in flight, ``vs floor`` with the unlimited one.

Run from the repository root (needs ``wrk``: ``apt-get install wrk``; Ray Serve rows need the ``bench``
extra, ``pip install -e '.[bench]'``)::

    python bench/wrk_floor.py                         # about four minutes
    python bench/wrk_floor.py --duration 5 --systems floor,servegraph
    python bench/wrk_floor.py --systems floor,servegraph --max-ongoing "" --rounds 5   # the default, five times

With ``--rounds``, every row runs that many times in turn and the table shows the median req/s, the median
of each run's ratio to the floor measured in the same round, and the latencies of the median run; the errors
column sums all runs.

The ``cpu/req`` column is the CPU every process on the machine used while wrk ran (read from ``/proc``),
divided by the requests wrk counted: on a machine whose cores are all busy, that is what bounds req/s. With
``--cpu``, a second table splits it by process (Ray actors by class, the floor's uvicorn as ``this process``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import importlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Run as `python bench/wrk_floor.py`: make the checkout's servegraph importable without installing it.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

import servegraph as serve  # noqa: E402

BODY = {"language": "spanish", "name": "Dora"}
#: servegraph's and Ray Serve's default max_ongoing_requests.
DEFAULT_MAX_ONGOING = 5
EXPECTED = "Hola Dora"
TIMEOUT_S = 120.0


# The user's code, the same for every system --------------------------------------------------


class SpanishResponder:
    def say_hello(self, name: str) -> str:
        return f"Hola {name}"


class FrenchResponder:
    def say_hello(self, name: str) -> str:
        return f"Bonjour {name}"


class ServegraphClassifier:
    """examples/hello.py's ingress: reads the starlette Request, awaits one responder call."""

    def __init__(self, spanish_responder: Any, french_responder: Any):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, http_request: Any) -> str:
        request = await http_request.json()
        language, name = request["language"], request["name"]
        if language == "spanish":
            ref = await self.spanish_responder.say_hello.remote(name)
        elif language == "french":
            ref = await self.french_responder.say_hello.remote(name)
        else:
            return "Please try again."
        return await ref


class RayServeClassifier:
    """The same ingress for Ray Serve 2.x's handle API (a DeploymentResponse, awaited once)."""

    def __init__(self, spanish_responder: Any, french_responder: Any):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, http_request: Any) -> str:
        request = await http_request.json()
        language, name = request["language"], request["name"]
        if language == "spanish":
            return await self.spanish_responder.say_hello.remote(name)
        if language == "french":
            return await self.french_responder.say_hello.remote(name)
        return "Please try again."


class RawClassifier:
    """The floor's classifier: an async actor awaiting a responder actor."""

    def __init__(self, spanish_responder: Any, french_responder: Any):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, request: dict) -> str:
        language, name = request["language"], request["name"]
        if language == "spanish":
            return await self.spanish_responder.say_hello.remote(name)
        if language == "french":
            return await self.french_responder.say_hello.remote(name)
        return "Please try again."


class AsyncResponder:
    """The floor's responder: the same work as SpanishResponder, as an async actor."""

    async def say_hello(self, name: str) -> str:
        return f"Hola {name}"


# Measuring --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(port: int) -> str:
    """One request, as wrk sends it; the answer's text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", "/", body=json.dumps(BODY), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {text[:200]}")
        return text.strip().strip('"')
    finally:
        conn.close()


def wait_serving(port: int, deadline_s: float = TIMEOUT_S) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            answer = post(port)
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
            continue
        if answer != EXPECTED:
            raise RuntimeError(f"expected {EXPECTED!r}, got {answer!r}")
        return


class CpuMeter:
    """CPU seconds each process on the machine uses between :meth:`start` and :meth:`stop`, by process name."""

    def __init__(self) -> None:
        self._before: dict[int, float] = {}

    @staticmethod
    def _read() -> dict[int, float]:
        from latency import process_cpu_ticks  # bench/ is on sys.path when run as a script

        tick = os.sysconf("SC_CLK_TCK")
        return {pid: ticks / tick for pid, (_, ticks) in process_cpu_ticks().items()}

    @staticmethod
    def _name(pid: int) -> str:
        if pid == os.getpid():
            return "this process"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            return "?"
        first = words[0].decode(errors="replace")
        if first.startswith("ray::"):
            return first.split()[0].split(".")[0]  # the actor's class, whatever method it runs now
        script = next((w.decode(errors="replace") for w in words[1:3] if w.endswith(b".py")), "")
        return Path(script or first).name or "?"

    def start(self) -> None:
        self._before = self._read() if os.path.isdir("/proc") else {}

    def stop(self) -> dict[str, float]:
        """CPU seconds used since :meth:`start`, by process name (wrk itself left out), largest first."""
        if not self._before:
            return {}
        used: dict[str, float] = {}
        for pid, cpu in self._read().items():
            spent = cpu - self._before.get(pid, 0.0)
            if spent > 0:
                name = self._name(pid)
                if name != "wrk":
                    used[name] = used.get(name, 0.0) + spent
        return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def run_wrk(port: int, connections: int, duration: int, threads: int) -> dict[str, Any]:
    """wrk's figures for POSTs to 127.0.0.1:port (after a 2 s warm-up run that is not counted), with the CPU
    the machine's processes used meanwhile (``cpu``: seconds by process name)."""
    body = json.dumps(BODY).replace("\\", "\\\\").replace('"', '\\"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n')
    try:
        base = ["wrk", f"-t{threads}", f"-c{connections}", "--latency", "-s", script.name, f"http://127.0.0.1:{port}/"]
        subprocess.run([*base[:3], "-d2s", *base[3:]], capture_output=True, text=True, timeout=60, check=False)
        meter = CpuMeter()
        meter.start()
        out = subprocess.run(
            [*base[:3], f"-d{duration}s", "--timeout", "10s", *base[3:]],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
        cpu = meter.stop()
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout)\s*:?\s+(\d+)", out))
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": rps, "errors": errors, "p50": p50.group(1) if p50 else "?", "p99": p99.group(1) if p99 else "?",
        "requests": requests, "cpu": cpu,
    }  # fmt: skip


# The systems --------------------------------------------------------------------------------------


def servegraph_app(port: int, max_ongoing: int | None) -> None:
    options = {} if max_ongoing is None else {"max_ongoing_requests": max_ongoing}
    spanish = serve.deployment(SpanishResponder).options(**options).bind()
    french = serve.deployment(FrenchResponder).options(**options).bind()
    app = serve.deployment(ServegraphClassifier).options(**options).bind(spanish, french)
    serve.run(app, name="hello-wrk", route_prefix="/", host="127.0.0.1", port=port)


def measure_servegraph(max_ongoing: int | None, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    servegraph_app(port, max_ongoing)
    try:
        wait_serving(port)
        return run_wrk(port, args.connections, args.duration, args.threads)
    finally:
        serve.shutdown()


def measure_rayserve(max_ongoing: int | None, args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve as rserve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    port = free_port()
    rserve.start(http_options={"host": "127.0.0.1", "port": port})
    options = {} if max_ongoing is None else {"max_ongoing_requests": max_ongoing}
    spanish = rserve.deployment(SpanishResponder).options(**options).bind()
    french = rserve.deployment(FrenchResponder).options(**options).bind()
    app = rserve.deployment(RayServeClassifier).options(**options).bind(spanish, french)
    try:
        rserve.run(app, name="hello-wrk", route_prefix="/")
        wait_serving(port)
        return run_wrk(port, args.connections, args.duration, args.threads)
    finally:
        rserve.shutdown()


def measure_floor(args: argparse.Namespace, in_flight: int | None = None) -> dict[str, Any]:
    """uvicorn + starlette in this process; each request awaits the classifier actor, which awaits a responder
    (with ``in_flight``, at most that many requests at once are in the classifier; the rest wait their turn)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    actor_options = {"num_cpus": 0.1}
    spanish = ray.remote(AsyncResponder).options(**actor_options).remote()
    french = ray.remote(AsyncResponder).options(**actor_options).remote()
    classifier = ray.remote(RawClassifier).options(**actor_options).remote(spanish, french)

    room = asyncio.Semaphore(in_flight) if in_flight else None

    async def hello(request: Request) -> PlainTextResponse:
        body = await request.json()
        if room is None:
            return PlainTextResponse(await classifier.__call__.remote(body))
        async with room:
            return PlainTextResponse(await classifier.__call__.remote(body))

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=[Route("/", hello, methods=["POST"])]), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="floor-uvicorn", daemon=True)
    thread.start()
    try:
        wait_serving(port)
        return run_wrk(port, args.connections, args.duration, args.threads)
    finally:
        server.should_exit = True
        thread.join(30)
        for actor in (classifier, spanish, french):
            ray.kill(actor)


def cpu_ms_per_request(figures: dict[str, Any]) -> float:
    """Milliseconds of CPU (every process but wrk) per request wrk counted."""
    return 1000 * sum(figures["cpu"].values()) / max(figures["requests"], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="floor,servegraph,rayserve", help="comma-separated (default all three)")
    parser.add_argument("--max-ongoing", default="100", help="comma-separated max_ongoing_requests besides the default")
    parser.add_argument("--no-default", action="store_true", help="leave out the rows at the default max_ongoing_requests")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--num-cpus", type=int, default=8, help="CPUs the local Ray cluster advertises")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, in turn; the table shows medians, each ratio against its round's floor")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--cpu", action="store_true", help="also show each row's CPU per request split by process")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "rayserve" in systems:
        try:
            importlib.import_module("ray.serve")
        except ImportError:
            print("Ray Serve is not installed (pip install -e '.[bench]'): skipping its rows.", file=sys.stderr)
            systems.remove("rayserve")
    limits: list[int | None] = [*([] if args.no_default else [None]), *(int(v) for v in args.max_ongoing.split(",") if v.strip())]
    # The floor as is, and held to each limit that keeps fewer requests in flight than wrk sends at once.
    in_flight = sorted({DEFAULT_MAX_ONGOING if v is None else v for v in limits} if systems != ["floor"] else set())
    floor_limits: list[int | None] = [None, *(v for v in in_flight if v < args.connections)]

    started = datetime.datetime.now().astimezone()
    rows: list[tuple[str, str, list[dict[str, Any]]]] = []
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        for round_ in range(args.rounds):
            n = 0
            for system in systems:
                for limit in floor_limits if system == "floor" else limits:
                    label = ("-" if limit is None else str(limit)) if system == "floor" else (
                        f"default ({DEFAULT_MAX_ONGOING})" if limit is None else str(limit)
                    )
                    if system == "floor":
                        figures = measure_floor(args, limit)
                    elif system == "servegraph":
                        figures = measure_servegraph(limit, args)
                    else:
                        figures = measure_rayserve(limit, args)
                    if round_ == 0:
                        rows.append((system, label, []))
                    rows[n][2].append(figures)
                    n += 1
                    print(f"round {round_ + 1}: {system:<10} max_ongoing {label:<12} {figures['rps']:8.1f} req/s", flush=True)
    finally:
        ray.shutdown()

    floors = next((runs for s, label, runs in rows if s == "floor" and label == "-"), None)
    held = {int(label): runs for s, label, runs in rows if s == "floor" and label != "-"}

    def same_floor(system: str, label: str) -> list[dict[str, Any]] | None:
        """The floor run that keeps as many requests in flight as this row: held to its limit, or unlimited."""
        if system == "floor":
            return held.get(int(label)) if label != "-" else floors
        limit = DEFAULT_MAX_ONGOING if label.startswith("default") else int(label)
        return held.get(limit, floors)
    print()
    print(
        f"{started:%Y-%m-%d %H:%M %Z}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Ray {ray.__version__}; wrk -t{args.threads} -c{args.connections} -d{args.duration}s, POST / to the hello graph"
        + (f"; medians of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    header = (
        f"{'system':<11} {'max_ongoing':<12} {'req/s':>8} {'vs floor':>9} {'vs same':>8} {'p50':>9} {'p99':>9} {'errors':>7}"
        f" {'cpu/req':>8}"
    )
    print(header)
    print("-" * len(header))
    middles = [sorted(runs, key=lambda f: f["rps"])[len(runs) // 2] for _, _, runs in rows]  # of an odd count
    for (system, label, runs), middle in zip(rows, middles, strict=True):
        rps = statistics.median(f["rps"] for f in runs)
        ratio = f"{statistics.median(f['rps'] / fl['rps'] for f, fl in zip(runs, floors, strict=True)):.2f}x" if floors else "-"
        same = same_floor(system, label)
        ratio_same = f"{statistics.median(f['rps'] / fl['rps'] for f, fl in zip(runs, same, strict=True)):.2f}x" if same else "-"
        name = {"floor": "floor", "servegraph": "servegraph", "rayserve": "Ray Serve"}[system]
        errors = sum(f["errors"] for f in runs)
        cpu = f"{cpu_ms_per_request(middle):.2f}ms" if middle["cpu"] else "-"
        print(
            f"{name:<11} {label:<12} {rps:>8.1f} {ratio:>9} {ratio_same:>8} {middle['p50']:>9} {middle['p99']:>9} {errors:>7}"
            f" {cpu:>8}"
        )
    if args.cpu:
        print()
        print("CPU per request by process (ms; the median run of each row):")
        for (system, label, _), middle in zip(rows, middles, strict=True):
            per_request = {name: 1000 * s / max(middle["requests"], 1) for name, s in middle["cpu"].items()}
            parts = [f"{name} {ms:.2f}" for name, ms in per_request.items() if ms >= 0.01]
            print(f"  {system} {label}: " + ", ".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started.isoformat(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
