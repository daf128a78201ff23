"""The resource check: the replicas' CPUs, GPUs and custom resources against what the cluster has free.

Ray Serve leaves replicas that cannot be placed pending forever; this says so before deploying,
with a table of who asked for what. Per-replica amounts come from the one accounting rule,
:meth:`servegraph.dsl.options.DeploymentOptions.replica_resources`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ...dsl.options import add_resources
from ...errors import Diagnostic
from .. import ir
from ..context import PassContext
from .rules import _diag


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceRow:
    """One deployment's line of the table."""

    key: str
    name: str
    call_site: str
    replicas: int
    per_replica: Mapping[str, float]


def resource_table(app: ir.AppIR) -> list[ResourceRow]:
    """A row for every deployment, in capture order, by final name (the naming pass has run)."""
    rows = []
    for record in app.nodes:
        if not record.is_deployment or record.options is None:
            continue
        options = record.options
        rows.append(
            ResourceRow(record.key, record.name or record.label, str(record.call_site), options.replicas(), options.replica_resources())
        )
    return rows


def format_resource_table(rows: list[ResourceRow], have: Mapping[str, float], names: list[str]) -> str:
    header = ["deployment", "bound at", "replicas"] + [f"{n}/replica" for n in names] + [f"{n} total" for n in names]
    body = []
    totals: dict[str, float] = {}
    for row in rows:
        add_resources(totals, row.per_replica, row.replicas)
        body.append(
            [row.name, row.call_site, str(row.replicas)]
            + [f"{row.per_replica.get(n, 0):g}" for n in names]
            + [f"{row.per_replica.get(n, 0) * row.replicas:g}" for n in names]
        )
    body.append(["total asked", "", ""] + [""] * len(names) + [f"{totals.get(n, 0):g}" for n in names])
    body.append(["cluster has", "", ""] + [""] * len(names) + [f"{have.get(n, 0):g}" for n in names])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header] + body]
    return "\n".join(lines)


def check_resources(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    have = ctx.cluster_resources
    if have is None:
        return []
    rows = resource_table(app)
    totals: dict[str, float] = {}
    for row in rows:
        add_resources(totals, row.per_replica, row.replicas)
    names = sorted(n for n, amount in totals.items() if amount > 0)
    short = [n for n in names if totals[n] > have.get(n, 0) + 1e-9]
    if not short:
        return []
    table = format_resource_table(rows, have, names)
    # The error points at the deployment that asks for the most of what is short: its own .bind() line.
    biggest = max(rows, key=lambda row: sum(row.per_replica.get(n, 0) * row.replicas for n in short))
    # A replica with placement_group_bundles reserves its whole group (see DeploymentOptions.replica_resources).
    grouped = any(getattr(app.node(row.key).options, "placement_group_bundles", None) for row in rows)
    lower = "num_replicas, ray_actor_options or placement_group_bundles" if grouped else "num_replicas or ray_actor_options"
    return [
        _diag(
            "resources",
            app.node(biggest.key),
            f"the graph asks for more {', '.join(short)} than the cluster has, so some replicas could "
            f"never be placed:\n{table}\n",
            f"Lower {lower}, start Ray with more resources, or pass "
            "resource_check=False (--no-resource-check) on a cluster that grows.",
        )
    ]
