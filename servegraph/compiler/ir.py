"""The compiler's intermediate representation: frozen records, never mutated.

Passes return new values (``dataclasses.replace``). Bound arguments are kept as
the user wrote them, with each graph node inside replaced by a marker:
:class:`Ref` (the node's value for this request) or :class:`HandleRef` (a
handle to a deployment, injected through a constructor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

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
    if isinstance(value, (Ref, HandleRef)):
        yield value
    elif isinstance(value, ObjectTemplate):
        yield from value.markers
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_markers(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_markers(key)
            yield from iter_markers(item)


def map_markers(value: Any, fn: Any) -> Any:
    """A copy of ``value`` with every marker replaced by ``fn(marker)``."""
    if isinstance(value, (Ref, HandleRef)):
        return fn(value)
    if isinstance(value, ObjectTemplate):
        mapped = tuple(fn(m) for m in value.markers)
        if all(isinstance(m, (Ref, HandleRef)) for m in mapped):  # still a template (a compiler pass)
            return ObjectTemplate(value.data, mapped)
        return value.build(mapped)  # values: the object itself, where it is used
    if isinstance(value, list):
        return [map_markers(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_markers(v, fn) for v in value)
    if isinstance(value, dict):
        return {map_markers(k, fn): map_markers(v, fn) for k, v in value.items()}
    return value


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
    #: For deployment and function nodes: the user's class or function (what checks read the code of).
    #: Not compared: two nodes of one class are equal when bound alike.
    target: Any = dataclasses.field(default=None, compare=False, repr=False)


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


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """How one request runs an InputNode graph: steps in order, refs chained, output last.

    Each step runs once per request however many nodes consume it; a call
    receives its upstream results as unresolved refs; only the output is awaited.
    """

    input: str | None
    steps: tuple[PlanStep, ...]
    output: Any  # a Ref, or a list of Refs for MultiOutputNode


@dataclasses.dataclass(frozen=True, slots=True)
class AppIR:
    """A compiled application: what the runtime deploys and runs."""

    nodes: tuple[NodeIR, ...]
    deployments: tuple[DeploymentIR, ...]
    ingress: str | None = None
    plan: Plan | None = None
    http_adapter: Any = None
    #: A DAGDriver bound to ``{route: graph}``: one plan per route (then ``plan`` is None).
    routes: tuple[tuple[str, Plan], ...] = ()

    @property
    def driven(self) -> bool:
        """Whether the output is a DAGDriver (which changes how HTTP and ``predict`` reach the graph)."""
        return any(node.kind == DRIVER for node in self.nodes)

    def deployment(self, name: str) -> DeploymentIR:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        raise KeyError(name)
