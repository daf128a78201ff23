"""Pass 3, checks: whole-graph problems, each a Diagnostic at the user's ``.bind()`` line.

Every check is a function ``(captured, graph, context) -> list[Diagnostic]``;
``CHECKS`` lists them in the order they run. All run, so the user sees every
problem at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import networkx as nx

from ..dsl.nodes import DeploymentNode, FunctionNode
from ..errors import Diagnostic
from . import ir
from .capture import Captured
from .check_code import check_annotations, check_handle_calls
from .check_options import check_generator_nodes, check_option_values, check_unbound_deployments, check_user_config
from .naming import key_order


@dataclasses.dataclass(frozen=True)
class CheckContext:
    """What checks may know beyond the graph: the cluster's resources, if known."""

    #: Resources free for this application (e.g. ``{"CPU": 2.0}``); None skips the check.
    cluster_resources: dict[str, float] | None = None
    serializer: Callable[[Any], bytes] | None = None
    #: Final options by node key (config overrides applied); default: the code's.
    options: dict[str, Any] | None = None


def _diag(code: str, record: ir.NodeIR, message: str) -> Diagnostic:
    site = record.call_site
    return Diagnostic(code=code, message=message, file=site.file, line=site.line, col=site.col or None, node=record.label)


def check_cycles(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return []
    keys = [u for u, _ in cycle]
    # Nodes of one deployment share a label, so each step also says where it was bound.
    path = " -> ".join(f"{captured.nodes[k].label} ({captured.nodes[k].call_site})" for k in keys + keys[:1])
    first = captured.nodes[keys[0]]
    return [
        _diag(
            "cycle",
            first,
            f"{first.label}: the graph has a cycle: {path}. A node cannot depend on its own output; "
            "a bound argument list was probably changed after .bind(). Build each node from nodes "
            "made before it.",
        )
    ]


def check_single_input(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    root = captured.nodes[captured.root]
    if root.kind == ir.DRIVER and root.args and isinstance(root.args[0], dict):
        # DAGDriver.bind({route: graph}): each route's graph has its own input, as in Ray Serve.
        out = []
        for marker in root.args[0].values():
            key = getattr(marker, "key", None) or getattr(marker, "deployment", None)
            if key in graph:
                out.extend(_single_input([captured.nodes[k] for k in nx.ancestors(graph, key) | {key}]))
        return out
    return _single_input(list(captured.nodes.values()))


def _single_input(records: list[ir.NodeIR]) -> list[Diagnostic]:
    inputs = sorted((r for r in records if r.kind == ir.INPUT), key=lambda r: key_order(r.key))
    if len(inputs) <= 1:
        return []
    sites = ", ".join(str(r.call_site) for r in inputs)
    return [
        _diag(
            "input-node",
            inputs[1],
            f"the graph uses {len(inputs)} InputNodes (made at {sites}); a graph has one input. "
            "Use a single `with InputNode() as inp:` and take parts of it with inp[0], inp['key'].",
        )
    ]


def check_reaches_output(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    out = []
    for node in captured.dangling:
        site = node._call_site
        out.append(
            Diagnostic(
                code="unreachable",
                message=f"{node._label()} is computed from the InputNode but never reaches the output; "
                "pass it to a node that does (or to MultiOutputNode), or remove it.",
                file=site.file,
                line=site.line,
                node=node._label(),
            )
        )
    return out


def check_constructor_args(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    """A constructor runs once per replica, so it can take handles and values, not per-request nodes."""
    out = []
    for record in captured.nodes.values():
        if record.kind != ir.DEPLOYMENT:
            continue
        for marker in ir.iter_markers((record.args, record.kwargs)):
            if isinstance(marker, ir.Ref):
                upstream = captured.nodes[marker.key]
                hint = ""
                if upstream.kind == ir.METHOD:
                    hint = (
                        " (a method node passed to a constructor becomes a handle to that method only when "
                        "bound with no arguments, as in Ray Serve)"
                    )
                out.append(
                    _diag(
                        "bind-arguments",
                        record,
                        f"{record.label}.bind() got {upstream.label} (bound at {upstream.call_site}) "
                        "as a constructor argument, but it only has a value per request. A constructor "
                        "takes plain values and other deployments (which become handles); pass "
                        f"{upstream.label} to a method instead: {record.label}.bind(...).method.bind(...)" + hint + ".",
                    )
                )
    return out


def _default_serializer(value: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(value)


def check_serializable(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    dumps = ctx.serializer or _default_serializer
    out = []
    code_checked: set[int] = set()  # a class bound many times is pickled once
    for key, record in captured.nodes.items():
        source = captured.sources[key]
        values: list[tuple[str, Any]] = [(str(i), a) for i, a in enumerate(source._bound_args)]
        values += list(source._bound_kwargs.items())
        for label, value in values:
            try:
                dumps(_strip_nodes(value))
            except Exception as exc:  # any failure to pickle is the user's to fix
                out.append(
                    _diag(
                        "serialization",
                        record,
                        f"{record.label}.bind(): argument {label} ({type(value).__name__}) cannot be "
                        f"serialized to send to a replica: {type(exc).__name__}: {exc}. Bind something "
                        "picklable instead (e.g. a path or config) and create the object in the "
                        "deployment's constructor.",
                    )
                )
        if isinstance(source, (DeploymentNode, FunctionNode)) and id(source._deployment.func_or_class) not in code_checked:
            code_checked.add(id(source._deployment.func_or_class))
            try:
                dumps(source._deployment.func_or_class)
            except Exception as exc:
                out.append(
                    _diag(
                        "serialization",
                        record,
                        f"{record.label}: the deployment's code cannot be serialized to send to a "
                        f"replica: {type(exc).__name__}: {exc}. Define it at module level and avoid "
                        "capturing locks, sockets or open files in globals it uses.",
                    )
                )
    return out


def _strip_nodes(value: Any) -> Any:
    from ..dsl.nodes import DAGNode

    if isinstance(value, DAGNode):
        return None
    if isinstance(value, list):
        return [_strip_nodes(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_strip_nodes(v) for v in value)
    if isinstance(value, dict):
        return {_strip_nodes(k): _strip_nodes(v) for k, v in value.items()}
    from ..dsl.nodes import is_user_object, iter_nodes

    if is_user_object(value) and any(True for _ in iter_nodes(value)):
        from .capture import object_template

        return object_template(value, lambda node: None)  # pickled without its nodes, or left to fail
    return value


def resource_table(captured: Captured, final: dict[str, Any] | None = None) -> list[tuple[str, str, int, dict[str, float]]]:
    """(label, call site, replicas, resources per replica) for every deployment."""
    rows = []
    for key, record in captured.nodes.items():
        source = captured.sources.get(key)
        if not isinstance(source, (DeploymentNode, FunctionNode)):
            continue
        options = (final or {}).get(key) or source._deployment.deployment_options
        actor = options.actor_options()
        per = {"CPU": float(actor.get("num_cpus", 0) or 0), "GPU": float(actor.get("num_gpus", 0) or 0)}
        for name, amount in (actor.get("resources") or {}).items():
            per[name] = float(amount)
        rows.append((record.label, str(record.call_site), options.replicas(), per))
    return rows


def format_resource_table(rows: list[tuple[str, str, int, dict[str, float]]], have: dict[str, float], names: list[str]) -> str:
    header = ["deployment", "bound at", "replicas"] + [f"{n}/replica" for n in names] + [f"{n} total" for n in names]
    body = []
    for label, site, replicas, per in rows:
        body.append(
            [label, site, str(replicas)]
            + [f"{per.get(n, 0):g}" for n in names]
            + [f"{per.get(n, 0) * replicas:g}" for n in names]
        )
    totals = {n: sum(per.get(n, 0) * r for _, _, r, per in rows) for n in names}
    body.append(["total asked", "", ""] + [""] * len(names) + [f"{totals[n]:g}" for n in names])
    body.append(["cluster has", "", ""] + [""] * len(names) + [f"{have.get(n, 0):g}" for n in names])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header] + body]
    return "\n".join(lines)


def check_resources(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    have = ctx.cluster_resources
    if have is None:
        return []
    rows = resource_table(captured, ctx.options)
    names = sorted({n for *_, per in rows for n, amount in per.items() if amount > 0})
    short = [
        n for n in names if sum(per.get(n, 0) * r for _, _, r, per in rows) > have.get(n, 0) + 1e-9
    ]
    if not short:
        return []
    table = format_resource_table(rows, have, names)
    biggest = max(rows, key=lambda row: sum(row[3].get(n, 0) * row[2] for n in short))
    record = next(r for r in captured.nodes.values() if r.label == biggest[0])
    return [
        _diag(
            "resources",
            record,
            f"the graph asks for more {', '.join(short)} than the cluster has, so some replicas could "
            f"never be placed:\n{table}\nLower num_replicas or ray_actor_options, start Ray with more "
            "resources, or pass resource_check=False (--no-resource-check) on a cluster that grows.",
        )
    ]


#: Checks in the order they run.
CHECKS: tuple[Callable[[Captured, nx.DiGraph, CheckContext], list[Diagnostic]], ...] = (
    check_cycles,
    check_single_input,
    check_reaches_output,
    check_constructor_args,
    check_serializable,
    check_resources,
    check_option_values,
    check_user_config,
    check_unbound_deployments,
    check_generator_nodes,
    check_handle_calls,
    check_annotations,
)


def run_checks(captured: Captured, graph: nx.DiGraph, ctx: CheckContext) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for check in CHECKS:
        out.extend(check(captured, graph, ctx))
    return out
