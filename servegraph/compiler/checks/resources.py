"""The resource check: the replicas' CPUs, GPUs and custom resources against what the cluster has free;
and the placement group check: every replica's group against the nodes the cluster has.

Ray Serve leaves replicas that cannot be placed pending forever; this says so before deploying,
with a table of who asked for what. Per-replica amounts come from the one accounting rule,
:meth:`servegraph.dsl.options.DeploymentOptions.replica_resources`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ...dsl.options import add_resources, bundles_resources
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


def _fits(need: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items() if amount)


def _show(need: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(need.items()) if amount)


def group_placement_problem(
    bundles: list[dict[str, float]], strategy: str, nodes: tuple[Mapping[str, float], ...]
) -> str | None:
    """Why a placement group of ``bundles`` could never be placed on these nodes, even empty; None if it could.

    Exact for what it judges: a bundle too big for every node; STRICT_PACK's bundles together on no node;
    STRICT_SPREAD's bundles with too few nodes to go one a node. (PACK and SPREAD may share nodes; whether
    the bundles fit together is left to the resource check's totals.)

    >>> group_placement_problem([{"CPU": 2}, {"CPU": 2}], "STRICT_PACK", ({"CPU": 2}, {"CPU": 2}))
    'STRICT_PACK keeps its bundles on one node, and no node has CPU 4'
    >>> group_placement_problem([{"CPU": 1}] * 3, "STRICT_SPREAD", ({"CPU": 2}, {"CPU": 2})) is not None
    True
    """
    if strategy == "STRICT_PACK":
        total = bundles_resources(bundles)
        if not any(_fits(total, node) for node in nodes):
            return f"STRICT_PACK keeps its bundles on one node, and no node has {_show(total)}"
        return None
    for i, bundle in enumerate(bundles):
        if not any(_fits(bundle, node) for node in nodes):
            return f"bundle {i} ({_show(bundle)}) is bigger than any node"
    if strategy == "STRICT_SPREAD":
        # Each bundle on a node of its own: a matching of bundles to distinct nodes (augmenting paths).
        owner: dict[int, int] = {}

        def place(i: int, seen: set[int]) -> bool:
            for n, node in enumerate(nodes):
                if n in seen or not _fits(bundles[i], node):
                    continue
                seen.add(n)
                if n not in owner or place(owner[n], seen):
                    owner[n] = i
                    return True
            return False

        placed = sum(place(i, set()) for i in range(len(bundles)))
        if placed < len(bundles):
            return (
                f"STRICT_SPREAD puts each of its {len(bundles)} bundles on a node of its own, and at most "
                f"{placed} of them find one"
            )
    return None


def check_placement_groups(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """A replica's placement group that no arrangement of the cluster's nodes could hold (Ray would leave the
    replica pending for as long as the cluster stays as it is)."""
    if ctx.cluster_nodes is None:
        return []
    out = []
    for record in app.nodes:
        group = record.options.placement_group() if record.is_deployment and record.options is not None else None
        if group is None:
            continue
        problem = group_placement_problem(*group, ctx.cluster_nodes)
        if problem is not None:
            out.append(
                _diag(
                    "resources",
                    record,
                    f"{record.label}: each replica's placement group could never be placed on this cluster's "
                    f"{len(ctx.cluster_nodes)} node(s): {problem};",
                    "lower placement_group_bundles, choose another placement_group_strategy, add nodes, or pass "
                    "resource_check=False (--no-resource-check) on a cluster that grows.",
                )
            )
    return out
