"""An application's IR without the user's code or values: what a diagram draws, readable anywhere.

The controller holds each application's :class:`~servegraph.compiler.ir.AppIR`, whose records carry
the user's classes, functions, bound arguments, predicates and ``user_config``. Sent as it is, it
unpickles only in a process that can import the user's modules (and loads them there: a model
library, say). The live graph view (the HTTP proxy's ``/-/graph`` page, ``servegraph status --graph``
from any directory) needs only the shape: node kinds, names, methods, edges, options. :func:`outline`
keeps that and drops the rest, so its result unpickles with servegraph alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import ir


def _markers(value: Any) -> tuple[Any, ...]:
    """Only the graph markers of bound arguments, in their order (where a MultiOutputNode puts each)."""
    return tuple(ir.iter_markers(value))


def _options(options: Any) -> Any:
    # user_config is the user's value; everything else in the options is servegraph's own types.
    if options is None or options.user_config is None:
        return options
    return options.model_copy(update={"user_config": None})


def _route(route: ir.RouteIR | None) -> ir.RouteIR | None:
    # A switch's keys may be the user's values and its predicates are their functions: a diagram draws labels.
    if route is None or route.mode == ir.BY_WEIGHT:
        return route
    return dataclasses.replace(route, choices=route.labels[: len(route.choices)])


def _node(record: ir.NodeIR) -> ir.NodeIR:
    return dataclasses.replace(
        record,
        args=_markers(record.args),
        kwargs=tuple((k, m) for k, v in record.kwargs for m in _markers(v)),
        target=None,
        options=_options(record.options),
        route=_route(record.route),
    )


def _deployment(dep: ir.DeploymentIR) -> ir.DeploymentIR:
    # class_name falls back to the import path's last part, which names the same class or function.
    return dataclasses.replace(dep, target=None, init_args=(), init_kwargs=(), options=_options(dep.options))


#: What stands in for a plan: a diagram asks only whether the graph has one.
_NO_STEPS = ir.Plan(input=None, steps=(), output=None)


def outline(app: ir.AppIR) -> ir.AppIR:
    """``app`` with no user code or value left in it: the nodes, edges, names and options a diagram draws.

    >>> from servegraph.compiler.ir import AppIR
    >>> outline(AppIR(nodes=())).nodes
    ()
    """
    return dataclasses.replace(
        app,
        nodes=tuple(_node(n) for n in app.nodes),
        deployments=tuple(_deployment(d) for d in app.deployments),
        plan=_NO_STEPS if app.plan is not None else None,
        routes=tuple((route, _NO_STEPS) for route, _ in app.routes),
        http_adapter=None,
        unreachable=(),
    )


__all__ = ["outline"]
