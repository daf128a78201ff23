"""Each replica's own placement group, for deployments with ``placement_group_bundles`` (as in Ray Serve).

The controller gives every replica of such a deployment a group of its own, built from the bundles with
the strategy (PACK unless set). As in Ray Serve (``_private/deployment_scheduler.py``):

- the group is named as its replica actor is (``SERVEGRAPH_REPLICA::<app>#<deployment>#<replica id>``),
  detached (it outlives the controller, as the replica does), in the controller's namespace;
- the replica actor is scheduled in bundle 0, and tasks and actors it creates go into the group unless
  they say otherwise (``placement_group_capture_child_tasks=True``);
- the group is removed when its replica ends, however it ends; a restarted controller finds the groups
  of the replicas it re-attaches to by name, and removes every other group of servegraph's replicas (made
  just before the old controller died, or outliving a replica that died meanwhile).

A group Ray cannot place leaves its replica pending: :func:`wait_placed` reports why while it waits, and
the controller puts that in the deployment's status message.

Only public Ray APIs are used (``ray.util.placement_group`` and friends; ``placement_group_table`` is a
Ray DeveloperAPI whose ``state`` and ``stats.scheduling_state`` fields are read defensively).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

#: Seconds before the first look at a group Ray has not placed yet (to say why in the deployment's status);
#: the looks then come less often, up to MAX_PENDING_CHECK_S apart.
PENDING_CHECK_S = 1.0
MAX_PENDING_CHECK_S = 10.0

#: Ray's scheduling states of a group that waits (``PlacementGroupStats.SchedulingState``), in the user's words.
_WHY_PENDING = {
    "INFEASIBLE": "cannot be placed: no node of the cluster could ever hold its bundles",
    "NO_RESOURCES": "cannot be placed: the cluster has no room for its bundles now",
    "FAILED_TO_COMMIT_RESOURCES": "cannot be placed: Ray could not reserve its bundles on the nodes it chose",
}
#: What :func:`why_pending` says when Ray cannot be asked.
_UNKNOWN = "is not placed yet"


def create(name: str, bundles: list[dict[str, float]], strategy: str) -> PlacementGroup:
    """Ask Ray for a replica's group (it is placed asynchronously; see :func:`wait_placed`)."""
    return ray.util.placement_group(bundles, strategy, name=name, lifetime="detached")


def scheduling_strategy(group: PlacementGroup) -> PlacementGroupSchedulingStrategy:
    """Where a replica actor runs in its group: bundle 0, with what it creates captured into the group."""
    return PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )


def remove(group: PlacementGroup | None) -> None:
    """Remove a replica's group (and so free its bundles); one already removed is left as it is."""
    if group is None:
        return
    try:
        ray.util.remove_placement_group(group)
    except Exception:  # removed already, or the GCS is gone with the cluster
        pass


def live_groups(prefix: str) -> dict[str, PlacementGroup] | None:
    """Groups of this process's namespace whose name starts with ``prefix`` and that are not removed, by name.

    (Ray's table lists every namespace's groups; a name is looked up in this one, so others' are skipped.)
    None when Ray cannot list them: the caller then removes none and looks each one it needs up (:func:`find`).
    """
    try:
        table = ray.util.placement_group_table()
    except Exception:
        return None
    names = sorted(
        {
            entry.get("name") or ""
            for entry in table.values()
            if (entry.get("name") or "").startswith(prefix) and entry.get("state") != "REMOVED"
        }
    )
    out = {}
    for name in names:
        try:
            out[name] = ray.util.get_placement_group(name)
        except ValueError:  # removed meanwhile, or another namespace's
            pass
    return out


def find(name: str) -> PlacementGroup | None:
    """The live group named ``name`` in this process's namespace, or None."""
    try:
        return ray.util.get_placement_group(name)
    except Exception:  # no such group (ValueError), or Ray could not say
        return None


def why_pending(group: PlacementGroup) -> str:
    """Why Ray has not placed ``group`` yet, as the end of a sentence about it ("" once it is placed).

    >>> _WHY_PENDING["INFEASIBLE"]
    'cannot be placed: no node of the cluster could ever hold its bundles'
    """
    try:
        entry: dict[str, Any] = ray.util.placement_group_table(group)
    except Exception:
        return _UNKNOWN
    state = entry.get("state")
    if state == "CREATED":
        return ""
    if state == "RESCHEDULING":
        return "is being placed again: a node it was placed on was lost"
    scheduling = (entry.get("stats") or {}).get("scheduling_state", "")
    return _WHY_PENDING.get(scheduling, f"{_UNKNOWN} (Ray says {(scheduling or state or 'PENDING')})")


async def wait_placed(group: PlacementGroup, report: Callable[[str], None]) -> None:
    """Return once Ray has placed ``group``; until then call ``report`` now and then with why it waits.

    ``report("")`` is called once it is placed. Cancelled when its replica stops.
    """
    placed = asyncio.wrap_future(group.ready().future())
    wait = PENDING_CHECK_S
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(placed), wait)
        except asyncio.TimeoutError:
            # Off the controller's loop (a GCS call), and less often the longer it waits.
            report(await asyncio.to_thread(why_pending, group) or _UNKNOWN)
            wait = min(wait * 2, MAX_PENDING_CHECK_S)
            continue
        except Exception:  # removed before it was placed: its replica is being stopped
            return
        report("")
        return


def pending_message(count: int, bundles: list[dict[str, float]], strategy: str, why: str) -> str:
    """The deployment's status message while ``count`` replicas wait for their groups (``why`` from :func:`why_pending`).

    >>> pending_message(1, [{"CPU": 64.0}], "PACK", _WHY_PENDING["NO_RESOURCES"])  # doctest: +ELLIPSIS
    "1 replica(s) pending: its placement group (bundles [{'CPU': 64.0}], strategy PACK) cannot be placed: ..."
    """
    whose = "its" if count == 1 else "each one's"
    return (
        f"{count} replica(s) pending: {whose} placement group (bundles {bundles}, strategy {strategy}) {why}. "
        "A replica starts once its group is placed; add nodes or resources, or lower placement_group_bundles. "
        "See `ray status`."
    )
