"""Which replicas form which compiled lanes, and which process owns each (the controller's side).

A lane is one replica of every deployment an InputNode graph calls, compiled
into a Ray compiled graph by the process that sends it requests (its owner: a
driver holding the graph's handle, or an HTTP proxy). Ray lets an actor take
part in one compiled graph at a time, so lanes never share a replica, and the
controller alone decides them: owners claim lanes for an application, the
controller forms as many as the running replicas allow and spreads them over
the owners (fewest lanes first), and dissolves a lane when one of its replicas
stops running or its owner is gone.

A lane never crosses a node: its owner and every replica in it run on one
node, so its channels are that node's shared memory only. Ray compiled graphs
move data between nodes through the raylets, and a channel closed under such a
transfer (a replica killed, a node lost) crashes the receiving raylet
(``experimental_mutable_object_provider.cc: Check failed ... Channel closed``),
which takes every actor on that node with it; that code is in maintenance
upstream, so servegraph never sends it cross-node traffic. An owner with no
complete set of replicas on its node runs its requests on the plan. The replicas of a dissolved lane are free
again once their compiled loop has been stopped (:data:`RELEASE_GRACE_S` after
the dissolution, or as soon as the owner says it tore the lane down); a replica
being stopped is ended only once its lane's owner tore the lane down (or left).

Pure bookkeeping: no Ray here, so every rule is testable on its own.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

from ..common.records import LaneAssignment, LaneInfo

#: Seconds an owner has to stop using a dissolved lane before the controller stops its replicas' loops.
RELEASE_GRACE_S = 1.0
#: Seconds the controller waits for a replica to stop its compiled loop.
RELEASE_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process that runs the graph's requests: a driver (its job) or an actor (the HTTP proxy)."""

    owner_id: str
    job_id: str
    actor_id: str | None = None
    #: The node the owner runs on: its lanes take replicas of this node only (None: it gets no lane).
    node_id: str | None = None


class LaneTable:
    """The lanes of one application."""

    def __init__(self, deployments: tuple[str, ...], plan: Any = None, first_id: int = 1):
        self.deployments = deployments
        self.plan = plan
        self.owners: dict[str, Owner] = {}
        self.lanes: dict[int, LaneInfo] = {}
        #: Replica id -> (time after which its loop is stopped, its actor); free for a new lane once released.
        self.releasing: dict[str, tuple[float, Any]] = {}
        #: Dissolved lanes their owner has not said it tore down yet: lane id -> (owner id, replica ids). Their
        #: replicas are not ended meanwhile (see :meth:`holds`); the owner's word frees them (:meth:`retired`).
        self.dissolved: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.failure = ""
        #: When lanes broke with their replicas alive (see Controller.lane_broken).
        self.breaks: list[float] = []
        self._ids = itertools.count(first_id)

    # Owners -------------------------------------------------------------------------------
    def claim(self, owner: Owner) -> bool:
        """An owner wants lanes; True if it is new."""
        if owner.owner_id in self.owners:
            return False
        self.owners[owner.owner_id] = owner
        return True

    def drop_owner(self, owner_id: str) -> None:
        """The owner left or its process ended: it tears nothing down any more."""
        self.owners.pop(owner_id, None)
        self.dissolved = {i: entry for i, entry in self.dissolved.items() if entry[0] != owner_id}

    def lanes_of(self, owner_id: str) -> int:
        return sum(1 for lane in self.lanes.values() if lane.owner_id == owner_id)

    # Forming and dissolving -----------------------------------------------------------------
    def dissolve(self, lane_id: int, now: float) -> None:
        """Remove a lane; its replicas are released (their loops stopped) after the grace period."""
        lane = self.lanes.pop(lane_id, None)
        if lane is not None:
            for _, replica_id, actor in lane.members:
                self.releasing[replica_id] = (now + RELEASE_GRACE_S, actor)
            if lane.owner_id in self.owners:  # an owner that left tears nothing down
                self.dissolved[lane_id] = (lane.owner_id, _replica_ids(lane))

    def retired(self, lane_id: int, replica_ids: tuple[str, ...]) -> bool:
        """The owner of dissolved lane ``lane_id`` (over ``replica_ids``) tore it down: its replicas' loops are
        stopped now, not after the grace period, and they may be ended. True if it was that lane; a lane id
        that names another lane now (a restarted controller numbers anew) changes nothing."""
        dissolved = self.dissolved.get(lane_id)
        if dissolved is None or dissolved[1] != tuple(replica_ids):
            return False
        del self.dissolved[lane_id]
        for rid in replica_ids:
            releasing = self.releasing.get(rid)
            if releasing is not None and releasing[0] != float("inf"):  # not being released already
                self.releasing[rid] = (float("-inf"), releasing[1])  # due on any clock
        return True

    def holds(self, replica_id: str) -> bool:
        """Whether the replica is in a lane, its lane's owner has yet to tear that down, or its compiled loop is yet
        to be stopped: ended meanwhile, it would fail its owner's compiled graph mid-compile or mid-teardown."""
        return (
            replica_id in self.releasing
            or any(replica_id in _replica_ids(lane) for lane in self.lanes.values())
            or any(replica_id in rids for _, rids in self.dissolved.values())
        )

    def reconcile(
        self, running: Mapping[str, list[tuple[str, Any, str | None]]], now: float, present: set[str] | None = None
    ) -> bool:
        """Bring lanes in line with the running replicas and the owners; True if the lanes changed.

        Args:
            running: per deployment, its (replica id, actor, node id) that are RUNNING.
            now: the controller's clock (monotonic seconds).
            present: every replica that still exists, whatever its state (default: the running ones). A
                replica being released stays so until it is released or gone: one that is only not
                RUNNING for a while (recovering, reconfiguring) may still run its old lane's loop.
        """
        changed = False
        alive = {rid for replicas in running.values() for rid, _, _ in replicas}
        for lane_id, lane in list(self.lanes.items()):
            gone = any(rid not in alive for _, rid, _ in lane.members)
            if gone or lane.owner_id not in self.owners:
                self.dissolve(lane_id, now)
                changed = True
        # Replicas that are gone need no release; others become free when their loop was stopped.
        present = alive if present is None else present
        for rid in list(self.releasing):
            if rid not in present:
                del self.releasing[rid]
        self.dissolved = {i: (o, rids) for i, (o, rids) in self.dissolved.items() if any(r in present for r in rids)}
        if self.failure or not self.owners:
            return changed
        taken = {rid for lane in self.lanes.values() for _, rid, _ in lane.members}
        # Free replicas by node, then by deployment: a lane is formed from one node's replicas only.
        free: dict[str, dict[str, list[tuple[str, Any]]]] = {}
        for dep in self.deployments:
            for rid, actor, node in running.get(dep, []):
                if node is not None and rid not in taken and rid not in self.releasing:
                    free.setdefault(node, {}).setdefault(dep, []).append((rid, actor))
        order = list(self.owners)
        while True:
            ready = [
                oid
                for oid in order
                if (node := self.owners[oid].node_id) in free and all(free[node].get(dep) for dep in self.deployments)
            ]
            if not ready:
                return changed
            owner = min(ready, key=lambda oid: (self.lanes_of(oid), order.index(oid)))
            node = self.owners[owner].node_id
            assert node is not None
            members = tuple((dep, *free[node][dep].pop(0)) for dep in self.deployments)
            lane_id = next(self._ids)
            self.lanes[lane_id] = LaneInfo(lane_id, owner, members, node)
            changed = True

    def due_releases(self, now: float) -> list[tuple[str, Any]]:
        """(replica id, actor) whose grace ended: stop their loops now, then call :meth:`released`."""
        due = [(rid, actor) for rid, (at, actor) in self.releasing.items() if at <= now]
        for rid, actor in due:
            self.releasing[rid] = (float("inf"), actor)  # being released: not twice
        return due

    def released(self, replica_id: str) -> None:
        self.releasing.pop(replica_id, None)

    def assignment(self) -> LaneAssignment:
        return LaneAssignment(tuple(self.lanes[i] for i in sorted(self.lanes)), self.failure, self.plan)

    def succeed(self, old: LaneTable, now: float) -> None:
        """Take over from the table of the previous deploy: same owners; its lanes' replicas are released first."""
        self.owners = dict(old.owners)
        self.releasing = dict(old.releasing)
        self._ids = old._ids
        for lane_id in list(old.lanes):
            old.dissolve(lane_id, now)
        self.releasing.update(old.releasing)
        self.dissolved = {**old.dissolved}


def _replica_ids(lane: LaneInfo) -> tuple[str, ...]:
    return tuple(rid for _, rid, _ in lane.members)
