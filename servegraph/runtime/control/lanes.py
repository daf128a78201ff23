"""The compiled path's lanes as the controller runs them: formed, published, released, given up.

lane_table.py decides which replicas form which lane (pure bookkeeping); this manager feeds it each
pass's running replicas, stops the compiled loops of replicas whose lane dissolved (through the replica
seam, replicas.py), publishes each application's lanes to their owners by long-poll, forgets owners
whose process ended, and takes an application off the compiled path when its lanes keep breaking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from .. import ray_compat
from ..common.records import LANES_KEY, LaneAssignment
from .deployments import Deployment
from .lane_table import RELEASE_TIMEOUT_S, LaneTable, Owner
from .membership import MembershipHost
from .proxy_state import answered
from .replica_lifecycle import RUNNING
from .replicas import ReplicaActors
from .signals import Signals

#: Lanes of one application that may break (with their replicas alive) in a minute before it leaves the compiled path.
MAX_LANE_BREAKS_PER_MINUTE = 5


class LanedApp(Protocol):
    """What the lane manager reads of an application (applications.App)."""

    name: str
    deleting: bool
    lanes: LaneTable | None
    lane_reason: str
    deployments: dict[str, Deployment]


@dataclasses.dataclass(frozen=True)
class PublishedLanes:
    """A LaneAssignment as published, with the owners that claimed (an owner not in it claims again)."""

    assignment: LaneAssignment
    owners: frozenset[str]
    signature: tuple


def _owner_gone(job_id: str, actor_id: str | None, dead_jobs: set[str]) -> bool:
    gone = job_id in dead_jobs
    if actor_id is not None and not gone:
        gone = ray_compat.actor_is_dead(actor_id)
    return gone


class LaneManager:
    def __init__(
        self,
        host: MembershipHost,
        actors: ReplicaActors,
        signals: Signals,
        dead_jobs: Callable[[], set[str] | None] = ray_compat.dead_job_ids,
        owner_gone: Callable[[str, str | None, set[str]], bool] = _owner_gone,
    ) -> None:
        """``dead_jobs`` and ``owner_gone`` say which owners' processes ended (from the GCS; tests hand in their own)."""
        self._host = host
        self._actors = actors
        self._signals = signals
        self._dead_jobs = dead_jobs
        self._owner_gone = owner_gone
        #: Replicas being stopped that wait to leave their lane, by (application, replica id) (see :meth:`exit`).
        self._exits: dict[tuple[str, str], asyncio.Future] = {}

    @staticmethod
    def key(app: str) -> tuple[str, str]:
        return (app, LANES_KEY)

    def publish(self, app: LanedApp) -> None:
        """Announce the application's lanes to their owners, if they changed."""
        self._settle_exits(app)
        if app.lanes is not None and not app.deleting:
            assignment = app.lanes.assignment()
            owners = frozenset(app.lanes.owners)
        else:
            assignment, owners = LaneAssignment((), app.lane_reason or "the application is being deleted"), frozenset()
        signature = (tuple((lane.lane_id, lane.owner_id) for lane in assignment.lanes), assignment.reason, owners)
        published = self._host.published(self.key(app.name))
        if published is not None and getattr(published[1], "signature", None) == signature:
            return
        self._host.publish(self.key(app.name), PublishedLanes(assignment, owners, signature))

    def exit(self, app: LanedApp, replica_id: str) -> asyncio.Future | None:
        """Done once the replica is in no lane and its compiled loop was stopped; None if it holds no lane now.

        A replica being stopped waits for this before it is ended: ended under a compiled graph its owner has not
        torn down yet, it fails that graph mid-teardown, and Ray's monitor thread prints a traceback in the owner
        (once, Ray's core worker there crashed on it).
        """
        if app.lanes is None or not app.lanes.holds(replica_id):
            return None
        key = (app.name, replica_id)
        future = self._exits.get(key)
        if future is None or future.done():
            future = self._exits[key] = asyncio.get_running_loop().create_future()
        return future

    def _settle_exits(self, app: LanedApp) -> None:
        table = app.lanes if not app.deleting or app.deployments else None
        for key in [k for k in self._exits if k[0] == app.name]:
            if table is None or not table.holds(key[1]):
                future = self._exits.pop(key)
                if not future.done():
                    future.set_result(None)

    def nothing(self) -> PublishedLanes:
        """What an application that does not exist publishes."""
        return PublishedLanes(LaneAssignment((), "no such application"), frozenset(), ())

    def reconcile(self, app: LanedApp, now: float) -> None:
        """Lanes in line with the running replicas and the owners; replicas of dissolved lanes released."""
        table = app.lanes
        if table is None:
            self.publish(app)
            return
        running = {
            name: [(r.replica_id, r.actor.handle, r.node_id) for r in dep.replicas.values() if r.state == RUNNING and not r.dead]
            for name, dep in app.deployments.items()
        }
        present = {rid for dep in app.deployments.values() for rid, r in dep.replicas.items() if not r.dead}
        table.reconcile(running, now, present)
        for replica_id, actor in table.due_releases(now):
            asyncio.ensure_future(self._release(table, replica_id, actor))
        self.publish(app)
        if table.lanes:
            self._signals.crash_if("lanes-formed")

    def release_all(self, table: LaneTable) -> None:
        """Dissolve every lane of ``table`` (its application left the compiled path) and stop their loops now."""
        for lane_id in list(table.lanes):
            table.dissolve(lane_id, time.monotonic())
        for replica_id, (_, actor) in table.releasing.items():
            asyncio.ensure_future(self._release(table, replica_id, actor))

    async def _release(self, table: LaneTable, replica_id: str, actor: Any) -> None:
        """Stop a replica's compiled loop (its owner may have done so already), then it may join a new lane."""
        await answered(self._actors.release_lane(actor), timeout=RELEASE_TIMEOUT_S)
        table.released(replica_id)
        self._signals.wake()

    def forget_dead_owners(self, apps: list[LanedApp]) -> None:
        """Owners whose process ended lose their lanes (whose replicas are then released)."""
        owners = [(app, owner) for app in apps if app.lanes for owner in app.lanes.owners.values()]
        if not owners:
            return
        dead_jobs = self._dead_jobs()
        if dead_jobs is None:
            return
        for app, owner in owners:
            if self._owner_gone(owner.job_id, owner.actor_id, dead_jobs):
                assert app.lanes is not None
                app.lanes.drop_owner(owner.owner_id)
                self._signals.wake()

    # What owners report ----------------------------------------------------------------------
    def claim(self, app: LanedApp, owner: Owner) -> str:
        """An owner wants lanes of ``app``; why it will get none, or ""."""
        if app.lanes is None:
            return app.lane_reason
        if app.lanes.claim(owner):
            self.publish(app)
            self._signals.wake()
        return ""

    def release(self, app: LanedApp, owner_id: str) -> None:
        """An owner leaves, its lanes torn down: their replicas' loops are stopped now (no grace period)."""
        table = app.lanes
        if table is not None:
            for lane_id, lane in list(table.lanes.items()):
                if lane.owner_id == owner_id:
                    table.dissolve(lane_id, time.monotonic())
                    table.retired(lane_id, tuple(rid for _, rid, _ in lane.members))
            table.drop_owner(owner_id)
            self._signals.wake()

    def retired(self, app: LanedApp, lane_id: int, replica_ids: tuple[str, ...]) -> None:
        """An owner tore down a lane the controller dissolved: its replicas' loops are stopped now."""
        if app.lanes is not None and app.lanes.retired(lane_id, tuple(replica_ids)):
            self._signals.wake()

    def broken(self, app: LanedApp, lane_id: int, reason: str) -> None:
        """An owner's lane failed with its replicas alive (or one died while the lane compiled): re-form it, unless
        lanes keep breaking."""
        table = app.lanes
        if table is None or lane_id not in table.lanes:
            return
        now = time.monotonic()
        table.breaks = [t for t in table.breaks if now - t < 60.0] + [now]
        table.dissolve(lane_id, now)
        if len(table.breaks) >= MAX_LANE_BREAKS_PER_MINUTE:
            print(f"servegraph: application {app.name!r} leaves the compiled path: lanes keep breaking ({reason})", file=sys.stderr)
            table.failure = f"lanes broke {len(table.breaks)} times in a minute; last: {reason}"
            for other in list(table.lanes):
                table.dissolve(other, now)
        self._signals.wake()

    def failed(self, app: LanedApp, lane_id: int, reason: str) -> None:
        """An owner could not compile a lane: the application stays on the plan path, and status says why."""
        if app.lanes is not None:
            print(f"servegraph: application {app.name!r} cannot run on the compiled path: {reason}", file=sys.stderr)
            app.lanes.failure = f"compiling a lane failed: {reason}"
            app.lanes.dissolve(lane_id, time.monotonic())
            for other in list(app.lanes.lanes):
                app.lanes.dissolve(other, time.monotonic())
            self._signals.wake()

    @staticmethod
    def path_status(app: LanedApp) -> dict[str, Any]:
        """Which path the application's requests take: compiled lanes, or the plan (and why)."""
        if app.lanes is None:
            return {"kind": "plan", "reason": app.lane_reason, "lanes": 0}
        if app.lanes.failure:
            return {"kind": "plan", "reason": app.lanes.failure, "lanes": 0}
        lanes = len(app.lanes.lanes)
        nodes: dict[str, int] = {}
        for lane in app.lanes.lanes.values():
            nodes[lane.node_id or ""] = nodes.get(lane.node_id or "", 0) + 1
        if lanes:
            reason = ""
        elif not app.lanes.owners:
            reason = "no caller yet"
        elif app.lanes.releasing:
            reason = f"stopping the compiled loops of {len(app.lanes.releasing)} replica(s) before they join new lanes"
        else:
            reason = "waiting for a running replica of every deployment on a caller's node (lanes never cross nodes)"
        return {
            "kind": "compiled",
            "reason": reason,
            "lanes": lanes,
            "owners": len(app.lanes.owners),
            "owner_nodes": sorted({o.node_id or "" for o in app.lanes.owners.values()}),
            "lane_nodes": nodes,
            "releasing": len(app.lanes.releasing),
        }
