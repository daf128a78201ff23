"""Pass 2, graph: the captured nodes as a networkx DiGraph, edges pointing downstream.

Each node carries its NodeIR as ``ir``; each edge a ``kind`` (data, handle,
target) and a ``label`` (the argument position or keyword it feeds).
"""

from __future__ import annotations

import networkx as nx

from .. import ir
from .capture import Captured


def _edge_labels(record: ir.NodeIR) -> list[tuple[str, str, str]]:
    """(upstream key, edge kind, label) for every marker in the node's arguments."""
    out = []
    if record.kind == ir.METHOD and record.deployment is not None:
        out.append((record.deployment, ir.TARGET_EDGE, "self"))
    positional = [(str(i), a) for i, a in enumerate(record.args)]
    keyword = [(k, v) for k, v in record.kwargs]
    for label, value in positional + keyword:
        for marker in ir.iter_markers(value):
            if isinstance(marker, ir.HandleRef):
                out.append((marker.deployment, ir.HANDLE_EDGE, label))
            else:
                out.append((marker.key, ir.DATA_EDGE, label))
    return out


def build_graph(captured: Captured) -> nx.DiGraph:
    graph = nx.DiGraph(root=captured.root)
    for key, record in captured.nodes.items():
        graph.add_node(key, ir=record)
    for key, record in captured.nodes.items():
        for upstream, kind, label in _edge_labels(record):
            if graph.has_edge(upstream, key):
                previous = graph.edges[upstream, key]["label"]
                graph.edges[upstream, key]["label"] = f"{previous},{label}"
            else:
                graph.add_edge(upstream, key, kind=kind, label=label)
    return graph
