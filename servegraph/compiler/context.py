"""What passes and checks may know beyond the IR: the cluster, the serializer, a config's overrides.

Also derives the networkx view of an IR once per set of edges, so the checks that need graph
algorithms (cycles, ancestors) share one graph instead of each building their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import networkx as nx

from .ir import AppIR


def to_networkx(app: AppIR) -> nx.DiGraph:
    """The IR as a networkx DiGraph: nodes keyed ``n0, n1, ...`` with their NodeIR as ``ir``;
    edges with ``kind`` (data, handle, target) and ``label``; the root key as ``graph.graph["root"]``."""
    graph = nx.DiGraph(root=app.root)
    for record in app.nodes:
        graph.add_node(record.key, ir=record)
    for edge in app.edges:
        graph.add_edge(edge.source, edge.target, kind=edge.kind, label=edge.label)
    return graph


@dataclasses.dataclass(frozen=True)
class PassContext:
    """Settings of one compilation, shared by every pass and check (TVM's ``PassContext``)."""

    #: Resources free for this application (e.g. ``{"CPU": 2.0}``); None skips the resource check.
    cluster_resources: Mapping[str, float] | None = None
    #: Each alive node's total resources; None skips the check that every placement group fits some nodes.
    cluster_nodes: tuple[Mapping[str, float], ...] | None = None
    #: How bound arguments are sent to replicas (default: cloudpickle).
    serializer: Callable[[Any], bytes] | None = None
    #: Option overrides by final deployment name (from a deploy config).
    overrides: Mapping[str, Mapping[str, Any]] | None = None
    #: Split weights by split name, then branch (from a deploy config's plan driver entry).
    weights: Mapping[str, Mapping[str, int]] | None = None
    #: The application's logging_config (``serve.run(logging_config=)``, a config's application or top level):
    #: every deployment that sets none gets it.
    logging_config: Any = None
    #: The last graph derived, with the nodes and edges it was derived from (held, so ids stay unique).
    _graph: list[tuple[Any, Any, nx.DiGraph]] = dataclasses.field(default_factory=list, compare=False, repr=False)

    def graph(self, app: AppIR) -> nx.DiGraph:
        """The networkx view of ``app``, built once for as long as its nodes and edges stay the same."""
        if self._graph and self._graph[0][0] is app.nodes and self._graph[0][1] is app.edges:
            return self._graph[0][2]
        graph = to_networkx(app)
        self._graph[:] = [(app.nodes, app.edges, graph)]
        return graph


#: The name the checks have always used for their context.
CheckContext = PassContext
