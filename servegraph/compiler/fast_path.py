"""Which InputNode graphs can run on the compiled path (Ray Compiled Graphs), and why not when not.

One rule, used by ``servegraph check`` (to say which path a graph will take),
by the controller (which forms lanes only for eligible graphs) and by the
callers that run plans. It reads only the IR: no Ray here.

A graph is eligible when every request calls the same deployment methods in the
same order: an InputNode graph whose steps are deployment method calls and
reads of the input (``inp[0]``, ``inp.x``), whose methods are plain (no
generators, no ``@serve.batch``), with no deployment passed as a per-request
argument, and whose every call feeds the output.
"""

from __future__ import annotations

import inspect
from typing import Any

from . import ir

#: The value ``check``/``status`` show for a graph that runs on the compiled path.
COMPILED = "compiled"
#: The value they show for one that runs as a plan of actor calls.
PLAN = "plan"


def _method_of(spec: ir.DeploymentIR, method: str) -> Any:
    if spec.is_function:
        return spec.target
    return inspect.getattr_static(spec.target, method, None)


def _method_problem(spec: ir.DeploymentIR, method: str) -> str | None:
    fn = _method_of(spec, method)
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    if fn is None:
        return None  # reached through __getattr__ or similar: the call itself decides
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return f"{spec.name}.{method} is a generator (it streams; a compiled lane passes one value per stage)"
    if getattr(fn, "_servegraph_batch", None) is not None:
        return (
            f"{spec.name}.{method} uses @serve.batch (batches form across concurrent requests, which a compiled "
            "lane runs one at a time per stage)"
        )
    return None


def call_keys(value: Any, calls: set[str]) -> list[str]:
    """Keys of the call steps ``value`` refers to, in argument order, each once."""
    seen: dict[str, None] = {}
    for marker in ir.iter_markers(value):
        if isinstance(marker, ir.Ref) and marker.key in calls:
            seen.setdefault(marker.key)
    return list(seen)


def output_template(plan: ir.Plan) -> Any:
    """The plan's output with a MultiOutputNode's step unfolded into its list of refs."""
    out = plan.output
    for step in plan.steps:
        if isinstance(out, ir.Ref) and step.key == out.key and step.kind == ir.OUTPUT:
            return step.args[0]
    return out


def compiled_path_problem(app: ir.AppIR) -> str | None:
    """Why ``app`` cannot run on the compiled path, or None when it can.

    >>> compiled_path_problem(ir.AppIR(nodes=(), deployments=(), ingress="A"))
    'its entry point is a deployment (only InputNode graphs are static)'
    """
    if app.plan is None:
        if app.routes:
            return "a DAGDriver serving several routes"
        return "its entry point is a deployment (only InputNode graphs are static)"
    plan = app.plan
    if plan.routed:
        return (
            "it routes requests (a switch or split): each request runs only the branch it takes, "
            "chosen as it runs, and a compiled graph runs every step"
        )
    specs = {spec.name: spec for spec in app.deployments}
    calls: set[str] = set()
    for step in plan.steps:
        if step.kind in (ir.INPUT_ATTR, ir.OUTPUT):
            continue
        if step.deployment is None or step.method is None:
            return f"step {step.key!r} is not a deployment method call"
        if any(isinstance(m, ir.HandleRef) for m in ir.iter_markers((step.args, step.kwargs))):
            return f"{step.deployment}.{step.method} is passed a deployment handle per request"
        spec = specs.get(step.deployment)
        if spec is not None:
            problem = _method_problem(spec, step.method)
            if problem:
                return problem
        calls.add(step.key)
    if not calls:
        return "the graph calls no deployment"
    # Every call must feed the output: a compiled graph has one output and no side branches.
    needed: set[str] = set(call_keys(output_template(plan), calls))
    if not needed:
        return "the output is not produced by a deployment call"
    for step in reversed(plan.steps):
        if step.key in needed:
            needed.update(call_keys((step.args, step.kwargs), calls))
    unused = sorted(calls - needed)
    if unused:
        return f"a call's result is not used by the output ({', '.join(unused)})"
    return None


def lane_deployments(app: ir.AppIR) -> tuple[str, ...]:
    """The deployments one lane holds a replica of: those the plan calls, in plan order."""
    assert app.plan is not None
    seen: dict[str, None] = {}
    for step in app.plan.steps:
        if step.deployment is not None and step.kind not in (ir.INPUT_ATTR, ir.OUTPUT):
            seen.setdefault(step.deployment)
    return tuple(seen)
