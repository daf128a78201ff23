"""Mixed faults under load, servegraph and Ray Serve side by side: served, failed, hung, raylet crashes, recovery.

Each system runs in its own child process on a fresh 3-node ``ray.cluster_utils.Cluster`` (a 4-CPU head and
two 4-CPU workers) started there, with two applications under load for ``--duration`` seconds:

- **hello** (``examples/hello.py``'s shape: LanguageClassifier -> SpanishResponder / FrenchResponder) over real
  HTTP on 127.0.0.1, from 8 client threads POSTing ``{"language": "spanish", "name": "Dora"}`` and expecting
  ``Hola Dora``. servegraph's ingress awaits its responder handle twice (the deployment-graph era's idiom); Ray Serve's awaits the
  ``DeploymentResponse`` once (its 2.x idiom).
- **chain**, three stages of 2 replicas each (``--chain-replicas``; ``x -> (x + 1) * 2 - 3``) called from 4 driver threads through
  ``serve.get_app_handle("chain").remote(x).result(timeout_s=...)``, every answer checked. On servegraph it is an
  InputNode graph, eligible for the compiled path (Ray compiled graphs). A lane never crosses a node, so the
  driver, on the head, has one only while every stage has a replica there, and the plan otherwise; the row keeps
  the chain's lane count once a second (``--chain-replicas 3`` puts a replica of each stage on every node, as
  replicas spread, so the head gets a lane). Ray Serve has no InputNode, so there an ingress (2 replicas, never a
  fault target) passes each stage's ``DeploymentResponse`` to the next.

One fault lands every ``--interval`` seconds, drawn from ``random.Random(seed)`` before anything starts, so both
systems get the same sequence (a replica is named by application, deployment and a pick among its live
replicas; a node by a pick among the current workers):

- ``replica``: ``ray.kill`` one replica of either application;
- ``controller``: ``ray.kill(controller, no_restart=False)``, Ray restarts it;
- ``node``: remove a worker node (gracefully, as ``bench/faults.py`` does) and add a fresh 4-CPU one; never the head;
- ``redeploy`` (at most once): ``serve.run`` the hello app again with SpanishResponder's code changed (same answer),
  in its own thread while the load goes on. (Ray Serve gives every deployment of an app redeployed with
  ``serve.run`` a new random code version, so all three hello deployments roll there; only SpanishResponder on
  servegraph, whose code versions are hashes of the code.)

HTTP goes through one proxy, on the head (``proxy_location="HeadOnly"`` on both systems). Every node of a
one-machine Cluster is 127.0.0.1, so with ``--proxy-location EveryNode`` (both systems' default) every node's proxy
shares the port (SO_REUSEPORT), the kernel spreads the clients' connections over them, and removing a node drops
the requests its proxy held: a node's loss as a client without a load balancer sees it, on top of what the
serving system does about it.

Every deployment sets ``health_check_period_s=1`` on both systems (as ``bench/faults.py``), and Ray Serve's
replicas reserve 0.1 CPU, servegraph's default, so both fit the same cluster. Figures, per system:

- **requests / served %**: served means the right answer. **failed by kind**: the exception's type, ``HTTP <status>``
  or ``wrong answer``; a thread pauses 0.1 s after a failure so an outage is not counted thousands of times.
  **hung**: not answered within ``--timeout`` (every call is bounded, so no thread waits forever).
- **raylet crashes**: nodes whose raylet log (``<session>/logs/raylet*.out|err``) has a ``Check failed``, ``FATAL``
  or ``SIGSEGV``/``SIGABRT`` line, or whose raylet process exited without the bench removing its node; and
  whether the head's raylet died.
- **back at target**: seconds from the start of the last fault until every deployment of both apps has exactly
  its target of replicas, all ``RUNNING`` (``serve.status()``, polled every 0.2 s, each call bounded), as many live
  replica actors as the target, and no replica the faults killed or replaced still alive (so a status that has not
  noticed a death yet, or a zombie replica the controller forgot, is not "back"). ``None``: not within 60 s.
- **post-check**: once the load has stopped and recovery was waited for, 100 requests per application: how many
  got the right answer.

Run from the repository root::

    python bench/chaos.py                                   # both systems, 120 s, a fault every 10 s
    python bench/chaos.py --systems servegraph --duration 30 --interval 5 --seed 1 --json
    python bench/chaos.py --faults replica,node --runs 3    # seeds 0, 1, 2
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import glob
import http.client
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/chaos.py`: servegraph from this checkout
    sys.path.insert(0, str(ROOT))

SYSTEMS = {"servegraph": "servegraph", "rayserve": "Ray Serve"}
FAULT_KINDS = ("replica", "controller", "node", "redeploy")
#: Deployments a ``replica`` fault may hit, per application (Ray Serve's chain ingress is not one: servegraph's
#: counterpart is the calling driver itself).
FAULT_TARGETS = {"hello": ("LanguageClassifier", "SpanishResponder", "FrenchResponder"), "chain": ("StageA", "StageB", "StageC")}
HTTP_CLIENTS = 8
CHAIN_CALLERS = 4
WORKER_CPUS = 4
POLL_S = 0.2
RECOVERY_LIMIT_S = 60.0
POST_CHECK_REQUESTS = 100
FAILURE_PAUSE_S = 0.1
#: Bounds on things that are not requests: a status or actor listing, a fault's injection, a deploy, a shutdown step.
STATUS_TIMEOUT_S = 5.0
#: How long servegraph's chain may take to get its compiled lanes before the load starts anyway.
LANE_WAIT_S = 5.0
INJECT_TIMEOUT_S = 60.0
DEPLOY_TIMEOUT_S = 240.0
SHUTDOWN_TIMEOUT_S = 60.0
RAYLET_CRASH = re.compile(r"Check failed|FATAL|SIGSEGV|SIGABRT|^\[[^\]]* [CF] \d+ \d+\]")  # C, F: glog's fatal levels in Ray 2.60
ROW_MARK = "CHAOS-ROW "
SESSION_MARK = "CHAOS-SESSION "


# The user code, written once; each system wraps it with its own @deployment ---------------------------------


class SpanishResponder:
    def say_hello(self, name: str) -> str:
        return f"Hola {name}"


class SpanishResponderV2:
    """The redeployed code: another body (so another code version), the same answer."""

    GREETING = "Hola"

    def say_hello(self, name: str) -> str:
        return f"{self.GREETING} {name}"

    def version(self) -> int:
        return 2


class FrenchResponder:
    def say_hello(self, name: str) -> str:
        return f"Bonjour {name}"


class LanguageClassifier:
    """examples/hello.py's ingress: a handle call is awaited twice."""

    def __init__(self, spanish_responder, french_responder):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, http_request: Request) -> str:
        request = await http_request.json()
        language, name = request["language"], request["name"]
        if language == "spanish":
            ref = await self.spanish_responder.say_hello.remote(name)
        elif language == "french":
            ref = await self.french_responder.say_hello.remote(name)
        else:
            return "Please try again."
        return await ref


class RayServeLanguageClassifier:
    """The same ingress in Ray Serve 2.x's idiom: the DeploymentResponse is awaited once."""

    def __init__(self, spanish_responder, french_responder):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, http_request: Request) -> str:
        request = await http_request.json()
        language, name = request["language"], request["name"]
        if language == "spanish":
            return await self.spanish_responder.say_hello.remote(name)
        if language == "french":
            return await self.french_responder.say_hello.remote(name)
        return "Please try again."


class StageA:
    def __call__(self, x: int) -> int:
        return x + 1


class StageB:
    def __call__(self, x: int) -> int:
        return x * 2


class StageC:
    def __call__(self, x: int) -> int:
        return x - 3


class RayServeChain:
    """Ray Serve's composition idiom: each DeploymentResponse passed unawaited to the next stage."""

    def __init__(self, a, b, c):
        self.a, self.b, self.c = a, b, c

    async def __call__(self, x: int) -> int:
        return await self.c.remote(self.b.remote(self.a.remote(x)))


def chain_answer(x: int) -> int:
    return (x + 1) * 2 - 3


HELLO_BODY = json.dumps({"language": "spanish", "name": "Dora"}).encode()
HELLO_ANSWER = "Hola Dora"


# The two systems ----------------------------------------------------------------------------------------------


class Servegraph:
    label = "servegraph"
    namespace = "servegraph"
    replica_prefix = "SERVEGRAPH_REPLICA::"
    controller_name = "servegraph_controller"

    def __init__(self, hello_replicas: int, chain_replicas: int):
        import servegraph

        self.serve = servegraph
        self.hello_replicas, self.chain_replicas = hello_replicas, chain_replicas
        self.port = 0
        self.targets = {("hello", d): hello_replicas for d in FAULT_TARGETS["hello"]}
        self.targets.update({("chain", d): chain_replicas for d in FAULT_TARGETS["chain"]})

    def _options(self, replicas: int) -> dict[str, Any]:
        return {"num_replicas": replicas, "health_check_period_s": 1}

    def _hello(self, spanish: type) -> Any:
        d, opts = self.serve.deployment, self._options(self.hello_replicas)
        return d(LanguageClassifier).options(**opts).bind(
            d(spanish).options(name="SpanishResponder", **opts).bind(), d(FrenchResponder).options(**opts).bind()
        )

    def _chain(self) -> Any:
        d, opts = self.serve.deployment, self._options(self.chain_replicas)
        with self.serve.InputNode() as x:
            a = d(StageA).options(**opts).bind().__call__.bind(x)
            b = d(StageB).options(**opts).bind().__call__.bind(a)
            return d(StageC).options(**opts).bind().__call__.bind(b)

    def deploy(self, port: int, proxy_location: str) -> None:
        self.port = port
        self.serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location=proxy_location)
        self.serve.run(self._hello(SpanishResponder), name="hello", route_prefix="/", port=port)
        self.serve.run(self._chain(), name="chain", route_prefix=None, port=port)

    def redeploy(self) -> None:
        self.serve.run(self._hello(SpanishResponderV2), name="hello", route_prefix="/", port=self.port)

    def chain_handle(self) -> Any:
        return self.serve.get_app_handle("chain")

    def replica_states(self) -> dict[tuple[str, str], dict[str, int]]:
        apps = self.serve.status().applications
        return {(a, d): dict(s.replica_states) for a, app in apps.items() for d, s in app.deployments.items()}

    def chain_path(self) -> Any:
        """Which path the chain's requests take (servegraph's own status field): compiled lanes or the plan."""
        return dict(self.serve.status().applications["chain"].path)

    def shutdown(self) -> None:
        self.serve.shutdown()


class RayServe:
    label = "Ray Serve"
    namespace = "serve"
    replica_prefix = "SERVE_REPLICA::"
    controller_name = "SERVE_CONTROLLER_ACTOR"

    def __init__(self, hello_replicas: int, chain_replicas: int):
        from ray import serve

        self.serve = serve
        self.hello_replicas, self.chain_replicas = hello_replicas, chain_replicas
        self.targets = {("hello", d): hello_replicas for d in FAULT_TARGETS["hello"]}
        self.targets.update({("chain", d): chain_replicas for d in (*FAULT_TARGETS["chain"], "Chain")})

    def _options(self, replicas: int) -> dict[str, Any]:
        return {"num_replicas": replicas, "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0.1}}

    def _hello(self, spanish: type) -> Any:
        d, opts = self.serve.deployment, self._options(self.hello_replicas)
        return d(RayServeLanguageClassifier).options(name="LanguageClassifier", **opts).bind(
            d(spanish).options(name="SpanishResponder", **opts).bind(), d(FrenchResponder).options(**opts).bind()
        )

    def _chain(self) -> Any:
        d, opts = self.serve.deployment, self._options(self.chain_replicas)
        return d(RayServeChain).options(name="Chain", **opts).bind(
            d(StageA).options(**opts).bind(), d(StageB).options(**opts).bind(), d(StageC).options(**opts).bind()
        )

    def deploy(self, port: int, proxy_location: str) -> None:
        self.serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location=proxy_location)
        self.serve.run(self._hello(SpanishResponder), name="hello", route_prefix="/")
        self.serve.run(self._chain(), name="chain", route_prefix=None)

    def redeploy(self) -> None:
        self.serve.run(self._hello(SpanishResponderV2), name="hello", route_prefix="/")

    def chain_handle(self) -> Any:
        return self.serve.get_app_handle("chain")

    def replica_states(self) -> dict[tuple[str, str], dict[str, int]]:
        apps = self.serve.status().applications
        return {
            (a, d): {getattr(k, "value", k): n for k, n in s.replica_states.items()}
            for a, app in apps.items()
            for d, s in app.deployments.items()
        }

    def chain_path(self) -> Any:
        return None

    def shutdown(self) -> None:
        self.serve.shutdown()


System = Servegraph | RayServe


# Bounded calls ------------------------------------------------------------------------------------------------


class CallTimeout(TimeoutError):
    """A bounded call did not return in time; its thread was left to finish on its own."""


class BoundedCaller:
    """Runs calls on a daemon thread and waits for each at most a timeout.

    A call that overstays is abandoned together with its thread (a Ray call cannot be interrupted), so the caller
    goes on; a daemon thread never holds the process at exit. With ``one_at_a_time``, no new call starts while an
    abandoned one still runs (status polls must not pile up threads while a controller restarts).
    """

    def __init__(self, one_at_a_time: bool = False):
        self.one_at_a_time = one_at_a_time
        self._worker: tuple[threading.Thread, queue.Queue, queue.Queue] | None = None
        self._abandoned: threading.Thread | None = None

    @staticmethod
    def _serve(inbox: queue.Queue, outbox: queue.Queue) -> None:
        while (fn := inbox.get()) is not None:
            try:
                outbox.put((True, fn()))
            except BaseException as exc:  # handed to the caller, who decides
                outbox.put((False, exc))

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        if self.one_at_a_time and self._abandoned is not None:
            if self._abandoned.is_alive():
                raise CallTimeout("the previous call has not returned yet")
            self._abandoned = None
        if self._worker is None:
            inbox: queue.Queue = queue.Queue()
            outbox: queue.Queue = queue.Queue()
            thread = threading.Thread(target=self._serve, args=(inbox, outbox), daemon=True)
            thread.start()
            self._worker = (thread, inbox, outbox)
        thread, inbox, outbox = self._worker
        inbox.put(fn)
        try:
            ok, value = outbox.get(timeout=timeout)
        except queue.Empty:
            inbox.put(None)  # the thread ends once its call returns, if ever
            self._worker, self._abandoned = None, thread
            raise CallTimeout(f"no answer within {timeout:g} s") from None
        if ok:
            return value
        raise value

    def close(self) -> None:
        if self._worker is not None:
            self._worker[1].put(None)
            self._worker = None


def bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """``fn()``, or CallTimeout after ``timeout`` seconds (the call is left running on a daemon thread)."""
    caller = BoundedCaller()
    try:
        return caller.call(fn, timeout)
    finally:
        caller.close()


# Load and its tally -------------------------------------------------------------------------------------------


class Tally:
    """Outcomes of one application's requests: served, failed by kind, hung, and when the first failures came."""

    FIRST = 10  # failure times kept per kind, to line them up with the faults

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.served = 0
        self.hung = 0
        self.failed: collections.Counter[str] = collections.Counter()
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def record(self, outcome: str | None, at_s: float = 0.0) -> None:
        with self._lock:
            if outcome is None:
                self.served += 1
                return
            if outcome == "hung":
                self.hung += 1
            else:
                self.failed[outcome] += 1
            if len(self.times[outcome]) < self.FIRST:
                self.times[outcome].append(round(at_s, 1))

    @classmethod
    def merged(cls, tallies: Any) -> Tally:
        total = cls()
        for t in tallies:
            with t._lock:
                total.served += t.served
                total.hung += t.hung
                total.failed.update(t.failed)
        return total

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            requests = self.served + self.hung + sum(self.failed.values())
            out = {
                "requests": requests,
                "served": self.served,
                "served_pct": round(100.0 * self.served / requests, 2) if requests else None,
                "failed": sum(self.failed.values()),
                "failed_by_kind": dict(sorted(self.failed.items())),
                "hung": self.hung,
            }
            if self.times:  # a merged tally has none: the per-app ones say when
                out["first_failures_at_s"] = {k: v for k, v in sorted(self.times.items())}
            return out


def _outcome_of(exc: BaseException, started: float, timeout: float) -> str:
    if isinstance(exc, TimeoutError) or time.monotonic() - started >= timeout:
        return "hung"
    return type(exc).__name__


class HelloClient:
    """One keep-alive HTTP connection to the hello app; a fresh one after any error."""

    def __init__(self, port: int, timeout: float):
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self) -> str | None:
        """None when served, else the outcome's kind."""
        started = time.monotonic()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.request("POST", "/", HELLO_BODY, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            body = response.read()
        except Exception as exc:
            self.close()
            return _outcome_of(exc, started, self.timeout)
        if response.status != 200:
            return f"HTTP {response.status}"
        return None if body.decode(errors="replace") == HELLO_ANSWER else "wrong answer"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ChainClient:
    """``serve.get_app_handle("chain").remote(x).result(timeout_s=...)`` from one thread, every call bounded."""

    def __init__(self, system: System, timeout: float, first: int):
        self.system, self.timeout, self.x = system, timeout, first
        self.handle: Any = None
        self.caller = BoundedCaller()

    def request(self) -> str | None:
        self.x += 1
        x, started = self.x, time.monotonic()
        try:
            if self.handle is None:  # get_app_handle asks the controller, which may be restarting
                self.handle = self.caller.call(self.system.chain_handle, self.timeout)
            handle = self.handle
            # A little past the request's own timeout, so the system's timeout (if it has one) fires first.
            got = self.caller.call(lambda: handle.remote(x).result(timeout_s=self.timeout), self.timeout + 2)
        except Exception as exc:
            return _outcome_of(exc, started, self.timeout)
        return None if got == chain_answer(x) else "wrong answer"

    def close(self) -> None:
        self.caller.close()


def load(client: HelloClient | ChainClient, tally: Tally, stop: threading.Event, t0: float, pace_s: float = 0.0) -> None:
    while not stop.is_set():
        started = time.monotonic()
        outcome = client.request()
        tally.record(outcome, started - t0)
        if outcome is not None:
            stop.wait(FAILURE_PAUSE_S)
        elif pace_s:
            stop.wait(pace_s)
    client.close()


def post_check(make_client: Callable[[int], HelloClient | ChainClient], threads: int, deadline_s: float) -> int:
    """Of ``POST_CHECK_REQUESTS`` requests, how many got the right answer (none is sent after the deadline)."""
    todo = iter(range(POST_CHECK_REQUESTS))
    lock = threading.Lock()
    ok = 0
    deadline = time.monotonic() + deadline_s

    def run(n: int) -> None:
        nonlocal ok
        client = make_client(n)
        for _ in todo:
            if time.monotonic() > deadline:
                break
            if client.request() is None:
                with lock:
                    ok += 1
        client.close()

    workers = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(0.0, deadline - time.monotonic()) + deadline_s)
    with lock:
        return ok


# Faults ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    """One planned fault, the same for every system: which replica or node is a pick among those alive then."""

    at_s: float
    kind: str
    app: str | None = None
    deployment: str | None = None
    pick: int = 0

    def describe(self) -> str:
        if self.kind == "replica":
            return f"replica {self.app}/{self.deployment} #{self.pick}"
        if self.kind == "node":
            return f"node (worker pick {self.pick})"
        if self.kind == "redeploy":
            return "redeploy hello/SpanishResponder"
        return self.kind


def plan_faults(seed: int, duration: float, interval: float, kinds: tuple[str, ...]) -> list[Fault]:
    """The seeded faults, one every ``interval`` seconds before ``duration``; ``redeploy`` at most once.

    >>> [f.kind for f in plan_faults(1, 30, 10, ("controller",))]
    ['controller', 'controller']
    """
    rng = random.Random(seed)
    kinds = tuple(k for k in FAULT_KINDS if k in kinds)  # the order given on the command line does not matter
    faults: list[Fault] = []
    step = 1
    while step * interval < duration:
        choices = [k for k in kinds if k != "redeploy" or all(f.kind != "redeploy" for f in faults)]
        if not choices:
            break
        kind = rng.choice(choices)
        if kind == "replica":
            app = rng.choice(sorted(FAULT_TARGETS))
            faults.append(Fault(step * interval, kind, app, rng.choice(FAULT_TARGETS[app]), rng.randrange(1000)))
        elif kind == "node":
            faults.append(Fault(step * interval, kind, pick=rng.randrange(1000)))
        else:
            faults.append(Fault(step * interval, kind))
        step += 1
    return faults


def live_replicas(system: System) -> dict[tuple[str, str], list[str]]:
    """Live replica actors by (application, deployment), from their names (a dead actor's name is gone)."""
    import ray

    out: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] == system.namespace and name.startswith(system.replica_prefix):
            app, deployment, _ = name[len(system.replica_prefix) :].split("#", 2)
            out[(app, deployment)].append(name)
    return {key: sorted(names) for key, names in out.items()}


def replicas_on_node(system: System, node_id: str) -> set[str]:
    """Names of the live replicas on a node.

    ``ray._private.state.actors`` (checked on Ray 2.60) is the one place that says where an actor lives without the
    dashboard; if it is gone, a node fault simply names no replica, and recovery still needs every count at target.
    """
    import ray

    try:
        table = ray._private.state.actors(actor_state_name="ALIVE")
    except Exception:
        return set()
    return {
        a["Name"]
        for a in table.values()
        if a.get("Name", "").startswith(system.replica_prefix) and a.get("Address", {}).get("NodeID") == node_id
    }


class Chaos:
    """One system on its cluster: injects the planned faults, and says when every deployment is back."""

    def __init__(self, system: System, cluster: Any, workers: list[Any], log: Callable[[str], None]):
        self.system, self.cluster, self.workers, self.log = system, cluster, workers, log
        self.removed: list[Any] = []
        self.victims: set[str] = set()  # replicas a fault killed or replaced: not back while one lives
        self.redeploy_thread: threading.Thread | None = None
        self.redeploy: dict[str, Any] = {}
        self._status = BoundedCaller(one_at_a_time=True)
        self._names = BoundedCaller(one_at_a_time=True)

    def inject(self, fault: Fault) -> str:
        """Apply one fault; returns what it hit."""
        import ray

        if fault.kind == "replica":
            names = live_replicas(self.system).get((fault.app, fault.deployment), [])  # type: ignore[arg-type]
            if not names:
                return "skipped: no live replica"
            victim = names[fault.pick % len(names)]
            self.victims.add(victim)
            ray.kill(ray.get_actor(victim, namespace=self.system.namespace))
            return victim
        if fault.kind == "controller":
            ray.kill(ray.get_actor(self.system.controller_name, namespace=self.system.namespace), no_restart=False)
            return self.system.controller_name
        if fault.kind == "node":
            node = self.workers[fault.pick % len(self.workers)]
            self.victims |= replicas_on_node(self.system, node.node_id)
            self.workers.remove(node)
            self.removed.append(node)
            self.cluster.remove_node(node)
            self.workers.append(self.cluster.add_node(num_cpus=WORKER_CPUS))
            return f"node {node.node_id[:8]} -> {self.workers[-1].node_id[:8]}"
        # redeploy: in its own thread, so neither the load nor the next faults wait for the rolling update
        self.victims |= set(live_replicas(self.system).get(("hello", "SpanishResponder"), []))
        self.redeploy_thread = threading.Thread(target=self._redeploy, daemon=True)
        self.redeploy_thread.start()
        return "hello/SpanishResponder"

    def _redeploy(self) -> None:
        started = time.monotonic()
        try:
            self.system.redeploy()
            self.redeploy = {"ok": True, "error": None}
        except Exception as exc:
            self.redeploy = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        self.redeploy["took_s"] = round(time.monotonic() - started, 2)
        self.log(f"redeploy done after {self.redeploy['took_s']} s: {self.redeploy['error'] or 'ok'}")

    def at_target(self) -> bool:
        """Every deployment at its target, all RUNNING, as many live replica actors, no victim alive."""
        try:
            states = self._status.call(self.system.replica_states, STATUS_TIMEOUT_S)
            names = self._names.call(lambda: live_replicas(self.system), STATUS_TIMEOUT_S)
        except Exception:  # the controller restarting, or the cluster in trouble: not back yet
            return False
        for key, target in self.system.targets.items():
            counts = states.get(key, {})
            if counts.get("RUNNING", 0) != target or sum(counts.values()) != target or len(names.get(key, [])) != target:
                return False
        return not any(self.victims & set(n) for n in names.values())

    def snapshot(self) -> dict[str, Any]:
        """Each deployment's target, status counts and live replica actors, for the row (a zombie shows here)."""
        failure = None
        try:
            states = self._status.call(self.system.replica_states, STATUS_TIMEOUT_S)
        except Exception as exc:
            states, failure = {}, f"status failed: {type(exc).__name__}"
        try:
            names = self._names.call(lambda: live_replicas(self.system), STATUS_TIMEOUT_S)
        except Exception:
            names = {}
        keys = sorted(set(self.system.targets) | set(states) | set(names))
        return {
            f"{a}/{d}": {
                "target": self.system.targets.get((a, d)),
                "status": states.get((a, d), failure),
                "live_actors": len(names.get((a, d), [])),
                "victims_alive": sorted(self.victims & set(names.get((a, d), []))),
            }
            for a, d in keys
        }


def run_faults(chaos: Chaos, plan: list[Fault], t0: float, out: dict[str, Any]) -> None:
    """Inject the plan on time, then time recovery from the start of the last fault. Runs on the main thread.

    A node fault runs right here, unbounded but for the Cluster's own timeouts: a Node installs a SIGTERM handler
    (main thread only), and the processes it starts get PR_SET_PDEATHSIG, which fires when the *thread* that
    started them ends, so a node added from a short-lived thread would lose its raylet with that thread.
    """
    injector = BoundedCaller(one_at_a_time=True)
    last_start = None
    for fault in plan:
        time.sleep(max(0.0, t0 + fault.at_s - time.monotonic()))
        last_start = time.monotonic()
        record: dict[str, Any] = {"at_s": round(last_start - t0, 2), "planned_s": fault.at_s, "fault": fault.describe()}
        try:
            if fault.kind == "node":
                record["hit"] = chaos.inject(fault)
            else:
                record["hit"] = injector.call(lambda f=fault: chaos.inject(f), INJECT_TIMEOUT_S)
            record["error"] = None
        except Exception as exc:
            record["hit"], record["error"] = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        record["took_s"] = round(time.monotonic() - last_start, 2)
        out["faults"].append(record)
        chaos.log(f"t={record['at_s']:.1f} {record['fault']}: {record['hit'] or record['error']} ({record['took_s']} s)")
    if last_start is None:
        return
    while time.monotonic() - last_start < RECOVERY_LIMIT_S:
        if chaos.at_target():
            out["recovery_s"] = round(time.monotonic() - last_start, 2)
            break
        time.sleep(POLL_S)
    chaos.log(f"back at target after the last fault: {out['recovery_s']} s")


# Raylets ------------------------------------------------------------------------------------------------------


def raylet_crashes(logs_dir: str) -> dict[str, list[str]]:
    """Crash lines in every raylet log of the session, by node id (or file, when a log names no node)."""
    crashes: dict[str, list[str]] = {}
    files: dict[str, list[str]] = collections.defaultdict(list)
    for path in glob.glob(os.path.join(logs_dir, "raylet*")):
        # raylet.out, raylet.err, raylet.1.out, and rotated raylet.1.out.1: one node per "raylet[.N]"
        stem = re.match(r"(raylet(?:\.\d+)?)\.(?:out|err)", os.path.basename(path))
        if stem:
            files[stem.group(1)].append(path)
    for stem, paths in sorted(files.items()):
        node, lines = stem, []
        for path in sorted(paths):
            try:
                with open(path, errors="replace") as f:
                    for line in f:
                        if node == stem and "Setting node ID node_id=" in line:
                            node = line.rsplit("node_id=", 1)[1].strip()
                        if RAYLET_CRASH.search(line):
                            lines.append(line.strip()[:300])
            except OSError:
                continue
        if lines:
            crashes[node] = lines
    return crashes


def raylet_exited(node: Any) -> bool:
    from ray._private import ray_constants

    try:
        return any(p.process.poll() is not None for p in node.all_processes[ray_constants.PROCESS_TYPE_RAYLET])
    except (KeyError, AttributeError):
        return False


# One system, one seed (in the child process) ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayAddressFile:
    """Puts back ``/tmp/ray/ray_current_cluster``, the file a bare ``ray.init()`` connects to.

    A Cluster writes its address there (and its shutdown deletes the file); other people's clusters run on this
    machine too, so the file goes back to what it was whenever it holds this bench's address or nothing.
    """

    def __init__(self) -> None:
        try:
            from ray._common.utils import get_ray_address_file  # checked on Ray 2.60

            self.path: Path | None = Path(get_ray_address_file(None))
        except Exception:
            self.path = None
        self.before = self._read()

    def _read(self) -> str | None:
        try:
            return self.path.read_text() if self.path is not None else None
        except OSError:
            return None

    def restore(self, mine: str) -> None:
        if self.path is None:
            return
        now = self._read()
        if now is not None and now.strip() != mine:
            return  # someone else's since
        with contextlib.suppress(OSError):
            if self.before is None:
                self.path.unlink(missing_ok=True)
            else:
                self.path.write_text(self.before)


def run_system(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    born = time.monotonic()

    def log(message: str) -> None:
        print(f"[{name} seed {seed} {time.monotonic() - born:6.1f}s] {message}", file=sys.stderr, flush=True)

    plan = plan_faults(seed, args.duration, args.interval, tuple(args.faults))
    row: dict[str, Any] = {
        "system": name,
        "seed": seed,
        "duration_s": args.duration,
        "interval_s": args.interval,
        "timeout_s": args.timeout,
        "fault_mix": list(args.faults),
        "hello_replicas": args.hello_replicas,
        "chain_replicas": args.chain_replicas,
        "proxy_location": args.proxy_location,
        "plan": [{"at_s": f.at_s, "fault": f.describe()} for f in plan],
        "faults": [],
        "recovery_s": None,
        "error": None,
    }
    # Every node's processes (and the workers they start) inherit this environment, so the deployments'
    # modules are found without a job runtime_env (with one, Ray starts each worker as two processes).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), str(ROOT), os.environ.get("PYTHONPATH")]))
    address_file = RayAddressFile()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": WORKER_CPUS, "include_dashboard": False})
    address_file.restore(cluster.address)
    workers = [cluster.add_node(num_cpus=WORKER_CPUS) for _ in range(2)]
    cluster.wait_for_nodes()
    logs_dir = cluster.head_node.get_logs_dir_path()
    row["logs_dir"] = logs_dir  # the replicas', controller's and proxy's logs, for whoever reads a bad row
    print(SESSION_MARK + json.dumps({"logs_dir": logs_dir, "head": cluster.head_node.node_id}), flush=True)
    ray.init(address=cluster.address, namespace="servegraph", log_to_driver=False, logging_level="ERROR")
    system: System = (Servegraph if name == "servegraph" else RayServe)(args.hello_replicas, args.chain_replicas)
    chaos = Chaos(system, cluster, workers, log)
    try:
        exercise(system, chaos, plan, row, args, log)
    except Exception as exc:  # the row says what went wrong; a broken system must not lose the figures so far
        row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        log(f"error: {row['error']}")
    crashes = raylet_crashes(logs_dir)
    crashed = set(crashes) | {n.node_id for n in [cluster.head_node, *chaos.workers] if n is not None and raylet_exited(n)}
    row["raylet_crashes"] = len(crashed)
    row["raylet_crash_lines"] = {node[:8]: lines[:5] for node, lines in crashes.items()}
    row["head_raylet_died"] = cluster.head_node.node_id in crashed
    started = time.monotonic()
    clean = True
    for step, fn in (("serve.shutdown", system.shutdown), ("ray.shutdown", ray.shutdown), ("cluster.shutdown", cluster.shutdown)):
        try:
            bounded(fn, SHUTDOWN_TIMEOUT_S)
        except Exception as exc:
            clean = False
            log(f"{step}: {type(exc).__name__}: {str(exc)[:200]}")
    address_file.restore(cluster.address)
    row["shutdown_s"] = round(time.monotonic() - started, 2)
    row["shutdown_clean"] = clean
    return row


def sample_lanes(system: Servegraph, out: list[tuple[float, int | None]], stop: threading.Event, t0: float) -> None:
    """The chain's compiled lanes about once a second while the load runs, as (seconds into the load, lanes; None:
    status did not answer), so a row says how much of the chain's load could run on the compiled path."""
    caller = BoundedCaller(one_at_a_time=True)
    while not stop.wait(1.0):
        at = round(time.monotonic() - t0, 1)
        try:
            out.append((at, int(caller.call(system.chain_path, STATUS_TIMEOUT_S).get("lanes", 0))))
        except Exception:
            out.append((at, None))
    caller.close()


def exercise(system: System, chaos: Chaos, plan: list[Fault], row: dict[str, Any], args: argparse.Namespace,
             log: Callable[[str], None]) -> None:
    """Deploy, warm up, load both apps while the faults land, wait for recovery, post-check; fills ``row``."""
    port = free_port()
    started = time.monotonic()
    bounded(lambda: system.deploy(port, args.proxy_location), DEPLOY_TIMEOUT_S)
    log(f"deployed in {time.monotonic() - started:.1f} s; HTTP on 127.0.0.1:{port}")
    # Warm up: both apps answer (a proxy may need a moment), and servegraph's chain has its compiled lanes.
    deadline = time.monotonic() + 60
    hello, chain = HelloClient(port, args.timeout), ChainClient(system, args.timeout, -1000)
    while hello.request() is not None or chain.request() is not None:
        if time.monotonic() > deadline:
            raise RuntimeError("the apps did not answer within 60 s of deploying")
        time.sleep(0.2)
    deadline = time.monotonic() + LANE_WAIT_S
    while isinstance(system, Servegraph) and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if bounded(system.chain_path, STATUS_TIMEOUT_S).get("lanes", 0) > 0:
                break
        chain.request()  # lanes go to processes that send requests
        time.sleep(0.2)
    hello.close()
    chain.close()
    with contextlib.suppress(Exception):
        row["chain_path_start"] = bounded(system.chain_path, STATUS_TIMEOUT_S)

    tallies = {"hello": Tally(), "chain": Tally()}
    stop = threading.Event()
    clients: list[HelloClient | ChainClient] = [HelloClient(port, args.timeout) for _ in range(HTTP_CLIENTS)]
    clients += [ChainClient(system, args.timeout, n * 10_000_000) for n in range(CHAIN_CALLERS)]
    t0 = time.monotonic()
    threads = [
        threading.Thread(
            target=load, args=(c, tallies["hello" if isinstance(c, HelloClient) else "chain"], stop, t0, args.pace), daemon=True
        )
        for c in clients
    ]
    for t in threads:
        t.start()
    timer = threading.Timer(args.duration, stop.set)  # the load ends on time even while a fault is being injected
    timer.daemon = True
    timer.start()
    paced = f", each pausing {args.pace:g} s after an answer" if args.pace else ""
    log(f"load on: {HTTP_CLIENTS} HTTP clients, {CHAIN_CALLERS} chain callers{paced}; {len(plan)} faults planned")
    if isinstance(system, Servegraph):
        lanes: list[tuple[float, int | None]] = row.setdefault("chain_lanes", [])
        threading.Thread(target=sample_lanes, args=(system, lanes, stop, t0), daemon=True).start()
    run_faults(chaos, plan, t0, row)  # then waits (at most RECOVERY_LIMIT_S) for every deployment to be back
    stop.wait()
    for t in threads:  # each call is bounded by the timeout (plus the 2 s a handle call gets on top)
        t.join(timeout=args.timeout + 10)
    row["load_threads_stuck"] = sum(t.is_alive() for t in threads)
    row["apps"] = {app: tally.as_dict() for app, tally in tallies.items()}
    row.update(Tally.merged(tallies.values()).as_dict())
    log(f"load off: {row['requests']} requests, {row['served_pct']} % served, {row['hung']} hung")
    if chaos.redeploy_thread is not None:
        chaos.redeploy_thread.join(timeout=max(0.0, DEPLOY_TIMEOUT_S - (time.monotonic() - t0)))
        row["redeploy"] = chaos.redeploy or {"ok": False, "error": "still running", "took_s": None}
    row["post_check"] = {
        "hello": post_check(lambda n: HelloClient(port, args.timeout), 4, args.timeout + 30),
        "chain": post_check(lambda n: ChainClient(system, args.timeout, -10_000_000 * (n + 1)), 4, args.timeout + 30),
    }
    log(f"post-check: hello {row['post_check']['hello']}/100, chain {row['post_check']['chain']}/100")
    row["at_end"] = chaos.snapshot()
    with contextlib.suppress(Exception):
        row["chain_path_end"] = bounded(system.chain_path, STATUS_TIMEOUT_S)


# The parent: one child process per (system, seed), a table or JSON lines ---------------------------------------


def run_child(system: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one system in a child process, so a wedged Ray in one cannot stop the next; a row comes back anyway."""
    argv = [sys.executable, __file__, "--child", system, "--seed", str(seed), "--duration", str(args.duration),
            "--interval", str(args.interval), "--faults", ",".join(args.faults), "--timeout", str(args.timeout),
            "--pace", str(args.pace), "--hello-replicas", str(args.hello_replicas), "--chain-replicas", str(args.chain_replicas), "--proxy-location", args.proxy_location]
    # Deploy, the load, recovery, the post-check and shutdown are each bounded in the child; this is the last resort.
    limit = DEPLOY_TIMEOUT_S + args.duration + INJECT_TIMEOUT_S + RECOVERY_LIMIT_S + 2 * (args.timeout + 30) + 4 * SHUTDOWN_TIMEOUT_S
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = child.communicate(timeout=limit)
        problem = None if child.returncode == 0 else f"the bench process exited with {child.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child's own group: it and the Ray processes it started
        out, _ = child.communicate()
        problem = f"the bench process did not finish within {limit:g} s and was killed"
    session = None
    for line in out.splitlines():
        if line.startswith(ROW_MARK):
            return json.loads(line[len(ROW_MARK) :])
        if line.startswith(SESSION_MARK):
            session = json.loads(line[len(SESSION_MARK) :])
    row: dict[str, Any] = {"system": system, "seed": seed, "error": problem or "the bench process printed no row"}
    if session is not None:  # what the logs say is still worth having
        crashes = raylet_crashes(session["logs_dir"])
        row.update(raylet_crashes=len(crashes), head_raylet_died=session["head"] in crashes,
                   raylet_crash_lines={n[:8]: lines[:5] for n, lines in crashes.items()})
    return row


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "-" if value is None else str(value)


def print_table(seed: int, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n### seed {seed}: {args.duration:g} s of load, a fault every {args.interval:g} s "
          f"({', '.join(args.faults)}), request timeout {args.timeout:g} s\n")
    print("| | " + " | ".join(SYSTEMS[r["system"]] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))

    def line(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        print(f"| {label} | " + " | ".join(cell(r) for r in rows) + " |")

    def app(r: dict[str, Any], name: str, key: str) -> str:
        return _cell(r.get("apps", {}).get(name, {}), key)

    def kinds(r: dict[str, Any]) -> str:
        failed = r.get("failed_by_kind")
        return "-" if failed is None else (", ".join(f"{k} x{n}" for k, n in failed.items()) or "none")

    def lanes(r: dict[str, Any]) -> str:
        samples = r.get("chain_lanes")
        if samples is None:
            return "n/a"
        held = sum(1 for _, n in samples if n)
        why = (r.get("chain_path_start") or {}).get("reason", "") if held == 0 else ""
        # No lane at all: say why, as the chain's status gave it before the load (lanes never cross nodes, so on a
        # multi-node cluster they form only where one node holds a replica of every stage).
        return f"{held} of {len(samples)}" + (f" (at the start: {why})".replace("|", "/") if why else "")

    line("requests (hello HTTP / chain handle)", lambda r: f"{_cell(r, 'requests')} ({app(r, 'hello', 'requests')} / {app(r, 'chain', 'requests')})")
    line("served %", lambda r: f"{_cell(r, 'served_pct')} ({app(r, 'hello', 'served_pct')} / {app(r, 'chain', 'served_pct')})")
    line("failed, by kind", kinds)
    line(f"hung (> {args.timeout:g} s)", lambda r: _cell(r, "hung"))
    line("raylet crashes (nodes)", lambda r: _cell(r, "raylet_crashes"))
    line("head raylet died", lambda r: {True: "yes", False: "no"}.get(r.get("head_raylet_died"), "-"))  # type: ignore[arg-type]
    line("back at target after the last fault (s)", lambda r: _cell(r, "recovery_s"))
    line("post-check hello / chain (of 100)", lambda r: f"{_cell(r.get('post_check', {}), 'hello')} / {_cell(r.get('post_check', {}), 'chain')}")
    line("redeploy took (s)", lambda r: _cell(r.get("redeploy") or {}, "took_s"))
    line("chain: lane samples with a compiled lane (1/s)", lanes)
    if any(r.get("error") for r in rows):
        line("error", lambda r: _cell(r, "error").replace("|", "/"))
    hits = {r["system"]: r.get("faults", []) for r in rows}
    print(f"\nFaults (seed {seed}), planned time, then when each landed and what it hit per system:\n")
    for i, planned in enumerate(rows[0].get("plan") or []):
        landed = "; ".join(
            f"{SYSTEMS[s]} t={f[i]['at_s']} {f[i]['hit'] or f[i]['error']}" for s, f in hits.items() if i < len(f)
        )
        print(f"- {planned['at_s']:g} s {planned['fault']}: {landed}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="servegraph,rayserve", help="comma-separated: servegraph, rayserve")
    parser.add_argument("--seed", "--sequence", dest="seed", type=int, default=0,
                        help="the fault sequence's seed (the first, with --runs); --sequence is the same")
    parser.add_argument("--runs", type=int, default=1, help="runs with seeds seed, seed+1, ...")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between faults")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="comma-separated mix: " + ", ".join(FAULT_KINDS))
    parser.add_argument("--pace", type=float, default=0.0,
                        help="seconds each client waits after a served request (default 0: as fast as answers come)")
    parser.add_argument("--timeout", type=float, default=30.0, help="a request not answered within this is hung")
    parser.add_argument("--hello-replicas", type=int, default=1, help="replicas of each hello deployment (examples/hello.py: 1)")
    parser.add_argument("--chain-replicas", type=int, default=2, help="replicas of each chain stage")
    parser.add_argument("--proxy-location", choices=("HeadOnly", "EveryNode"), default="HeadOnly",
                        help="where both systems run HTTP proxies (see the module docstring)")
    parser.add_argument("--json", action="store_true", help="one JSON object per system per run instead of tables")
    parser.add_argument("--child", choices=sorted(SYSTEMS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    for s in args.systems:
        if s not in SYSTEMS:
            parser.error(f"--systems: unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    for f in args.faults:
        if f not in FAULT_KINDS:
            parser.error(f"--faults: unknown fault {f!r}; choose from {', '.join(FAULT_KINDS)}")
    if not args.systems or not args.faults:
        parser.error("--systems and --faults each need at least one entry")
    if min(args.interval, args.duration, args.timeout, args.runs, args.hello_replicas, args.chain_replicas) <= 0:
        parser.error("--duration, --interval, --timeout, --runs and the replica counts must be positive")
    return args


def follow_parent(parent: int) -> None:
    """End this child when the bench that started it is gone (killed by a test's timeout, say): the child runs in
    its own session, so nothing else would, and its cluster's processes share its fate."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        threading.Thread(target=follow_parent, args=(os.getppid(),), daemon=True).start()
        row = run_system(args.child, args.seed, args)
        print(ROW_MARK + json.dumps(row), flush=True)
        sys.stderr.flush()
        # Ray's exit hooks may wait on a cluster the faults broke; the row is out and shutdown was bounded.
        os._exit(0)
    for seed in range(args.seed, args.seed + args.runs):
        rows = []
        for system in args.systems:
            print(f"running {SYSTEMS[system]}, seed {seed}...", file=sys.stderr, flush=True)
            row = run_child(system, seed, args)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
        if not args.json:
            print_table(seed, rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
