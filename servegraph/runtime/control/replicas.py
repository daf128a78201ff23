"""Every Ray call the controller makes on a replica actor, behind one seam (Ray Serve's ``ActorReplicaWrapper``).

:class:`ReplicaActors` is the cluster as the managers see it: it creates replica actors (their options,
their placement, their own placement group), finds them again after a restart, lists and ends them, and
says what the cluster has free. :class:`ActorReplica` is one replica actor: initialize, phase,
reconfigure, configure_logging, watch, check_health, prepare_for_shutdown, release_lane, kill. Nothing
else in ``control/`` calls a replica actor or ``ray.kill`` on one, so tests/test_control_managers.py
hands the managers in-memory ones and runs every reconcile path without a cluster.

Calls that return an awaitable are sent when called, not when awaited (as ``.remote()`` is): the
controller sends ``initialize`` and then watches the replica's phase while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ...compiler import ir
from ..actors.replica import replica_actor_class, replica_concurrency
from ..common.records import NAMESPACE
from ..common.user_frames import user_frame_in
from . import placement_groups


def replica_actor_name(app: str, deployment: str, replica_id: str) -> str:
    return f"SERVEGRAPH_REPLICA::{app}#{deployment}#{replica_id}"


#: What every replica's actor name (and placement group name) starts with.
REPLICA_PREFIX = replica_actor_name("", "", "").split("::", 1)[0] + "::"


class ReplicaStartError(Exception):
    """The user's constructor (or reconfigure) raised; the message is its one-line description."""


class ReplicaStopping(Exception):
    """A replica found by a restarted controller was already draining: it is stopped, not recovered."""


class ReplicaDied(Exception):
    """The replica actor is gone (what a fake replica raises where Ray raises ``RayActorError``)."""


def died(exc: BaseException) -> bool:
    """Whether a call failed because its replica actor is dead."""
    return isinstance(exc, (ReplicaDied, ray.exceptions.RayActorError))


def describe_failure(exc: BaseException) -> str:
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


class ActorReplica:
    """One replica actor, and its placement group if it has one (removed with :meth:`remove_group`).

    ``handle`` is what routers and lane owners are given; the controller itself calls only these methods.
    """

    def __init__(self, handle: ActorHandle, name: str, group: Any = None) -> None:
        self.handle = handle
        self.name = name
        self.group = group

    def initialize(self, user_config: Any, max_ongoing: int, logging_config: Any) -> Awaitable[str | None]:
        """Run the user's constructor; answers its one-line error, or None (a second call gets the first's outcome)."""
        return self.handle.initialize.remote(user_config, max_ongoing, logging_config)

    def phase(self) -> Awaitable[dict]:
        """The replica's phase report (see replica.py): ``{"phase", "node_id", "pid", "user_config", ...}``."""
        return self.handle.phase.remote()

    def reconfigure(self, user_config: Any) -> Awaitable[str | None]:
        return self.handle.reconfigure.remote(user_config)

    def configure_logging(self, logging_config: Any) -> Awaitable[str | None]:
        return self.handle.configure_logging.remote(logging_config)

    async def watch(self) -> bool:
        """Wait for the replica's end: True once it died or shut down, False if another controller watches it now."""
        try:
            if await self.handle.watch.remote() is None:
                return False
        except Exception:
            pass
        return True

    async def check_health(self, timeout_s: float) -> None:
        """Run the user's ``check_health``; raises what it raised, ``TimeoutError``, or :class:`ReplicaDied`."""
        try:
            await asyncio.wait_for(self.handle.check_health.remote(), timeout_s)
        except ray.exceptions.RayActorError as exc:
            raise ReplicaDied(str(exc)) from exc

    def prepare_for_shutdown(self, wait_loop_s: float, timeout_s: float) -> Awaitable[Any]:
        """Drain: wait until no request runs (or ``timeout_s``), then run the user's ``__del__``."""
        return self.handle.prepare_for_shutdown.remote(wait_loop_s, timeout_s)

    def release_lane(self) -> Awaitable[Any]:
        """Stop the replica's compiled loop (see data/lanes.py), so it may join a new lane."""
        return self.handle.release_lane.remote()

    def kill(self) -> None:
        try:
            ray.kill(self.handle, no_restart=True)
        except Exception:  # already dead
            pass

    async def wait_placed(self, report: Callable[[str], None]) -> None:
        """Return once Ray placed the replica's group, calling ``report`` with why not meanwhile (see placement_groups.py)."""
        await placement_groups.wait_placed(self.group, report)

    def remove_group(self) -> None:
        placement_groups.remove(self.group)
        self.group = None


class PreferredNode(str):
    """A node a replica should run on if it fits there (Ray's soft node affinity); elsewhere if not."""

    __slots__ = ()


class ReplicaActors:
    """The replica actors of the cluster: created, found again, listed; and what the cluster has room for."""

    def __init__(self, locate: Callable[[], Any] | None = None) -> None:
        """``locate`` is handed to every replica, for its handles' membership clients (see control/locate.py)."""
        self._locate = locate

    def create(
        self, app: str, deployment: str, replica_id: str, spec: ir.DeploymentIR, node: str | None, code_paths: list[str]
    ) -> ActorReplica:
        """Start a replica actor, in its own placement group when the deployment has bundles; pinned to
        ``node`` when given (max_replicas_per_node), or placed there if it fits when ``node`` is a PreferredNode. ``code_paths``: where the replica finds the user's modules.

        Raises:
            Exception: Ray refused the group or the actor's options (the group is removed again).
        """
        name = replica_actor_name(app, deployment, replica_id)
        options = spec.options.actor_options()
        group_spec, group = spec.options.placement_group(), None
        placement: Any = "SPREAD" if node is None else NodeAffinitySchedulingStrategy(node, soft=isinstance(node, PreferredNode))
        try:
            if group_spec is not None:  # a group of its own, named as the replica; the replica in bundle 0
                group = placement_groups.create(name, *group_spec)
                placement = placement_groups.scheduling_strategy(group)
            handle = (
                replica_actor_class(spec.target)
                .options(
                    name=name,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    max_concurrency=replica_concurrency(spec.target, spec.options.max_ongoing_requests),
                    scheduling_strategy=placement,
                    **options,
                )
                .remote(app, deployment, replica_id, replica_code(spec), tuple(code_paths), spec.is_function, locate=self._locate)
            )  # fmt: skip
        except Exception:
            placement_groups.remove(group)
            raise
        return ActorReplica(handle, name, group)

    def attach(self, name: str) -> ActorReplica | None:
        """The live replica actor named ``name`` (a restarted controller's), or None if it is gone."""
        try:
            return ActorReplica(ray.get_actor(name, namespace=NAMESPACE), name)
        except ValueError:
            return None

    def live_names(self) -> list[str]:
        """Names of every live replica actor of servegraph's on the cluster."""
        return [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(REPLICA_PREFIX)
        ]

    def live_groups(self) -> dict[str, Any] | None:
        """Every replica placement group not removed, by name; None if Ray could not list them."""
        return placement_groups.live_groups(REPLICA_PREFIX)

    def find_group(self, name: str, groups: dict[str, Any] | None) -> Any:
        """Replica ``name``'s placement group: from ``groups``, or looked up alone when Ray could not list them."""
        return groups.get(name) if groups is not None else placement_groups.find(name)

    def remove_group(self, group: Any) -> None:
        placement_groups.remove(group)

    def release_lane(self, handle: ActorHandle) -> Awaitable[Any]:
        """Stop the compiled loop of the replica behind ``handle`` (a lane table holds handles, not wrappers)."""
        return ActorReplica(handle, "").release_lane()

    def free_resources(self) -> dict[str, float]:
        """What the cluster has free now (raises if the GCS does not answer)."""
        return ray.available_resources()

    def alive_nodes(self) -> list[str]:
        """Ids of the alive nodes (raises if the GCS does not answer)."""
        return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]

    def home_node(self) -> str:
        """The controller's node (the head's, where drivers usually run)."""
        return ray.get_runtime_context().get_node_id()


def replica_code(spec: ir.DeploymentIR) -> bytes:
    """A deployment's class or function and its constructor arguments, pickled for a new replica to load.

    The replica unpickles them itself, with the driver's import directories on its path (see
    replica.py ``_load_code``), so its actor needs no runtime_env just to find the user's modules.
    """
    return ray.cloudpickle.dumps((spec.target, spec.init_args, spec.init_kwargs))
