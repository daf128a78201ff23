"""The result of ``servegraph.compile()``: one object every artifact is made from."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import networkx as nx

from ..errors import Diagnostic
from . import ir


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledGraph:
    """A checked graph: its networkx DiGraph, its deployments with final names and options, its plan.

    Attributes:
        graph: nodes keyed ``n0, n1, ...`` with their NodeIR as ``ir``; edges with
            ``kind`` (data, handle, target) and ``label`` (argument position or keyword).
        ir: the AppIR the runtime executes.
        diagnostics: warnings (and, with ``strict=False``, errors) the checks found.
    """

    graph: nx.DiGraph
    ir: ir.AppIR
    diagnostics: tuple[Diagnostic, ...] = ()
    #: Deployment names by node key, as the naming pass gave them.
    names: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def deployments(self) -> dict[str, ir.DeploymentIR]:
        """Deployments by final name, dependencies first."""
        return {d.name: d for d in self.ir.deployments}

    @property
    def plan(self) -> Optional[ir.Plan]:
        return self.ir.plan

    @property
    def ingress(self) -> Optional[str]:
        return self.ir.ingress

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def __repr__(self) -> str:
        kind = f"ingress={self.ingress!r}" if self.ingress else f"plan of {len(self.plan.steps) if self.plan else 0} steps"
        return f"<CompiledGraph deployments={list(self.deployments)} {kind}>"

    def __getstate__(self) -> Any:  # pragma: no cover - compiled graphs stay in the driver
        raise TypeError("a CompiledGraph is not sent to replicas; send its .ir")
