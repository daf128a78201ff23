"""Whole-graph checks: each a function ``(ir, context) -> list[Diagnostic]``, run in the order of ``CHECKS``."""

from __future__ import annotations

from collections.abc import Callable

from ...errors import Diagnostic
from .. import ir
from ..context import CheckContext, PassContext
from .code import check_annotations, check_handle_calls
from .options import (
    check_generator_nodes,
    check_option_values,
    check_route_prefixes,
    check_unbound_deployments,
    check_user_config,
)
from .resources import check_placement_groups, check_resources
from .routing import check_routing
from .rules import check_constructor_args, check_cycles, check_reaches_output, check_serializable, check_single_input

#: Checks in the order they run.
CHECKS: tuple[Callable[[ir.AppIR, PassContext], list[Diagnostic]], ...] = (
    check_cycles,
    check_single_input,
    check_reaches_output,
    check_constructor_args,
    check_serializable,
    check_resources,
    check_placement_groups,
    check_option_values,
    check_route_prefixes,
    check_user_config,
    check_unbound_deployments,
    check_generator_nodes,
    check_handle_calls,
    check_annotations,
    check_routing,
)


def run_checks(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """Every check's diagnostics, in ``CHECKS`` order: all run, so the user sees every problem at once."""
    out: list[Diagnostic] = []
    for check in CHECKS:
        out.extend(check(app, ctx))
    return out


__all__ = ["CHECKS", "CheckContext", "PassContext", "run_checks"]
