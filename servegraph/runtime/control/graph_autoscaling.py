"""Graph-aware autoscaling: each stage sized from the load arriving at its callers (pure, no Ray).

Ray Serve scales each deployment on its own queue, so a load step reaches a pipeline A -> B -> C as a
cascade: A scales, then its new replicas fill B's queue, then B scales, then C. servegraph knows who
calls whom (the compiled graph) and how often (per-edge stats, see telemetry.py), so in one control
step it derives, in graph order, the request rate each deployment is about to receive:

    arrival(D) = max(D's own demand, sum over callers C of passed(C) x calls per request of C -> D)
    passed(C)  = min(arrival(C), what C serves at its current target: target x target_ongoing / time)

where a deployment's own demand is its queued-plus-running requests (what its handles report to the
autoscaler) over its per-request processing time (Little's law), or its measured request rate. Capping
what a caller passes on at its current target makes a callee grow in the very step its caller's target
grows: on a small machine the callers' replicas then start with the callees', not after them. A
deployment then needs ``arrival x processing time / target_ongoing_requests`` replicas; that is a floor
under its own policy's wish, applied without the upscale delay (its callers' own scaling already waited
for theirs). Bounds (``min_replicas``/``max_replicas``) and scaling down stay the deployment's own.

A callee whose processing time is not known yet (no request in the window, e.g. scaled to zero) still
gets one replica while a caller has demand, so a whole graph at zero starts in parallel rather than one
stage at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from ...compiler import ir
from ..common.plan import step_callers
from ..common.records import INPUT


@dataclasses.dataclass(frozen=True)
class Stage:
    """What the controller knows of one deployment this control step."""

    #: Queued plus running requests its handles report (None: not autoscaled, so not reported).
    ongoing: float | None
    #: Per-request processing time in seconds over the stats window (None: no request in it).
    latency_s: float | None
    #: Requests per second it finished in the stats window.
    rate: float
    #: ``target_ongoing_requests`` if it autoscales, else None (a fixed count: nothing to decide).
    target_ongoing: float | None
    #: Its current replica target.
    current: int


@dataclasses.dataclass(frozen=True)
class Wish:
    """A floor under one deployment's replica target, and why."""

    replicas: int
    arrival_per_s: float
    reason: str


def static_fanout(app: ir.AppIR) -> dict[tuple[str, str], float]:
    """(caller, callee) -> calls per request of the caller, as the graph's code says.

    An InputNode graph's plan says it exactly (a deployment called by two steps fed by one caller is
    two calls); a constructor handle says only that the caller calls the callee: once, until measured.
    """
    fanout: dict[tuple[str, str], float] = {}
    for spec in app.deployments:
        for callee in spec.handles:
            fanout[(spec.name, callee)] = max(fanout.get((spec.name, callee), 0.0), 1.0)
    plans = [app.plan] if app.plan is not None else [plan for _, plan in app.routes]
    for plan in plans:
        steps_of: dict[str, int] = {}
        fed: dict[tuple[str, str], int] = {}
        deployment_of = {s.key: s.deployment for s in plan.steps if s.deployment is not None}
        for step in plan.steps:
            if step.deployment is not None:
                steps_of[step.deployment] = steps_of.get(step.deployment, 0) + 1
        for key, callers in step_callers(plan).items():
            callee = deployment_of[key]
            for caller in callers:
                if caller != INPUT:
                    fed[(caller, callee)] = fed.get((caller, callee), 0) + 1
        for (caller, callee), n in fed.items():
            fanout[(caller, callee)] = max(fanout.get((caller, callee), 0.0), n / max(1, steps_of.get(caller, 1)))
    return fanout


def graph_order(names: Iterable[str], fanout: dict[tuple[str, str], float]) -> list[str]:
    """Deployments with every caller before its callees (Kahn's algorithm, ties by name); a cycle (two
    deployments calling each other through handles) keeps the rest in name order."""
    pending = sorted(set(names))
    callers: dict[str, set[str]] = {n: set() for n in pending}
    for caller, callee in fanout:
        if caller in callers and callee in callers and caller != callee:
            callers[callee].add(caller)
    order: list[str] = []
    placed: set[str] = set()
    while pending:
        ready = [n for n in pending if callers[n] <= placed]
        if not ready:  # a cycle: place the first by name and go on
            ready = pending[:1]
        for n in ready:
            order.append(n)
            placed.add(n)
        pending = [n for n in pending if n not in placed]
    return order


def measured_fanout(
    static: dict[tuple[str, str], float], rates: dict[str, float], edge_rates: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    """Calls per request along each edge: measured (edge calls/s over the caller's requests/s) where the
    caller served requests in the window, else the graph's own count. Edges seen only at run time (a
    handle obtained with ``get_deployment_handle``) count once measured."""
    out = dict(static)
    for (caller, callee), edge_rate in edge_rates.items():
        if caller == INPUT:
            continue
        rate = rates.get(caller, 0.0)
        if rate > 0:
            out[(caller, callee)] = edge_rate / rate
    return out


def wishes(order: list[str], stages: dict[str, Stage], fanout: dict[tuple[str, str], float]) -> dict[str, Wish]:
    """The floor under each autoscaled deployment's target that its callers' load implies."""
    arrival: dict[str, float] = {}
    passed: dict[str, float] = {}
    active: set[str] = set()
    out: dict[str, Wish] = {}
    for name in order:
        stage = stages[name]
        own = stage.ongoing / stage.latency_s if stage.ongoing is not None and stage.latency_s else stage.rate
        callers = sorted(c for (c, d) in fanout if d == name and c in arrival)
        from_callers = [(c, passed[c] * fanout[(c, name)]) for c in callers]
        upstream = sum(rate for _, rate in from_callers)
        arrival[name] = max(own, upstream)
        # What it passes on: its arrivals, up to what it can serve at its current target. So a callee
        # grows in the step its caller's target grows (after the caller's own upscale delay), not before:
        # the callers' replicas start first, or together with the callees', never after them.
        if stage.target_ongoing is not None and stage.latency_s:
            passed[name] = min(arrival[name], stage.current * stage.target_ongoing / stage.latency_s)
        else:
            passed[name] = arrival[name]
        if stage.target_ongoing is not None and (upstream > 0 or active.intersection(callers)):
            if stage.latency_s and upstream > 0:
                replicas = math.ceil(upstream * stage.latency_s / stage.target_ongoing - 1e-9)
                detail = ", ".join(f"{c} {rate:.1f}/s" for c, rate in from_callers if rate > 0)
                reason = (
                    f"upstream load {upstream:.1f} req/s ({detail}) x {stage.latency_s * 1e3:.0f} ms "
                    f"/ target_ongoing_requests {stage.target_ongoing:g}"
                )
            else:  # no processing time known yet (scaled to zero): start one now, beside the callers
                replicas, reason = 1, "upstream load: a caller has requests and this deployment has no figures yet"
            out[name] = Wish(max(replicas, 1), upstream, reason)
        if arrival[name] > 0 or (stage.ongoing or 0) > 0 or name in out:
            active.add(name)
    return out
