"""Applications: each one's desired state (its graph, route, deployments' targets), status and autoscaling.

As Ray Serve's ``_private/application_state.py``: a deploy sets targets (:meth:`ApplicationManager.set_target`),
a delete marks everything for stopping, and each pass of the loop moves every application a step
(:meth:`ApplicationManager.reconcile`): autoscaling decisions first, then each deployment's reconcile step
(deployments.py), the application's status, and its lanes (lanes.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from typing import Any

import ray.cloudpickle

from ...compiler import ir
from ...compiler.fast_path import compiled_path_problem, lane_deployments
from ...dsl.options import add_resources
from .. import ray_compat
from ..common import telemetry
from ..common.driver_http import route_adapter
from ..data.handle import DeploymentInfo
from ..data.router import Membership
from . import graph_autoscaling
from .autoscaling import Autoscaler
from .deployments import DEPLOY_FAILED, HEALTHY, UNHEALTHY, Deployment, DeploymentManager
from .lane_table import LaneTable
from .lanes import LaneManager
from .membership import MembershipHost
from .replica_lifecycle import SERVING, UPDATING
from .replies import AppReport, DeploymentReport
from .signals import Signals
from .version import replica_version

# Application states, Ray Serve's names.
DEPLOYING, RUNNING_APP, DELETING = "DEPLOYING", "RUNNING", "DELETING"
#: Seconds between checks that the processes owning compiled lanes are still alive.
OWNER_CHECK_PERIOD_S = 1.0


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
    #: When it was last deployed (seconds since the epoch): Ray Serve's ``last_deployed_time_s``.
    deployed_at: float = dataclasses.field(default_factory=time.time)


class ApplicationManager:
    #: The window over which graph-aware autoscaling reads rates and fan-outs.
    GRAPH_WINDOW_S = 5.0
    #: The window in which it looks for each deployment's time per request without queueing.
    SERVICE_WINDOW_S = 60.0

    def __init__(self, deployments: DeploymentManager, lanes: LaneManager, host: MembershipHost, signals: Signals) -> None:
        self.apps: dict[str, App] = {}
        self.deployments = deployments
        self.lanes = lanes
        self._host = host
        self._signals = signals
        self._owners_checked = 0.0
        #: Replicas' request stats (see telemetry.py): per (app, deployment) and per (app, caller, deployment, method).
        self.deployment_stats = telemetry.StatsWindow()
        self.edge_stats = telemetry.StatsWindow()

    # Each pass -----------------------------------------------------------------------------
    def reconcile(self, now: float) -> None:
        """Move every application a step: autoscale, reconcile deployments, drop what finished deleting, lanes."""
        for app in list(self.apps.values()):
            self.autoscale(app)
            for dep in list(app.deployments.values()):
                peers = _lane_peers(app, dep.name)
                owners = frozenset(o.node_id for o in app.lanes.owners.values() if o.node_id) if peers and app.lanes else frozenset()
                self.deployments.reconcile(dep, now, app.code_paths, peers, owners)
                if dep.deleting and not dep.replicas:
                    del app.deployments[dep.name]
                    self.deployments.publish(dep)
            if app.deleting and not app.deployments:
                del self.apps[app.name]
                self._signals.dirty = True
                self.lanes.publish(app)
            else:
                self.update_status(app)
                self.lanes.reconcile(app, now)
        if now - self._owners_checked >= OWNER_CHECK_PERIOD_S:
            self._owners_checked = now
            self.lanes.forget_dead_owners(list(self.apps.values()))

    def lane_exit(self, app: str, replica_id: str) -> asyncio.Future | None:
        """Done once a replica of ``app`` left its compiled lane (see LaneManager.exit); None if it holds none."""
        state = self.apps.get(app)
        return self.lanes.exit(state, replica_id) if state is not None else None

    def replica_nodes(self) -> set[str]:
        """Nodes that run a replica that may serve (where EveryNode wants a proxy)."""
        return {
            r.node_id
            for app in self.apps.values()
            for dep in app.deployments.values()
            for r in dep.replicas.values()
            if r.state in SERVING and r.node_id is not None
        }

    def update_status(self, app: App) -> None:
        deployments = list(app.deployments.values())
        failed = [d for d in deployments if d.status == DEPLOY_FAILED]
        if app.deleting:
            app.status = DELETING
        elif failed:
            d = failed[0]
            app.status = DEPLOY_FAILED
            app.message = f"deployment {d.name!r} (bound at {d.spec.call_site}) failed: {d.message}"
        elif any(d.status == UPDATING for d in deployments):
            app.status = DEPLOYING
        elif any(d.status == UNHEALTHY for d in deployments):
            app.status = "UNHEALTHY"
        else:
            app.status, app.message = RUNNING_APP, ""

    def settled(self, name: str) -> bool:
        """Whether a deploy of ``name`` is done: running (healthy or not) with no deployment still updating."""
        app = self.apps[name]
        return app.status in (RUNNING_APP, "UNHEALTHY") and all(d.status != UPDATING for d in app.deployments.values())

    def unsettled(self, name: str) -> str:
        """What a deploy of ``name`` still waits for, deployment by deployment."""
        pending = [d for d in self.apps[name].deployments.values() if d.status != HEALTHY]
        return "; ".join(f"{d.name}: {d.message or d.status}" for d in pending)

    # Autoscaling ----------------------------------------------------------------------------
    def autoscale(self, app: App) -> None:
        """Move every autoscaled deployment's target, all in this one step: each by its own policy, and
        (graph-aware, unless the application turned it off) no lower than its callers' load needs."""
        scaled = [d for d in app.deployments.values() if d.autoscaler is not None and not d.deleting]
        if not scaled:
            return
        now = time.time()
        floors = self.graph_floors(app, now) if app.graph_autoscaling else {}
        for dep in scaled:
            assert dep.autoscaler is not None
            wish = floors.get(dep.name)
            dep.target = dep.autoscaler.decide(dep.target, now, wish.replicas if wish else None, wish.reason if wish else "")

    def graph_floors(self, app: App, now: float) -> dict[str, graph_autoscaling.Wish]:
        names = [d for d, dep in app.deployments.items() if not dep.deleting]
        window = self.GRAPH_WINDOW_S
        summaries = {n: self.deployment_stats.summary((app.name, n), now, window) for n in names}
        rates = {n: summary["per_s"] for n, summary in summaries.items()}
        edge_rates: dict[tuple[str, str], float] = {}
        for key in self.edge_stats.keys():
            if key[0] == app.name:
                _, caller, callee, _method = key
                edge_rates[(caller, callee)] = edge_rates.get((caller, callee), 0.0) + self.edge_stats.summary(key, now, window)["per_s"]
        fanout = graph_autoscaling.measured_fanout(app.fanout, rates, edge_rates)
        stages = {}
        for n in names:
            dep = app.deployments[n]
            # Its time per request without queueing: load inflates the window's p50 (a caller waits for its
            # under-sized callees), which would shrink the arrival rates Little's law derives from it.
            p50 = self.deployment_stats.service_time_ms((app.name, n), now, self.SERVICE_WINDOW_S) or summaries[n]["p50_ms"]
            config = dep.autoscaler.config if dep.autoscaler is not None else None
            stages[n] = graph_autoscaling.Stage(
                ongoing=dep.autoscaler.total_ongoing(now) if dep.autoscaler is not None else None,
                latency_s=p50 / 1000.0 if p50 else None,
                rate=rates[n],
                target_ongoing=config.target_ongoing_requests if config is not None else None,
                current=dep.target,
            )
        return graph_autoscaling.wishes(graph_autoscaling.graph_order(names, fanout), stages, fanout)

    # Deploying and deleting ------------------------------------------------------------------
    def set_target(
        self,
        name: str,
        app: ir.AppIR,
        app_bytes: bytes,
        code_paths: tuple[str, ...],
        route_prefix: str | None,
        compiled: bool = True,
        graph_autoscaling: bool = True,
    ) -> dict[str, str]:
        """The application's new desired state; per deployment what changed (created, updated, reconfigured,
        scaled, options, unchanged, deleted). The loop does the rest."""
        old = self.apps.get(name)
        deployments: dict[str, Deployment] = {}
        changes: dict[str, str] = {}
        for spec in app.deployments:
            previous = old.deployments.get(spec.name) if old is not None else None
            deployments[spec.name], changes[spec.name] = _deployment_target(name, spec, previous)
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
                state.lanes = LaneTable(members, app.plan, first_id=self._host.counter + 1)
                if old_lanes is not None:
                    state.lanes.succeed(old_lanes, time.monotonic())
            state.lanes.failure = ""  # a new deploy tries again
        elif old_lanes is not None:
            # Now ineligible or turned off: the old lanes' loops must still be stopped. Until they are, the
            # replicas keep serving ordinary calls beside them.
            self.lanes.release_all(old_lanes)
        self.update_status(state)
        self.apps[name] = state
        return changes

    def delete(self, name: str) -> bool:
        """Mark an application and its deployments for stopping; False if there is none."""
        state = self.apps.get(name)
        if state is None:
            return False
        state.deleting = True
        for dep in state.deployments.values():
            dep.deleting = True
        return True

    # What others ask ----------------------------------------------------------------------------
    def current(self, key: tuple[str, str]) -> tuple[tuple[int, int], Any] | None:
        """The published version and membership (or lanes) of ``key``; None while it is held back."""
        published = self._host.published(key)
        if published is not None:
            return published
        app = self.apps.get(key[0])
        if app is not None and key[1] in app.deployments:
            return None
        nothing: Any = self.lanes.nothing() if key == LaneManager.key(key[0]) else Membership((), 1, exists=False)
        return (self._host.incarnation, 0), nothing

    def routes(self) -> dict[str, tuple[Any, ...]]:
        """What every HTTP proxy serves: route prefix -> its ingress deployment, or the plan it runs."""
        routes: dict[str, tuple[Any, ...]] = {}
        for name, state in self.apps.items():
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
        return routes

    def report(self, state: App) -> AppReport:
        """One application as ``status`` reports it."""
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
        path = self.lanes.path_status(state)
        return AppReport(state.status, state.message, state.route_prefix, state.app.ingress, deployments, path, state.deployed_at)

    def graph_stats(self, state: App, window_s: float) -> dict[str, Any]:
        """What the live graph shows: per deployment requests/s, errors, p50/p99 over the last ``window_s``
        seconds and replicas running/target; per edge (caller -> deployment.method) calls/s, errors, p50."""
        app, now = state.name, time.time()
        deployments = {}
        for name, dep in sorted(state.deployments.items()):
            summary = self.deployment_stats.summary((app, name), now, window_s)
            deployments[name] = {
                "requests_per_s": summary["per_s"],
                "errors_per_s": summary["errors_per_s"],
                "error_rate": summary["error_rate"],
                "p50_ms": summary["p50_ms"],
                "p99_ms": summary["p99_ms"],
                "requests_total": summary["total"],
                "errors_total": summary["errors_total"],
                "replicas_running": dep.serving(),
                "replicas_target": 0 if dep.deleting else dep.target,
            }
        edges = []
        for key in sorted(k for k in self.edge_stats.keys() if k[0] == app):
            _, caller, target, method = key
            summary = self.edge_stats.summary(key, now, window_s)
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

    def reserved(self, exclude: str | None = None) -> dict[str, float]:
        """Resources the replicas of every application but ``exclude`` hold."""
        out: dict[str, float] = {}
        for state in self.apps.values():
            if state.name == exclude:
                continue
            for dep in state.deployments.values():
                add_resources(out, dep.spec.options.replica_resources(), len(dep.replicas))
        return out

    def deployment(self, app: str, name: str) -> Deployment | None:
        state = self.apps.get(app)
        return state.deployments.get(name) if state is not None else None


def _deployment_target(app: str, spec: ir.DeploymentIR, previous: Deployment | None) -> tuple[Deployment, str]:
    """A deployment's new target (``previous`` updated in place, or a new one), and what changed."""
    version = replica_version(spec)
    if previous is not None and previous.deleting:
        previous.deleting = False  # removed, and now back before its replicas were gone
    count = spec.options.replicas()
    autoscaling = spec.options.autoscaling_config
    if previous is None:
        return Deployment(app, spec, version, count, autoscaler=Autoscaler(autoscaling) if autoscaling else None), "created"
    dep = previous
    before = dep.spec.options
    if version != dep.version:
        change = "updated"
    elif spec.options.user_config != before.user_config or spec.options.logging_config != before.logging_config:
        change = "reconfigured"
    elif spec.options != before:
        change = "scaled" if count != dep.target or autoscaling != before.autoscaling_config else "options"
    else:
        change = "unchanged"
    if autoscaling is None:
        dep.autoscaler, dep.target = None, count
    elif autoscaling != before.autoscaling_config:
        dep.autoscaler = Autoscaler(autoscaling)
        dep.target = max(autoscaling.min_replicas, min(autoscaling.max_replicas, dep.target or count))
    dep.spec, dep.version = spec, version
    if change not in ("unchanged", "options"):
        dep.failed, dep.failures, dep.next_start_at = False, 0, 0.0
        dep.status = UPDATING
    return dep, change


def graph_autoscaling_fanout(app: ir.AppIR) -> dict[tuple[str, str], float]:
    try:
        return graph_autoscaling.static_fanout(app)
    except Exception:  # a graph shape the count does not know: measured fan-outs only
        traceback.print_exc()
        return {}


def _lane_peers(app: App, name: str) -> tuple[Deployment, ...]:
    """The other deployments the application's compiled lanes take a replica of, with ``name`` (none when it
    runs as a plan only)."""
    table = app.lanes
    if table is None or table.failure or name not in table.deployments:
        return ()
    return tuple(app.deployments[d] for d in table.deployments if d != name and d in app.deployments)


def lane_reason(app: ir.AppIR, compiled: bool) -> str:
    """Why ``app`` runs as a plan of actor calls only, or "" when it gets compiled lanes.

    Turned off by the deployer, this Ray (:func:`ray_compat.compiled_graphs_problem`: not a version the
    compiled path was checked on, or a private piece of compiled graphs missing), or the graph itself.
    """
    if not compiled:
        return "turned off (compiled=False)"
    return ray_compat.compiled_graphs_problem() or compiled_path_problem(app) or ""
