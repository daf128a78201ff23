"""One replica's life as the controller drives it: start, recover, reconfigure, watch, health, stop.

Each step runs as an asyncio task on the replica's record; the reconcile step (deployments.py) looks at
what finished on its next pass. Every call on the actor goes through replicas.py's wrapper.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ...compiler import ir
from ..common import telemetry
from ..common.records import CONSTRUCTED, DRAINING, FAILED, INITIALIZING, RECONFIGURING, STOPPED
from .lane_table import RELEASE_GRACE_S, RELEASE_TIMEOUT_S
from .replicas import (
    ActorReplica,
    PreferredNode,
    ReplicaActors,
    ReplicaStartError,
    ReplicaStopping,
    describe_failure,
    died,
)
from .replies import ReplicaReport
from .signals import Signals

# Replica states, Ray Serve's names.
STARTING, UPDATING, RECOVERING, RUNNING, STOPPING = "STARTING", "UPDATING", "RECOVERING", "RUNNING", "STOPPING"
#: Replicas in these states may have requests running (a recovered one, from routers that knew it before).
SERVING = (RUNNING, UPDATING, RECOVERING)
#: Replicas in these states are given to routers: a recovered one only once it proved ready (see recover).
ROUTED = (RUNNING, UPDATING)
#: Seconds a restarted controller waits for a replica it found to say which phase it is in.
RECOVER_TIMEOUT_S = 10.0
#: How long a stopping replica keeps its slot after routers were told it is gone, before it drains.
MEMBERSHIP_PROPAGATION_S = 0.2
#: At most how long a replica stopped while its constructor runs is given for its ``__del__``.
STARTING_STOP_WAIT_S = 2.0
#: How long a stopping replica in a compiled lane waits for it to be torn down and its loop stopped (the owner's
#: grace, then the stop), before it is ended anyway.
LANE_EXIT_WAIT_S = RELEASE_GRACE_S + RELEASE_TIMEOUT_S + 1.0


class DeploymentView(Protocol):
    """What a replica's lifecycle needs of its deployment (deployments.Deployment)."""

    app: str
    spec: ir.DeploymentIR
    version: str
    replicas: dict[str, Replica]

    @property
    def name(self) -> str: ...


@dataclasses.dataclass(eq=False)
class Replica:
    replica_id: str
    actor: ActorReplica
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
    #: Waiting for its placement group (placement_group_bundles) to be placed; why Ray has not placed it yet.
    placing: asyncio.Task | None = None
    unplaced: str = ""
    #: The logging_config the replica was last given (None: the defaults); a new one is pushed, never restarts it.
    logging: Any = None

    @property
    def stopping(self) -> bool:
        return self.state == STOPPING

    def info(self) -> ReplicaReport:
        return ReplicaReport(self.replica_id, self.state, self.node_id, self.pid, self.actor_name)


class ReplicaLifecycle:
    """Starts, recovers, reconfigures, watches, checks and stops replicas through ``actors`` (the Ray seam)."""

    #: node_for's answer when every node already runs max_replicas_per_node replicas of a deployment.
    NO_NODE: Any = object()

    def __init__(
        self,
        actors: ReplicaActors,
        signals: Signals,
        own_path: list[str] | None = None,
        lane_exit: Callable[[str, str], Awaitable[None] | None] | None = None,
    ) -> None:
        """``own_path``: sys.path before any driver's directories were added (what replicas get untold).
        ``lane_exit(app, replica_id)``: what a replica being stopped awaits before it is ended, while it is in a
        compiled lane (see lanes.LaneManager.exit); None when it holds none."""
        self.actors = actors
        self._signals = signals
        self._own_path = list(sys.path) if own_path is None else own_path
        self._lane_exit = lane_exit

    # Where ---------------------------------------------------------------------------------
    def fits(self, spec: ir.DeploymentIR, count: int) -> bool:
        """Whether ``count`` more replicas fit in what the cluster has free now."""
        try:
            free = self.actors.free_resources()
        except Exception:
            return True
        need = spec.options.replica_resources()
        return all(free.get(k, 0.0) + 1e-9 >= count * v for k, v in need.items() if v)

    def node_for(self, dep: DeploymentView, peers: tuple[DeploymentView, ...] = (), owners: frozenset[str] = frozenset()) -> Any:
        """The node a new replica must run on to keep ``max_replicas_per_node`` (the one with fewest of this
        deployment's replicas); NO_NODE if every node is full. Without the option, with ``peers`` (the other
        deployments its compiled lanes take a replica of), the node that completes a set (a PreferredNode, see
        :meth:`_lane_node`, ``owners`` the nodes of the processes that run the graph's requests); else None (Ray
        spreads replicas)."""
        limit = dep.spec.options.max_replicas_per_node
        if limit is None:
            return self._lane_node(dep, peers, owners) if peers and dep.spec.options.placement_group() is None else None
        try:
            alive = self.actors.alive_nodes()
        except Exception:  # the GCS is busy: start nothing this pass
            return self.NO_NODE
        counts = _per_node(dep)
        room = [n for n in alive if counts[n] < limit]
        return min(room, key=lambda n: (counts[n], n)) if room else self.NO_NODE

    def _lane_node(self, dep: DeploymentView, peers: tuple[DeploymentView, ...], owners: frozenset[str]) -> PreferredNode | None:
        """Where a replica of a compiled graph's deployment goes on a cluster of several nodes.

        A lane takes one replica of every deployment on one node (lanes never cross nodes, see lane_table.py):
        spread as Ray spreads them, three deployments of two replicas on three nodes rarely leave a node with a
        full set, and the graph never leaves the plan path. So a new replica goes where its peers have more
        replicas than its own deployment (it completes a set), else where the graph has the fewest replicas
        (a new set starts there, on a node where a process runs the graph's requests if one is among them: a
        lane's owner is on its node; before any has asked, the controller's node, where drivers usually run).
        Each deployment's replicas still spread over nodes, one per set. Preferred, not required: a node without
        room leaves Ray to place it.
        """
        try:
            alive = self.actors.alive_nodes()
            wanted = owners or frozenset({self.actors.home_node()})
        except Exception:
            return None
        if len(alive) < 2:
            return None
        mine, theirs = _per_node(dep), [_per_node(peer) for peer in peers]

        def rank(node: str) -> tuple[int, int, bool, str]:
            ahead = max(counts[node] for counts in theirs) - mine[node]  # replicas here waiting for this deployment's
            total = mine[node] + sum(counts[node] for counts in theirs)
            return (max(ahead, 0), -total, node in wanted, node)

        return PreferredNode(max(alive, key=rank))

    # Starting ------------------------------------------------------------------------------
    def start(self, dep: DeploymentView, node: str | None, code_paths: tuple[str, ...]) -> Replica:
        """Create a replica (and its placement group, if the deployment has bundles) and run its constructor.

        Raises:
            Exception: Ray refused the group or the actor's options.
        """
        spec = dep.spec
        replica_id = uuid.uuid4().hex[:8]
        missing = [p for p in code_paths if p not in self._own_path]
        actor = self.actors.create(dep.app, dep.name, replica_id, spec, node, missing)
        user_config = spec.options.user_config
        r = Replica(replica_id, actor, actor.name, dep.version, STARTING, user_config, time.monotonic(), node_id=None if node is None else str(node))
        r.logging = spec.options.logging_config
        if actor.group is not None:
            r.placing = asyncio.ensure_future(actor.wait_placed(lambda why: _unplaced(r, why)))
        dep.replicas[replica_id] = r
        self._signals.dirty = True
        # Created and checkpointed; its constructor never asked to run.
        self._signals.crash_if("replica-created")
        r.task = asyncio.ensure_future(self._initialize(r, user_config, spec.options.max_ongoing_requests))
        return r

    async def _initialize(self, r: Replica, user_config: Any, max_ongoing: int) -> dict:
        """Run the user's constructor on a new replica; its phase report (see replica.py) once it is READY."""
        pending = r.actor.initialize(user_config, max_ongoing, r.logging)
        await self._crash_point("replica-initializing", r, INITIALIZING)
        error = await pending
        if error is not None:
            raise ReplicaStartError(error)
        return await r.actor.phase()

    # Recovering ----------------------------------------------------------------------------
    def adopt(
        self, dep: DeploymentView, replica_id: str, actor_name: str, version: str, user_config: Any, stopping: bool, groups: Any
    ) -> Replica | None:
        """A replica a restarted controller found in its checkpoint: recovered (or its drain finished); None if gone.

        ``groups``: every replica placement group by name (None: Ray could not list them, each is looked up).
        """
        actor = self.actors.attach(actor_name)
        if actor is None:
            return None  # it died with the old controller: the loop starts a new one
        actor.group = self.actors.find_group(actor_name, groups)
        r = Replica(replica_id, actor, actor_name, version, RECOVERING, user_config, time.monotonic())
        dep.replicas[replica_id] = r
        if stopping:
            self.stop(dep, r, graceful=True)  # finish the drain the old controller began
        else:
            r.task = asyncio.ensure_future(self._recover(dep, r))
        return r

    async def _recover(self, dep: DeploymentView, r: Replica) -> dict:
        """Bring a replica found by a restarted controller to the state it claims; its phase report once READY.

        A replica whose constructor never ran, or still runs, is initialized (a second ``initialize``
        waits for the first and gets its outcome), so no replica serves without its user object.

        Raises:
            ReplicaStartError: its constructor raised. ReplicaStopping: it was draining.
        """
        report = await asyncio.wait_for(r.actor.phase(), RECOVER_TIMEOUT_S)
        if report["phase"] in (CONSTRUCTED, INITIALIZING):
            error = await r.actor.initialize(r.user_config, dep.spec.options.max_ongoing_requests, r.logging)
            if error is not None:
                raise ReplicaStartError(error)
            report = await asyncio.wait_for(r.actor.phase(), RECOVER_TIMEOUT_S)
        if report["phase"] == FAILED:
            raise ReplicaStartError(report["error"])
        if report["phase"] in (DRAINING, STOPPED):
            raise ReplicaStopping()
        return report

    # Running -------------------------------------------------------------------------------
    def reconfigure_if_behind(self, r: Replica, user_config: Any, logging_config: Any) -> None:
        """Give a RUNNING replica the deployment's user_config, else its logging_config, if it is behind."""
        if r.user_config != user_config:
            r.state = UPDATING
            r.user_config = user_config
            r.task = asyncio.ensure_future(self._reconfigure(r, user_config))
        elif r.logging != logging_config:
            r.state = UPDATING  # still routed; the deploy waits for it, as for a user_config
            r.logging = logging_config
            r.task = asyncio.ensure_future(self._configure_logging(r, logging_config))

    async def _reconfigure(self, r: Replica, user_config: Any) -> None:
        pending = r.actor.reconfigure(user_config)
        await self._crash_point("replica-reconfiguring", r, RECONFIGURING)
        error = await pending
        if error is not None:
            raise ReplicaStartError(error)

    async def _configure_logging(self, r: Replica, logging_config: Any) -> None:
        error = await r.actor.configure_logging(logging_config)
        if error is not None:
            raise ReplicaStartError(error)

    def watch(self, r: Replica) -> None:
        """Learn of the replica's death the moment it happens (once per replica)."""
        if r.watch is None:
            r.watch = asyncio.ensure_future(self._watch(r))

    async def _watch(self, r: Replica) -> None:
        if not await r.actor.watch():
            return  # another controller watches it now (this one is being replaced)
        if r.state != STOPPING:
            r.dead = True
            self._signals.wake()

    def check_health_soon(self, dep: DeploymentView, r: Replica) -> None:
        r.health = asyncio.ensure_future(self._check_health(dep, r))

    async def _check_health(self, dep: DeploymentView, r: Replica) -> None:
        try:
            await r.actor.check_health(dep.spec.options.health_check_timeout_s)
        except Exception as exc:
            if died(exc):
                r.dead = True
            else:
                r.unhealthy = describe_failure(exc)
                telemetry.inc("serve_health_check_failures_total", {"deployment": dep.name, "application": dep.app})
        finally:
            r.health = None
            r.last_health = time.monotonic()
        if r.dead or r.unhealthy:
            self._signals.wake()

    # Stopping ------------------------------------------------------------------------------
    def stop(self, dep: DeploymentView, r: Replica, graceful: bool) -> None:
        """Take the replica out of routing now; drain it, run its ``__del__``, then end it. A replica whose
        constructor is still running gets a short drain (see :data:`STARTING_STOP_WAIT_S`): its ``__del__`` runs
        too (an ``async def __init__`` is stopped where it waits), as in Ray Serve."""
        if r.state == STOPPING:
            return
        starting = r.state == STARTING and not r.dead
        r.state = STOPPING
        if r.task is not None:
            r.task.cancel()
        r.task = asyncio.ensure_future(self._stop_starting(dep, r) if starting else self._shutdown(dep, r, graceful))
        self._signals.dirty = True

    async def _stop_starting(self, dep: DeploymentView, r: Replica) -> None:
        """A replica that never served: no requests to drain; its ``__del__``, bounded (a constructor that blocks
        the replica's thread would keep it from answering), then its end."""
        wait = min(dep.spec.options.graceful_shutdown_timeout_s, STARTING_STOP_WAIT_S)
        try:
            await asyncio.wait_for(r.actor.prepare_for_shutdown(0.01, wait), wait + 2.0)
        except Exception:  # dead, blocked, or its __del__ overran: it is ended either way
            pass
        self._end(dep, r)
        self._signals.changed()

    async def _shutdown(self, dep: DeploymentView, r: Replica, graceful: bool) -> None:
        opts = dep.spec.options
        if graceful and not r.dead:
            # Routers hear it is gone within milliseconds; a request sent just before arrives meanwhile.
            await asyncio.sleep(MEMBERSHIP_PROPAGATION_S)
            await self._left_lane(dep, r)
            try:
                pending = r.actor.prepare_for_shutdown(opts.graceful_shutdown_wait_loop_s, opts.graceful_shutdown_timeout_s)
                await self._crash_point("replica-draining", r, DRAINING)
                await asyncio.wait_for(pending, opts.graceful_shutdown_timeout_s + 5)
            except Exception:  # dead already, or it overran its timeout: it is ended below either way
                pass
        self._end(dep, r)
        self._signals.changed()

    async def _left_lane(self, dep: DeploymentView, r: Replica) -> None:
        """Wait (bounded) until the replica's compiled lane is torn down and its loop stopped, if it is in one."""
        left = self._lane_exit(dep.app, r.replica_id) if self._lane_exit is not None else None
        if left is not None:
            try:
                await asyncio.wait_for(asyncio.shield(left), LANE_EXIT_WAIT_S)
            except asyncio.TimeoutError:  # its owner is stuck or gone: the replica is ended all the same
                pass

    def forget(self, dep: DeploymentView, r: Replica) -> None:
        """Drop a replica that is dead or never started (ending its actor in case it still runs)."""
        for task in (r.task, r.watch, r.health):
            if task is not None and not task.done():
                task.cancel()
        self._end(dep, r)
        self._signals.dirty = True

    def _end(self, dep: DeploymentView, r: Replica) -> None:
        r.actor.kill()
        if r.placing is not None and not r.placing.done():
            r.placing.cancel()
        r.actor.remove_group()
        dep.replicas.pop(r.replica_id, None)

    # Tests only ----------------------------------------------------------------------------
    async def _crash_point(self, point: str, r: Replica, phase: str) -> None:
        """At ``point``, once replica ``r`` says it is in ``phase``, end the controller (see Controller._test_crash_at)."""
        if self._signals.crash_at != point:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if (await r.actor.phase())["phase"] == phase:
                    self._signals.crash()
            except Exception as exc:
                if died(exc):
                    return
                raise
            await asyncio.sleep(0.01)


def _per_node(dep: DeploymentView) -> collections.Counter:
    """How many of the deployment's replicas (not stopping, not dead) each node runs (or was asked to)."""
    return collections.Counter(r.node_id for r in dep.replicas.values() if r.state != STOPPING and not r.dead)


def _unplaced(r: Replica, why: str) -> None:
    r.unplaced = why
