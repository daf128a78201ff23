"""Pass 2, graph: the edges between captured nodes, pointing downstream.

Each edge has a ``kind`` (data, handle, target) and a ``label`` (the argument
position or keyword it feeds). The networkx DiGraph that checks and
``CompiledGraph.graph`` use is derived from these (:func:`..context.to_networkx`).
"""

from __future__ import annotations

import dataclasses

from .. import ir
from ..context import PassContext


def _edge_labels(record: ir.NodeIR) -> list[tuple[str, str, str]]:
    """(upstream key, edge kind, label) for every marker in the node's arguments."""
    out = []
    if record.kind == ir.METHOD and record.deployment is not None:
        out.append((record.deployment, ir.TARGET_EDGE, "self"))
    positional = [(str(i), a) for i, a in enumerate(record.args)]
    if record.route is not None:  # a routing node's edges say which value or branch they are
        first = 0 if record.route.mode == ir.BY_WEIGHT else 1
        positional = [("value", a) for a in record.args[:first]]
        positional += [(record.route.edge_label(i), a) for i, a in enumerate(record.args[first:])]
    keyword = [(k, v) for k, v in record.kwargs]
    for label, value in positional + keyword:
        for marker in ir.iter_markers(value):
            if isinstance(marker, ir.HandleRef):
                out.append((marker.deployment, ir.HANDLE_EDGE, label))
            else:
                out.append((marker.key, ir.DATA_EDGE, label))
    return out


def build_edges(app: ir.AppIR, ctx: PassContext) -> ir.AppIR:
    """The pass: ``app`` with its edges, one per pair of nodes, sorted by (source, target) key.

    Sorted, so an IR read back from JSON equals the compiled one; each node's successors stay in
    key order, as networkx walks them (which cycle ``find_cycle`` reports first depends on it).
    """
    edges: dict[tuple[str, str], ir.EdgeIR] = {}
    for record in app.nodes:
        for upstream, kind, label in _edge_labels(record):
            previous = edges.get((upstream, record.key))
            if previous is not None:
                edges[upstream, record.key] = dataclasses.replace(previous, label=f"{previous.label},{label}")
            else:
                edges[upstream, record.key] = ir.EdgeIR(upstream, record.key, kind, label)
    ordered = sorted(edges.values(), key=lambda e: (ir.key_order(e.source), ir.key_order(e.target)))
    return dataclasses.replace(app, edges=tuple(ordered))
