"""Checks of options and wiring that Ray Serve accepts at ``.bind()`` but that fail (or do nothing)
only once replicas run: a ``user_config`` nothing can receive, a queue that takes nothing, a
deployment passed unbound, a generator a graph cannot stream.

Options are the final ones (a deploy config's overrides applied), so a mistake made in a config is
caught as one made in code. Already refused elsewhere, and not repeated here: ``num_replicas`` with
``autoscaling_config`` and ``min_replicas > max_replicas`` (``dsl/options.py``), a per-request value
passed to a constructor (``rules.check_constructor_args``), an empty ``MultiOutputNode`` (its
constructor), route prefixes (``_validation.route_prefix_problem``).

Each check is ``(app, ctx) -> list[Diagnostic]`` reading the IR only (``record.options`` are final
after the options pass), registered in ``checks.CHECKS``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator

from ..._walk import iter_leaves
from ...dsl.deployment import Deployment
from ...dsl.options import DeploymentOptions
from ...dsl.signature import bind_problem
from ...errors import Diagnostic
from .. import ir
from ..context import PassContext
from .rules import _diag


def _deployments(app: ir.AppIR) -> Iterator[tuple[ir.NodeIR, DeploymentOptions]]:
    """(record, final options) of every deployment and function node."""
    for record in app.nodes:
        if record.is_deployment and record.options is not None:
            yield record, record.options


def check_option_values(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """``max_queued_requests: 0`` (Ray Serve refuses it) and ``max_ongoing_requests`` below the
    autoscaler's ``target_ongoing_requests`` (it then never scales; Ray Serve logs a warning)."""
    out = []
    for record, options in _deployments(app):
        if options.max_queued_requests == 0:
            out.append(
                _diag(
                    "option-value",
                    record,
                    f"{record.label}: max_queued_requests is 0, which Ray Serve refuses",
                    "set it to -1 or at least 1.",
                    expected="-1 (no limit, the default) or a positive number of requests a handle may queue",
                )
            )
        auto = options.autoscaling_config
        if auto is not None and options.max_ongoing_requests < auto.target_ongoing_requests:
            out.append(
                _diag(
                    "option-value",
                    record,
                    f"{record.label}: max_ongoing_requests ({options.max_ongoing_requests}) is below "
                    f"autoscaling_config.target_ongoing_requests ({auto.target_ongoing_requests:g}), so a "
                    "replica never gets as busy as the target and the deployment never scales up.",
                    "Raise max_ongoing_requests or lower target_ongoing_requests.",
                    severity="warning",
                )
            )
    return out


def _ingress_keys(app: ir.AppIR) -> set[str]:
    """Node keys of the deployment that is the application's ingress (as lowering will choose it), if any."""
    root = next((r for r in app.nodes if r.key == app.root), None)
    if root is None:
        return set()
    if root.kind == ir.DEPLOYMENT or root.kind == ir.FUNCTION:
        return {root.key}
    if root.kind == ir.DRIVER and root.args and isinstance(root.args[0], (ir.Ref, ir.HandleRef)):
        # DAGDriver.bind(Model.bind()): the deployment is the application (lowering makes the Ref a HandleRef).
        wrapped = root.args[0].key if isinstance(root.args[0], ir.Ref) else root.args[0].deployment
        return {r.key for r in app.nodes if r.is_deployment and wrapped in (r.key, r.name)}
    return set()


def check_route_prefixes(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """A ``route_prefix`` option is the application's: only its ingress deployment may set it (Ray Serve 2.0-2.6
    refused it elsewhere; 2.7 on has no such deployment option)."""
    ingress = _ingress_keys(app)
    return [
        _diag(
            "option-value",
            record,
            f"{record.label}: route_prefix {options.route_prefix!r} is set on a deployment that is not the "
            "application's ingress (Route prefix is only configurable on the ingress deployment)",
            "remove it, or give the application its prefix: serve.run(app, route_prefix=...) (or the ingress's "
            "route_prefix option).",
            got=f"route_prefix={options.route_prefix!r}",
            expected="route_prefix on the ingress deployment (the graph's output, or a DAGDriver) only",
        )
        for record, options in _deployments(app)
        if options.route_prefix is not None and record.key not in ingress
    ]


def check_user_config(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """A ``user_config`` needs a class with ``reconfigure(self, config)`` and must be JSON
    (replicas fail to start otherwise; Ray Serve refuses one that is not JSON)."""
    out = []
    for record, options in _deployments(app):
        config = options.user_config
        if config is None:
            continue
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            out.append(
                _diag(
                    "option-value",
                    record,
                    f"{record.label}: user_config is not JSON-serializable ({exc}), and Ray Serve sends it as JSON.",
                    "Use plain data (dicts, lists, strings, numbers, booleans, None).",
                )
            )
        target = record.target
        if record.kind == ir.FUNCTION:
            out.append(
                _diag(
                    "option-value",
                    record,
                    f"{record.label}: user_config is set on a function deployment, which has no reconfigure() "
                    "to receive it;",
                    "make it a class with a reconfigure(self, config) method, or drop user_config.",
                )
            )
            continue
        if not inspect.isclass(target):
            continue
        reconfigure = getattr(target, "reconfigure", None)
        if reconfigure is None or not callable(reconfigure):
            out.append(
                _diag(
                    "option-value",
                    record,
                    f"{record.label}: user_config is set but {target.__name__} has no reconfigure method, so its "
                    "replicas fail to start.",
                    "Add `def reconfigure(self, config): ...` (called with the user_config at start and on every "
                    "change), or drop user_config.",
                )
            )
            continue
        drop_self = not inspect.ismethod(reconfigure) and not isinstance(
            inspect.getattr_static(target, "reconfigure", None), staticmethod
        )
        problem = bind_problem(reconfigure, (config,), {}, drop_self=drop_self)
        if problem is not None:
            out.append(
                _diag(
                    "option-value",
                    record,
                    f"{record.label}: {target.__name__}.reconfigure is called with the user_config, but "
                    f"{problem.text};",
                    "give it a parameter for it: `def reconfigure(self, config): ...`.",
                )
            )
    return out


def check_unbound_deployments(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """``Ensemble.bind(Model)`` where ``Ensemble.bind(Model.bind(...))`` was meant: the replica would
    get the deployment object, not a handle."""
    out = []
    for record in app.nodes:
        for place, value in [(str(i), a) for i, a in enumerate(record.args)] + list(record.kwargs):
            for found in iter_leaves(value):
                if isinstance(found, Deployment):
                    where = f"argument {place}" if place.isdigit() else f"{place}="
                    name = found.name
                    out.append(
                        _diag(
                            "bind-arguments",
                            record,
                            f"{where} is the deployment {name} itself, not a bound node, so the replica would "
                            "get no handle to call",
                            "bind it first (with its constructor's arguments) and pass that.",
                            call=f"{record.label}.bind()",
                            expected=f"a bound node: {name}.bind(...)",
                        )
                    )
    return out


def check_generator_nodes(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """A generator method (or function) as a graph node: its value would be a generator, which a
    graph cannot pass on; only a handle with ``.options(stream=True)`` reads one."""
    out = []
    graph = None
    for record in app.nodes:
        if record.kind == ir.METHOD and record.deployment is not None and record.method is not None:
            cls = app.node(record.deployment).target
            fn = getattr(cls, record.method, None) if inspect.isclass(cls) else None
        elif record.kind == ir.FUNCTION and (record.args or record.kwargs or record.key != app.root):
            fn = record.target  # (a function bound with nothing as the output is an ingress: HTTP may stream it)
        else:
            continue
        if fn is None or not (inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn)):
            continue
        # Only nodes whose value flows somewhere: a method node given to a constructor is a handle.
        if graph is None:
            graph = ctx.graph(app)
        runs = record.key == app.root or any(kind == ir.DATA_EDGE for _, _, kind in graph.out_edges(record.key, data="kind"))
        if not runs:
            continue
        kind = "an async generator" if inspect.isasyncgenfunction(fn) else "a generator"
        out.append(
            _diag(
                "streaming",
                record,
                f"{record.label} is {kind} (it yields), but as a graph node its result is passed on as one "
                "value, and a generator cannot be.",
                "Return the whole result instead, or pass the deployment to a constructor and read it through "
                "handle.options(stream=True) "
                f"(`async for x in self.handle.options(stream=True).{record.method or '__call__'}.remote(...)`).",
            )
        )
    return out
