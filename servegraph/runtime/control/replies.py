"""What the controller answers its callers, as typed records (they cross actor boundaries by pickle).

A driver's ``serve.status()`` reads :class:`StatusReply`; ``deploy_app`` answers a :class:`DeployReply`
whose :class:`Refusal` the driver raises as a DeploymentError; ``get_app`` answers an :class:`AppRecord`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...compiler import ir
from ..data.handle import DeploymentInfo


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
    #: When it was last deployed (seconds since the epoch).
    deployed_at: float = 0.0


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
