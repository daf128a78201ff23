"""``serve.get_replica_context()``: which replica the calling code runs in, as Ray Serve names it.

Set once per replica process when its constructor starts (a replica is one Ray actor, so one process
holds at most one replica).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import GraphError


@dataclasses.dataclass(frozen=True)
class DeploymentID:
    """Ray Serve's ``DeploymentID``: a deployment's name and its application's."""

    name: str
    app_name: str


@dataclasses.dataclass(frozen=True)
class ReplicaID:
    """Ray Serve's ``ReplicaID``: a replica's unique id within its deployment."""

    unique_id: str
    deployment_id: DeploymentID

    def to_full_id_str(self) -> str:
        return f"{self.deployment_id.app_name}#{self.deployment_id.name}#{self.unique_id}"


@dataclasses.dataclass
class ReplicaContext:
    """Ray Serve's ``ReplicaContext``: ``app_name``, ``deployment``, ``replica_tag``, ``replica_id`` and
    ``servable_object`` (the user's instance; None until its constructor has returned)."""

    replica_id: ReplicaID
    servable_object: Any = None

    @property
    def app_name(self) -> str:
        return self.replica_id.deployment_id.app_name

    @property
    def deployment(self) -> str:
        return self.replica_id.deployment_id.name

    @property
    def replica_tag(self) -> str:
        return self.replica_id.unique_id


_CONTEXT: ReplicaContext | None = None


def set_replica_context(app: str, deployment: str, replica_id: str) -> ReplicaContext:
    global _CONTEXT
    _CONTEXT = ReplicaContext(ReplicaID(replica_id, DeploymentID(deployment, app)))
    return _CONTEXT


def get_replica_context() -> ReplicaContext:
    """The replica this code runs in.

    Raises:
        GraphError: called outside a deployment's replica (Ray Serve's ``RayServeException``).
    """
    if _CONTEXT is None:
        raise GraphError(
            "`serve.get_replica_context()` may only be called from within a Ray Serve deployment. "
            "(servegraph: call it in a deployment's constructor or methods, not in the driver)"
        )
    return _CONTEXT
