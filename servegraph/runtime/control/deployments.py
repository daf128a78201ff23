"""Each deployment's desired state, its replicas, and the reconcile step that moves one towards the other.

As Ray Serve's ``_private/deployment_state.py``: each pass of the control loop, for each deployment,

- replicas that finished starting, recovering or reconfiguring are taken in; a constructor that keeps
  failing gives ``DEPLOY_FAILED`` with its one-line error, after bounded retries with backoff;
- replicas that died (their ``watch`` ends the moment the actor does) or failed ``check_health`` are
  replaced;
- updates roll a few replicas at a time: new before old where resources allow (up to a surge of a
  quarter of the target), one old first where they do not; a ``user_config`` or ``logging_config``
  change reconfigures live replicas instead;
- replicas it stops leave routing first, then drain (``graceful_shutdown_*``) and run their ``__del__``.

Replica lifecycles (start, recover, reconfigure, watch, health, stop) live in replica_lifecycle.py; every
Ray call goes through replicas.py.
"""

from __future__ import annotations

import dataclasses
import math
import time

from ...compiler import ir
from ..common import telemetry
from ..data.router import Membership
from . import placement_groups
from .autoscaling import Autoscaler
from .membership import MembershipHost
from .replica_lifecycle import (
    RECOVERING,
    ROUTED,
    RUNNING,
    SERVING,
    STARTING,
    STOPPING,
    UPDATING,
    Replica,
    ReplicaLifecycle,
)
from .replicas import ReplicaStartError, ReplicaStopping, describe_failure
from .signals import Signals

#: Failed starts of one version, counted per replica of the target, before the deployment is DEPLOY_FAILED.
MAX_START_FAILURES_PER_REPLICA = 3

# Deployment states, Ray Serve's names.
HEALTHY, UNHEALTHY, DEPLOY_FAILED = "HEALTHY", "UNHEALTHY", "DEPLOY_FAILED"
UPSCALING, DOWNSCALING = "UPSCALING", "DOWNSCALING"


@dataclasses.dataclass(eq=False)
class Deployment:
    app: str
    spec: ir.DeploymentIR
    version: str
    target: int
    replicas: dict[str, Replica] = dataclasses.field(default_factory=dict)
    autoscaler: Autoscaler | None = None
    status: str = UPDATING
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
        serving = tuple((r.replica_id, r.actor.handle) for r in routed)
        interval = opts.autoscaling_config.metrics_interval_s if opts.autoscaling_config else None
        models = tuple(r.models for r in routed) if any(r.models for r in routed) else ()
        nodes = tuple(r.node_id for r in routed)
        return Membership(
            serving,
            opts.max_ongoing_requests,
            opts.max_queued_requests,
            interval,
            not self.deleting,
            models,
            nodes,
            available=not (self.failed and not routed),
        )

    def serving(self) -> int:
        """Replicas that may have requests running."""
        return sum(1 for r in self.replicas.values() if r.state in SERVING and not r.dead)


class DeploymentManager:
    """Reconciles deployments: their replicas' lifecycles (through ``lifecycle``) and the memberships routers hear."""

    def __init__(self, lifecycle: ReplicaLifecycle, host: MembershipHost, signals: Signals) -> None:
        self.lifecycle = lifecycle
        self._host = host
        self._signals = signals

    def reconcile(
        self,
        dep: Deployment,
        now: float,
        code_paths: tuple[str, ...] = (),
        peers: tuple[Deployment, ...] = (),
        owners: frozenset[str] = frozenset(),
    ) -> None:
        """One step towards the deployment's target; ``code_paths``: its application's import directories;
        ``peers``: the deployments its compiled lanes also take a replica of (new replicas go where they
        complete a lane, see ReplicaLifecycle.node_for)."""
        self._take_in(dep, now)
        opts = dep.spec.options
        life = self.lifecycle
        # Health checks of running replicas.
        for r in dep.replicas.values():
            if r.state == RUNNING and r.health is None and now - r.last_health >= opts.health_check_period_s:
                life.check_health_soon(dep, r)
        # The target: the autoscaler's decision, or the configured count.
        new = [r for r in dep.replicas.values() if r.version == dep.version and r.state != STOPPING]
        old = [r for r in dep.replicas.values() if r.version != dep.version and r.state != STOPPING]
        target = 0 if dep.deleting else dep.target
        # Reconfigure live replicas whose user_config (or logging_config) is behind.
        for r in new:
            if r.state == RUNNING and r.task is None:
                life.reconfigure_if_behind(r, opts.user_config, opts.logging_config)
        # Too many of the current version: stop the ones not yet serving first.
        if len(new) > target:
            surplus = sorted(new, key=lambda r: (r.state in SERVING, r.started_at), reverse=False)
            for r in surplus[: len(new) - target]:
                life.stop(dep, r, graceful=r.state in SERVING)
            new = [r for r in new if r.state != STOPPING]
        # Too few: start more, surging above the target by a few while old replicas still serve.
        missing = target - len(new)
        if missing > 0 and not dep.failed:
            if dep.failures >= MAX_START_FAILURES_PER_REPLICA * max(target, 1):
                dep.failed = True
            elif now >= dep.next_start_at:
                self._start_missing(dep, new, old, target, missing, code_paths, peers, owners)
        # Old replicas go once enough new ones serve: never fewer serving than the target.
        serving_new = sum(1 for r in new if r.state in SERVING)
        serving_old = [r for r in old if r.state in SERVING]
        if serving_old and any(r.state == RUNNING for r in new):
            self._signals.crash_if("rollout")
        for r in old:
            if r.state not in SERVING:
                life.stop(dep, r, graceful=False)
        excess = serving_new + len(serving_old) - target
        for r in serving_old[: max(0, excess)]:
            life.stop(dep, r, graceful=True)
        self._update_status(dep, new, old, target)
        self.publish(dep)

    def _take_in(self, dep: Deployment, now: float) -> None:
        """What finished since the last pass: deaths, failed health checks, starts, recoveries, reconfigures."""
        life = self.lifecycle
        for r in list(dep.replicas.values()):
            if r.dead and r.state != STOPPING:
                life.forget(dep, r)
                dep.message = f"replica {r.replica_id} died (was {r.state}); replacing it"
                dep.degraded = True
                continue
            if r.unhealthy is not None and r.state != STOPPING:
                dep.message = f"replica {r.replica_id} failed its health check: {r.unhealthy}; replacing it"
                dep.degraded = True
                # Drained like any stop: it may still finish what it runs, and routers must hear first.
                life.stop(dep, r, graceful=True)
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
                    life.watch(r)
                    dep.failures = 0
                    self._signals.dirty = True
                elif isinstance(exc, ReplicaStopping):
                    life.stop(dep, r, graceful=True)  # finish the drain the old controller began
                elif r.state == RECOVERING and not isinstance(exc, ReplicaStartError):
                    life.forget(dep, r)  # dead, or not answering: replaced
                else:
                    dep.failures += 1
                    dep.message = f"a replica failed to start: {describe_failure(exc)}"
                    dep.next_start_at = now + backoff(dep.failures)
                    life.forget(dep, r)
            elif r.state == UPDATING:
                r.state = RUNNING
                if exc is not None:
                    dep.failed, dep.message = True, f"reconfigure() failed: {describe_failure(exc)}"

    def _start_missing(
        self,
        dep: Deployment,
        new: list[Replica],
        old: list[Replica],
        target: int,
        missing: int,
        code_paths: tuple[str, ...],
        peers: tuple[Deployment, ...] = (),
        owners: frozenset[str] = frozenset(),
    ) -> None:
        life = self.lifecycle
        surge = max(1, math.ceil(0.25 * target))
        room = target + surge - len(new) - len(old)
        count = min(missing, max(room, 0))
        if old and (count == 0 or not life.fits(dep.spec, count)):
            count = 0
            stopping = any(r.state == STOPPING for r in dep.replicas.values())
            if not stopping and all(r.state in SERVING for r in new):
                # No room beside the old replicas: stop one old first, start its successor when it is gone.
                victim = min(old, key=lambda r: r.state in SERVING)
                life.stop(dep, victim, graceful=victim.state in SERVING)
        for _ in range(count):
            node = life.node_for(dep, peers, owners)
            if node is life.NO_NODE:
                dep.message = (
                    f"max_replicas_per_node={dep.spec.options.max_replicas_per_node}: every alive node already "
                    "runs that many replicas of this deployment; add nodes or raise the limit"
                )
                break
            try:
                life.start(dep, node, code_paths)
            except Exception as exc:  # Ray refused the group or the actor's options: a failed start
                dep.failures += 1
                dep.message = f"a replica could not be created: {type(exc).__name__}: {exc}"
                dep.next_start_at = time.monotonic() + backoff(dep.failures)
                break

    def _update_status(self, dep: Deployment, new: list[Replica], old: list[Replica], target: int) -> None:
        serving = sum(1 for r in new if r.state in SERVING)
        if dep.failed:
            dep.status = DEPLOY_FAILED
        elif serving == target and not old and all(r.state == RUNNING for r in new):
            if dep.status != HEALTHY:
                dep.message = ""
            dep.status, dep.degraded = HEALTHY, False
        elif dep.status == UPDATING:
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

    def publish(self, dep: Deployment) -> None:
        """Announce the deployment's serving replicas to every router, if they changed."""
        key = (dep.app, dep.name)
        known = self._host.published(key) is not None
        if not known and any(r.state == RECOVERING for r in dep.replicas.values()):
            # Just restarted: routers keep the replica sets they had until every replica found has
            # proved ready (or was replaced), so none is handed a replica without its user object.
            return
        membership = dep.membership()
        # Replica ids stand for the replicas; the other fields are immutable values. (Not dataclasses.astuple:
        # it deep-copies every actor handle, which was most of the controller's CPU on each pass.)
        rest = (getattr(membership, f.name) for f in dataclasses.fields(membership) if f.name != "replicas")
        signature = (tuple(rid for rid, _ in membership.replicas), *rest)
        if dep.published == signature and known:
            return
        dep.published = signature
        self._host.publish(key, membership)


def backoff(failures: int) -> float:
    """Seconds before the next start after ``failures`` failed ones in a row.

    >>> [backoff(n) for n in (1, 2, 3, 6, 9)]
    [0.2, 0.4, 0.8, 5.0, 5.0]
    """
    return min(0.2 * 2 ** (failures - 1), 5.0)
