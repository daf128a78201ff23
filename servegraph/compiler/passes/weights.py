"""Pass 5, weights: a deploy config's split weights in place of the code's.

A config holds them as the plan driver's ``user_config.splits`` (see
:func:`servegraph.compiler.emit.deploy_config.splits_entry`); ``compile(weights=...)`` takes them.

Runs after options; the rule for weights is the DSL's own (:func:`servegraph.dsl.routing.weights_problem`),
so a config is held to what ``Split(...)`` is held to.
"""

from __future__ import annotations

import dataclasses

from ..._validation import did_you_mean
from ...dsl.routing import weights_problem
from ...errors import ConfigError
from .. import ir
from ..context import PassContext


def resolve_weights(app: ir.AppIR, ctx: PassContext) -> ir.AppIR:
    """The pass: ``app`` with ``ctx.weights`` (by split name) replacing its splits' weights.

    Raises:
        ConfigError: the config names a split the graph does not have, or gives weights that do not
            split traffic (negative, missing for a branch, not summing to 100).
    """
    if not ctx.weights:
        return app
    splits = {
        n.route.name: n for n in app.nodes if n.route is not None and n.route.mode == ir.BY_WEIGHT and n.route.name
    }
    changed: dict[str, ir.NodeIR] = {}
    for name, weights in ctx.weights.items():
        record = splits.get(name)
        if record is None:
            raise ConfigError(
                f"the config's split weights name split {name!r}, which the graph does not have"
                + did_you_mean(name, splits)
                + (f" Its splits: {', '.join(sorted(splits))}." if splits else " It has no Split.")
            )
        assert record.route is not None
        problem = weights_problem(weights, record.route.labels)
        if problem is not None:
            raise ConfigError(
                f"split {name!r}: {problem} (the split is made at {record.call_site}); give each branch a "
                "whole percentage, together 100"
            )
        route = dataclasses.replace(record.route, choices=tuple(weights[b] for b in record.route.labels))
        changed[record.key] = dataclasses.replace(record, route=route)
    return dataclasses.replace(app, nodes=tuple(changed.get(n.key, n) for n in app.nodes))
