"""Per-request latency and throughput: servegraph vs Ray Serve vs raw Ray actors, side by side.

Two graphs, each run on three systems in one process and one Ray cluster:

- **hello**: the seed's hello app (a classifier forwarding to a Spanish or French
  responder), with an ingress that takes a ``dict`` so a handle can call it.
- **chain**: five stages, each stage's unawaited result passed to the next.

Systems run one after another (deploy, warm up, measure, tear down) so they never
compete for the machine's cores. Every row reports sequential latency (p50/p99 of
requests sent one at a time from the driver) and throughput (requests/s with a
fixed number in flight). Ray Serve rows need the ``bench`` extra
(``pip install -e '.[bench]'``); without it they are skipped.

Run from the repository root::

    python bench/latency.py              # full run, a few minutes
    python bench/latency.py --quick      # a short smoke run
    python bench/latency.py --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import http.client
import json
import logging
import math
import os
import platform
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as `python bench/latency.py`: make the checkout's servegraph importable without installing it.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

import servegraph as serve  # noqa: E402
from servegraph import InputNode  # noqa: E402

#: Stages in the chain graph.
CHAIN_LENGTH = 5
#: Seed for the request mix (which language each hello request asks for).
SEED = 0
#: Upper bound on any single wait, so a wedged system fails the run instead of hanging it.
TIMEOUT_S = 60.0


# The user's code, shared by every system ----------------------------------------------
#
# Plain classes; each system wraps them its own way (servegraph.deployment,
# ray.serve.deployment, ray.remote), so every system runs the same per-request work.


class SpanishResponder:
    def say_hello(self, name: str) -> str:
        return f"Hola {name}"


class FrenchResponder:
    def say_hello(self, name: str) -> str:
        return f"Bonjour {name}"


class Stage:
    def __call__(self, x: int) -> int:
        return x + 1


# Ingresses: the one place where the systems' handle APIs differ.


class ServegraphLanguageClassifier:
    """examples/hello.py's ingress with a dict instead of a starlette Request (a handle cannot send one)."""

    def __init__(self, spanish_responder: Any, french_responder: Any):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, request: dict) -> str:
        language, name = request["language"], request["name"]

        # The seed's two-await pattern: the first await picks a replica and gives an ObjectRef.
        if language == "spanish":
            ref = await self.spanish_responder.say_hello.remote(name)
        elif language == "french":
            ref = await self.french_responder.say_hello.remote(name)
        else:
            return "Please try again."

        return await ref


class RayServeLanguageClassifier:
    """The same ingress for Ray Serve's current handle API.

    In Ray Serve 2.x (2.60 here) ``DeploymentHandle.remote()`` returns a
    DeploymentResponse, awaited once; the seed's two-await pattern no longer exists.
    """

    def __init__(self, spanish_responder: Any, french_responder: Any):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, request: dict) -> str:
        language, name = request["language"], request["name"]

        if language == "spanish":
            response = self.spanish_responder.say_hello.remote(name)
        elif language == "french":
            response = self.french_responder.say_hello.remote(name)
        else:
            return "Please try again."

        return await response


class ServegraphLanguageClassifierHTTP(ServegraphLanguageClassifier):
    """As examples/hello.py: the ingress reads the starlette Request's JSON body, then dispatches as above."""

    async def __call__(self, http_request: Any) -> str:  # type: ignore[override]
        return await super().__call__(await http_request.json())


class RayServeLanguageClassifierHTTP(RayServeLanguageClassifier):
    async def __call__(self, http_request: Any) -> str:  # type: ignore[override]
        return await super().__call__(await http_request.json())


class ServegraphChain:
    """An ingress chaining its stages: each stage's ObjectRef goes to the next unawaited."""

    def __init__(self, *stages: Any):
        self.stages = stages

    async def __call__(self, x: int) -> int:
        result = x
        for stage in self.stages:
            result = await stage.remote(result)  # the ObjectRef, not the value
        return await result


class RayServeChain:
    """Ray Serve's idiom for composition: pass each DeploymentResponse to the next call unawaited."""

    def __init__(self, *stages: Any):
        self.stages = stages

    async def __call__(self, x: int) -> int:
        result = x
        for stage in self.stages:
            result = stage.remote(result)
        return await result


class RawLanguageClassifier:
    """The raw-actor twin of the hello ingress: an async actor calling responder actors."""

    def __init__(self, spanish_responder: Any, french_responder: Any):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, request: dict) -> str:
        language, name = request["language"], request["name"]
        if language == "spanish":
            ref = self.spanish_responder.say_hello.remote(name)
        elif language == "french":
            ref = self.french_responder.say_hello.remote(name)
        else:
            return "Please try again."
        return await ref


class RawChain:
    """The raw-actor twin of the chain ingress: an async actor passing each stage's ref to the next."""

    def __init__(self, *stages: Any):
        self.stages = stages

    async def __call__(self, x: int) -> int:
        ref = x
        for stage in self.stages:
            ref = stage.__call__.remote(ref)
        return await ref


# Requests ----------------------------------------------------------------------------------


def hello_requests(count: int) -> list[dict]:
    """A fixed, seeded mix of Spanish and French requests."""
    rng = random.Random(SEED)
    return [{"language": rng.choice(("spanish", "french")), "name": "Dora"} for _ in range(count)]


def hello_expected(request: dict) -> str:
    return {"spanish": "Hola ", "french": "Bonjour "}[request["language"]] + request["name"]


def chain_requests(count: int) -> list[int]:
    return list(range(count))


def chain_expected(x: int) -> int:
    return x + CHAIN_LENGTH


#: Each graph's requests and the answer each should get.
GRAPHS: dict[str, tuple[Callable[[int], list], Callable[[Any], Any]]] = {
    "hello": (hello_requests, hello_expected),
    "chain": (chain_requests, chain_expected),
}

# How a row's requests travel, so ratios compare like with like:
#: the caller chains the calls itself (an InputNode plan runs in the caller too);
DRIVER = "driver"
#: one deployment (or actor) receives the request and makes the downstream calls;
INGRESS = "ingress"
#: over HTTP on loopback, through the system's proxy.
HTTP = "http"


# Measuring -------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    requests: int
    warmup: int
    throughput_requests: int
    concurrency: int
    http_requests: int
    #: Requests timed between two checks of what other programs use (see ``_blocks``).
    block: int = 25
    #: Time a row may spend redoing blocks other programs disturbed; 0 keeps every block.
    retry_budget_s: float = 60.0


@dataclasses.dataclass
class Row:
    graph: str
    system: str
    how: str
    shape: str
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float | None
    requests: int
    #: Share of the machine's CPU busy just before the row was timed (None where /proc is missing).
    background_cpu: float | None = None
    #: Share of the machine's CPU other programs used during the kept blocks (the worse of latency and throughput).
    others_cpu: float | None = None
    #: Blocks thrown away and redone because other programs took over OTHERS_NOISY of the CPU.
    blocks_redone: int = 0


def cpu_busy(interval_s: float = 0.5) -> float | None:
    """Share of all cores busy over ``interval_s`` (Linux /proc/stat), or None elsewhere."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(interval_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


#: Below this share of CPU busy the machine counts as quiet (Ray Serve's controller loop alone takes some).
QUIET_CPU = 0.25
#: Longest wait for quiet before a row is timed anyway.
QUIET_WAIT_S = 30.0
#: Rows timed while other programs used more than this share of the CPU are flagged in the report.
OTHERS_NOISY = 0.10


def wait_for_quiet() -> float | None:
    """Wait until the machine is quiet; return the last busy share measured.

    On a 2-core machine a replica process still importing, or another program's
    burst, shifts every latency; waiting here keeps those out of the timed phase.
    """
    deadline = time.monotonic() + QUIET_WAIT_S
    busy = cpu_busy()
    while busy is not None and busy > QUIET_CPU and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def _ticks() -> tuple[int, int, int]:
    """(machine busy ticks, machine total ticks, ticks used by this process and its descendants).

    The local Ray cluster (GCS, raylet, every worker) descends from the driver, so
    the difference between the first and the last is what other programs used.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields)
    busy = total - fields[3] - fields[4]
    parents: dict[int, list[int]] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        parents.setdefault(int(rest[1]), []).append(pid)
        used[pid] = int(rest[11]) + int(rest[12])  # utime + stime
    ours, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        ours += used.get(pid, 0)
        todo += parents.get(pid, [])
    return busy, total, ours


class OthersCPU:
    """Measures the share of the machine's CPU other programs use between ``start()`` and ``stop()``."""

    def start(self) -> None:
        try:
            self._before: tuple[int, int, int] | None = _ticks()
        except (OSError, ValueError, IndexError):
            self._before = None

    def stop(self) -> float | None:
        if self._before is None:
            return None
        busy, total, ours = _ticks()
        busy0, total0, ours0 = self._before
        return max(0.0, ((busy - busy0) - (ours - ours0)) / max(1, total - total0))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list.

    >>> percentile([1, 2, 3, 4], 50), percentile(list(range(1, 101)), 99)
    (2, 99)
    """
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _blocks(count: int, run_block: Callable[[int], Any], settings: Settings) -> tuple[list[Any], float | None, int]:
    """Run ``run_block(i)`` for i in range(count), redoing blocks other programs disturbed.

    A block during which other programs took more than OTHERS_NOISY of the CPU is
    thrown away and redone once the machine is quiet again, for up to
    ``settings.retry_budget_s`` per row; after that every block is kept.

    Returns:
        the kept blocks' results, the mean share of CPU other programs took during them, blocks redone.
    """
    kept: list[Any] = []
    shares: list[float] = []
    redone = 0
    deadline = time.monotonic() + settings.retry_budget_s
    others = OthersCPU()
    while len(kept) < count:
        gc.collect()
        others.start()
        result = run_block(len(kept))
        share = others.stop()
        if share is not None and share > OTHERS_NOISY and time.monotonic() < deadline:
            redone += 1
            wait_for_quiet()
            continue
        kept.append(result)
        if share is not None:
            shares.append(share)
    return kept, (statistics.fmean(shares) if shares else None), redone


def measure(
    graph: str,
    system: str,
    how: str,
    shape: str,
    submit: Callable[[Any], Any],
    wait: Callable[[Any], Any],
    settings: Settings,
) -> Row:
    """Warm up (checking every answer), time sequential requests, then batches of concurrent ones.

    Args:
        submit: starts one request and returns what ``wait`` needs (an ObjectRef, a DeploymentResponse).
        wait: blocks until that request's answer is back and returns it.
    """
    make_requests, expected = GRAPHS[graph]
    for request in make_requests(settings.warmup):
        got = wait(submit(request))
        if got != expected(request):
            raise AssertionError(f"{system}, {graph} ({how}): got {got!r}, expected {expected(request)!r}")

    background = wait_for_quiet()
    for request in make_requests(5):  # the wait may have let connections idle out and caches go cold
        wait(submit(request))
    clock = time.perf_counter

    requests = make_requests(settings.requests)
    size = settings.block

    def latency_block(i: int) -> list[float]:
        out = []
        for request in requests[i * size : (i + 1) * size]:
            start = clock()
            wait(submit(request))
            out.append(clock() - start)
        return out

    blocks, others_share, redone = _blocks(math.ceil(len(requests) / size), latency_block, settings)
    latencies = sorted(t for block in blocks for t in block)

    rps = None
    if shape != HTTP and settings.throughput_requests:
        burst = make_requests(settings.throughput_requests)
        per_block = settings.concurrency * max(1, size // settings.concurrency)

        def throughput_block(i: int) -> tuple[int, float]:
            chunk = burst[i * per_block : (i + 1) * per_block]
            start = clock()
            for j in range(0, len(chunk), settings.concurrency):
                pending = [submit(r) for r in chunk[j : j + settings.concurrency]]
                for one in pending:
                    wait(one)
            return len(chunk), clock() - start

        counts, tput_share, tput_redone = _blocks(math.ceil(len(burst) / per_block), throughput_block, settings)
        rps = sum(n for n, _ in counts) / sum(t for _, t in counts)
        redone += tput_redone
        if others_share is not None and tput_share is not None:
            others_share = max(others_share, tput_share)

    row = Row(
        graph=graph,
        system=system,
        how=how,
        shape=shape,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        mean_ms=statistics.fmean(latencies) * 1e3,
        throughput_rps=rps,
        requests=len(latencies),
        background_cpu=background,
        others_cpu=others_share,
        blocks_redone=redone,
    )
    rps_text = f"{rps:6.0f} req/s" if rps else " " * 12
    noise = f"  (other programs: {others_share:.0%} CPU" if others_share is not None else "  ("
    noise += f", {redone} blocks redone)" if redone else ")"
    print(
        f"  {graph:<6} {system:<10} {how:<20} p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms  {rps_text}{noise}",
        flush=True,
    )
    return row


def ray_get(ref: Any) -> Any:
    return ray.get(ref, timeout=TIMEOUT_S)


# HTTP over loopback ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTPClient:
    """One keep-alive connection to 127.0.0.1: requests go one at a time, as a single user's would."""

    def __init__(self, port: int):
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)

    def post(self, request: dict) -> str:
        body = json.dumps(request)
        try:
            self._conn.request("POST", "/", body=body, headers={"content-type": "application/json"})
            reply = self._conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            # The server closed the idle keep-alive connection: reconnect once.
            self._conn.close()
            self._conn.request("POST", "/", body=body, headers={"content-type": "application/json"})
            reply = self._conn.getresponse()
        text = reply.read().decode()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {text}")
        return text

    def close(self) -> None:
        self._conn.close()


def measure_http(system: str, port: int, settings: Settings) -> Row:
    http_settings = dataclasses.replace(settings, requests=settings.http_requests, warmup=min(settings.warmup, 20))
    client = HTTPClient(port)
    try:
        return measure("hello", system, "HTTP proxy", HTTP, client.post, lambda body: body, http_settings)
    finally:
        client.close()


# servegraph ----------------------------------------------------------------------------------


def bench_servegraph(settings: Settings, graphs: set[str], with_http: bool) -> list[Row]:
    rows = []

    def bench(graph: str, how: str, shape: str, submit: Callable[[Any], Any]) -> None:
        rows.append(measure(graph, "servegraph", how, shape, submit, ray_get, settings))

    Spanish = serve.deployment(SpanishResponder)
    French = serve.deployment(FrenchResponder)
    StageDeployment = serve.deployment(Stage)
    try:
        if "hello" in graphs:
            app = serve.deployment(ServegraphLanguageClassifier).bind(Spanish.bind(), French.bind())
            handle = serve.run(app, name="hello", route_prefix=None, http=False)
            bench("hello", "handle", INGRESS, handle.remote)
            serve.delete("hello")

        if "chain" in graphs:
            with InputNode() as inp:
                node = inp
                for i in range(CHAIN_LENGTH):
                    node = StageDeployment.options(name=f"Stage{i}").bind().__call__.bind(node)
            graph = serve.run(node, name="chain", route_prefix=None, http=False)
            bench("chain", "InputNode graph", DRIVER, graph.remote)

            stages = [serve.get_deployment_handle(f"Stage{i}", app_name="chain") for i in range(CHAIN_LENGTH)]

            def submit_chain(x: int) -> Any:
                result = x
                for stage in stages:
                    result = stage.remote(result)  # an ObjectRef, passed on unawaited
                return result

            bench("chain", "driver handles", DRIVER, submit_chain)
            serve.delete("chain")

            stage_nodes = [StageDeployment.options(name=f"Stage{i}").bind() for i in range(CHAIN_LENGTH)]
            handle = serve.run(
                serve.deployment(ServegraphChain).bind(*stage_nodes),
                name="chain-ingress",
                route_prefix=None,
                http=False,
            )
            bench("chain", "ingress deployment", INGRESS, handle.remote)
            serve.delete("chain-ingress")

        if with_http and "hello" in graphs:
            port = free_port()
            app = serve.deployment(ServegraphLanguageClassifierHTTP).bind(Spanish.bind(), French.bind())
            serve.run(app, name="hello-http", host="127.0.0.1", port=port)
            rows.append(measure_http("servegraph", port, settings))
            serve.delete("hello-http")
    finally:
        serve.shutdown()
    return rows


# Ray Serve -------------------------------------------------------------------------------------


def bench_ray_serve(settings: Settings, graphs: set[str], with_http: bool) -> list[Row]:
    from ray import serve as rserve

    # Ray Serve logs every deploy and delete at INFO on the driver; keep the report readable.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)

    rows = []

    def result(response: Any) -> Any:
        return response.result(timeout_s=TIMEOUT_S)

    def bench(graph: str, how: str, shape: str, submit: Callable[[Any], Any]) -> None:
        rows.append(measure(graph, "Ray Serve", how, shape, submit, result, settings))

    Spanish = rserve.deployment(SpanishResponder)
    French = rserve.deployment(FrenchResponder)
    StageDeployment = rserve.deployment(Stage)
    # Ray Serve always runs an HTTP proxy; keep it on loopback and off any port another program uses.
    port = free_port()
    rserve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        if "hello" in graphs:
            app = rserve.deployment(RayServeLanguageClassifier).bind(Spanish.bind(), French.bind())
            handle = rserve.run(app, name="hello", route_prefix=None)
            bench("hello", "handle", INGRESS, handle.remote)
            rserve.delete("hello")

        if "chain" in graphs:
            # Ray Serve 2.x has no InputNode graphs any more; composition is an ingress chaining responses.
            stage_nodes = [StageDeployment.options(name=f"Stage{i}").bind() for i in range(CHAIN_LENGTH)]
            handle = rserve.run(rserve.deployment(RayServeChain).bind(*stage_nodes), name="chain", route_prefix=None)
            bench("chain", "ingress deployment", INGRESS, handle.remote)

            stages = [rserve.get_deployment_handle(f"Stage{i}", app_name="chain") for i in range(CHAIN_LENGTH)]

            def submit_chain(x: int) -> Any:
                response = x
                for stage in stages:
                    response = stage.remote(response)  # a DeploymentResponse, passed on unawaited
                return response

            bench("chain", "driver handles", DRIVER, submit_chain)
            rserve.delete("chain")

        if with_http and "hello" in graphs:
            app = rserve.deployment(RayServeLanguageClassifierHTTP).bind(Spanish.bind(), French.bind())
            rserve.run(app, name="hello-http", route_prefix="/")
            rows.append(measure_http("Ray Serve", port, settings))
            rserve.delete("hello-http")
    finally:
        rserve.shutdown()
    return rows


# Raw Ray actors ----------------------------------------------------------------------------------

#: Same reservation and concurrency as a servegraph replica by default, so only the layer on top differs.
_RAW_OPTIONS = {"num_cpus": 0.1, "max_concurrency": 5}


def bench_raw(settings: Settings, graphs: set[str]) -> list[Row]:
    rows = []

    def bench(graph: str, how: str, shape: str, submit: Callable[[Any], Any]) -> None:
        rows.append(measure(graph, "raw actors", how, shape, submit, ray_get, settings))

    def actor(cls: type, *args: Any) -> Any:
        handle = ray.remote(cls).options(**_RAW_OPTIONS).remote(*args)
        actors.append(handle)
        return handle

    actors: list[Any] = []
    try:
        if "hello" in graphs:
            ingress = actor(RawLanguageClassifier, actor(SpanishResponder), actor(FrenchResponder))
            bench("hello", "async actor", INGRESS, ingress.__call__.remote)

        if "chain" in graphs:
            stages = [actor(Stage) for _ in range(CHAIN_LENGTH)]

            def submit_chain(x: int) -> Any:
                ref = x
                for stage in stages:
                    ref = stage.__call__.remote(ref)
                return ref

            bench("chain", "driver refs", DRIVER, submit_chain)
            bench("chain", "async ingress actor", INGRESS, actor(RawChain, *stages).__call__.remote)
    finally:
        for handle in actors:
            ray.kill(handle)
    return rows


# Report ----------------------------------------------------------------------------------------


def counterpart(row: Row, rows: list[Row], system: str) -> Row | None:
    """The row of ``system`` that ``row`` is compared with: same graph and shape, else its fastest on that graph.

    HTTP rows compare only with HTTP rows. Falling back to the fastest row means a
    ratio is never flattered by picking the other system's slower idiom.
    """
    same_graph = [
        r for r in rows if r.system == system and r.graph == row.graph and (r.shape == HTTP) == (row.shape == HTTP)
    ]
    same_shape = [r for r in same_graph if r.shape == row.shape]
    candidates = same_shape or same_graph
    return min(candidates, key=lambda r: r.p50_ms) if candidates else None


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0:
        return "-"
    return f"{value / reference:.2f}x"


def ordered(rows: list[Row]) -> list[Row]:
    """Rows grouped by graph (hello, chain, then HTTP), systems in a fixed order."""
    graph_order = {g: i for i, g in enumerate(GRAPHS)}
    system_order = {"servegraph": 0, "Ray Serve": 1, "raw actors": 2}
    return sorted(rows, key=lambda r: (r.shape == HTTP, graph_order.get(r.graph, 99), system_order.get(r.system, 99)))


def table(rows: list[Row], concurrency: int) -> str:
    """A markdown table: one row per (graph, system, way of calling), with ratios against Ray Serve and raw actors."""
    lines = [
        f"| graph | system | how | p50 ms | p99 ms | req/s ({concurrency} in flight) "
        "| p50 vs Ray Serve | p50 vs raw | req/s vs Ray Serve | req/s vs raw |",
        "|" + "---|" * 10,
    ]
    for row in ordered(rows):
        rs = counterpart(row, rows, "Ray Serve")
        raw = counterpart(row, rows, "raw actors")
        lines.append(
            f"| {row.graph + ' (HTTP)' if row.shape == HTTP else row.graph} | {row.system} | {row.how} "
            f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {f'{row.throughput_rps:.0f}' if row.throughput_rps else '-'} "
            f"| {_ratio(row.p50_ms, rs and rs.p50_ms)} | {_ratio(row.p50_ms, raw and raw.p50_ms)} "
            f"| {_ratio(row.throughput_rps, rs and rs.throughput_rps)} "
            f"| {_ratio(row.throughput_rps, raw and raw.throughput_rps)} |"
        )
    return "\n".join(lines)


def verdict(rows: list[Row]) -> list[str]:
    """The issue's targets, judged for every servegraph row reached through a handle.

    p50 at most 1/3 of Ray Serve's on both graphs, and the chain within 1.3x of
    raw actors, each against the row :func:`counterpart` picks.
    """
    out = []
    for row in ordered(rows):
        if row.system != "servegraph" or row.shape == HTTP:
            continue
        parts = []
        rs = counterpart(row, rows, "Ray Serve")
        if rs:
            ratio = row.p50_ms / rs.p50_ms
            met = "met" if ratio <= 1 / 3 else "NOT met"
            parts.append(f"{ratio:.2f}x Ray Serve {rs.how} {rs.p50_ms:.2f} ms (target <= 0.33x: {met})")
        raw = counterpart(row, rows, "raw actors")
        if raw and row.graph == "chain":
            ratio = row.p50_ms / raw.p50_ms
            met = "met" if ratio <= 1.3 else "NOT met"
            parts.append(f"{ratio:.2f}x raw {raw.how} {raw.p50_ms:.2f} ms (target <= 1.3x: {met})")
        if parts:
            out.append(f"{row.graph}, servegraph {row.how}, p50 {row.p50_ms:.2f} ms: " + "; ".join(parts))
    return out


def json_row(row: Row, rows: list[Row]) -> dict[str, Any]:
    """A row with the p50 ratios the table shows and the rows they were taken against."""
    out = dataclasses.asdict(row)
    for key, system in (("ray_serve", "Ray Serve"), ("raw", "raw actors")):
        other = counterpart(row, rows, system)
        out[f"compared_with_{key}"] = other.how if other else None
        out[f"p50_ratio_vs_{key}"] = row.p50_ms / other.p50_ms if other else None
    return out


def noise_note(rows: list[Row], load_before: tuple | None, load_after: tuple | None) -> str:
    """How far to trust this run's numbers."""
    note = (
        "Noise: every system shares the machine's cores with Ray's own processes, so latencies move by "
        "10-20% between runs (more with other programs running); compare ratios within one run."
    )
    if load_before and load_after:
        note += f" Load average {load_before[0]:.2f} before, {load_after[0]:.2f} after."
    shares = [r.others_cpu for r in rows if r.others_cpu is not None]
    if shares:
        note += f" Other programs used {min(shares):.0%}-{max(shares):.0%} of the CPU while rows were timed"
        redone = sum(r.blocks_redone for r in rows)
        note += f" ({redone} disturbed blocks of requests were redone)." if redone else "."
    noisy = [r for r in rows if r.others_cpu is not None and r.others_cpu > OTHERS_NOISY]
    if noisy:
        names = ", ".join(f"{r.graph}/{r.system}/{r.how} ({r.others_cpu:.0%})" for r in noisy)
        note += f" Rows timed while other programs took over {OTHERS_NOISY:.0%}: {names}; rerun for cleaner figures."
    return note


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": model,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
    }


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


# Main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 100 requests after 20 warm-up, 200 for throughput"
    )
    parser.add_argument(
        "-n", "--requests", type=int, default=None, help="sequential requests timed per row (default 500)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed requests first, answers checked (default 50)")
    parser.add_argument(
        "--throughput-requests", type=int, default=None, help="requests in the throughput phase (default 800)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight in the throughput phase (default 8)"
    )
    parser.add_argument(
        "--http-requests", type=int, default=None, help="sequential HTTP requests per system (default 300)"
    )
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP rows")
    parser.add_argument(
        "--keep-noisy",
        action="store_true",
        help="keep blocks of requests timed while other programs were busy instead of redoing them",
    )
    parser.add_argument("--graphs", default="hello,chain", help="comma-separated subset of hello,chain")
    parser.add_argument(
        "--systems", default="servegraph,rayserve,raw", help="comma-separated subset of servegraph,rayserve,raw"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=8, help="logical CPUs of the Ray cluster (Ray Serve reserves 1 per replica)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        requests=args.requests or (100 if quick else 500),
        warmup=args.warmup or (20 if quick else 50),
        throughput_requests=args.throughput_requests or (200 if quick else 800),
        concurrency=args.concurrency,
        http_requests=args.http_requests or (50 if quick else 300),
        retry_budget_s=0.0 if args.keep_noisy else (20.0 if quick else 60.0),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    graphs = {g.strip() for g in args.graphs.split(",") if g.strip()}
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    with_http = not args.no_http

    have_ray_serve = True
    if "rayserve" in systems:
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            have_ray_serve = False
            print("Ray Serve is not installed (pip install -e '.[bench]'): skipping its rows.", file=sys.stderr)

    started = datetime.datetime.now().astimezone()
    load_before = _load()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    wait_for_quiet()  # Ray starts a pool of worker processes; let them finish importing first
    rows: list[Row] = []
    try:
        print(
            f"{settings.requests} sequential requests after {settings.warmup} warm-up; "
            f"throughput: {settings.throughput_requests} requests, {settings.concurrency} in flight",
            flush=True,
        )
        if "servegraph" in systems:
            rows += bench_servegraph(settings, graphs, with_http)
        if "rayserve" in systems and have_ray_serve:
            rows += bench_ray_serve(settings, graphs, with_http)
        if "raw" in systems:
            rows += bench_raw(settings, graphs)
    finally:
        ray.shutdown()
    load_after = _load()

    info = machine()
    print()
    print(
        f"{started:%Y-%m-%d %H:%M %Z}, {info['cpu']}, {info['cores']} cores, Python {info['python']}, Ray {info['ray']}"
    )
    print(table(rows, settings.concurrency))
    print()
    for line in verdict(rows):
        print(line)
    print()
    print(noise_note(rows, load_before, load_after))

    if args.json:
        payload = {
            "date": started.isoformat(timespec="seconds"),
            "machine": info,
            "load_average": {"before": load_before, "after": load_after},
            "settings": dataclasses.asdict(settings),
            "rows": [json_row(r, rows) for r in ordered(rows)],
            "targets": verdict(rows),
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
