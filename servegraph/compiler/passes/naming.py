"""Pass 3, naming: every deployment gets its final, deterministic name.

The name is the ``name=`` option or the class/function name; a name taken by
an earlier deployment (in capture order) gets ``_1``, ``_2``, ... as in Ray Serve.
"""

from __future__ import annotations

import dataclasses

from ..context import PassContext
from ..ir import AppIR, key_order

__all__ = ["key_order", "name_deployments", "naming"]


def name_deployments(app: AppIR) -> dict[str, str]:
    """Node key -> deployment name, for deployment and function nodes."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for key in sorted((n.key for n in app.nodes), key=key_order):
        record = app.node(key)
        if not record.is_deployment:
            continue
        base = record.label  # the deployment's name= option, else its class or function name
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        names[key] = name
    return names


def naming(app: AppIR, ctx: PassContext) -> AppIR:
    """The pass: each deployment node with its final name in ``name``."""
    names = name_deployments(app)
    return dataclasses.replace(
        app, nodes=tuple(dataclasses.replace(n, name=names[n.key]) if n.key in names else n for n in app.nodes)
    )
