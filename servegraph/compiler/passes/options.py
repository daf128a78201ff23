"""Pass 4, options: each deployment's final options, with a deploy config's overrides applied, and the
application's logging_config given to every deployment that sets none (deployment-level wins, as in Ray Serve).

Runs after naming because a config names deployments by their final names.
"""

from __future__ import annotations

import dataclasses

from ..._validation import did_you_mean
from ...dsl.options import make_options
from ...errors import ConfigError
from .. import ir
from ..context import PassContext


def resolve_options(app: ir.AppIR, ctx: PassContext) -> ir.AppIR:
    """The pass: ``app`` with ``ctx.overrides`` (by deployment name) applied to its deployments' options.

    Raises:
        ConfigError: an override names a deployment the graph does not have.
    """
    return _app_logging_config(_overridden(app, ctx), ctx)


def _app_logging_config(app: ir.AppIR, ctx: PassContext) -> ir.AppIR:
    if ctx.logging_config is None:
        return app
    nodes = []
    for record in app.nodes:
        if record.is_deployment and record.options is not None and record.options.logging_config is None:
            record = dataclasses.replace(record, options=make_options(record.options, logging_config=ctx.logging_config))
        nodes.append(record)
    return dataclasses.replace(app, nodes=tuple(nodes))


def _overridden(app: ir.AppIR, ctx: PassContext) -> ir.AppIR:
    if not ctx.overrides:
        return app
    by_name = {n.name: n.key for n in app.nodes if n.is_deployment and n.name is not None}
    changed: dict[str, ir.NodeIR] = {}
    for name, values in ctx.overrides.items():
        found = by_name.get(name)
        if found is None:
            raise ConfigError(
                f"the config overrides deployment {name!r}, which the graph does not have"
                + did_you_mean(name, by_name)
                + f" Its deployments: {', '.join(sorted(by_name))}."
            )
        record = app.node(found)
        assert record.options is not None
        changed[found] = dataclasses.replace(record, options=make_options(record.options, **dict(values)))
    return dataclasses.replace(app, nodes=tuple(changed.get(n.key, n) for n in app.nodes))
