"""The compiler's passes, in the order they run: capture -> graph -> name -> options -> check -> lower.

Each pass is a module of its own; this is the one place their order is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..dsl.nodes import DAGNode
from ..errors import Diagnostic, raise_diagnostics
from .checks import CheckContext, run_checks
from .compiled import CompiledGraph
from .config.app import AppInfo, find_import_path
from .passes.capture import capture
from .passes.graph import build_graph
from .passes.lower import lower
from .passes.naming import name_deployments
from .passes.options import resolve_options


def compile(
    app: DAGNode,
    *,
    cluster_resources: dict[str, float] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
    strict: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> CompiledGraph:
    """Compile a bound graph into a checked CompiledGraph.

    Args:
        app: the graph's output node (what ``serve.run`` takes).
        cluster_resources: resources free for this app; None skips the resource check.
        serializer: how bound arguments are sent to replicas (default: cloudpickle).
        strict: raise on errors (default); False returns them in ``.diagnostics``.
        overrides: option overrides by deployment name (from a deploy config).

    Raises:
        GraphError: a subclass for the first error found; ``.diagnostics`` has them all.
    """
    captured = capture(app)
    graph = build_graph(captured)
    names = name_deployments(captured)
    options = resolve_options(captured, names, overrides)
    diagnostics: list[Diagnostic] = run_checks(
        captured, graph, CheckContext(cluster_resources=cluster_resources, serializer=serializer, options=options)
    )
    if strict:
        raise_diagnostics(diagnostics)
    elif any(d.code == "cycle" for d in diagnostics):
        # A cyclic graph cannot be ordered, so there is nothing to lower.
        return CompiledGraph(graph=graph, ir=None, diagnostics=tuple(diagnostics))  # type: ignore[arg-type]
    return CompiledGraph(
        graph=graph,
        ir=lower(captured, graph, names, options),
        diagnostics=tuple(diagnostics),
        names=names,
        app=AppInfo(import_path=find_import_path(app)),
    )
