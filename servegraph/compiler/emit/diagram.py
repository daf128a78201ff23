"""What a diagram of a compiled graph shows, independent of how it is drawn (DOT or Mermaid).

* each deployment is a box: name, class or function, replicas (or the
  autoscaling range) and what each replica reserves;
* a method call is a node of its own, drawn inside its deployment's cluster;
* the InputNode, its attribute accesses, MultiOutputNode and DAGDriver are
  nodes; a plan's output flows to a ``response`` node;
* a switch or split is a diamond: its edges carry the value it reads (``value``) and each branch's
  key, predicate or weight (``spanish``, ``default``, ``canary 10%``);
* data edges carry the argument they feed (``arg 0``, ``text=``); handles
  (a deployment given to a constructor or method) are dashed;
* an ``HTTP <route prefix>`` node points at the ingress.

Ids are node keys (``n0``, ``n1``, ... from capture order) or fixed names,
never memory addresses, and everything comes out sorted, so a graph always
draws the same text.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .. import ir
from ..config.app import resolve
from ..ir import key_order
from .deploy_config import require_ok

if TYPE_CHECKING:
    from ..compiled import CompiledGraph

# Box kinds beyond the IR's node kinds.
HTTP = "http"
RESPONSE = "response"

# Edge styles.
DATA = "data"
HANDLE = "handle"
TARGET = "target"
ENTRY = "entry"
#: The live view's arrow for a call the graph does not show (a handle got at run time).
CALL = "call"


@dataclasses.dataclass(frozen=True, slots=True)
class Box:
    id: str
    kind: str
    lines: tuple[str, ...]
    ingress: bool = False
    cluster: str | None = None
    #: Drawn in an alarming colour: the live view's deployments that failed requests lately.
    alert: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Arrow:
    source: str
    target: str
    style: str
    label: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Cluster:
    id: str
    label: str


@dataclasses.dataclass(frozen=True, slots=True)
class Diagram:
    title: str
    source: str
    boxes: tuple[Box, ...]
    arrows: tuple[Arrow, ...]
    clusters: tuple[Cluster, ...]

    def members(self) -> dict[str | None, list[Box]]:
        """Boxes by cluster id (None: outside every cluster), in order, grouped in one pass."""
        out: dict[str | None, list[Box]] = {}
        for box in self.boxes:
            out.setdefault(box.cluster, []).append(box)
        return out


def _num(value: float) -> str:
    return f"{value:g}"


def replicas_line(dep: ir.DeploymentIR) -> str:
    """``replicas: 2`` or ``replicas: 1..5 (autoscaling)``."""
    auto = dep.options.autoscaling_config
    if auto is None:
        return f"replicas: {dep.num_replicas}"
    return f"replicas: {auto.min_replicas}..{auto.max_replicas} (autoscaling)"


def resources_line(dep: ir.DeploymentIR) -> str:
    """What each replica reserves: ``per replica: CPU 1, GPU 1, TPU 2, memory 2 GiB``."""
    actor = dep.actor_options
    parts = [f"CPU {_num(actor.get('num_cpus', 0))}"]
    if actor.get("num_gpus"):
        parts.append(f"GPU {_num(actor['num_gpus'])}")
    for name, amount in sorted((actor.get("resources") or {}).items()):
        parts.append(f"{name} {_num(amount)}")
    if actor.get("memory"):
        parts.append(f"memory {_num(actor['memory'] / 1024**3)} GiB")
    return "per replica: " + ", ".join(parts)


def edge_label(label: str) -> str:
    """``0`` -> ``arg 0``; ``text`` -> ``text=``; several arguments joined with ``, ``.

    >>> edge_label("0,temperature")
    'arg 0, temperature='
    """
    return ", ".join(f"arg {part}" if part.isdigit() else f"{part}=" for part in label.split(","))


def _output_places(record: ir.NodeIR) -> dict[str, str]:
    """``{upstream: "output 0, output 2"}``: where each node appears in MultiOutputNode's list."""
    places: dict[str, list[str]] = {}
    for i, marker in enumerate(ir.iter_markers(record.args)):
        if isinstance(marker, ir.Ref):
            places.setdefault(marker.key, []).append(f"output {i}")
    return {key: ", ".join(found) for key, found in places.items()}


def build(compiled: CompiledGraph) -> Diagram:
    """The diagram of a compiled graph (which must have no errors)."""
    require_ok(compiled)
    app = resolve(compiled)
    nodes = {n.key: n for n in compiled.ir.nodes}
    deployments = compiled.deployments
    graph = compiled.graph
    root = graph.graph.get("root")

    # Deployments whose methods are called get a cluster holding them and their method nodes.
    owner: dict[str, str] = {}
    for u, v, kind in graph.edges(data="kind"):
        if kind == ir.TARGET_EDGE:
            owner[v] = u
    clustered = sorted(set(owner.values()), key=key_order)
    clusters = tuple(Cluster(f"cluster_{key}", nodes[key].deployment or nodes[key].label) for key in clustered)
    owners = set(clustered)

    # Where HTTP requests enter.
    if root is not None and nodes[root].kind == ir.DRIVER:
        entry = root
    elif compiled.ingress is not None:
        entry = next(k for k, n in nodes.items() if n.kind in (ir.DEPLOYMENT, ir.FUNCTION) and n.deployment == compiled.ingress)
    else:
        entry = next((k for k, n in nodes.items() if n.kind == ir.INPUT), root)

    boxes = [Box(HTTP, HTTP, (f"HTTP {app.route_prefix}",))]
    for key in sorted(nodes, key=key_order):
        record = nodes[key]
        ingress = key == entry and record.kind in (ir.DEPLOYMENT, ir.FUNCTION, ir.DRIVER)
        if record.kind in (ir.DEPLOYMENT, ir.FUNCTION) and record.deployment is not None:
            dep = deployments[record.deployment]
            what = f"function {dep.class_name}()" if dep.is_function else f"class {dep.class_name}"
            lines = [dep.name, what, replicas_line(dep), resources_line(dep)]
        elif record.kind == ir.METHOD:
            lines = [f"{record.deployment}.{record.method}()"]
        elif record.route is not None:
            how = {ir.BY_KEY: "by key", ir.BY_PREDICATE: "first predicate true", ir.BY_WEIGHT: "by weight"}
            lines = [record.label, how[record.route.mode]]
        else:
            lines = [record.label]
        if ingress:
            lines.append(f"ingress, route {app.route_prefix}")
        cluster = f"cluster_{key}" if key in owners else (f"cluster_{owner[key]}" if key in owner else None)
        boxes.append(Box(key, record.kind, tuple(lines), ingress=ingress, cluster=cluster))

    arrows = [Arrow(HTTP, entry, ENTRY)] if entry is not None else []
    output_places: dict[str, dict[str, str]] = {}  # per MultiOutputNode, computed once
    for u, v, data in sorted(graph.edges(data=True), key=lambda e: (key_order(e[1]), key_order(e[0]))):
        kind = data["kind"]
        if kind == ir.TARGET_EDGE:
            arrows.append(Arrow(u, v, TARGET))
        elif kind == ir.HANDLE_EDGE or nodes[u].kind == ir.DEPLOYMENT:
            # A deployment given to a constructor or to a method call arrives as a handle.
            arrows.append(Arrow(u, v, HANDLE, edge_label(data["label"])))
        elif nodes[v].kind == ir.INPUT_ATTR:
            arrows.append(Arrow(u, v, DATA))  # the node reads part of its upstream value
        elif nodes[v].kind in ir.ROUTING:
            arrows.append(Arrow(u, v, DATA, data["label"]))  # the value, or a branch's key or weight
        elif nodes[v].kind == ir.OUTPUT:
            if v not in output_places:
                output_places[v] = _output_places(nodes[v])
            arrows.append(Arrow(u, v, DATA, output_places[v].get(u, "")))
        else:
            arrows.append(Arrow(u, v, DATA, edge_label(data["label"])))
    if compiled.plan is not None and root is not None:
        boxes.append(Box(RESPONSE, RESPONSE, ("response",)))
        arrows.append(Arrow(root, RESPONSE, ENTRY))

    title = app.name + (f" ({app.import_path})" if app.import_path else "")
    return Diagram(
        title=title,
        source=app.import_path or app.name,
        boxes=tuple(boxes),
        arrows=tuple(arrows),
        clusters=clusters,
    )
