"""Pass 4, options: each deployment's final options, with a deploy config's overrides applied.

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
