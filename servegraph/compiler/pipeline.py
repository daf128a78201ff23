"""The compiler's passes, in the order they run: capture -> graph -> check -> name -> lower.

Each pass is a module of its own; this is the one place their order is written.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..dsl.nodes import DAGNode
from ..errors import Diagnostic, raise_diagnostics
from .capture import capture
from .checks import CheckContext, run_checks
from .compiled import CompiledGraph
from .graph import build_graph
from .lower import lower
from .naming import name_deployments


def compile(
    app: DAGNode,
    *,
    cluster_resources: Optional[dict[str, float]] = None,
    serializer: Optional[Callable[[Any], bytes]] = None,
    strict: bool = True,
) -> CompiledGraph:
    """Compile a bound graph into a checked CompiledGraph.

    Args:
        app: the graph's output node (what ``serve.run`` takes).
        cluster_resources: resources free for this app; None skips the resource check.
        serializer: how bound arguments are sent to replicas (default: cloudpickle).
        strict: raise on errors (default); False returns them in ``.diagnostics``.

    Raises:
        GraphError: a subclass for the first error found; ``.diagnostics`` has them all.
    """
    captured = capture(app)
    graph = build_graph(captured)
    diagnostics: list[Diagnostic] = run_checks(
        captured, graph, CheckContext(cluster_resources=cluster_resources, serializer=serializer)
    )
    if strict:
        raise_diagnostics(diagnostics)
    elif any(d.code == "cycle" for d in diagnostics):
        # A cyclic graph cannot be ordered, so there is nothing to lower.
        return CompiledGraph(graph=graph, ir=None, diagnostics=tuple(diagnostics))  # type: ignore[arg-type]
    names = name_deployments(captured)
    return CompiledGraph(graph=graph, ir=lower(captured, graph, names), diagnostics=tuple(diagnostics), names=names)
