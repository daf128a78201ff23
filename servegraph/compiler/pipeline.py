"""The compiler's passes, in the order they run: capture -> graph -> name -> options -> weights -> check -> lower.

Each pass is a module of its own with one shape, ``(ir, context) -> ir`` (the
checks: ``(ir, context) -> diagnostics``); this is the one place their order is
written. Capture is the only pass that reads the user's DSL objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..dsl.nodes import DAGNode
from ..errors import raise_diagnostics
from . import ir
from .checks import run_checks
from .compiled import CompiledGraph
from .config.app import AppInfo
from .context import PassContext
from .passes.capture import capture
from .passes.graph import build_edges
from .passes.lower import lower
from .passes.naming import naming
from .passes.options import resolve_options
from .passes.weights import resolve_weights

#: The passes between capture and the checks, in order: edges, final names, final options, split weights.
PASSES: tuple[Callable[[ir.AppIR, PassContext], ir.AppIR], ...] = (build_edges, naming, resolve_options, resolve_weights)


def compile(
    app: DAGNode,
    *,
    cluster_resources: dict[str, float] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
    strict: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    weights: Mapping[str, Mapping[str, int]] | None = None,
    logging_config: Any = None,
    cluster_nodes: tuple[Mapping[str, float], ...] | None = None,
) -> CompiledGraph:
    """Compile a bound graph into a checked CompiledGraph.

    Args:
        app: the graph's output node (what ``serve.run`` takes).
        cluster_resources: resources free for this app; None skips the resource check.
        serializer: how bound arguments are sent to replicas (default: cloudpickle).
        strict: raise on errors (default); False returns them in ``.diagnostics``.
        overrides: option overrides by deployment name (from a deploy config).
        weights: split weights by split name, then branch (from a deploy config's ``DAGDriver`` entry).
        logging_config: the application's logging_config (a dict or ``LoggingConfig``), for every deployment
            that sets none of its own.
        cluster_nodes: each alive node's total resources; None skips the check that every replica's
            placement group could be placed on them.

    Raises:
        GraphError: a subclass for the first error found; ``.diagnostics`` has them all.
    """
    ctx = PassContext(
        cluster_resources=cluster_resources,
        serializer=serializer,
        overrides=overrides,
        weights=weights,
        logging_config=logging_config,
        cluster_nodes=cluster_nodes,
    )
    program = capture(app)
    for run_pass in PASSES:
        program = run_pass(program, ctx)
    diagnostics = tuple(run_checks(program, ctx))
    if strict:
        raise_diagnostics(diagnostics)
    program = lower(program, ctx)
    return CompiledGraph(ir=program, diagnostics=diagnostics, app=AppInfo(import_path=program.import_path))
