"""The compiler's intermediate representation: frozen records, never mutated.

After capture it is the single source: every pass, check and emitter reads the
:class:`AppIR` (targets, options, call sites, final names, edges), never the
user's DSL objects. Passes return new values (``dataclasses.replace``). Bound arguments are kept as
the user wrote them, with each graph node inside replaced by a marker:
:class:`Ref` (the node's value for this request) or :class:`HandleRef` (a
handle to a deployment, injected through a constructor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from .._walk import iter_leaves, map_leaves
from ..dsl.callsite import CallSite
from ..dsl.options import DeploymentOptions

# Node kinds, as recorded by the capture pass.
INPUT = "input"
INPUT_ATTR = "input_attr"
DEPLOYMENT = "deployment"
METHOD = "method"
FUNCTION = "function"
OUTPUT = "output"
DRIVER = "driver"
SWITCH = "switch"  # one branch per request, chosen by a value's key or by predicates
SPLIT = "split"  # one branch per request, chosen at random by weight
#: Routing nodes: each request takes one of their branches, and only that branch runs.
ROUTING = frozenset({SWITCH, SPLIT})

# How a routing node chooses (RouteIR.mode).
BY_KEY = "keys"
BY_PREDICATE = "predicates"
BY_WEIGHT = "weights"

# Edge kinds in the networkx graph.
DATA_EDGE = "data"  # a value flows per request
HANDLE_EDGE = "handle"  # a handle is injected through a constructor
TARGET_EDGE = "target"  # a method call runs on this deployment


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """The value node ``key`` produces for the current request."""

    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class HandleRef:
    """A handle to a deployment (its node key before naming, its name after).

    ``method`` is set when a method node was passed to a constructor (Ray's class
    factory pattern): the handle calls that method.
    """

    deployment: str
    method: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectTemplate:
    """A user object whose attributes held graph nodes: pickled with each node as a marker's slot.

    Rebuilt, with the markers' values (handles, refs) in those slots, where it is used.
    """

    data: bytes
    markers: tuple[Any, ...]

    def build(self, values: tuple[Any, ...]) -> Any:
        import io
        import pickle

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                return values[int(pid)]

        return Unpickler(io.BytesIO(self.data)).load()


def iter_markers(value: Any) -> Iterator[Ref | HandleRef]:
    """Markers nested in an argument template, in argument order."""
    for leaf in iter_leaves(value):
        if isinstance(leaf, (Ref, HandleRef)):
            yield leaf
        elif isinstance(leaf, ObjectTemplate):
            yield from leaf.markers


def map_markers(value: Any, fn: Any) -> Any:
    """A copy of ``value`` with every marker replaced by ``fn(marker)``, container types kept."""

    def leaf(item: Any) -> Any:
        if isinstance(item, (Ref, HandleRef)):
            return fn(item)
        if isinstance(item, ObjectTemplate):
            mapped = tuple(fn(m) for m in item.markers)
            if all(isinstance(m, (Ref, HandleRef)) for m in mapped):  # still a template (a compiler pass)
                return ObjectTemplate(item.data, mapped)
            return item.build(mapped)  # values: the object itself, where it is used
        return item

    return map_leaves(value, leaf)


@dataclasses.dataclass(frozen=True, slots=True)
class RouteIR:
    """How a switch or split picks the one branch a request takes.

    A switch's node arguments are ``(value, *branches)``, a split's ``branches``; ``labels`` and
    ``choices`` run in the same order as the branches. ``choices`` holds each branch's key
    (``BY_KEY``), predicate (``BY_PREDICATE``) or integer weight (``BY_WEIGHT``); a default branch
    is last, with ``None`` as its choice. ``name`` names a split in a deploy config, where its
    weights can be changed without touching the code.
    """

    mode: str
    labels: tuple[str, ...]
    choices: tuple[Any, ...]
    default: bool = False
    name: str | None = None
    #: Where the user made it (``file:line``), for the message of a request no branch takes.
    site: str = ""

    def branches(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The branch markers among a routing node's arguments."""
        return args if self.mode == BY_WEIGHT else args[1:]

    def keyed(self) -> dict[Any, int]:
        """Branch index by key, for a switch by key (the default not among them)."""
        count = len(self.choices) - (1 if self.default else 0)
        return {key: i for i, key in enumerate(self.choices[:count])}

    def edge_label(self, i: int) -> str:
        """What a diagram writes on branch ``i``'s edge: its key, predicate, or weight."""
        if self.mode == BY_WEIGHT:
            return f"{self.labels[i]} {self.choices[i]}%"
        return self.labels[i]


@dataclasses.dataclass(frozen=True, slots=True)
class NodeIR:
    """One node of the graph as the user bound it."""

    key: str
    kind: str
    label: str
    call_site: CallSite
    #: For deployment/function nodes: their own key; for method nodes: the key
    #: of the deployment node they call. Replaced by the deployment's name by naming.
    deployment: str | None = None
    method: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    #: For input_attr nodes: ("item" | "attr", key).
    access: tuple[str, Any] | None = None
    deps: frozenset[str] = frozenset()
    #: For deployment and function nodes: the user's class or function, its options (the code's,
    #: then a deploy config's overrides) and its final name (set by the naming pass).
    target: Any = None
    options: DeploymentOptions | None = None
    name: str | None = None
    #: For switch and split nodes: how they choose a branch.
    route: RouteIR | None = None

    @property
    def is_deployment(self) -> bool:
        """A deployment or function node: one deployment of the application."""
        return self.kind == DEPLOYMENT or self.kind == FUNCTION


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeIR:
    """``source`` feeds ``target``: a value (data), a handle, or the deployment a method runs on.

    ``label`` is the argument position or keyword it feeds; several joined with ``,``.
    """

    source: str
    target: str
    kind: str
    label: str


@dataclasses.dataclass(frozen=True, slots=True)
class UnreachableIR:
    """A node computed from the InputNode that the output never uses (so capture did not record it)."""

    label: str
    call_site: CallSite


def key_order(key: str) -> int:
    """Capture order of a node key (``n12`` -> 12): keys sort by it, and it indexes ``AppIR.nodes``."""
    return int(key[1:])


@dataclasses.dataclass(frozen=True, slots=True)
class DeploymentIR:
    """A deployment as it will run: final name, target, constructor arguments, options."""

    name: str
    node: str
    target: Any
    import_path: str
    is_function: bool
    init_args: tuple[Any, ...]
    init_kwargs: tuple[tuple[str, Any], ...]
    options: DeploymentOptions
    call_site: CallSite
    #: Names of the deployments whose handles its constructor receives.
    handles: tuple[str, ...] = ()
    #: The code's version (``version=`` option, else a hash of the source): equal code, equal version.
    code_version: str = ""

    @property
    def num_replicas(self) -> int:
        return self.options.replicas()

    @property
    def actor_options(self) -> dict[str, Any]:
        return self.options.actor_options()

    @property
    def class_name(self) -> str:
        return getattr(self.target, "__name__", self.import_path.rpartition(":")[2])


@dataclasses.dataclass(frozen=True, slots=True)
class PlanStep:
    """One step of a request: read part of the input, or call a deployment."""

    key: str
    kind: str  # INPUT_ATTR or "call"
    deployment: str | None = None
    method: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    #: For INPUT_ATTR: (source Ref, access, key).
    access: tuple[Ref, str, Any] | None = None
    #: For SWITCH and SPLIT: how the branch is chosen (``args`` are the value, if any, then the branches).
    route: RouteIR | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """How one request runs an InputNode graph: steps in order, refs chained, output last.

    Each step runs once per request however many nodes consume it; a call
    receives its upstream results as unresolved refs; only the output is awaited.
    """

    input: str | None
    steps: tuple[PlanStep, ...]
    output: Any  # a Ref, or a list of Refs for MultiOutputNode

    @property
    def routed(self) -> bool:
        """Whether a switch or split decides, per request, which of the steps run.

        A scan per request, as the plan's own loop is: a stored field would be one that a ``Plan(...)``
        made elsewhere (a route's plan, a test) could get wrong.
        """
        return any(step.kind in ROUTING for step in self.steps)

    def split_weights(self) -> dict[str, dict[str, int]]:
        """Each split's weights by branch, by split name (a deploy config's ``user_config.splits`` of its DAGDriver entry)."""
        return {
            step.route.name: dict(zip(step.route.labels, step.route.choices, strict=True))
            for step in self.steps
            if step.route is not None and step.route.mode == BY_WEIGHT and step.route.name is not None
        }

    def with_weights(self, weights: dict[str, dict[str, int]]) -> Plan:
        """This plan with the named splits' weights replaced (already checked: every branch has one)."""

        def step_with(step: PlanStep) -> PlanStep:
            route = step.route
            if route is None or route.mode != BY_WEIGHT or route.name not in weights:
                return step
            given = weights[route.name]
            return dataclasses.replace(step, route=dataclasses.replace(route, choices=tuple(given[b] for b in route.labels)))

        return dataclasses.replace(self, steps=tuple(step_with(step) for step in self.steps))


@dataclasses.dataclass(frozen=True, slots=True)
class AppIR:
    """An application at every stage of the pipeline, and what the runtime deploys and runs.

    Capture fills ``nodes`` (keyed by capture position, so ``nodes[key_order(k)]`` is node ``k``),
    ``root`` and ``unreachable``; the graph pass ``edges``; naming and options the nodes' ``name`` and
    ``options``; lowering ``deployments``, ``ingress``, ``plan`` and ``routes`` (and replaces node keys
    in arguments by deployment names).
    """

    nodes: tuple[NodeIR, ...]
    deployments: tuple[DeploymentIR, ...] = ()
    ingress: str | None = None
    plan: Plan | None = None
    http_adapter: Any = None
    #: A DAGDriver bound to ``{route: graph}``: one plan per route (then ``plan`` is None).
    routes: tuple[tuple[str, Plan], ...] = ()
    root: str = "n0"
    edges: tuple[EdgeIR, ...] = ()
    unreachable: tuple[UnreachableIR, ...] = ()
    #: ``module:attr`` of the module-level variable holding the graph, if capture found exactly one.
    #: Where the graph was found, not what it is: two equal graphs may live in different files.
    import_path: str | None = dataclasses.field(default=None, compare=False)

    def node(self, key: str) -> NodeIR:
        """The node with key ``key``."""
        return self.nodes[key_order(key)]

    @property
    def driven(self) -> bool:
        """Whether the output is a DAGDriver (which changes how HTTP and ``predict`` reach the graph)."""
        return any(node.kind == DRIVER for node in self.nodes)

    def deployment(self, name: str) -> DeploymentIR:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        raise KeyError(name)
