"""The controller's checkpoint in Ray's internal KV: what is saved, and how a restarted controller recovers from it.

Written after every change of desired state or of a replica's life (:func:`write`), read once when a
controller starts (:func:`recover`), deleted by ``serve.shutdown()``. Its presence also says that
applications run: a process that finds no controller starts one only if a checkpoint is there (see
:mod:`.locate`, which is why this module loads nothing of the controller's at import).

What it holds (a cloudpickled dict; a controller reads what an older one of the same run wrote):

- ``apps``: per application its pickled IR (``app_bytes``), ``code_paths``, ``route_prefix``,
  ``deleting``, ``compiled``, ``graph_autoscaling``, and per deployment its ``target``, ``deleting`` and
  replicas as ``(replica_id, actor_name, version, pickled user_config, stopping)``;
- the proxies': ``http``, ``http_options``, ``grpc_options``, ``logging_config``, ``proxy_location``;
- ``code_paths``: every deploying driver's import directories.

Lanes are not saved: a recovered replica's compiled loop is stopped before it joins a new lane.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from typing import TYPE_CHECKING, Any

from .. import ray_compat
from ..common.records import NAMESPACE

if TYPE_CHECKING:
    from .applications import App, ApplicationManager
    from .proxy_state import ProxyManager
    from .replica_lifecycle import ReplicaLifecycle

#: Where the controller's checkpoint lives in Ray's internal KV.
CHECKPOINT_KEY = b"servegraph/controller/checkpoint"


def save(data: bytes) -> None:
    ray_compat.kv_put(CHECKPOINT_KEY, data, NAMESPACE)


def load() -> bytes | None:
    return ray_compat.kv_get(CHECKPOINT_KEY, NAMESPACE)


def delete() -> None:
    ray_compat.kv_del(CHECKPOINT_KEY, NAMESPACE)


def snapshot(apps: dict[str, App], proxies: ProxyManager, code_paths: list[str]) -> dict[str, Any]:
    """What a restarted controller needs to re-attach: apps, targets, replicas, proxy."""
    saved = {}
    for name, app in apps.items():
        saved[name] = {
            "app_bytes": app.app_bytes,
            "code_paths": app.code_paths,
            "route_prefix": app.route_prefix,
            "deleting": app.deleting,
            "compiled": app.compiled,
            "graph_autoscaling": app.graph_autoscaling,
            "deployed_at": app.deployed_at,
            "deployments": {
                dname: {
                    "target": dep.target,
                    "deleting": dep.deleting,
                    # Stopping ones too: a restarted controller finishes their drain instead of losing them.
                    "replicas": [
                        (r.replica_id, r.actor_name, r.version, pickle.dumps(r.user_config), r.stopping)
                        for r in dep.replicas.values()
                    ],
                }
                for dname, dep in app.deployments.items()
            },
        }
    return {
        "apps": saved,
        "http": proxies.http,
        "http_options": proxies.options,
        "grpc_options": proxies.grpc,
        "logging_config": proxies.logging_config,
        "proxy_location": proxies.location,
        "code_paths": code_paths,
    }


def write(data: dict[str, Any], dump: Any) -> None:
    """Save ``data`` (a :func:`snapshot`) pickled by ``dump`` (cloudpickle); a failure is printed, never raised."""
    try:
        save(dump(data))
    except Exception:
        traceback.print_exc()


def recover(
    data: dict[str, Any], applications: ApplicationManager, lifecycle: ReplicaLifecycle, groups: dict[str, Any] | None, loads: Any
) -> None:
    """Set every saved application's target again and re-attach to its replicas that are still alive.

    Each found replica proves its phase before it is routed again (see ReplicaLifecycle.adopt); one that
    was stopping finishes its drain; one that is gone is replaced by the loop. ``loads`` turns an
    application's saved bytes back into its IR (with its code paths importable).
    """
    for name, saved in data["apps"].items():
        app = loads(saved["app_bytes"], saved["code_paths"])
        applications.set_target(
            name, app, saved["app_bytes"], tuple(saved["code_paths"]), saved["route_prefix"], saved.get("compiled", True),
            saved.get("graph_autoscaling", True),
        )  # fmt: skip
        state = applications.apps[name]
        state.deleting = saved["deleting"]
        state.deployed_at = saved.get("deployed_at", state.deployed_at)  # the deploy's time, not the restart's
        for dname, dsaved in saved["deployments"].items():
            dep = state.deployments.get(dname)
            if dep is None:
                continue
            dep.target, dep.deleting = dsaved["target"], dsaved["deleting"] or state.deleting
            for replica_id, actor_name, version, config, *stopping in dsaved["replicas"]:
                r = lifecycle.adopt(
                    dep, replica_id, actor_name, version, pickle.loads(config), bool(stopping and stopping[0]), groups
                )
                if r is not None and not r.stopping and state.lanes is not None:
                    # Lanes were not checkpointed: stop any loop a replica still runs before it joins a new lane.
                    state.lanes.releasing[replica_id] = (0.0, r.actor.handle)
            applications.deployments.publish(dep)


def stop_orphans(applications: ApplicationManager, lifecycle: ReplicaLifecycle, groups: dict[str, Any] | None) -> None:
    """End replicas no application holds: started by a controller that died before its checkpoint had them.

    Their placement groups go too, with every other replica group (of ``groups``, found by name) no replica
    holds: made just before the old controller died, or left by a replica that died while none watched.
    """
    apps = applications.apps.values()
    known = {r.actor_name for app in apps for dep in app.deployments.values() for r in dep.replicas.values()}
    actors = lifecycle.actors
    leaked = [group for name, group in (groups or {}).items() if name not in known]
    if leaked:
        print(f"servegraph: removing {len(leaked)} placement group(s) no replica holds", file=sys.stderr)
        for group in leaked:
            actors.remove_group(group)
    orphans = [actor for name in actors.live_names() if name not in known and (actor := actors.attach(name)) is not None]
    if orphans:
        print(f"servegraph: stopping {len(orphans)} replica(s) no application holds", file=sys.stderr)
        for actor in orphans:
            actor.kill()
