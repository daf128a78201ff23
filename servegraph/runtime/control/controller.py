"""The controller: desired state per deployment, and a loop that moves replicas towards it (the control plane).

One named, detached actor (``servegraph_controller`` in namespace
``servegraph``) pinned to the head node and restarted by Ray if it dies. It
holds each deployment's target (replica count and version) and runs a control
loop, as Ray Serve's ``_private/deployment_state.py`` does:

- start replicas that are missing, with bounded retries and backoff; a
  constructor that keeps failing gives ``DEPLOY_FAILED`` and its one-line error;
- replace replicas that died (their ``watch`` call fails the moment the actor
  dies, on a kill or with its node) or whose ``check_health`` fails;
- roll updates a few replicas at a time (new before old where resources allow,
  old first where they do not), reconfigure live replicas when only
  ``user_config`` changed, scale to the autoscaler's decision;
- drain replicas it stops (``graceful_shutdown_*``) and run their ``__del__``;
- give each replica of a deployment with ``placement_group_bundles`` a placement group of its own,
  removed when the replica ends (``placement_groups.py``).

It is never on a request's path. Routers in every process learn the replica
sets by long-poll (:meth:`Controller.listen`) and report load for the
autoscaler (:meth:`Controller.record_metrics`). Replicas and the HTTP proxy
are detached named actors, so they outlive the controller; its state is
checkpointed in Ray's internal KV, and a restarted controller re-attaches to
the replicas that are still alive instead of starting over.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import os
import pickle
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import ray
import ray.cloudpickle
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ...compiler import ir
from ...compiler.fast_path import compiled_path_problem, lane_deployments
from ...compiler.outline import outline
from ...dsl.options import add_resources
from .. import ray_compat
from ..actors.proxy import HTTP_OPTION_DEFAULTS
from ..actors.proxy import HTTPProxy as _HTTPProxy
from ..actors.replica import replica_actor_class, replica_concurrency
from ..common import telemetry
from ..common.codec import loads_with_paths
from ..common.driver_http import route_adapter
from ..common.records import (
    CONSTRUCTED,
    DRAINING,
    FAILED,
    INITIALIZING,
    LANES_KEY,
    NAMESPACE,
    RECONFIGURING,
    STOPPED,
    LaneAssignment,
)
from ..common.user_frames import user_frame_in
from ..data.handle import DeploymentInfo
from ..data.router import Membership
from . import checkpoint, graph_autoscaling, placement_groups
from .autoscaling import Autoscaler
from .lane_table import LaneTable, Owner
from .proxy_state import EVERY_NODE, ProxyManager, answered
from .version import replica_version

#: How long ``deploy`` waits for replicas to start before it reports failure (they keep being tried).
START_TIMEOUT_S = float(os.environ.get("SERVEGRAPH_REPLICA_START_TIMEOUT_S", "300"))
#: The control loop runs this often, and at once when something happens (a death, a deploy, a report).
CONTROL_PERIOD_S = 0.1
#: A long-poll call returns after this long even when nothing changed.
LISTEN_TIMEOUT_S = 30.0
#: Failed starts of one version, counted per replica of the target, before the deployment is DEPLOY_FAILED.
MAX_START_FAILURES_PER_REPLICA = 3
#: How long a stopping replica keeps its slot after routers were told it is gone, before it drains.
MEMBERSHIP_PROPAGATION_S = 0.2
#: Lanes of one application that may break (with their replicas alive) in a minute before it leaves the compiled path.
MAX_LANE_BREAKS_PER_MINUTE = 5
#: Seconds between checks that the processes owning compiled lanes are still alive.
OWNER_CHECK_PERIOD_S = 1.0

# Replica states, Ray Serve's names.
STARTING, UPDATING, RECOVERING, RUNNING, STOPPING = "STARTING", "UPDATING", "RECOVERING", "RUNNING", "STOPPING"
#: Replicas in these states may have requests running (a recovered one, from routers that knew it before).
SERVING = (RUNNING, UPDATING, RECOVERING)
#: Replicas in these states are given to routers: a recovered one only once it proved ready (see _recover_one).
ROUTED = (RUNNING, UPDATING)
#: Seconds a restarted controller waits for a replica it found to say which phase it is in.
RECOVER_TIMEOUT_S = 10.0

# Deployment and application states, Ray Serve's names.
HEALTHY, UNHEALTHY, DEPLOY_FAILED = "HEALTHY", "UNHEALTHY", "DEPLOY_FAILED"
UPSCALING, DOWNSCALING = "UPSCALING", "DOWNSCALING"
DEPLOYING, RUNNING_APP, DELETING = "DEPLOYING", "RUNNING", "DELETING"


def replica_actor_name(app: str, deployment: str, replica_id: str) -> str:
    return f"SERVEGRAPH_REPLICA::{app}#{deployment}#{replica_id}"


def _describe_failure(exc: BaseException) -> str:
    """One line for a replica that could not start or answer: the user's error, not Ray's wrapping.

    However it arrived (the replica's own reply, or a Ray error: a call that raised, or the replica's
    death carrying its error as the cause), the line is the same: ``Type: message (file.py:N in fn)``,
    naming the innermost frame of the user's code when the error's traceback has one.
    """
    if isinstance(exc, ReplicaStartError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
        head = f"{type(cause).__name__}: {cause}"  # a RayTaskError raised as the user's exception type
    else:
        lines = [line for line in str(cause or exc).strip().splitlines() if line.strip()]
        head = next((ln.strip() for ln in reversed(lines) if ": " in ln and not ln.startswith(" ")), "")
        head = head or (lines[-1].strip() if lines else type(exc).__name__)
    return head + user_frame_in(text)


class ReplicaStartError(Exception):
    """The user's constructor (or reconfigure) raised; the message is its one-line description."""


class ReplicaStopping(Exception):
    """A replica found by a restarted controller was already draining: it is stopped, not recovered."""


#: _node_for's answer when every node already runs max_replicas_per_node replicas of a deployment.
_NO_NODE = object()


@dataclasses.dataclass(eq=False)
class Replica:
    replica_id: str
    actor: ActorHandle
    actor_name: str
    version: str
    state: str
    #: The user_config the replica was last given (what reconfigure compares against).
    user_config: Any
    started_at: float
    node_id: str | None = None
    pid: int | None = None
    task: asyncio.Task | None = None  # starting, recovering, reconfiguring or stopping
    watch: asyncio.Task | None = None
    health: asyncio.Task | None = None
    last_health: float = 0.0
    dead: bool = False
    unhealthy: str | None = None
    #: The multiplexed models the replica holds or is loading, as it last reported them.
    models: frozenset[str] = frozenset()
    #: Its own placement group (placement_group_bundles), removed when it ends; why Ray has not placed it yet.
    group: Any = None
    placing: asyncio.Task | None = None
    unplaced: str = ""
    #: The logging_config the replica was last given (None: the defaults); a new one is pushed, never restarts it.
    logging: Any = None

    def info(self) -> ReplicaReport:
        return ReplicaReport(self.replica_id, self.state, self.node_id, self.pid, self.actor_name)


@dataclasses.dataclass(eq=False)
class Deployment:
    app: str
    spec: ir.DeploymentIR
    version: str
    target: int
    replicas: dict[str, Replica] = dataclasses.field(default_factory=dict)
    autoscaler: Autoscaler | None = None
    status: str = "UPDATING"
    message: str = ""
    failures: int = 0
    next_start_at: float = 0.0
    failed: bool = False
    published: tuple | None = None
    deleting: bool = False
    #: A replica died or failed its health check since the deployment was last at its target.
    degraded: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def membership(self) -> Membership:
        opts = self.spec.options
        routed = [r for r in self.replicas.values() if r.state in ROUTED and not r.dead]
        serving = tuple((r.replica_id, r.actor) for r in routed)
        interval = opts.autoscaling_config.metrics_interval_s if opts.autoscaling_config else None
        models = tuple(r.models for r in routed) if any(r.models for r in routed) else ()
        nodes = tuple(r.node_id for r in routed)
        return Membership(
            serving, opts.max_ongoing_requests, opts.max_queued_requests, interval, not self.deleting, models, nodes
        )


@dataclasses.dataclass(eq=False)
class App:
    name: str
    app: ir.AppIR
    app_bytes: bytes
    code_paths: tuple[str, ...]
    route_prefix: str | None
    deployments: dict[str, Deployment]
    status: str = DEPLOYING
    message: str = ""
    deleting: bool = False
    #: The compiled path's lanes, or None when the graph runs as a plan only (``lane_reason`` says why).
    lanes: LaneTable | None = None
    lane_reason: str = ""
    compiled: bool = True
    #: Autoscaled deployments sized from their callers' load too (see graph_autoscaling.py).
    graph_autoscaling: bool = True
    #: Calls per request along each edge, as the graph's code says (graph_autoscaling.static_fanout).
    fanout: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaReport:
    """One replica, as ``status`` reports it."""

    replica_id: str
    state: str
    node_id: str | None
    pid: int | None
    actor_name: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeploymentReport:
    """One deployment, as ``status`` reports it."""

    status: str
    replica_states: dict[str, int]
    message: str
    num_replicas: int
    class_name: str
    version: str
    replicas: tuple[ReplicaReport, ...]
    #: An autoscaled deployment's decision: {"target", "desired", "reason", "graph_aware"}; None otherwise.
    autoscaling: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AppReport:
    """One application, as ``status`` reports it."""

    status: str
    message: str
    route_prefix: str | None
    ingress: str | None
    deployments: dict[str, DeploymentReport]
    #: Which path requests take: {"kind": "compiled"|"plan", "reason": ..., "lanes": n} (see lane_table.py).
    path: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class StatusReply:
    """What ``status`` answers: every application, and where the HTTP proxy listens (None: no proxy)."""

    applications: dict[str, AppReport]
    proxy: dict[str, Any] | None = None
    #: Ray Serve's proxy states by node id (HEALTHY, STARTING).
    proxies: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why the controller could not do what a driver asked, as data; the driver raises it as a DeploymentError."""

    #: code-import (the graph's code does not import here), route-taken, proxy (the HTTP proxy cannot
    #: serve there), deleted (while it deployed), replica-failed, timeout (replicas did not start in time),
    #: logging (a proxy cannot write its log where logging_config says).
    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class DeployReply:
    """What ``deploy_app`` answers: per deployment what changed, and why the application is not running, if so."""

    changes: dict[str, str]
    refusal: Refusal | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None


@dataclasses.dataclass(frozen=True, slots=True)
class AppRecord:
    """What ``get_app`` answers: a running application's IR, its deployments' routing infos, its route."""

    app: ir.AppIR
    infos: dict[str, DeploymentInfo]
    route_prefix: str | None


class Controller:
    def __init__(self, locate: Callable[[], Any] | None = None) -> None:
        """``locate`` finds the controller, or starts it again from its checkpoint (see control/locate.py):
        handed on to every replica and proxy, for their handles' membership clients."""
        self._locate = locate
        #: sys.path before any driver's directories were added: what replicas get without being told.
        self._own_path = list(sys.path)
        #: Every deploying driver's import directories, for the proxy to load graphs' code.
        self._code_paths: list[str] = []
        self._apps: dict[str, App] = {}
        #: The HTTP proxies: where they run and what they serve (see proxy_state.py).
        self._proxies = ProxyManager(HTTPProxy, _kill, self._changed, lambda: self._code_paths, locate)
        self._lock = asyncio.Lock()
        self._incarnation = time.time_ns()
        self._counter = 0
        #: Versions of every (app, deployment) membership ever published by this incarnation.
        self._versions: dict[tuple[str, str], tuple[int, int]] = {}
        self._memberships: dict[tuple[str, str], Membership] = {}
        loop = asyncio.get_event_loop()
        self._published: asyncio.Future = loop.create_future()
        self._kick = asyncio.Event()
        self._recovered = asyncio.Event()
        self._dirty = False
        self._owners_checked = 0.0
        #: A test's request to end this process at one point of the lifecycle (see _test_crash_at).
        self._crash_at: str | None = None
        #: Replicas' request stats (see telemetry.py): per (app, deployment) and per (app, caller, deployment, method).
        self._deployment_stats = telemetry.StatsWindow()
        self._edge_stats = telemetry.StatsWindow()
        self._loops = 0
        self._own_actor_id = ray.get_runtime_context().get_actor_id() or ""
        #: The gauges last exported (Ray keeps the last value; only changes are set again).
        self._exported: dict[tuple, float] = {}
        self._loop_task = loop.create_task(self._run())

    # Test hook: stop the controller at a chosen point, deterministically ----------------------
    async def _test_crash_at(self, point: str | None) -> int:
        """End this controller process (Ray restarts it) when it next reaches ``point``; returns its pid.

        Points: ``replica-created`` (a replica exists, its constructor never asked to run),
        ``replica-initializing`` / ``replica-reconfiguring`` / ``replica-draining`` (the replica is in
        that phase), ``rollout`` (old and new versions both running), ``lanes-formed`` (lanes were
        just published to their owners). The checkpoint is written first, as the loop would have.
        """
        self._crash_at = point
        return os.getpid()

    async def _test_pid(self) -> int:
        """This controller's process id (a test sees a restart by it changing)."""
        return os.getpid()

    def _crash(self) -> None:
        self._checkpoint()
        print(f"servegraph: controller stopping at test point {self._crash_at!r}", file=sys.stderr, flush=True)
        os._exit(1)

    async def _crash_point(self, point: str, r: Replica, phase: str) -> None:
        """At ``point``, once replica ``r`` says it is in ``phase``, end the controller (tests only)."""
        if self._crash_at != point:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if (await r.actor.phase.remote())["phase"] == phase:
                    self._crash()
            except ray.exceptions.RayActorError:
                return
            await asyncio.sleep(0.01)

    # The control loop -------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._recover()
        except Exception:
            traceback.print_exc()
        finally:
            self._recovered.set()
        while True:
            started = time.monotonic()
            try:
                async with self._lock:
                    await self._reconcile_all()
                self._export_metrics(time.monotonic() - started)
            except Exception:  # the loop must never stop; the next pass retries
                traceback.print_exc()
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), CONTROL_PERIOD_S)
            except asyncio.TimeoutError:
                pass

    def _wake(self) -> None:
        self._kick.set()

    def _changed(self) -> None:
        """Something the checkpoint holds changed outside a loop pass: write it at the next one."""
        self._dirty = True
        self._wake()

    async def _reconcile_all(self) -> None:
        now = time.monotonic()
        for app in list(self._apps.values()):
            self._autoscale(app)
            for dep in list(app.deployments.values()):
                self._reconcile(dep, now)
                if dep.deleting and not dep.replicas:
                    del app.deployments[dep.name]
                    self._publish(dep)
            if app.deleting and not app.deployments:
                del self._apps[app.name]
                self._dirty = True
                self._publish_lanes(app)
            else:
                self._update_app_status(app)
                self._reconcile_lanes(app, now)
        if now - self._owners_checked >= OWNER_CHECK_PERIOD_S:
            self._owners_checked = now
            self._forget_dead_owners()
        replica_nodes = {
            r.node_id
            for app in self._apps.values()
            for dep in app.deployments.values()
            for r in dep.replicas.values()
            if r.state in SERVING and r.node_id is not None
        }
        self._proxies.reconcile(replica_nodes)
        if self._dirty:
            self._dirty = False
            self._checkpoint()

    def _reconcile(self, dep: Deployment, now: float) -> None:
        opts = dep.spec.options
        # What finished since the last pass.
        for r in list(dep.replicas.values()):
            if r.dead and r.state != STOPPING:
                self._forget(dep, r)
                dep.message = f"replica {r.replica_id} died (was {r.state}); replacing it"
                dep.degraded = True
                continue
            if r.unhealthy is not None and r.state != STOPPING:
                dep.message = f"replica {r.replica_id} failed its health check: {r.unhealthy}; replacing it"
                dep.degraded = True
                # Drained like any stop: it may still finish what it runs, and routers must hear first.
                self._stop(dep, r, graceful=True)
                continue
            if r.task is None or not r.task.done() or r.state == STOPPING:
                continue
            exc = r.task.exception()
            task, r.task = r.task, None
            if r.state in (STARTING, RECOVERING):
                if exc is None:
                    info = task.result()
                    if r.state == STARTING:
                        tags = {"deployment": dep.name, "application": dep.app}
                        telemetry.observe("serve_replica_startup_latency_ms", tags, (now - r.started_at) * 1000.0)
                    r.node_id, r.pid, r.state, r.last_health = info["node_id"], info["pid"], RUNNING, now
                    r.user_config = info["user_config"]  # what its code accepted: the loop reconfigures it if behind
                    r.logging = info.get("logging_config")  # likewise the logging_config it applies
                    if r.watch is None:
                        r.watch = asyncio.ensure_future(self._watch(dep, r))
                    dep.failures = 0
                    self._dirty = True
                elif isinstance(exc, ReplicaStopping):
                    self._stop(dep, r, graceful=True)  # finish the drain the old controller began
                    continue
                elif r.state == RECOVERING and not isinstance(exc, ReplicaStartError):
                    self._forget(dep, r)  # dead, or not answering: replaced
                else:
                    dep.failures += 1
                    dep.message = f"a replica failed to start: {_describe_failure(exc)}"
                    dep.next_start_at = now + min(0.2 * 2 ** (dep.failures - 1), 5.0)
                    self._forget(dep, r)
            elif r.state == UPDATING:
                r.state = RUNNING
                if exc is not None:
                    dep.failed, dep.message = True, f"reconfigure() failed: {_describe_failure(exc)}"
        # Health checks of running replicas.
        for r in dep.replicas.values():
            if r.state == RUNNING and r.health is None and now - r.last_health >= opts.health_check_period_s:
                r.health = asyncio.ensure_future(self._check_health(dep, r))
        # The target: the autoscaler's decision, or the configured count.
        new = [r for r in dep.replicas.values() if r.version == dep.version and r.state != STOPPING]
        old = [r for r in dep.replicas.values() if r.version != dep.version and r.state != STOPPING]
        target = 0 if dep.deleting else dep.target
        # Reconfigure live replicas whose user_config is behind.
        for r in new:
            if r.state == RUNNING and r.user_config != opts.user_config and r.task is None:
                r.state = UPDATING
                r.user_config = opts.user_config
                r.task = asyncio.ensure_future(self._reconfigure(r, opts.user_config))
            elif r.state == RUNNING and r.logging != opts.logging_config and r.task is None:
                r.state = UPDATING  # still routed; the deploy waits for it, as for a user_config
                r.logging = opts.logging_config
                r.task = asyncio.ensure_future(self._configure_logging(r, opts.logging_config))
        # Too many of the current version: stop the ones not yet serving first.
        if len(new) > target:
            surplus = sorted(new, key=lambda r: (r.state in SERVING, r.started_at), reverse=False)
            for r in surplus[: len(new) - target]:
                self._stop(dep, r, graceful=r.state in SERVING)
            new = [r for r in new if r.state != STOPPING]
        # Too few: start more, surging above the target by a few while old replicas still serve.
        missing = target - len(new)
        if missing > 0 and not dep.failed:
            if dep.failures >= MAX_START_FAILURES_PER_REPLICA * max(target, 1):
                dep.failed = True
            elif now >= dep.next_start_at:
                surge = max(1, math.ceil(0.25 * target))
                room = target + surge - len(new) - len(old)
                count = min(missing, max(room, 0))
                if old and (count == 0 or not self._fits(dep, count)):
                    count = 0
                    stopping = any(r.state == STOPPING for r in dep.replicas.values())
                    if not stopping and all(r.state in SERVING for r in new):
                        # No room beside the old replicas: stop one old first, start its successor when it is gone.
                        victim = min(old, key=lambda r: r.state in SERVING)
                        self._stop(dep, victim, graceful=victim.state in SERVING)
                for _ in range(count):
                    node = self._node_for(dep)
                    if node is _NO_NODE:
                        dep.message = (
                            f"max_replicas_per_node={dep.spec.options.max_replicas_per_node}: every alive node already "
                            "runs that many replicas of this deployment; add nodes or raise the limit"
                        )
                        break
                    if self._start(dep, node) is None:
                        break
        # Old replicas go once enough new ones serve: never fewer serving than the target.
        serving_new = sum(1 for r in new if r.state in SERVING)
        serving_old = [r for r in old if r.state in SERVING]
        if self._crash_at == "rollout" and serving_old and any(r.state == RUNNING for r in new):
            self._crash()
        for r in old:
            if r.state not in SERVING:
                self._stop(dep, r, graceful=False)
        excess = serving_new + len(serving_old) - target
        for r in serving_old[: max(0, excess)]:
            self._stop(dep, r, graceful=True)
        self._update_status(dep, new, old, target)
        self._publish(dep)

    def _update_status(self, dep: Deployment, new: list[Replica], old: list[Replica], target: int) -> None:
        serving = sum(1 for r in new if r.state in SERVING)
        if dep.failed:
            dep.status = DEPLOY_FAILED
        elif serving == target and not old and all(r.state == RUNNING for r in new):
            if dep.status != HEALTHY:
                dep.message = ""
            dep.status, dep.degraded = HEALTHY, False
        elif dep.status == "UPDATING":
            pass  # a deploy is rolling out: it stays UPDATING until it converges or fails
        elif dep.degraded:
            dep.status = UNHEALTHY
        else:  # only the autoscaler moves the target of a deployment that was healthy
            dep.status = UPSCALING if serving < target else DOWNSCALING
        unplaced = [r for r in new if r.state == STARTING and r.unplaced]
        group = dep.spec.options.placement_group()
        if unplaced and group is not None and not dep.failed:
            dep.message = placement_groups.pending_message(len(unplaced), *group, unplaced[0].unplaced)
        pending = [r for r in new if r.state == STARTING and time.monotonic() - r.started_at > 30]
        if pending and not dep.message:
            dep.message = (
                f"{len(pending)} replica(s) have been starting for over 30 s; the cluster may lack the resources "
                f"they ask for ({dep.spec.options.actor_options()}). See `ray status`."
            )

    # Autoscaling ----------------------------------------------------------------------------
    def _autoscale(self, app: App) -> None:
        """Move every autoscaled deployment's target, all in this one step: each by its own policy, and
        (graph-aware, unless the application turned it off) no lower than its callers' load needs."""
        scaled = [d for d in app.deployments.values() if d.autoscaler is not None and not d.deleting]
        if not scaled:
            return
        now = time.time()
        floors = self._graph_floors(app, now) if app.graph_autoscaling else {}
        for dep in scaled:
            assert dep.autoscaler is not None
            wish = floors.get(dep.name)
            dep.target = dep.autoscaler.decide(dep.target, now, wish.replicas if wish else None, wish.reason if wish else "")

    #: The window over which graph-aware autoscaling reads rates and fan-outs.
    GRAPH_WINDOW_S = 5.0
    #: The window in which it looks for each deployment's time per request without queueing.
    SERVICE_WINDOW_S = 60.0

    def _graph_floors(self, app: App, now: float) -> dict[str, graph_autoscaling.Wish]:
        names = [d for d, dep in app.deployments.items() if not dep.deleting]
        window = self.GRAPH_WINDOW_S
        summaries = {n: self._deployment_stats.summary((app.name, n), now, window) for n in names}
        rates = {n: summary["per_s"] for n, summary in summaries.items()}
        edge_rates: dict[tuple[str, str], float] = {}
        for key in self._edge_stats.keys():
            if key[0] == app.name:
                _, caller, callee, _method = key
                edge_rates[(caller, callee)] = edge_rates.get((caller, callee), 0.0) + self._edge_stats.summary(key, now, window)["per_s"]
        fanout = graph_autoscaling.measured_fanout(app.fanout, rates, edge_rates)
        stages = {}
        for n in names:
            dep = app.deployments[n]
            # Its time per request without queueing: load inflates the window's p50 (a caller waits for its
            # under-sized callees), which would shrink the arrival rates Little's law derives from it.
            p50 = self._deployment_stats.service_time_ms((app.name, n), now, self.SERVICE_WINDOW_S) or summaries[n]["p50_ms"]
            config = dep.autoscaler.config if dep.autoscaler is not None else None
            stages[n] = graph_autoscaling.Stage(
                ongoing=dep.autoscaler.total_ongoing(now) if dep.autoscaler is not None else None,
                latency_s=p50 / 1000.0 if p50 else None,
                rate=rates[n],
                target_ongoing=config.target_ongoing_requests if config is not None else None,
                current=dep.target,
            )
        return graph_autoscaling.wishes(graph_autoscaling.graph_order(names, fanout), stages, fanout)

    def _update_app_status(self, app: App) -> None:
        deployments = list(app.deployments.values())
        failed = [d for d in deployments if d.status == DEPLOY_FAILED]
        if app.deleting:
            app.status = DELETING
        elif failed:
            d = failed[0]
            app.status = DEPLOY_FAILED
            app.message = f"deployment {d.name!r} (bound at {d.spec.call_site}) failed: {d.message}"
        elif any(d.status == "UPDATING" for d in deployments):
            app.status = DEPLOYING
        elif any(d.status == UNHEALTHY for d in deployments):
            app.status = "UNHEALTHY"
        else:
            app.status, app.message = RUNNING_APP, ""

    # Replica lifecycle --------------------------------------------------------------------
    def _fits(self, dep: Deployment, count: int) -> bool:
        """Whether ``count`` more replicas fit in what the cluster has free now."""
        try:
            free = ray.available_resources()
        except Exception:
            return True
        need = dep.spec.options.replica_resources()
        return all(free.get(k, 0.0) + 1e-9 >= count * v for k, v in need.items() if v)

    def _node_for(self, dep: Deployment) -> Any:
        """The node a new replica must run on to keep ``max_replicas_per_node`` (the one with fewest of this
        deployment's replicas); None without the option (Ray spreads replicas); _NO_NODE if every node is full."""
        limit = dep.spec.options.max_replicas_per_node
        if limit is None:
            return None
        try:
            alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        except Exception:  # the GCS is busy: start nothing this pass
            return _NO_NODE
        counts = collections.Counter(r.node_id for r in dep.replicas.values() if r.state != STOPPING and not r.dead)
        room = [n for n in alive if counts[n] < limit]
        return min(room, key=lambda n: (counts[n], n)) if room else _NO_NODE

    def _start(self, dep: Deployment, node: str | None = None) -> Replica | None:
        """Create a replica actor (and its placement group, if the deployment has bundles); None if Ray refused."""
        spec = dep.spec
        app = self._apps[dep.app]
        replica_id = uuid.uuid4().hex[:8]
        name = replica_actor_name(dep.app, dep.name, replica_id)
        missing = [p for p in app.code_paths if p not in self._own_path]
        options = _with_code_paths(spec.options.actor_options(), missing)
        group_spec, group = spec.options.placement_group(), None
        placement: Any = "SPREAD" if node is None else NodeAffinitySchedulingStrategy(node, soft=False)
        try:
            if group_spec is not None:  # a group of its own, named as the replica; the replica in bundle 0
                group = placement_groups.create(name, *group_spec)
                placement = placement_groups.scheduling_strategy(group)
            actor = (
                replica_actor_class(spec.target)
                .options(
                    name=name,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    max_concurrency=replica_concurrency(spec.target, spec.options.max_ongoing_requests),
                    scheduling_strategy=placement,
                    **options,
                )
                .remote(
                    dep.app, dep.name, replica_id, spec.target, spec.is_function, spec.init_args, spec.init_kwargs,
                    locate=self._locate,
                )
            )
        except Exception as exc:  # Ray refused the group or the actor's options: a failed start, its group freed
            placement_groups.remove(group)
            dep.failures += 1
            dep.message = f"a replica could not be created: {type(exc).__name__}: {exc}"
            dep.next_start_at = time.monotonic() + min(0.2 * 2 ** (dep.failures - 1), 5.0)
            return None
        user_config = spec.options.user_config
        r = Replica(replica_id, actor, name, dep.version, STARTING, user_config, time.monotonic(), node_id=node)
        r.logging = spec.options.logging_config
        if group is not None:
            r.group = group
            r.placing = asyncio.ensure_future(placement_groups.wait_placed(group, lambda why: _unplaced(r, why)))
        dep.replicas[replica_id] = r
        self._dirty = True
        if self._crash_at == "replica-created":
            self._crash()  # created and checkpointed; its constructor was never asked to run
        r.task = asyncio.ensure_future(self._initialize(r, user_config, spec.options.max_ongoing_requests))
        return r

    async def _initialize(self, r: Replica, user_config: Any, max_ongoing: int) -> dict:
        """Run the user's constructor on a new replica; its phase report (see replica.py) once it is READY."""
        pending = r.actor.initialize.remote(user_config, max_ongoing, r.logging)
        await self._crash_point("replica-initializing", r, INITIALIZING)
        error = await pending
        if error is not None:
            raise ReplicaStartError(error)
        return await r.actor.phase.remote()

    async def _recover_one(self, dep: Deployment, r: Replica) -> dict:
        """Bring a replica found by a restarted controller to the state it claims; its phase report once READY.

        A replica whose constructor never ran, or still runs, is initialized (a second ``initialize``
        waits for the first and gets its outcome), so no replica serves without its user object.

        Raises:
            ReplicaStartError: its constructor raised. ReplicaStopping: it was draining.
        """
        report = await asyncio.wait_for(r.actor.phase.remote(), RECOVER_TIMEOUT_S)
        if report["phase"] in (CONSTRUCTED, INITIALIZING):
            error = await r.actor.initialize.remote(r.user_config, dep.spec.options.max_ongoing_requests, r.logging)
            if error is not None:
                raise ReplicaStartError(error)
            report = await asyncio.wait_for(r.actor.phase.remote(), RECOVER_TIMEOUT_S)
        if report["phase"] == FAILED:
            raise ReplicaStartError(report["error"])
        if report["phase"] in (DRAINING, STOPPED):
            raise ReplicaStopping()
        return report

    async def _reconfigure(self, r: Replica, user_config: Any) -> None:
        pending = r.actor.reconfigure.remote(user_config)
        await self._crash_point("replica-reconfiguring", r, RECONFIGURING)
        error = await pending
        if error is not None:
            raise ReplicaStartError(error)

    async def _configure_logging(self, r: Replica, logging_config: Any) -> None:
        error = await r.actor.configure_logging.remote(logging_config)
        if error is not None:
            raise ReplicaStartError(error)

    async def _watch(self, dep: Deployment, r: Replica) -> None:
        """Learn of the replica's death the moment it happens: its ``watch`` call fails then."""
        try:
            if await r.actor.watch.remote() is None:
                return  # another controller watches it now (this one is being replaced)
        except Exception:
            pass
        if r.state != STOPPING:
            r.dead = True
            self._wake()

    async def _check_health(self, dep: Deployment, r: Replica) -> None:
        opts = dep.spec.options
        try:
            await asyncio.wait_for(r.actor.check_health.remote(), opts.health_check_timeout_s)
        except ray.exceptions.RayActorError:
            r.dead = True
        except Exception as exc:
            r.unhealthy = _describe_failure(exc)
            telemetry.inc("serve_health_check_failures_total", {"deployment": dep.name, "application": dep.app})
        finally:
            r.health = None
            r.last_health = time.monotonic()
        if r.dead or r.unhealthy:
            self._wake()

    def _stop(self, dep: Deployment, r: Replica, graceful: bool) -> None:
        """Take the replica out of routing now; drain it, run its ``__del__``, then end it."""
        if r.state == STOPPING:
            return
        r.state = STOPPING
        if r.task is not None:
            r.task.cancel()
        r.task = asyncio.ensure_future(self._shutdown(dep, r, graceful))
        self._dirty = True

    async def _shutdown(self, dep: Deployment, r: Replica, graceful: bool) -> None:
        opts = dep.spec.options
        if graceful and not r.dead:
            # Routers hear it is gone within milliseconds; a request sent just before arrives meanwhile.
            await asyncio.sleep(MEMBERSHIP_PROPAGATION_S)
            try:
                pending = r.actor.prepare_for_shutdown.remote(opts.graceful_shutdown_wait_loop_s, opts.graceful_shutdown_timeout_s)
                await self._crash_point("replica-draining", r, DRAINING)
                await asyncio.wait_for(pending, opts.graceful_shutdown_timeout_s + 5)
            except Exception:  # dead already, or it overran its timeout: it is ended below either way
                pass
        _kill([r.actor])
        _drop_group(r)
        dep.replicas.pop(r.replica_id, None)
        self._dirty = True
        self._wake()

    def _forget(self, dep: Deployment, r: Replica) -> None:
        """Drop a replica that is dead or never started (ending its actor in case it still runs)."""
        for task in (r.task, r.watch, r.health):
            if task is not None and not task.done():
                task.cancel()
        _kill([r.actor])
        _drop_group(r)
        dep.replicas.pop(r.replica_id, None)
        self._dirty = True

    # Membership: the long-poll host --------------------------------------------------------
    def _publish(self, dep: Deployment) -> None:
        """Announce the deployment's serving replicas to every router, if they changed."""
        key = (dep.app, dep.name)
        if key not in self._versions and any(r.state == RECOVERING for r in dep.replicas.values()):
            # Just restarted: routers keep the replica sets they had until every replica found has
            # proved ready (or was replaced), so none is handed a replica without its user object.
            return
        membership = dep.membership()
        signature = (tuple(rid for rid, _ in membership.replicas), *dataclasses.astuple(membership)[1:])
        if dep.published == signature and key in self._versions:
            return
        dep.published = signature
        self._counter += 1
        self._versions[key] = (self._incarnation, self._counter)
        self._memberships[key] = membership
        published, self._published = self._published, asyncio.get_event_loop().create_future()
        published.set_result(None)

    def _current(self, key: tuple[str, str]) -> tuple[tuple[int, int], Membership] | None:
        """The published version and membership of ``key``; None while it is held back (see _publish)."""
        if key in self._versions:
            return self._versions[key], self._memberships[key]
        app = self._apps.get(key[0])
        if app is not None and key[1] in app.deployments:
            return None
        if key[1] == LANES_KEY:
            return (self._incarnation, 0), _PublishedLanes(LaneAssignment((), "no such application"), frozenset(), ())  # type: ignore[return-value]
        return (self._incarnation, 0), Membership((), 1, exists=False)

    async def listen(self, snapshot: dict[tuple[str, str], Any]) -> dict[tuple[str, str], tuple[tuple[int, int], Membership]]:
        """Return the memberships in ``snapshot`` whose version differs, waiting up to LISTEN_TIMEOUT_S for one."""
        await self._recovered.wait()
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while True:
            out = {}
            for key, known in snapshot.items():
                current = self._current(tuple(key))  # type: ignore[arg-type]
                if current is not None and current[0] != known:
                    out[key] = current
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            try:
                await asyncio.wait_for(asyncio.shield(self._published), remaining)
            except asyncio.TimeoutError:
                return {}

    async def record_models(self, app: str, deployment: str, replica_id: str, model_ids: tuple[str, ...]) -> None:
        """A replica's multiplexed models changed: routers learn it with the replica set (see multiplex.py)."""
        state = self._apps.get(app)
        dep = state.deployments.get(deployment) if state is not None else None
        replica = dep.replicas.get(replica_id) if dep is not None else None
        if dep is not None and replica is not None and replica.models != frozenset(model_ids):
            replica.models = frozenset(model_ids)
            self._publish(dep)

    async def record_stats(self, deployments: dict, edges: dict) -> None:
        """A replica's request counts, errors and latency buckets since its last report (see telemetry.py)."""
        now = time.time()
        self._deployment_stats.add(now, deployments)
        self._edge_stats.add(now, edges)

    async def graph_stats(self, app: str, window_s: float = 10.0) -> dict[str, Any]:
        """What the live graph shows: per deployment requests/s, errors, p50/p99 over the last ``window_s``
        seconds and replicas running/target; per edge (caller -> deployment.method) calls/s, errors, p50.

        Raises:
            KeyError: no application ``app``.
        """
        state = self._apps.get(app)
        if state is None:
            raise KeyError(app)
        now = time.time()
        deployments = {}
        for name, dep in sorted(state.deployments.items()):
            summary = self._deployment_stats.summary((app, name), now, window_s)
            deployments[name] = {
                "requests_per_s": summary["per_s"],
                "errors_per_s": summary["errors_per_s"],
                "error_rate": summary["error_rate"],
                "p50_ms": summary["p50_ms"],
                "p99_ms": summary["p99_ms"],
                "requests_total": summary["total"],
                "errors_total": summary["errors_total"],
                "replicas_running": sum(1 for r in dep.replicas.values() if r.state in SERVING and not r.dead),
                "replicas_target": 0 if dep.deleting else dep.target,
            }
        edges = []
        for key in sorted(k for k in self._edge_stats.keys() if k[0] == app):
            _, caller, target, method = key
            summary = self._edge_stats.summary(key, now, window_s)
            edges.append(
                {
                    "source": caller,
                    "target": target,
                    "method": method,
                    "calls_per_s": summary["per_s"],
                    "errors_per_s": summary["errors_per_s"],
                    "p50_ms": summary["p50_ms"],
                    "calls_total": summary["total"],
                    "errors_total": summary["errors_total"],
                }
            )
        return {"app": app, "window_s": window_s, "deployments": deployments, "edges": edges}

    def _export_metrics(self, loop_s: float) -> None:
        """The control plane's gauges under Ray Serve's names (set when they change)."""
        if not telemetry.ENABLED:
            return
        self._loops += 1
        telemetry.set_gauge("serve_controller_num_control_loops", {"actor_id": self._own_actor_id}, self._loops)
        telemetry.set_gauge("serve_controller_control_loop_duration_s", {}, loop_s)
        values: dict[tuple, float] = {}
        for app in self._apps.values():
            values[("serve_application_status", app.name)] = telemetry.APPLICATION_STATUS_NUMBERS.get(app.status, 0)
            for dep in app.deployments.values():
                key = (dep.name, app.name)
                healthy = sum(1 for r in dep.replicas.values() if r.state in SERVING and not r.dead and r.unhealthy is None)
                values[("serve_deployment_replica_healthy",) + key] = healthy
                values[("serve_deployment_status",) + key] = telemetry.DEPLOYMENT_STATUS_NUMBERS.get(dep.status, 0)
                if dep.autoscaler is not None:
                    values[("serve_autoscaling_target_replicas",) + key] = dep.target
                    values[("serve_autoscaling_desired_replicas",) + key] = dep.autoscaler.last_desired
                    values[("serve_autoscaling_total_requests",) + key] = dep.autoscaler.total_ongoing(time.time())
        for key, value in values.items():
            if self._exported.get(key) != value:
                name, *tag_values = key
                tag_keys = telemetry.METRICS[name][1]
                telemetry.set_gauge(name, dict(zip(tag_keys, tag_values, strict=True)), value)
        for key in set(self._exported) - set(values):  # deleted: Ray keeps a gauge's last value, so zero it
            name, *tag_values = key
            telemetry.set_gauge(name, dict(zip(telemetry.METRICS[name][1], tag_values, strict=True)), 0)
        self._exported = values

    async def record_metrics(self, client_id: str, loads: dict[tuple[str, str], int]) -> None:
        """A router's queued plus in-flight requests per deployment (for the autoscaler)."""
        now = time.time()
        for (app, name), load in loads.items():
            state = self._apps.get(app)
            dep = state.deployments.get(name) if state is not None else None
            if dep is not None and dep.autoscaler is not None:
                dep.autoscaler.record(client_id, now, float(load))
                if dep.target == 0 and load > 0:
                    self._wake()

    # Compiled lanes (see lane_table.py) ----------------------------------------------------
    def _lane_key(self, app: str) -> tuple[str, str]:
        return (app, LANES_KEY)

    def _publish_lanes(self, app: App) -> None:
        if app.lanes is not None and not app.deleting:
            assignment = app.lanes.assignment()
            owners = frozenset(app.lanes.owners)
        else:
            assignment, owners = LaneAssignment((), app.lane_reason or "the application is being deleted"), frozenset()
        signature = (tuple((lane.lane_id, lane.owner_id) for lane in assignment.lanes), assignment.reason, owners)
        key = self._lane_key(app.name)
        if self._memberships.get(key) is not None and getattr(self._memberships[key], "signature", None) == signature:
            return
        self._counter += 1
        self._versions[key] = (self._incarnation, self._counter)
        self._memberships[key] = _PublishedLanes(assignment, owners, signature)  # type: ignore[assignment]
        published, self._published = self._published, asyncio.get_event_loop().create_future()
        published.set_result(None)

    def _reconcile_lanes(self, app: App, now: float) -> None:
        table = app.lanes
        if table is None:
            self._publish_lanes(app)
            return
        running = {
            name: [(r.replica_id, r.actor, r.node_id) for r in dep.replicas.values() if r.state == RUNNING and not r.dead]
            for name, dep in app.deployments.items()
        }
        present = {rid for dep in app.deployments.values() for rid, r in dep.replicas.items() if not r.dead}
        table.reconcile(running, now, present)
        for replica_id, actor in table.due_releases(now):
            asyncio.ensure_future(self._release(table, replica_id, actor))
        self._publish_lanes(app)
        if self._crash_at == "lanes-formed" and table.lanes:
            self._crash()

    async def _release(self, table: LaneTable, replica_id: str, actor: ActorHandle) -> None:
        """Stop a replica's compiled loop (its owner may have done so already), then it may join a new lane."""
        await answered(actor.release_lane.remote(), timeout=10)
        table.released(replica_id)
        self._wake()

    def _forget_dead_owners(self) -> None:
        """Owners whose process ended lose their lanes (whose replicas are then released)."""
        owners = [(app, owner) for app in self._apps.values() if app.lanes for owner in app.lanes.owners.values()]
        if not owners:
            return
        dead_jobs = ray_compat.dead_job_ids()
        if dead_jobs is None:
            return
        for app, owner in owners:
            gone = owner.job_id in dead_jobs
            if owner.actor_id is not None and not gone:
                gone = ray_compat.actor_is_dead(owner.actor_id)
            if gone:
                assert app.lanes is not None
                app.lanes.drop_owner(owner.owner_id)
                self._wake()

    async def claim_lanes(
        self, app: str, owner_id: str, job_id: str, actor_id: str | None = None, node_id: str | None = None
    ) -> str:
        """A process on ``node_id`` that runs ``app``'s requests wants compiled lanes (of that node's replicas);
        returns why it will get none, or ""."""
        await self._recovered.wait()
        state = self._apps.get(app)
        if state is None:
            return "no such application"
        if state.lanes is None:
            return state.lane_reason
        if state.lanes.claim(Owner(owner_id, job_id, actor_id, node_id)):
            self._publish_lanes(state)
            self._wake()
        return ""

    async def release_lanes(self, app: str, owner_id: str) -> None:
        """An owner leaves (its process exits): its lanes go to others."""
        state = self._apps.get(app)
        if state is not None and state.lanes is not None:
            state.lanes.drop_owner(owner_id)
            self._wake()

    async def lane_broken(self, app: str, lane_id: int, reason: str) -> None:
        """An owner's lane failed with its replicas alive: re-form it, unless lanes keep breaking."""
        state = self._apps.get(app)
        if state is None or state.lanes is None or lane_id not in state.lanes.lanes:
            return
        now = time.monotonic()
        table = state.lanes
        table.breaks = [t for t in table.breaks if now - t < 60.0] + [now]
        table.dissolve(lane_id, now)
        if len(table.breaks) >= MAX_LANE_BREAKS_PER_MINUTE:
            print(f"servegraph: application {app!r} leaves the compiled path: lanes keep breaking ({reason})", file=sys.stderr)
            table.failure = f"lanes broke {len(table.breaks)} times in a minute; last: {reason}"
            for other in list(table.lanes):
                table.dissolve(other, now)
        self._wake()

    async def lane_failed(self, app: str, lane_id: int, reason: str) -> None:
        """An owner could not compile a lane: the application stays on the plan path, and status says why."""
        state = self._apps.get(app)
        if state is not None and state.lanes is not None:
            print(f"servegraph: application {app!r} cannot run on the compiled path: {reason}", file=sys.stderr)
            state.lanes.failure = f"compiling a lane failed: {reason}"
            state.lanes.dissolve(lane_id, time.monotonic())
            for other in list(state.lanes.lanes):
                state.lanes.dissolve(other, time.monotonic())
            self._wake()

    # Deploying --------------------------------------------------------------------------
    async def deploy_app(
        self,
        name: str,
        app_bytes: bytes,
        route_prefix: str | None,
        http: tuple[str | None, int | None, dict[str, Any] | None] | None,
        code_paths: tuple[str, ...] = (),
        compiled: bool = True,
        proxy_location: str | None = None,
        wait: bool = True,
        grpc_options: dict[str, Any] | None = None,
        graph_autoscaling: bool = True,
    ) -> DeployReply:
        """Set an application's desired state and wait until it runs (or cannot); with ``wait=False``,
        answer once the state is set (``serve.run(_blocking=False)``: status shows how it goes).

        Deployments whose replica version is unchanged keep their replicas; a
        ``user_config`` change reconfigures them; a count change only scales.
        ``code_paths`` are the deploying driver's import directories: replicas
        belong to the controller's job, so they get the ones it lacks.
        ``proxy_location`` (HeadOnly, EveryNode; None keeps the current one) says where HTTP proxies run.
        ``grpc_options`` (checked by grpc_options_dict; None keeps the running proxy's) turn gRPC on or off.
        """
        await self._recovered.wait()
        try:
            app: ir.AppIR = loads_with_paths(app_bytes, code_paths)
        except Exception as exc:  # user code that does not import here
            return DeployReply(
                {},
                Refusal(
                    "code-import",
                    f"the cluster cannot load the graph's code: {type(exc).__name__}: {exc}. Modules the graph uses "
                    "must be importable where replicas run: deploy from their directory or install them.",
                ),
            )
        self._code_paths.extend(p for p in code_paths if p not in self._code_paths)
        while name in self._apps and self._apps[name].deleting:  # a delete still draining: let it finish
            await asyncio.sleep(0.05)
        async with self._lock:
            for other in self._apps.values():
                if other.name != name and route_prefix is not None and other.route_prefix == route_prefix and not other.deleting:
                    return DeployReply(
                        {}, Refusal("route-taken", f"route prefix {route_prefix!r} is already used by application {other.name!r}")
                    )
            if http is not None and route_prefix is not None:
                host, port, options = http
                error = await self._ensure_proxy(host, port, options, name, proxy_location, grpc_options)
                if error:
                    return DeployReply({}, Refusal("proxy", error))
            changes = self._set_target(name, app, app_bytes, tuple(code_paths), route_prefix, compiled, graph_autoscaling)
            self._dirty = True
            await self._push_routes()
        self._wake()
        if not wait:
            return DeployReply(changes)
        return await self._wait_settled(name, changes)

    def _set_target(
        self,
        name: str,
        app: ir.AppIR,
        app_bytes: bytes,
        code_paths: tuple[str, ...],
        route_prefix: str | None,
        compiled: bool = True,
        graph_autoscaling: bool = True,
    ) -> dict[str, str]:
        old = self._apps.get(name)
        deployments: dict[str, Deployment] = {}
        changes: dict[str, str] = {}
        for spec in app.deployments:
            version = replica_version(spec)
            previous = old.deployments.get(spec.name) if old is not None else None
            if previous is not None and previous.deleting:
                previous.deleting = False  # removed, and now back before its replicas were gone
            count = spec.options.replicas()
            autoscaling = spec.options.autoscaling_config
            if previous is None:
                dep = Deployment(name, spec, version, count, autoscaler=Autoscaler(autoscaling) if autoscaling else None)
                changes[spec.name] = "created"
            else:
                dep = previous
                before = dep.spec.options
                if version != dep.version:
                    changes[spec.name] = "updated"
                elif spec.options.user_config != before.user_config or spec.options.logging_config != before.logging_config:
                    changes[spec.name] = "reconfigured"
                elif spec.options != before:
                    changes[spec.name] = "scaled" if count != dep.target or autoscaling != before.autoscaling_config else "options"
                else:
                    changes[spec.name] = "unchanged"
                if autoscaling is None:
                    dep.autoscaler, dep.target = None, count
                elif autoscaling != before.autoscaling_config:
                    dep.autoscaler = Autoscaler(autoscaling)
                    dep.target = max(autoscaling.min_replicas, min(autoscaling.max_replicas, dep.target or count))
                dep.spec, dep.version = spec, version
                if changes[spec.name] not in ("unchanged", "options"):
                    dep.failed, dep.failures, dep.next_start_at = False, 0, 0.0
                    dep.status = "UPDATING"
            deployments[spec.name] = dep
        if old is not None:
            for dname, dep in old.deployments.items():
                if dname not in deployments:  # removed from the graph: stopped by the loop
                    dep.deleting = True
                    deployments[dname] = dep
                    changes[dname] = "deleted"
        state = App(
            name, app, app_bytes, code_paths, route_prefix, deployments, compiled=compiled,
            graph_autoscaling=graph_autoscaling, fanout=graph_autoscaling_fanout(app),
        )  # fmt: skip
        state.lane_reason = lane_reason(app, compiled)
        old_lanes = old.lanes if old is not None else None
        if not state.lane_reason:
            members = lane_deployments(app)
            if old_lanes is not None and old_lanes.deployments == members and old_lanes.plan == app.plan:
                state.lanes = old_lanes  # the same graph: lanes stay (those over replicas that change dissolve)
            else:
                state.lanes = LaneTable(members, app.plan, first_id=self._counter + 1)
                if old_lanes is not None:
                    state.lanes.succeed(old_lanes, time.monotonic())
            state.lanes.failure = ""  # a new deploy tries again
        elif old_lanes is not None:
            # Now ineligible or turned off: the old lanes' loops must still be stopped. Until they are, the
            # replicas keep serving ordinary calls beside them.
            for lane_id in list(old_lanes.lanes):
                old_lanes.dissolve(lane_id, time.monotonic())
            for replica_id, (_, actor) in old_lanes.releasing.items():
                asyncio.ensure_future(self._release(old_lanes, replica_id, actor))
        self._update_app_status(state)
        self._apps[name] = state
        return changes

    async def _wait_settled(self, name: str, changes: dict[str, str]) -> DeployReply:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            app = self._apps.get(name)
            if app is None:
                return DeployReply(changes, Refusal("deleted", "the application was deleted while it deployed"))
            if app.status == DEPLOY_FAILED:
                return DeployReply(changes, Refusal("replica-failed", app.message))
            if app.status in (RUNNING_APP, "UNHEALTHY") and all(d.status != "UPDATING" for d in app.deployments.values()):
                return DeployReply(changes)
            await asyncio.sleep(0.05)
        pending = [d for d in self._apps[name].deployments.values() if d.status != HEALTHY]
        detail = "; ".join(f"{d.name}: {d.message or d.status}" for d in pending)
        return DeployReply(
            changes,
            Refusal(
                "timeout",
                f"replicas did not start within {START_TIMEOUT_S:g}s ({detail}); they keep being tried. The cluster "
                "may lack the resources they ask for: see `ray status`.",
            ),
        )

    async def start_http(
        self,
        host: str | None,
        port: int | None,
        proxy_location: str | None = None,
        options: dict[str, Any] | None = None,
        grpc_options: dict[str, Any] | None = None,
        code_paths: tuple[str, ...] = (),
    ) -> Refusal | None:
        """``serve.start``: the HTTP proxy on host:port (and gRPC, if asked) before any deploy; why not, if it cannot be.

        ``code_paths`` are the caller's import directories, where the proxy finds gRPC servicer functions.
        """
        await self._recovered.wait()
        self._code_paths.extend(p for p in code_paths if p not in self._code_paths)
        async with self._lock:
            error = await self._ensure_proxy(host, port, options, "", proxy_location, grpc_options)
            if error is None:
                await self._push_routes()
                return None
            return Refusal("proxy", error)

    async def set_logging_config(self, logging_config: Any) -> Refusal | None:
        """``serve.start(logging_config=)`` (and a config's top-level one): the proxies' logs, as in Ray Serve."""
        await self._recovered.wait()
        error = await self._proxies.set_logging_config(logging_config)
        self._dirty = True
        return Refusal("logging", error) if error else None

    async def get_app(self, name: str) -> AppRecord | None:
        await self._recovered.wait()
        state = self._apps.get(name)
        if state is None or state.deleting:
            return None
        return AppRecord(state.app, {d: DeploymentInfo(name, d) for d in state.deployments}, state.route_prefix)

    async def logs_dirs(self) -> list[str]:
        """Every ``logging_config.logs_dir`` a running deployment or the proxies write to (``servegraph logs
        --request-id`` reads them)."""
        await self._recovered.wait()
        configs = [dep.spec.options.logging_config for state in self._apps.values() for dep in state.deployments.values()]
        configs.append(self._proxies.logging_config)
        return sorted({config.logs_dir for config in configs if config is not None and config.logs_dir})

    async def graph_outline(self, name: str) -> AppRecord | None:
        """``get_app`` without the user's code or values (see compiler/outline.py): what the live graph view
        draws, readable in a process that cannot import the graph's modules (the HTTP proxy, the CLI)."""
        record = await self.get_app(name)
        return None if record is None else AppRecord(outline(record.app), {}, record.route_prefix)

    async def delete_app(self, name: str) -> bool:
        """Stop every replica of an application (draining them) and wait until they are gone."""
        await self._recovered.wait()
        async with self._lock:
            state = self._apps.get(name)
            if state is None:
                return False
            state.deleting = True
            for dep in state.deployments.values():
                dep.deleting = True
            self._dirty = True
            await self._push_routes()
        self._wake()
        while name in self._apps:
            await asyncio.sleep(0.05)
        return True

    async def shutdown(self) -> None:
        names = list(self._apps)
        await asyncio.gather(*[self.delete_app(n) for n in names])
        for group in (placement_groups.live_groups(REPLICA_PREFIX) or {}).values():
            placement_groups.remove(group)  # every replica is gone, so any group left is a leak
        self._proxies.forget()
        checkpoint.delete()

    def reserved(self, exclude: str | None = None) -> dict[str, float]:
        """Resources the replicas of every application but ``exclude`` hold."""
        out: dict[str, float] = {}
        for state in self._apps.values():
            if state.name == exclude:
                continue
            for dep in state.deployments.values():
                add_resources(out, dep.spec.options.replica_resources(), len(dep.replicas))
        return out

    # Status ------------------------------------------------------------------------------
    async def status(self) -> StatusReply:
        await self._recovered.wait()
        apps = {}
        for name, state in sorted(self._apps.items()):
            deployments = {}
            for dname, dep in state.deployments.items():
                replica_states: dict[str, int] = {}
                for r in dep.replicas.values():
                    replica_states[r.state] = replica_states.get(r.state, 0) + 1
                deployments[dname] = DeploymentReport(
                    status=dep.status,
                    replica_states=replica_states,
                    message=dep.message,
                    num_replicas=dep.target,
                    class_name=dep.spec.class_name,
                    version=dep.version,
                    replicas=tuple(r.info() for r in dep.replicas.values()),
                    autoscaling=None
                    if dep.autoscaler is None
                    else {
                        "target": dep.target,
                        "desired": dep.autoscaler.last_desired,
                        "reason": dep.autoscaler.reason,
                        "graph_aware": state.graph_autoscaling,
                    },
                )
            apps[name] = AppReport(
                state.status, state.message, state.route_prefix, state.app.ingress, deployments, self._path_status(state)
            )
        http = self._proxies.http
        proxy: dict[str, Any] | None = None
        if http is not None and self._proxies.serving():
            proxy = {"host": http[0], "port": http[1]}
            if self._proxies.grpc:
                proxy["grpc_port"] = self._proxies.grpc["port"]
        return StatusReply(apps, proxy, self._proxies.states() if http is not None else {})

    @staticmethod
    def _path_status(state: App) -> dict[str, Any]:
        """Which path the application's requests take: compiled lanes, or the plan (and why)."""
        if state.lanes is None:
            return {"kind": "plan", "reason": state.lane_reason, "lanes": 0}
        if state.lanes.failure:
            return {"kind": "plan", "reason": state.lanes.failure, "lanes": 0}
        lanes = len(state.lanes.lanes)
        nodes: dict[str, int] = {}
        for lane in state.lanes.lanes.values():
            nodes[lane.node_id or ""] = nodes.get(lane.node_id or "", 0) + 1
        if lanes:
            reason = ""
        elif not state.lanes.owners:
            reason = "no caller yet"
        elif state.lanes.releasing:
            reason = f"stopping the compiled loops of {len(state.lanes.releasing)} replica(s) before they join new lanes"
        else:
            reason = "waiting for a running replica of every deployment on a caller's node (lanes never cross nodes)"
        return {
            "kind": "compiled",
            "reason": reason,
            "lanes": lanes,
            "owners": len(state.lanes.owners),
            "owner_nodes": sorted({o.node_id or "" for o in state.lanes.owners.values()}),
            "lane_nodes": nodes,
            "releasing": len(state.lanes.releasing),
        }

    # HTTP ------------------------------------------------------------------------------
    async def _ensure_proxy(
        self,
        host: str | None,
        port: int | None,
        options: dict[str, Any] | None,
        app: str,
        location: str | None,
        grpc: dict[str, Any] | None = None,
    ) -> str | None:
        """Start the head node's HTTP proxy on host:port, or check the running one is there (see proxy_state.py).

        None (host, port or options not given by the caller) keeps what the running proxy uses, as in Ray
        Serve, where the options of a running Serve win; with no proxy yet, the defaults (127.0.0.1:8000).
        """
        running_host, running_port = self._proxies.http or ("127.0.0.1", 8000)
        host = running_host if host is None else host
        port = running_port if port is None else port
        if options is None:
            options = self._proxies.options if self._proxies.http is not None else {}
        # Normalised, so "defaults left out" and "defaults written out" are the same proxy.
        options = {**HTTP_OPTION_DEFAULTS, **options}
        if grpc is None:
            grpc = self._proxies.grpc if self._proxies.http is not None else {}
        others = sorted(n for n, s in self._apps.items() if n != app and s.route_prefix is not None)
        error = await self._proxies.ensure_head(host, port, options, location, others, grpc)
        self._dirty = True
        return error

    async def _push_routes(self) -> None:
        routes: dict[str, tuple[Any, ...]] = {}
        for name, state in self._apps.items():
            if state.route_prefix is None or state.deleting:
                continue
            infos = {d: DeploymentInfo(name, d) for d in state.deployments}
            adapter = route_adapter(state.app)
            if state.app.ingress is not None:
                payload = ray.cloudpickle.dumps(adapter) if adapter is not None else None
                routes[state.route_prefix] = ("deployment", name, infos[state.app.ingress], payload)
            else:  # one plan, or {route: plan} for a DAGDriver serving several graphs
                payload = ray.cloudpickle.dumps((state.app.plan or dict(state.app.routes), adapter))
                routes[state.route_prefix] = ("plan", name, infos, payload)
        await self._proxies.set_routes(routes, self._code_paths)

    # Surviving a restart -----------------------------------------------------------------
    def _checkpoint(self) -> None:
        """Write what a restarted controller needs to re-attach: apps, targets, replicas, proxy."""
        apps = {}
        for name, app in self._apps.items():
            apps[name] = {
                "app_bytes": app.app_bytes,
                "code_paths": app.code_paths,
                "route_prefix": app.route_prefix,
                "deleting": app.deleting,
                "compiled": app.compiled,
                "graph_autoscaling": app.graph_autoscaling,
                "deployments": {
                    dname: {
                        "target": dep.target,
                        "deleting": dep.deleting,
                        # Stopping ones too: a restarted controller finishes their drain instead of losing them.
                        "replicas": [
                            (r.replica_id, r.actor_name, r.version, pickle.dumps(r.user_config), r.state == STOPPING)
                            for r in dep.replicas.values()
                        ],
                    }
                    for dname, dep in app.deployments.items()
                },
            }
        data = {
            "apps": apps,
            "http": self._proxies.http,
            "http_options": self._proxies.options,
            "grpc_options": self._proxies.grpc,
            "logging_config": self._proxies.logging_config,
            "proxy_location": self._proxies.location,
            "code_paths": self._code_paths,
        }
        try:
            checkpoint.save(ray.cloudpickle.dumps(data))
        except Exception:
            traceback.print_exc()

    def _stop_orphans(self, groups: dict[str, Any] | None) -> None:
        """End replicas no application holds: started by a controller that died before its checkpoint had them.

        Their placement groups go too, with every other replica group (of ``groups``, found by name) no replica
        holds: made just before the old controller died, or left by a replica that died while none watched.
        """
        known = {r.actor_name for app in self._apps.values() for dep in app.deployments.values() for r in dep.replicas.values()}
        leaked = [group for name, group in (groups or {}).items() if name not in known]
        if leaked:
            print(f"servegraph: removing {len(leaked)} placement group(s) no replica holds", file=sys.stderr)
            for group in leaked:
                placement_groups.remove(group)
        orphans = []
        for name in _replica_actors():
            if name not in known:
                try:
                    orphans.append(ray.get_actor(name, namespace=NAMESPACE))
                except ValueError:
                    pass
        if orphans:
            print(f"servegraph: stopping {len(orphans)} replica(s) no application holds", file=sys.stderr)
            _kill(orphans)

    async def _recover(self) -> None:
        raw = checkpoint.load()
        groups = placement_groups.live_groups(REPLICA_PREFIX)
        if not raw:
            self._stop_orphans(groups)
            return
        data = pickle.loads(raw)
        self._code_paths = list(data.get("code_paths", []))
        for name, saved in data["apps"].items():
            app: ir.AppIR = loads_with_paths(saved["app_bytes"], saved["code_paths"])
            self._set_target(
                name, app, saved["app_bytes"], tuple(saved["code_paths"]), saved["route_prefix"], saved.get("compiled", True),
                saved.get("graph_autoscaling", True),
            )  # fmt: skip
            state = self._apps[name]
            state.deleting = saved["deleting"]
            for dname, dsaved in saved["deployments"].items():
                dep = state.deployments.get(dname)
                if dep is None:
                    continue
                dep.target, dep.deleting = dsaved["target"], dsaved["deleting"] or state.deleting
                for replica_id, actor_name, version, config, *stopping in dsaved["replicas"]:
                    try:
                        actor = ray.get_actor(actor_name, namespace=NAMESPACE)
                    except ValueError:
                        continue  # it died with the old controller: the loop starts a new one
                    r = Replica(replica_id, actor, actor_name, version, RECOVERING, pickle.loads(config), time.monotonic())
                    # Its placement group, named as it is (looked up alone when Ray could not list them all).
                    r.group = groups.get(actor_name) if groups is not None else placement_groups.find(actor_name)
                    dep.replicas[replica_id] = r
                    if stopping and stopping[0]:
                        self._stop(dep, r, graceful=True)  # finish the drain the old controller began
                        continue
                    r.task = asyncio.ensure_future(self._recover_one(dep, r))
                    if state.lanes is not None:
                        # Lanes were not checkpointed: stop any loop a replica still runs before it joins a new lane.
                        state.lanes.releasing[replica_id] = (0.0, actor)
                self._publish(dep)
        self._stop_orphans(groups)
        self._proxies.recover(
            data.get("http"), data.get("http_options") or {}, data.get("proxy_location", EVERY_NODE), data.get("grpc_options")
        )
        self._proxies.logging_config = data.get("logging_config")
        await self._push_routes()
        print(f"servegraph: controller recovered {len(self._apps)} application(s) from its checkpoint", file=sys.stderr)


def graph_autoscaling_fanout(app: ir.AppIR) -> dict[tuple[str, str], float]:
    try:
        return graph_autoscaling.static_fanout(app)
    except Exception:  # a graph shape the count does not know: measured fan-outs only
        traceback.print_exc()
        return {}


def lane_reason(app: ir.AppIR, compiled: bool) -> str:
    """Why ``app`` runs as a plan of actor calls only, or "" when it gets compiled lanes.

    Turned off by the deployer, this Ray (:func:`ray_compat.compiled_graphs_problem`: not a version the
    compiled path was checked on, or a private piece of compiled graphs missing), or the graph itself.
    """
    if not compiled:
        return "turned off (compiled=False)"
    return ray_compat.compiled_graphs_problem() or compiled_path_problem(app) or ""


#: What every replica's actor name (and placement group name) starts with.
REPLICA_PREFIX = replica_actor_name("", "", "").split("::", 1)[0] + "::"


def _replica_actors() -> list[str]:
    """Names of every live replica actor of servegraph's on the cluster."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == NAMESPACE and a["name"].startswith(REPLICA_PREFIX)
    ]


def _unplaced(r: Replica, why: str) -> None:
    r.unplaced = why


def _drop_group(r: Replica) -> None:
    """Remove an ended replica's placement group (if it has one), and stop waiting for it to be placed."""
    if r.placing is not None and not r.placing.done():
        r.placing.cancel()
    placement_groups.remove(r.group)
    r.group = None


@dataclasses.dataclass(frozen=True)
class _PublishedLanes:
    """A LaneAssignment as published, with the owners that claimed (an owner not in it claims again)."""

    assignment: LaneAssignment
    owners: frozenset[str]
    signature: tuple


def _with_code_paths(options: dict[str, Any], code_paths: list[str]) -> dict[str, Any]:
    """Actor options whose runtime_env puts ``code_paths`` on the replica's PYTHONPATH."""
    if not code_paths:
        return options
    runtime_env = dict(options.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    # An actor's env_vars replace its job's, so keep the PYTHONPATH the job gave (ours) after the new paths.
    inherited = [env_vars.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
    env_vars["PYTHONPATH"] = os.pathsep.join([*code_paths, *filter(None, inherited)])
    runtime_env["env_vars"] = env_vars
    return {**options, "runtime_env": runtime_env}


def _kill(actors: list[ActorHandle]) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            pass


# Ray's stubs cannot type actor classes created at runtime.
ControllerActor: Any = ray.remote(Controller)
HTTPProxy: Any = ray.remote(_HTTPProxy)
