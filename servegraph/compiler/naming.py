"""Pass 4, naming: every deployment gets its final, deterministic name.

The name is the ``name=`` option or the class/function name; a name taken by
an earlier deployment (in capture order) gets ``_1``, ``_2``, ... as in Ray Serve.
"""

from __future__ import annotations

from ..dsl.nodes import DeploymentNode, FunctionNode
from .capture import Captured


def key_order(key: str) -> int:
    return int(key[1:])


def name_deployments(captured: Captured) -> dict[str, str]:
    """Node key -> deployment name, for deployment and function nodes."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    #: The last suffix given per base name: every smaller one is taken, so the search resumes there
    #: (otherwise 10,000 deployments of one class cost 50 million probes).
    last: dict[str, int] = {}
    for key in sorted(captured.nodes, key=key_order):
        source = captured.sources[key]
        if not isinstance(source, (DeploymentNode, FunctionNode)):
            continue
        base = source._deployment.name
        i = last.get(base, 0)
        name = base if i == 0 else f"{base}_{i}"
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        last[base] = i
        taken.add(name)
        names[key] = name
    return names
