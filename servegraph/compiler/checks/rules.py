"""Pass 5, checks: whole-graph problems, each a Diagnostic at the user's ``.bind()`` line.

Every check is a function ``(ir, context) -> list[Diagnostic]`` reading only the IR;
``servegraph.compiler.checks.CHECKS`` lists them in the order they run. All run, so the user sees every
problem at once. They run after naming, so they speak of deployments by their
final names (``A``, ``A_1``) and point at the right ``.bind()`` of each.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from ..._walk import any_leaf
from ...errors import Diagnostic
from .. import ir
from ..context import PassContext
from ..ir import key_order


def _diag(code: str, record: ir.NodeIR, summary: str, hint: str | None = None, **fields: Any) -> Diagnostic:
    """A diagnostic at ``record``'s ``.bind()`` line, about it (by its final name, for a deployment);
    ``fields`` are the Diagnostic's others (``got``, ``expected``, ``severity``)."""
    site = record.call_site
    return Diagnostic(
        code,
        summary,
        file=site.file,
        line=site.line,
        col=site.col or None,
        subject=record.name or record.label,
        hint=hint,
        **fields,
    )


def check_cycles(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    graph = ctx.graph(app)
    # A topological sort proves a graph acyclic in linear time; find_cycle's edge walk is quadratic on
    # graphs that fan out and back in (60 s at 10,000 nodes), so it runs only to name a cycle there is.
    if nx.is_directed_acyclic_graph(graph):
        return []
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return []
    keys = [u for u, _ in cycle]
    # Nodes of one deployment share a label, so each step also says where it was bound.
    path = " -> ".join(f"{app.node(k).label} ({app.node(k).call_site})" for k in keys + keys[:1])
    first = app.node(keys[0])
    return [
        _diag(
            "cycle",
            first,
            f"{first.label}: the graph has a cycle: {path}. A node cannot depend on its own output; "
            "a bound argument list was probably changed after .bind().",
            "Build each node from nodes made before it.",
        )
    ]


def check_single_input(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    root = app.node(app.root)
    graph = ctx.graph(app)
    if root.kind == ir.DRIVER and root.args and isinstance(root.args[0], dict):
        # DAGDriver.bind({route: graph}): each route's graph has its own input, as in Ray Serve.
        out = []
        for marker in root.args[0].values():
            key = getattr(marker, "key", None) or getattr(marker, "deployment", None)
            if key in graph:
                out.extend(_single_input([app.node(k) for k in nx.ancestors(graph, key) | {key}]))
        return out
    return _single_input(list(app.nodes))


def _single_input(records: list[ir.NodeIR]) -> list[Diagnostic]:
    inputs = sorted((r for r in records if r.kind == ir.INPUT), key=lambda r: key_order(r.key))
    if len(inputs) <= 1:
        return []
    sites = ", ".join(str(r.call_site) for r in inputs)
    return [
        _diag(
            "input-node",
            inputs[1],
            f"the graph uses {len(inputs)} InputNodes (made at {sites}); a graph has one input.",
            "Use a single `with InputNode() as inp:` and take parts of it with inp[0], inp['key'].",
        )
    ]


def check_reaches_output(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    return [
        Diagnostic(
            "unreachable",
            f"{node.label} is computed from the InputNode but never reaches the output;",
            file=node.call_site.file,
            line=node.call_site.line,
            subject=node.label,
            hint="pass it to a node that does (or to MultiOutputNode), or remove it.",
        )
        for node in app.unreachable
    ]


def check_constructor_args(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """A constructor runs once per replica, so it can take handles and values, not per-request nodes."""
    out = []
    for record in app.nodes:
        if record.kind != ir.DEPLOYMENT:
            continue
        for marker in ir.iter_markers((record.args, record.kwargs)):
            if isinstance(marker, ir.Ref):
                upstream = app.node(marker.key)
                why = ""
                if upstream.kind == ir.METHOD:
                    why = (
                        " (a method node passed to a constructor becomes a handle to that method only when "
                        "bound with no arguments, as in Ray Serve)"
                    )
                out.append(
                    _diag(
                        "bind-arguments",
                        record,
                        f"{record.label}.bind() got {upstream.label} (bound at {upstream.call_site}) "
                        "as a constructor argument, but it only has a value per request.",
                        "A constructor takes plain values and other deployments (which become handles); pass "
                        f"{upstream.label} to a method instead: {record.label}.bind(...).method.bind(...)" + why + ".",
                    )
                )
    return out


def _default_serializer(value: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(value)


#: Leaves cloudpickle always handles: builtin scalars and the IR's own markers.
_PLAIN = frozenset({str, int, float, bool, bytes, type(None), ir.Ref, ir.HandleRef})


def _not_plain(leaf: Any) -> bool:
    return type(leaf) not in _PLAIN


def check_serializable(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """Bound arguments and deployment code must pickle to reach replicas.

    Arguments are checked as capture recorded them: graph nodes already replaced by markers (which
    pickle), user objects holding nodes as templates, or left as they were when they cannot pickle.
    """
    dumps = ctx.serializer or _default_serializer
    out = []
    code_checked: set[int] = set()  # a class bound many times is pickled once
    for record in app.nodes:
        if record.kind == ir.INPUT_ATTR:
            continue  # its argument is the marker of the node it reads from
        values: list[tuple[str, Any]] = [(str(i), a) for i, a in enumerate(record.args)]
        values += list(record.kwargs)
        for label, value in values:
            if ctx.serializer is None and not any_leaf(value, _not_plain):
                continue  # plain data and markers always pickle (a graph of 10,000 nodes skips 10,000 dumps)
            try:
                dumps(value)
            except Exception as exc:  # any failure to pickle is the user's to fix
                out.append(
                    _diag(
                        "serialization",
                        record,
                        f"{record.label}.bind(): argument {label} ({type(value).__name__}) cannot be "
                        f"serialized to send to a replica: {type(exc).__name__}: {exc}.",
                        "Bind something picklable instead (e.g. a path or config) and create the object in the "
                        "deployment's constructor.",
                    )
                )
        if record.is_deployment and id(record.target) not in code_checked:
            code_checked.add(id(record.target))
            try:
                dumps(record.target)
            except Exception as exc:
                out.append(
                    _diag(
                        "serialization",
                        record,
                        f"{record.label}: the deployment's code cannot be serialized to send to a "
                        f"replica: {type(exc).__name__}: {exc}.",
                        "Define it at module level and avoid capturing locks, sockets or open files in globals it uses.",
                    )
                )
    return out
