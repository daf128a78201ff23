"""Per-request latency and throughput: servegraph vs Ray Serve vs raw Ray actors, side by side.

Two graphs, each run on three systems in one process and one Ray cluster:

- **hello**: the seed's hello app (a classifier forwarding to a Spanish or French
  responder), with an ingress that takes a ``dict`` so a handle can call it.
- **chain**: five stages, each stage's unawaited result passed to the next.

By default systems run one after another (deploy, warm up, measure, tear down) so
they never compete for the machine's cores; ``--interleave`` instead deploys every
system's apps for one graph at once and times them in alternating blocks, which
keeps ratios steady on a machine whose speed drifts. Every row reports sequential
latency (p50/p99 of requests sent one at a time from the driver) and throughput
(requests/s with a fixed number in flight). Ray Serve rows need the ``bench``
extra (``pip install -e '.[bench]'``); without it they are skipped.

Run from the repository root::

    python bench/latency.py                      # full run, a few minutes
    python bench/latency.py --quick              # a short smoke run
    python bench/latency.py --json out.json      # also save the numbers
    python bench/latency.py --interleave --rounds 3   # steadier ratios on a noisy machine

See bench/README.md for what each row means and the latest figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import http.client
import importlib
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
from collections.abc import Callable, Iterator
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
        result: Any = x
        for stage in self.stages:
            result = await stage.remote(result)  # the ObjectRef, not the value
        return await result


class RayServeChain:
    """Ray Serve's idiom for composition: pass each DeploymentResponse to the next call unawaited."""

    def __init__(self, *stages: Any):
        self.stages = stages

    async def __call__(self, x: int) -> int:
        result: Any = x
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
        ref: Any = x
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
    #: Requests timed between two checks of what other programs use (see ``run_blocks``).
    block: int = 25
    #: Time a row may spend redoing blocks other programs disturbed; 0 keeps every block.
    retry_budget_s: float = 60.0


@dataclasses.dataclass
class Workload:
    """One way of sending one graph's requests: ``submit`` starts a request, ``wait`` finishes it."""

    graph: str
    system: str
    how: str
    shape: str
    submit: Callable[[Any], Any]
    wait: Callable[[Any], Any]


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
#: Blocks timed while other programs used more than this share of the CPU are redone (within a budget).
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


def process_cpu_ticks() -> dict[int, tuple[int, int]]:
    """Every process on the machine: pid -> (parent pid, CPU ticks used so far, user + system)."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        out[int(entry)] = (int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
    return out


def tree_cpu_ticks(root: int) -> int:
    """CPU ticks (user + system) used by process ``root`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    used: dict[int, int] = {}
    for pid, (parent, ticks) in process_cpu_ticks().items():
        children.setdefault(parent, []).append(pid)
        used[pid] = ticks
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo += children.get(pid, [])
    return total


def _ticks() -> tuple[int, int, int]:
    """(machine busy ticks, machine total ticks, ticks used by this process and its descendants).

    The local Ray cluster (GCS, raylet, every worker) descends from the driver, so
    the difference between the first and the last is what other programs used.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields)
    busy = total - fields[3] - fields[4]
    return busy, total, tree_cpu_ticks(os.getpid())


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


@dataclasses.dataclass
class _Tally:
    """What one workload collected so far."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0
    shares: list[float] = dataclasses.field(default_factory=list)
    redone: int = 0


def run_blocks(
    works: list[Workload],
    blocks: Callable[[Workload], list[Callable[[], None]]],
    tallies: dict[int, _Tally],
    settings: Settings,
    rng: random.Random,
) -> None:
    """Run every workload's blocks, round-robin in a shuffled order, redoing blocks other programs disturbed.

    Round-robin matters with several workloads: the machine drifts over minutes, so
    alternating short blocks gives every system the same conditions. A block during
    which other programs took more than OTHERS_NOISY of the CPU is thrown away and
    redone once the machine is quiet again, within ``settings.retry_budget_s`` per workload.
    """
    pending = {id(w): blocks(w) for w in works}
    deadline = time.monotonic() + settings.retry_budget_s * len(works)
    others = OthersCPU()
    index = 0
    while any(index < len(b) for b in pending.values()):
        for work in rng.sample(works, len(works)):
            todo = pending[id(work)]
            if index >= len(todo):
                continue
            tally = tallies[id(work)]
            while True:
                gc.collect()
                snapshot = dataclasses.replace(tally, latencies=list(tally.latencies))
                others.start()
                todo[index]()
                share = others.stop()
                if share is not None and share > OTHERS_NOISY and time.monotonic() < deadline:
                    tally.latencies, tally.sent, tally.seconds = snapshot.latencies, snapshot.sent, snapshot.seconds
                    tally.redone += 1
                    wait_for_quiet()
                    continue
                if share is not None:
                    tally.shares.append(share)
                break
        index += 1


def measure(works: list[Workload], settings: Settings, rng: random.Random) -> list[Row]:
    """Warm up each workload (checking every answer), time sequential requests, then batches of concurrent ones.

    With one workload this is a plain benchmark; with several (``--interleave``) they
    take turns block by block.
    """
    clock = time.perf_counter
    for work in works:
        make_requests, expected = GRAPHS[work.graph]
        for request in make_requests(settings.warmup):
            got = work.wait(work.submit(request))
            if got != expected(request):
                raise AssertionError(
                    f"{work.system}, {work.graph} ({work.how}): got {got!r}, expected {expected(request)!r}"
                )
    background = wait_for_quiet()
    for work in works:  # the wait may have let connections idle out and caches go cold
        for request in GRAPHS[work.graph][0](5):
            work.wait(work.submit(request))

    tallies = {id(w): _Tally() for w in works}

    def latency_blocks(work: Workload) -> list[Callable[[], None]]:
        count = settings.http_requests if work.shape == HTTP else settings.requests
        requests = GRAPHS[work.graph][0](count)
        tally = tallies[id(work)]

        def block(chunk: list) -> None:
            for request in chunk:
                start = clock()
                work.wait(work.submit(request))
                tally.latencies.append(clock() - start)

        return [
            functools.partial(block, requests[i : i + settings.block]) for i in range(0, len(requests), settings.block)
        ]

    def throughput_blocks(work: Workload) -> list[Callable[[], None]]:
        if work.shape == HTTP or not settings.throughput_requests:
            return []
        requests = GRAPHS[work.graph][0](settings.throughput_requests)
        size = settings.concurrency * max(1, settings.block // settings.concurrency)
        tally = tallies[id(work)]

        def block(chunk: list) -> None:
            start = clock()
            for i in range(0, len(chunk), settings.concurrency):
                in_flight = [work.submit(r) for r in chunk[i : i + settings.concurrency]]
                for one in in_flight:
                    work.wait(one)
            tally.sent += len(chunk)
            tally.seconds += clock() - start

        return [functools.partial(block, requests[i : i + size]) for i in range(0, len(requests), size)]

    run_blocks(works, latency_blocks, tallies, settings, rng)
    run_blocks(works, throughput_blocks, tallies, settings, rng)

    rows = []
    for work in works:
        tally = tallies[id(work)]
        latencies = sorted(tally.latencies)
        row = Row(
            graph=work.graph,
            system=work.system,
            how=work.how,
            shape=work.shape,
            p50_ms=percentile(latencies, 50) * 1e3,
            p99_ms=percentile(latencies, 99) * 1e3,
            mean_ms=statistics.fmean(latencies) * 1e3,
            throughput_rps=tally.sent / tally.seconds if tally.seconds else None,
            requests=len(latencies),
            background_cpu=background,
            others_cpu=max(tally.shares) if tally.shares else None,
            blocks_redone=tally.redone,
        )
        rows.append(row)
        rps_text = f"{row.throughput_rps:6.0f} req/s" if row.throughput_rps else " " * 12
        noise = f"  (other programs: up to {row.others_cpu:.0%} CPU" if row.others_cpu is not None else "  ("
        noise += f", {tally.redone} blocks redone)" if tally.redone else ")"
        print(
            f"  {work.graph:<6} {work.system:<10} {work.how:<20} "
            f"p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms  {rps_text}{noise}",
            flush=True,
        )
    return rows


def ray_get(ref: Any) -> Any:
    return ray.get(ref, timeout=TIMEOUT_S)


def response_result(response: Any) -> Any:
    return response.result(timeout_s=TIMEOUT_S)


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


@contextlib.contextmanager
def http_workload(system: str, port: int) -> Iterator[list[Workload]]:
    client = HTTPClient(port)
    try:
        yield [Workload("hello", system, "HTTP proxy", HTTP, client.post, lambda text: text)]
    finally:
        client.close()


# Systems ---------------------------------------------------------------------------------------
#
# Each system is a session (what must run around all of its apps) and a list of apps,
# each a context manager that deploys, yields its workloads, and tears down. Apps
# are tagged by group (hello, chain, http) so --interleave can run a group's apps
# from every system at once.

App = tuple[str, Callable[[], contextlib.AbstractContextManager[list[Workload]]]]


class Servegraph:
    name = "servegraph"

    def __init__(self, graphs: set[str], with_http: bool):
        self.graphs, self.with_http = graphs, with_http
        self.Spanish = serve.deployment(SpanishResponder)
        self.French = serve.deployment(FrenchResponder)
        self.Stage = serve.deployment(Stage)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        try:
            yield
        finally:
            serve.shutdown()

    def apps(self) -> list[App]:
        apps: list[App] = []
        if "hello" in self.graphs:
            apps.append(("hello", self.hello))
        if "chain" in self.graphs:
            apps += [("chain", self.chain_graph), ("chain", self.chain_ingress)]
        if "hello" in self.graphs and self.with_http:
            apps.append(("http", self.hello_http))
        return apps

    @contextlib.contextmanager
    def hello(self) -> Iterator[list[Workload]]:
        app = serve.deployment(ServegraphLanguageClassifier).bind(self.Spanish.bind(), self.French.bind())
        handle = serve.run(app, name="hello", route_prefix=None, http=False)
        try:
            yield [Workload("hello", self.name, "handle", INGRESS, handle.remote, ray_get)]
        finally:
            serve.delete("hello")

    @contextlib.contextmanager
    def chain_graph(self) -> Iterator[list[Workload]]:
        with InputNode() as inp:
            node = inp
            for i in range(CHAIN_LENGTH):
                node = self.Stage.options(name=f"Stage{i}").bind().__call__.bind(node)
        graph = serve.run(node, name="chain", route_prefix=None, http=False)
        plan = serve.run(node, name="chain-plan", route_prefix=None, http=False, compiled=False)
        wait_for_lanes("chain")
        fast = graph.options(use_new_handle_api=True)  # reads the lane's answer without the object store
        stages = [
            serve.get_deployment_handle(f"Stage{i}", app_name="chain").options(use_new_handle_api=False)
            for i in range(CHAIN_LENGTH)
        ]

        def submit_chain(x: int) -> Any:
            result: Any = x
            for stage in stages:
                result = stage.remote(result)  # an ObjectRef, passed on unawaited
            return result

        try:
            yield [
                Workload("chain", self.name, "InputNode, compiled", DRIVER, fast.remote, response_result),
                Workload("chain", self.name, "InputNode, compiled, ObjectRef", DRIVER, graph.remote, ray_get),
                Workload("chain", self.name, "InputNode, plan", DRIVER, plan.remote, ray_get),
                Workload("chain", self.name, "driver handles", DRIVER, submit_chain, ray_get),
            ]
        finally:
            serve.delete("chain")
            serve.delete("chain-plan")

    @contextlib.contextmanager
    def chain_ingress(self) -> Iterator[list[Workload]]:
        stages = [self.Stage.options(name=f"Stage{i}").bind() for i in range(CHAIN_LENGTH)]
        app = serve.deployment(ServegraphChain).bind(*stages)
        handle = serve.run(app, name="chain-ingress", route_prefix=None, http=False)
        try:
            yield [Workload("chain", self.name, "ingress deployment", INGRESS, handle.remote, ray_get)]
        finally:
            serve.delete("chain-ingress")

    @contextlib.contextmanager
    def hello_http(self) -> Iterator[list[Workload]]:
        port = free_port()
        app = serve.deployment(ServegraphLanguageClassifierHTTP).bind(self.Spanish.bind(), self.French.bind())
        serve.run(app, name="hello-http", host="127.0.0.1", port=port)
        try:
            with http_workload(self.name, port) as works:
                yield works
        finally:
            serve.delete("hello-http")


class RayServe:
    name = "Ray Serve"

    def __init__(self, graphs: set[str], with_http: bool):
        from ray import serve as rserve

        # Ray Serve logs every deploy and delete at INFO on the driver; keep the report readable.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        self.serve = rserve
        self.graphs, self.with_http = graphs, with_http
        self.Spanish = rserve.deployment(SpanishResponder)
        self.French = rserve.deployment(FrenchResponder)
        self.Stage = rserve.deployment(Stage)
        self.port = 0

    @staticmethod
    def result(response: Any) -> Any:
        return response.result(timeout_s=TIMEOUT_S)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        # Ray Serve always runs an HTTP proxy; keep it on loopback and off any port another program uses.
        self.port = free_port()
        self.serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        try:
            yield
        finally:
            self.serve.shutdown()

    def apps(self) -> list[App]:
        apps: list[App] = []
        if "hello" in self.graphs:
            apps.append(("hello", self.hello))
        if "chain" in self.graphs:
            apps.append(("chain", self.chain))
        if "hello" in self.graphs and self.with_http:
            apps.append(("http", self.hello_http))
        return apps

    @contextlib.contextmanager
    def hello(self) -> Iterator[list[Workload]]:
        app = self.serve.deployment(RayServeLanguageClassifier).bind(self.Spanish.bind(), self.French.bind())
        handle = self.serve.run(app, name="hello", route_prefix=None)
        try:
            yield [Workload("hello", self.name, "handle", INGRESS, handle.remote, self.result)]
        finally:
            self.serve.delete("hello")

    @contextlib.contextmanager
    def chain(self) -> Iterator[list[Workload]]:
        # Ray Serve 2.x has no InputNode graphs any more; composition is an ingress chaining responses.
        stages = [self.Stage.options(name=f"Stage{i}").bind() for i in range(CHAIN_LENGTH)]
        handle = self.serve.run(self.serve.deployment(RayServeChain).bind(*stages), name="chain", route_prefix=None)
        stage_handles = [self.serve.get_deployment_handle(f"Stage{i}", app_name="chain") for i in range(CHAIN_LENGTH)]

        def submit_chain(x: int) -> Any:
            response: Any = x
            for stage in stage_handles:
                response = stage.remote(response)  # a DeploymentResponse, passed on unawaited
            return response

        try:
            yield [
                Workload("chain", self.name, "ingress deployment", INGRESS, handle.remote, self.result),
                Workload("chain", self.name, "driver handles", DRIVER, submit_chain, self.result),
            ]
        finally:
            self.serve.delete("chain")

    @contextlib.contextmanager
    def hello_http(self) -> Iterator[list[Workload]]:
        app = self.serve.deployment(RayServeLanguageClassifierHTTP).bind(self.Spanish.bind(), self.French.bind())
        self.serve.run(app, name="hello-http", route_prefix="/")
        try:
            with http_workload(self.name, self.port) as works:
                yield works
        finally:
            self.serve.delete("hello-http")


class RawActors:
    name = "raw actors"
    #: Same reservation and concurrency as a servegraph replica by default, so only the layer on top differs.
    OPTIONS = {"num_cpus": 0.1, "max_concurrency": 5}

    def __init__(self, graphs: set[str]):
        self.graphs = graphs

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    def apps(self) -> list[App]:
        apps: list[App] = []
        if "hello" in self.graphs:
            apps.append(("hello", self.hello))
        if "chain" in self.graphs:
            apps.append(("chain", self.chain))
        return apps

    @contextlib.contextmanager
    def _actors(self) -> Iterator[Callable[..., Any]]:
        actors: list[Any] = []

        def actor(cls: type, *args: Any) -> Any:
            handle: Any = ray.remote(cls).options(**self.OPTIONS).remote(*args)
            actors.append(handle)
            return handle

        try:
            yield actor
        finally:
            for handle in actors:
                ray.kill(handle)

    @contextlib.contextmanager
    def hello(self) -> Iterator[list[Workload]]:
        with self._actors() as actor:
            ingress = actor(RawLanguageClassifier, actor(SpanishResponder), actor(FrenchResponder))
            yield [Workload("hello", self.name, "async actor", INGRESS, ingress.__call__.remote, ray_get)]

    @contextlib.contextmanager
    def chain(self) -> Iterator[list[Workload]]:
        with self._actors() as actor:
            stages = [actor(Stage) for _ in range(CHAIN_LENGTH)]

            def submit_chain(x: int) -> Any:
                ref: Any = x
                for stage in stages:
                    ref = stage.__call__.remote(ref)
                return ref

            ingress = actor(RawChain, *stages)
            yield [
                Workload("chain", self.name, "driver refs", DRIVER, submit_chain, ray_get),
                Workload("chain", self.name, "async ingress actor", INGRESS, ingress.__call__.remote, ray_get),
            ]


def wait_for_lanes(app: str, timeout_s: float = 60.0) -> None:
    """Wait until the controller has given this driver a compiled lane for ``app`` (see the README's compiled path)."""
    from servegraph.runtime.data.lanes import lanes_for

    lanes = lanes_for(app)
    deadline = time.monotonic() + timeout_s
    while lanes.active() == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no compiled lane for {app!r} after {timeout_s:g}s: {lanes.reason}")
        time.sleep(0.05)


class RayCompiledGraphs:
    """Ray's own compiled graph over five plain actors: the floor the compiled path is measured against."""

    name = "Ray CG"

    def __init__(self, graphs: set[str]):
        self.graphs = graphs

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    def apps(self) -> list[App]:
        return [("chain", self.chain)] if "chain" in self.graphs else []

    @contextlib.contextmanager
    def chain(self) -> Iterator[list[Workload]]:
        from ray.dag import InputNode as RayInputNode

        stages = [ray.remote(Stage).options(**RawActors.OPTIONS).remote() for _ in range(CHAIN_LENGTH)]
        with RayInputNode() as inp:
            node: Any = inp
            for stage in stages:
                node = stage.__call__.bind(node)
        dag = node.experimental_compile(_max_inflight_executions=64)
        try:
            yield [Workload("chain", self.name, "compiled graph", DRIVER, dag.execute, ray_get)]
        finally:
            dag.teardown()
            for stage in stages:
                ray.kill(stage)


def run_sequential(systems: list[Any], settings: Settings, rng: random.Random) -> list[Row]:
    """The default: one system at a time, one app at a time (deploy, warm up, measure, tear down)."""
    rows = []
    for system in systems:
        with system.session():
            for _, app in system.apps():
                with app() as works:
                    for work in works:
                        rows += measure([work], settings, rng)
    return rows


def run_interleaved(systems: list[Any], settings: Settings, rng: random.Random) -> list[Row]:
    """``--interleave``: every system's apps for one graph deployed at once, measured in alternating blocks.

    Idle replicas cost next to nothing, so they barely compete; in exchange every
    system meets the same machine, which matters where the machine drifts by tens
    of percent over minutes.
    """
    rows = []
    groups: dict[str, list[Callable[[], contextlib.AbstractContextManager[list[Workload]]]]] = {}
    for system in systems:
        for group, app in system.apps():
            groups.setdefault(group, []).append(app)
    with contextlib.ExitStack() as sessions:
        for system in systems:
            sessions.enter_context(system.session())
        for apps in groups.values():
            with contextlib.ExitStack() as deployed:
                works = [work for app in apps for work in deployed.enter_context(app())]
                rows += measure(works, settings, rng)
    return rows


def combine(rounds: list[list[Row]]) -> list[Row]:
    """One row per (graph, system, how): the median of its rounds' figures (the row itself if one round)."""
    by_key: dict[tuple[str, str, str], list[Row]] = {}
    for rows in rounds:
        for row in rows:
            by_key.setdefault((row.graph, row.system, row.how), []).append(row)

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    out = []
    for same in by_key.values():
        if len(same) == 1:
            out.append(same[0])
            continue
        out.append(
            dataclasses.replace(
                same[0],
                p50_ms=statistics.median(r.p50_ms for r in same),
                p99_ms=statistics.median(r.p99_ms for r in same),
                mean_ms=statistics.median(r.mean_ms for r in same),
                throughput_rps=median([r.throughput_rps for r in same]),
                requests=sum(r.requests for r in same),
                background_cpu=median([r.background_cpu for r in same]),
                others_cpu=max((r.others_cpu for r in same if r.others_cpu is not None), default=None),
                blocks_redone=sum(r.blocks_redone for r in same),
            )
        )
    return out


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
    system_order = {"servegraph": 0, "Ray Serve": 1, "raw actors": 2, "Ray CG": 3}
    return sorted(rows, key=lambda r: (r.shape == HTTP, graph_order.get(r.graph, 99), system_order.get(r.system, 99)))


def table(rows: list[Row], concurrency: int) -> str:
    """A markdown table: one row per (graph, system, way of calling), with ratios against Ray Serve and raw actors."""
    lines = [
        f"| graph | system | how | p50 ms | p99 ms | req/s ({concurrency} in flight) "
        "| p50 vs Ray Serve | p50 vs raw | req/s vs Ray Serve | req/s vs raw | p50 vs Ray CG |",
        "|" + "---|" * 11,
    ]
    for row in ordered(rows):
        rs = counterpart(row, rows, "Ray Serve")
        raw = counterpart(row, rows, "raw actors")
        cg = counterpart(row, rows, "Ray CG")
        lines.append(
            f"| {row.graph + ' (HTTP)' if row.shape == HTTP else row.graph} | {row.system} | {row.how} "
            f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {f'{row.throughput_rps:.0f}' if row.throughput_rps else '-'} "
            f"| {_ratio(row.p50_ms, rs.p50_ms if rs else None)} | {_ratio(row.p50_ms, raw.p50_ms if raw else None)} "
            f"| {_ratio(row.throughput_rps, rs.throughput_rps if rs else None)} "
            f"| {_ratio(row.throughput_rps, raw.throughput_rps if raw else None)} "
            f"| {_ratio(row.p50_ms, cg.p50_ms if cg else None)} |"
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
        cg = counterpart(row, rows, "Ray CG")
        if cg and "compiled" in row.how:
            ratio = row.p50_ms / cg.p50_ms
            met = "met" if ratio <= 1.5 else "NOT met"
            parts.append(f"{ratio:.2f}x Ray CG {cg.p50_ms:.2f} ms (target <= 1.5x: {met})")
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


def noise_note(rows: list[Row], load_before: tuple | None, load_after: tuple | None, interleaved: bool) -> str:
    """How far to trust this run's numbers."""
    note = (
        "Noise: on a small shared or virtual machine the same workload's p50 can drift by tens of percent "
        "over a minute with nothing else running, and every system shares the cores with Ray's own processes; "
    )
    note += (
        "systems were interleaved block by block, so ratios are steadier than absolute figures."
        if interleaved
        else "systems ran one after another, so ratios carry that drift (use --interleave --rounds 3 to steady them)."
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
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, each round starting with the next system; report medians",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="deploy every system's apps for a graph at once and time them in alternating blocks "
        "(steadier ratios on a machine that drifts)",
    )
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP rows")
    parser.add_argument(
        "--keep-noisy",
        action="store_true",
        help="keep blocks of requests timed while other programs were busy instead of redoing them",
    )
    parser.add_argument("--graphs", default="hello,chain", help="comma-separated subset of hello,chain")
    parser.add_argument(
        "--systems", default="servegraph,rayserve,raw,raycg", help="comma-separated subset of servegraph,rayserve,raw,raycg"
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
            importlib.import_module("ray.serve")  # not `import ray.serve`: that would make `ray` local here
        except ImportError:
            have_ray_serve = False
            print("Ray Serve is not installed (pip install -e '.[bench]'): skipping its rows.", file=sys.stderr)

    chosen: list[Any] = []
    if "servegraph" in systems:
        chosen.append(Servegraph(graphs, with_http))
    if "rayserve" in systems and have_ray_serve:
        chosen.append(RayServe(graphs, with_http))
    if "raw" in systems:
        chosen.append(RawActors(graphs))
    if "raycg" in systems:
        chosen.append(RayCompiledGraphs(graphs))
    # Ray Serve reserves a CPU per replica and its serve.run waits for them forever: fail now instead.
    needed = CHAIN_LENGTH + 1 if "chain" in graphs else 3
    if any(isinstance(system, RayServe) for system in chosen) and args.num_cpus < needed:
        print(f"--num-cpus {args.num_cpus} is too few: Ray Serve's replicas reserve {needed} CPUs", file=sys.stderr)
        return 2
    run = run_interleaved if args.interleave else run_sequential
    rng = random.Random(SEED)
    rounds: list[list[Row]] = []

    started = datetime.datetime.now().astimezone()
    load_before = _load()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        wait_for_quiet()  # Ray starts a pool of worker processes; let them finish importing first
        print(
            f"{settings.requests} sequential requests after {settings.warmup} warm-up; "
            f"throughput: {settings.throughput_requests} requests, {settings.concurrency} in flight; "
            + ("systems interleaved block by block" if args.interleave else "one system at a time"),
            flush=True,
        )
        for r in range(args.rounds):
            if args.rounds > 1:
                print(f"round {r + 1} of {args.rounds}", flush=True)
            # Each round starts with the next system, so none is always first after Ray starts, or always last.
            shift = r % max(1, len(chosen))
            rounds.append(run(chosen[shift:] + chosen[:shift], settings, rng))
    finally:
        ray.shutdown()
    rows = combine(rounds)
    load_after = _load()

    info = machine()
    print()
    print(
        f"{started:%Y-%m-%d %H:%M %Z}, {info['cpu']}, {info['cores']} cores, Python {info['python']}, Ray {info['ray']}"
        + ("; systems interleaved" if args.interleave else "; one system at a time")
        + (f"; medians of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    print(table(rows, settings.concurrency))
    print()
    for line in verdict(rows):
        print(line)
    print()
    print(noise_note(rows, load_before, load_after, args.interleave))

    if args.json:
        payload = {
            "date": started.isoformat(timespec="seconds"),
            "machine": info,
            "load_average": {"before": load_before, "after": load_after},
            "settings": dataclasses.asdict(settings),
            "mode": "interleaved" if args.interleave else "sequential",
            "rows": [json_row(r, rows) for r in ordered(rows)],
            "rounds": [[dataclasses.asdict(r) for r in ordered(one)] for one in rounds],
            "targets": verdict(rows),
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
