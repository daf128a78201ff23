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
    #: The last suffix given per base name: every smaller one is taken, so the search resumes there
    #: (otherwise 10,000 deployments of one class cost 50 million probes).
    last: dict[str, int] = {}
    for record in sorted(app.nodes, key=lambda n: key_order(n.key)):
        if not record.is_deployment:
            continue
        base = record.label  # the deployment's name= option, else its class or function name
        i = last.get(base, 0)
        name = base if i == 0 else f"{base}_{i}"
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        last[base] = i
        taken.add(name)
        names[record.key] = name
    return names


def naming(app: AppIR, ctx: PassContext) -> AppIR:
    """The pass: each deployment node with its final name in ``name``."""
    names = name_deployments(app)
    return dataclasses.replace(
        app, nodes=tuple(dataclasses.replace(n, name=names[n.key]) if n.key in names else n for n in app.nodes)
    )
