"""Pass 6, lower: the checked, named graph becomes what the runtime executes.

Fills the AppIR's deployments (dependencies first), ingress, plan and routes, and
replaces node keys in arguments by deployment names. A cyclic graph (compiled
with ``strict=False``) gets its deployments in capture order and no plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import networkx as nx

from .. import ir
from ..context import PassContext
from ..ir import key_order
from ..version import code_version


def import_path(target: Any) -> str:
    """``module:qualname`` of a class or function, as ``serve build`` writes it."""
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def _rename(names: dict[str, str], classes: set[str]):
    def fn(marker: ir.Ref | ir.HandleRef) -> ir.Ref | ir.HandleRef:
        if isinstance(marker, ir.HandleRef):
            return ir.HandleRef(names[marker.deployment], marker.method)
        if marker.key in classes:
            # A deployment passed to a method call arrives as a handle, as in Ray Serve.
            return ir.HandleRef(names[marker.key])
        return marker

    return fn


def _named_nodes(app: ir.AppIR, names: dict[str, str]) -> dict[str, ir.NodeIR]:
    classes = {r.key for r in app.nodes if r.kind == ir.DEPLOYMENT}
    rename = _rename(names, classes)
    out = {}
    for record in app.nodes:
        if record.kind == ir.INPUT_ATTR:
            out[record.key] = record  # its argument is the Ref to the node it reads from
            continue
        out[record.key] = dataclasses.replace(
            record,
            deployment=names.get(record.deployment) if record.deployment else None,
            args=ir.map_markers(record.args, rename),
            kwargs=ir.map_markers(record.kwargs, rename),
        )
    return out


def _deployments(app: ir.AppIR, graph: nx.DiGraph, names: dict[str, str], nodes: dict[str, ir.NodeIR]) -> tuple[ir.DeploymentIR, ...]:
    handles = nx.DiGraph()
    handles.add_nodes_from(names)
    for u, v, kind in graph.edges(data="kind"):
        if kind == ir.HANDLE_EDGE and u in names and v in names:
            handles.add_edge(u, v)
    if nx.is_directed_acyclic_graph(handles):
        order = list(nx.lexicographical_topological_sort(handles, key=key_order))
    else:  # strict=False on a cyclic graph: the checks said so; keep what can be shown
        order = sorted(names, key=key_order)
    out = []
    # One version per class or function, however many times it is bound (hashing reads its source).
    versions: dict[tuple[int, str | None], str] = {}
    for key in order:
        record = nodes[key]
        assert record.options is not None
        is_function = record.kind == ir.FUNCTION
        memo = (id(record.target), record.options.version)
        if memo not in versions:
            versions[memo] = code_version(record.target, record.options.version)
        out.append(
            ir.DeploymentIR(
                name=names[key],
                node=key,
                target=record.target,
                import_path=import_path(record.target),
                is_function=is_function,
                init_args=() if is_function else record.args,
                init_kwargs=() if is_function else record.kwargs,
                options=record.options,
                call_site=record.call_site,
                handles=tuple(names[u] for u in sorted(handles.predecessors(key), key=key_order)),
                code_version=versions[memo],
            )
        )
    return tuple(out)


def _plan(root: str, graph: nx.DiGraph, nodes: dict[str, ir.NodeIR]) -> ir.Plan:
    per_request = {ir.INPUT, ir.INPUT_ATTR, ir.METHOD, ir.FUNCTION, ir.OUTPUT, ir.SWITCH, ir.SPLIT}
    wanted = {root} | nx.ancestors(graph, root)
    wanted = {k for k in wanted if nodes[k].kind in per_request}
    # A plain graph of the wanted part: networkx's subgraph views filter every lookup, which is
    # most of the time of ordering 10,000 nodes.
    sub = nx.DiGraph()
    sub.add_nodes_from(wanted)
    sub.add_edges_from((u, v) for u, v in graph.edges if u in wanted and v in wanted)
    steps = []
    input_key = None
    for key in nx.lexicographical_topological_sort(sub, key=key_order):
        record = nodes[key]
        if record.kind == ir.INPUT:
            input_key = key
        elif record.kind == ir.INPUT_ATTR:
            assert record.access is not None
            access, attr = record.access
            steps.append(ir.PlanStep(key=key, kind=ir.INPUT_ATTR, access=(record.args[0], access, attr)))
        elif record.kind == ir.OUTPUT:
            steps.append(ir.PlanStep(key=key, kind=ir.OUTPUT, args=record.args))
        elif record.kind in ir.ROUTING:
            steps.append(ir.PlanStep(key=key, kind=record.kind, args=record.args, route=record.route))
        else:
            steps.append(
                ir.PlanStep(
                    key=key,
                    kind="call",
                    deployment=record.deployment,
                    method=record.method or "__call__",
                    args=record.args,
                    kwargs=record.kwargs,
                )
            )
    return ir.Plan(input=input_key, steps=tuple(steps), output=ir.Ref(root))


def lower(app: ir.AppIR, ctx: PassContext) -> ir.AppIR:
    """The pass: ``app`` with deployments, ingress, plan and routes, node keys in arguments named."""
    graph = ctx.graph(app)
    names = {r.key: r.name for r in app.nodes if r.is_deployment and r.name is not None}
    nodes = _named_nodes(app, names)
    deployments = _deployments(app, graph, names, nodes)
    named = tuple(nodes[r.key] for r in app.nodes)
    if not nx.is_directed_acyclic_graph(graph):
        return dataclasses.replace(app, nodes=named, deployments=deployments)
    root = nodes[app.root]
    ingress = plan = None
    routes: tuple[tuple[str, ir.Plan], ...] = ()
    if root.kind == ir.DRIVER:
        (dag,) = root.args
        if isinstance(dag, dict):  # DAGDriver.bind({"/route": graph, ...}): one plan per route
            routes = tuple((route, _route_plan(value, graph, nodes)) for route, value in dag.items())
        elif isinstance(dag, ir.HandleRef):  # DAGDriver.bind(Model.bind()): the deployment is the app
            ingress = dag.deployment
        else:
            plan = _plan(dag.key, graph, nodes)
    elif root.kind == ir.DEPLOYMENT or (root.kind == ir.FUNCTION and not root.args and not root.kwargs):
        ingress = root.deployment
    else:
        plan = _plan(app.root, graph, nodes)
    return dataclasses.replace(app, nodes=named, deployments=deployments, ingress=ingress, plan=plan, routes=routes)


def _route_plan(value: ir.Ref | ir.HandleRef, graph: nx.DiGraph, nodes: dict[str, ir.NodeIR]) -> ir.Plan:
    """A route's plan: its graph's, or for a deployment one call of ``__call__`` with the input."""
    if isinstance(value, ir.Ref):
        return _plan(value.key, graph, nodes)
    call = ir.PlanStep(key="call", kind="call", deployment=value.deployment, method="__call__", args=(ir.Ref("input"),))
    return ir.Plan(input="input", steps=(call,), output=ir.Ref("call"))
