"""The live graph: a running application's diagram, annotated with what its deployments are doing.

The diagram is :mod:`.diagram`'s, drawn by :mod:`.dot` (and Graphviz for SVG); this module only adds
numbers to it, from the controller's graph statistics (``graph_stats``)::

    {"app": "default", "window_s": 10.0,
     "deployments": {"Adder": {"requests_per_s": 1.2, "errors_per_s": 0.0, "error_rate": 0.0,
                               "p50_ms": 3.1, "p99_ms": 9.0,  # None with no request in the window
                               "requests_total": 12, "errors_total": 0,
                               "replicas_running": 1, "replicas_target": 1}},
     "edges": [{"source": "<input>" or a deployment, "target": "Adder", "method": "__call__",
                "calls_per_s": 1.2, "errors_per_s": 0.0, "p50_ms": 2.0, "calls_total": 12, "errors_total": 0}]}

* each deployment's box gets its replicas (running of target), requests (total, and per second over
  the window), p50 and p99 latency and errors; a deployment that failed requests in the window is red;
* each call the statistics saw is written on the arrow between caller and callee (a handle's dashed
  arrow points from the callee to the deployment holding the handle; a plan's data arrow from the
  step that feeds the call); a call the diagram has no arrow for (a handle got at run time) gets a
  thin arrow of its own;
* a deployment or call missing from the statistics, or with no request yet, reads 0 and ``–``.

Nothing here talks to Ray: the HTTP proxy's ``/-/graph`` page and the CLI fetch the IR and the
statistics, and hand them in. :func:`outline` of the IR is enough (the user's code is not needed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .. import ir
from ..compiled import CompiledGraph
from . import diagram as dg
from .dot import diagram_dot
from .render import pipe

#: How the statistics name the caller of an InputNode graph's first nodes.
INPUT = "<input>"

#: Written where a figure is unknown: a latency with no request in the window, a count never reported.
NONE = "–"

Stats = Mapping[str, Any]


# -- figures --------------------------------------------------------------------
def per_s(value: float | None) -> str:
    """A rate: ``0/s``, ``1.2/s``, ``35/s``.

    >>> per_s(1.234), per_s(0), per_s(None)
    ('1.2/s', '0/s', '–')
    """
    if value is None:
        return NONE
    if value == 0:
        return "0/s"
    return f"{value:.1f}/s" if value < 10 else f"{value:.0f}/s"


def ms(value: float | None) -> str:
    """A latency: ``3.1 ms``, ``240 ms``, ``1.50 s``; ``–`` with no request in the window.

    >>> ms(3.14), ms(240.4), ms(1500), ms(None)
    ('3.1 ms', '240 ms', '1.50 s', '–')
    """
    if value is None:
        return NONE
    if value < 10:
        return f"{value:.1f} ms"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def percent(value: float | None) -> str:
    """An error rate (a fraction) as a percentage.

    >>> percent(0.0), percent(0.125), percent(None)
    ('0%', '12.5%', '–')
    """
    if value is None:
        return NONE
    return "0%" if value == 0 else f"{100 * value:.1f}%"


def _count(value: Any) -> str:
    return NONE if value is None else str(int(value))


@dataclasses.dataclass(frozen=True, slots=True)
class DeploymentFigures:
    """One deployment's live figures, each in words (``–`` where unknown)."""

    name: str
    replicas: str
    requests: str
    latency: str
    errors: str
    failing: bool

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.replicas, self.requests, self.latency, self.errors)


def deployment_figures(dep: ir.DeploymentIR, stats: Stats) -> DeploymentFigures:
    """What the live view says about ``dep``, from its entry in the statistics (missing: no traffic yet)."""
    mine: Mapping[str, Any] = (stats.get("deployments") or {}).get(dep.name) or {}
    target = mine.get("replicas_target", dep.num_replicas)
    replicas = f"replicas: {_count(mine.get('replicas_running'))} of {_count(target)} running"
    auto = dep.options.autoscaling_config
    if auto is not None:
        replicas += f" (autoscaling {auto.min_replicas}..{auto.max_replicas})"
    errors_total = mine.get("errors_total", 0)
    error_rate = mine.get("error_rate", 0.0)
    return DeploymentFigures(
        name=dep.name,
        replicas=replicas,
        requests=f"requests: {_count(mine.get('requests_total', 0))} ({per_s(mine.get('requests_per_s', 0.0))})",
        latency=f"p50 {ms(mine.get('p50_ms'))}, p99 {ms(mine.get('p99_ms'))}",
        errors=f"errors: {_count(errors_total)} ({percent(error_rate)})",
        failing=bool(mine.get("errors_per_s") or error_rate),
    )


def call_figures(edge: Mapping[str, Any]) -> str:
    """One call's figures: ``12 calls, 1.2/s, p50 2.0 ms`` (and its errors, if any)."""
    text = f"{_count(edge.get('calls_total', 0))} calls, {per_s(edge.get('calls_per_s', 0.0))}, p50 {ms(edge.get('p50_ms'))}"
    errors = edge.get("errors_total")
    if errors:
        text += f", {_count(errors)} error{'' if errors == 1 else 's'}"
    return text


# -- the annotated diagram ------------------------------------------------------
class _Places:
    """Which boxes of the diagram stand for a deployment, a method of it, or the graph's input."""

    def __init__(self, app: ir.AppIR, diagram: dg.Diagram):
        boxes = {box.id for box in diagram.boxes}
        self.deployment: dict[str, str] = {}
        self.method: dict[tuple[str, str], str] = {}
        self.sides: dict[str, set[str]] = {INPUT: {dg.HTTP}}
        for node in app.nodes:
            if node.key not in boxes:
                continue
            if node.is_deployment and node.deployment is not None:
                self.deployment[node.deployment] = node.key
                self.sides.setdefault(node.deployment, set()).add(node.key)
            elif node.kind == ir.METHOD and node.deployment is not None and node.method is not None:
                self.method[(node.deployment, node.method)] = node.key
                self.sides.setdefault(node.deployment, set()).add(node.key)
            elif node.kind in (ir.INPUT, ir.INPUT_ATTR, ir.DRIVER):
                self.sides[INPUT].add(node.key)
        #: Boxes a value passes through on its way to a call (switches, splits, output lists), by where it comes from.
        kinds = {node.key: node.kind for node in app.nodes}
        self.passes: dict[str, list[str]] = {}
        for arrow in diagram.arrows:
            if arrow.style == dg.DATA and (
                kinds.get(arrow.target) in ir.ROUTING or kinds.get(arrow.target) == ir.OUTPUT
            ):
                self.passes.setdefault(arrow.source, []).append(arrow.target)

    def callee(self, deployment: str, method: str) -> tuple[str | None, set[str]]:
        """The box a call lands on (its method's node, else its deployment's) and every box of the deployment."""
        box = self.method.get((deployment, method)) or self.deployment.get(deployment)
        return box, self.sides.get(deployment, set())

    def caller(self, source: str) -> tuple[str | None, set[str]]:
        """The box a call leaves from, and the boxes its arrow may leave from: the caller's own (the input's:
        HTTP, the InputNode and its reads), and the switches, splits and output lists its values pass through."""
        side = set(self.sides.get(source, ()))
        todo = list(side)
        while todo:
            for key in self.passes.get(todo.pop(), ()):
                if key not in side:
                    side.add(key)
                    todo.append(key)
        if source == INPUT:
            inputs = sorted(self.sides[INPUT] - {dg.HTTP}, key=ir.key_order)
            return (inputs[-1] if inputs else dg.HTTP), side  # the InputNode itself: captured last
        return self.deployment.get(source), side


def _edges(stats: Stats) -> list[Mapping[str, Any]]:
    return sorted(
        stats.get("edges") or (), key=lambda e: (str(e.get("source")), str(e.get("target")), str(e.get("method")))
    )


def annotate(app: ir.AppIR, diagram: dg.Diagram, stats: Stats) -> dg.Diagram:
    """``diagram`` (the application's, from :func:`.diagram.build`) with the statistics written on it."""
    deployments = {d.name: d for d in app.deployments}
    places = _Places(app, diagram)
    named = {key: name for name, key in places.deployment.items()}
    boxes = []
    for box in diagram.boxes:
        name = named.get(box.id)
        if name is None or name not in deployments:
            boxes.append(box)
            continue
        dep = deployments[name]
        figures = deployment_figures(dep, stats)
        static = dg.replicas_line(dep)
        lines = [figures.replicas if line == static else line for line in box.lines]
        at = lines.index(dg.resources_line(dep)) + 1 if dg.resources_line(dep) in lines else len(lines)
        lines[at:at] = figures.lines[1:]
        boxes.append(dataclasses.replace(box, lines=tuple(lines), alert=figures.failing))

    arrows = list(diagram.arrows)
    # A call travels a data arrow from its caller's side into the callee, or a handle arrow out of the callee.
    inbound: dict[str, list[int]] = {}
    outbound: dict[str, list[int]] = {}
    for i, a in enumerate(arrows):
        if a.style in (dg.DATA, dg.ENTRY):
            inbound.setdefault(a.target, []).append(i)
        elif a.style == dg.HANDLE:
            outbound.setdefault(a.source, []).append(i)
    extra: list[dg.Arrow] = []
    notes: dict[int, list[str]] = {}
    for edge in _edges(stats):
        source, target, method = str(edge.get("source")), str(edge.get("target")), str(edge.get("method") or "__call__")
        to_box, to_side = places.callee(target, method)
        from_box, from_side = places.caller(source)
        if to_box is None or from_box is None:
            continue  # a deployment this application does not have
        on_method = to_box == places.method.get((target, method))
        # The call's own arrow when the diagram has one; its method's node first, then the deployment's.
        ends = ({to_box}, to_side)
        found = None
        for candidates in ends:
            found = min(
                [i for c in candidates for i in inbound.get(c, ()) if arrows[i].source in from_side]
                + [i for c in candidates for i in outbound.get(c, ()) if arrows[i].target in from_side],
                default=None,
            )
            if found is not None:
                break
        what = call_figures(edge) if on_method or method == "__call__" else f"{method}(): {call_figures(edge)}"
        if found is None:
            extra.append(dg.Arrow(from_box, to_box, dg.CALL, what))
        else:
            notes.setdefault(found, []).append(what)
    for i, lines in notes.items():
        arrow = arrows[i]
        arrows[i] = dataclasses.replace(arrow, label="\n".join([arrow.label, *lines] if arrow.label else lines))
    window = stats.get("window_s")
    title = diagram.title + (f", live: last {window:g} s" if isinstance(window, (int, float)) else ", live")
    return dataclasses.replace(diagram, title=title, boxes=tuple(boxes), arrows=tuple(arrows + extra))


def live_diagram(app: ir.AppIR, stats: Stats, *, name: str, route_prefix: str | None = None) -> dg.Diagram:
    """The diagram of the running application ``name`` (its IR, or the IR's :func:`outline`), with its statistics."""
    compiled = CompiledGraph(ir=app).with_app(name=name, route_prefix=route_prefix, import_path=app.import_path)
    return annotate(app, dg.build(compiled), stats)


def to_live_dot(app: ir.AppIR, stats: Stats, *, name: str, route_prefix: str | None = None, rankdir: str = "LR") -> str:
    """The live diagram as DOT text."""
    return diagram_dot(live_diagram(app, stats, name=name, route_prefix=route_prefix), rankdir)


def to_live_svg(app: ir.AppIR, stats: Stats, *, name: str, route_prefix: str | None = None, rankdir: str = "LR") -> str:
    """The live diagram as SVG, drawn by Graphviz's ``dot``.

    Raises:
        RenderError: Graphviz is missing, or ``dot`` failed.
    """
    return pipe(to_live_dot(app, stats, name=name, route_prefix=route_prefix, rankdir=rankdir), "svg").decode("utf-8")


# -- the terminal ---------------------------------------------------------------
def _flow(diagram: dg.Diagram) -> dict[str, list[str]]:
    """Where a request goes next from each box: data and entry arrows as drawn, handle arrows turned round
    (a handle's arrow points at the deployment that holds it, which calls the handle's deployment)."""
    out: dict[str, list[str]] = {box.id: [] for box in diagram.boxes}
    for arrow in diagram.arrows:
        if arrow.style == dg.TARGET:
            continue
        source, target = (arrow.target, arrow.source) if arrow.style == dg.HANDLE else (arrow.source, arrow.target)
        if target not in out.setdefault(source, []):
            out[source].append(target)
    return out


def live_tree(app: ir.AppIR, stats: Stats, *, name: str, route_prefix: str | None = None) -> Any:
    """The live graph for a terminal: a ``rich`` tree from where requests enter, each deployment with its
    figures and each call with its own, in the order requests flow (a deployment reached twice is written
    once, then referred to)."""
    from rich.text import Text
    from rich.tree import Tree

    compiled = CompiledGraph(ir=app).with_app(name=name, route_prefix=route_prefix, import_path=app.import_path)
    plain = dg.build(compiled)
    places = _Places(app, plain)
    deployments = {d.name: d for d in app.deployments}
    by_box: dict[str, str] = {}
    for dname in deployments:
        for key in places.sides.get(dname, ()):
            by_box[key] = dname
    flow = _flow(plain)
    calls: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for edge in _edges(stats):
        calls.setdefault((str(edge.get("source")), str(edge.get("target"))), []).append(edge)

    def next_deployments(box: str) -> list[str]:
        """The deployments a request reaches next from ``box``, through boxes that are none (reads, switches)."""
        found: list[str] = []
        seen = {box}
        todo = list(flow.get(box, ()))
        while todo:
            key = todo.pop(0)
            if key in seen:
                continue
            seen.add(key)
            dname = by_box.get(key)
            if dname is not None:
                if dname not in found and dname != by_box.get(box):
                    found.append(dname)
            else:
                todo.extend(flow.get(key, ()))
        return found

    def called(text: Text, dname: str, caller: str) -> Text:
        for edge in calls.get((caller, dname), ()):
            method = str(edge.get("method") or "__call__")
            text.append(f"  <- {'' if method == '__call__' else method + '(): '}{call_figures(edge)}", style="cyan")
        return text

    window = stats.get("window_s")
    root = Tree(
        Text(f"{name}", style="bold underline")
        + Text(f"  route {route_prefix or '-'}" + (f", last {window:g} s" if isinstance(window, (int, float)) else ""))
    )
    shown: set[str] = set()

    def grow(tree: Any, dname: str, caller: str) -> None:
        if dname in shown:
            tree.add(called(Text(f"{dname} (above)", style="dim"), dname, caller))
            return
        shown.add(dname)
        figures = deployment_figures(deployments[dname], stats)
        label = called(Text(dname, style="bold red" if figures.failing else "bold"), dname, caller)
        label.append("\n" + "  ".join(figures.lines), style="red" if figures.failing else "")
        branch = tree.add(label)
        for box in sorted(places.sides.get(dname, ()), key=ir.key_order):
            for callee in next_deployments(box):
                grow(branch, callee, dname)

    for dname in next_deployments(dg.HTTP):
        grow(root, dname, INPUT)
    for dname in deployments:  # reached by no arrow: a deployment only code calls
        if dname not in shown:
            grow(root, dname, INPUT)
    return root


__all__ = [
    "INPUT",
    "DeploymentFigures",
    "annotate",
    "call_figures",
    "deployment_figures",
    "live_diagram",
    "live_tree",
    "ms",
    "per_s",
    "percent",
    "to_live_dot",
    "to_live_svg",
]
