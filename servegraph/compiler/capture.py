"""Pass 1, capture: walk the bound nodes from the output and record each as a NodeIR.

Keys are positions in a depth-first walk in argument order (``n0`` is the
output), so the same graph always gets the same keys. Cycles (possible only
by mutating a bound list after ``.bind()``) are recorded, not followed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..dsl.driver import DriverNode
from ..dsl.nodes import (
    DAGNode,
    DeploymentNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MethodNode,
    MultiOutputNode,
    is_user_object,
    iter_nodes,
)
from . import ir


@dataclasses.dataclass(frozen=True)
class Captured:
    """What capture found: IR records by key, and the user's nodes they came from."""

    root: str
    nodes: dict[str, ir.NodeIR]
    sources: dict[str, DAGNode] = dataclasses.field(compare=False)
    #: Nodes computed from an InputNode that the output never uses.
    dangling: tuple[DAGNode, ...] = ()
    http_adapter: Any = None


def _kind(node: DAGNode) -> str:
    return {
        InputNode: ir.INPUT,
        InputAttributeNode: ir.INPUT_ATTR,
        DeploymentNode: ir.DEPLOYMENT,
        MethodNode: ir.METHOD,
        FunctionNode: ir.FUNCTION,
        MultiOutputNode: ir.OUTPUT,
        DriverNode: ir.DRIVER,
    }[type(node)]


def object_template(value: Any, marker: Any) -> Any:
    """``value`` pickled with every graph node in it replaced by a slot for its marker (Ray Serve
    replaces nodes inside user objects with handles too). Left as it is if it cannot be pickled:
    the serialization check then reports it."""
    import io

    import cloudpickle

    markers: list[Any] = []

    class Pickler(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, DAGNode):
                markers.append(marker(obj))
                return str(len(markers) - 1)
            return None

    buffer = io.BytesIO()
    try:
        Pickler(buffer).dump(value)
    except Exception:  # reported by check_serializable, with the node and call site
        return value
    return ir.ObjectTemplate(buffer.getvalue(), tuple(markers))


def capture(root: DAGNode) -> Captured:
    if not isinstance(root, DAGNode):
        raise TypeError(
            f"expected a graph node built with .bind(), got {type(root).__name__}: {root!r}"
        )
    keys: dict[int, str] = {}
    order: list[DAGNode] = []

    # Iterative pre-order walk: deep graphs must not hit Python's recursion limit.
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in keys:
            continue
        keys[id(node)] = f"n{len(order)}"
        order.append(node)
        stack.extend(reversed(node._children()))

    def marker(node: DAGNode, in_constructor: bool) -> Any:
        if in_constructor and isinstance(node, (DeploymentNode, FunctionNode)):
            return ir.HandleRef(keys[id(node)])
        if in_constructor and isinstance(node, MethodNode) and not node._bound_args and not node._bound_kwargs:
            # Ray's class factory pattern: a method node with nothing bound becomes a handle to that method.
            return ir.HandleRef(keys[id(node._parent)], node.method)
        return ir.Ref(keys[id(node)])

    def template(value: Any, in_constructor: bool) -> Any:
        if isinstance(value, DAGNode):
            return marker(value, in_constructor)
        if isinstance(value, list):
            return [template(v, in_constructor) for v in value]
        if isinstance(value, tuple):
            return tuple(template(v, in_constructor) for v in value)
        if isinstance(value, dict):
            return {template(k, in_constructor): template(v, in_constructor) for k, v in value.items()}
        if is_user_object(value) and any(True for _ in iter_nodes(value)):
            return object_template(value, lambda node: marker(node, in_constructor))
        return value

    records: dict[str, ir.NodeIR] = {}
    adapter = None
    for node in order:
        key = keys[id(node)]
        kind = _kind(node)
        in_constructor = kind == ir.DEPLOYMENT
        args = tuple(template(a, in_constructor) for a in node._bound_args)
        kwargs = tuple((k, template(v, in_constructor)) for k, v in node._bound_kwargs.items())
        deps = frozenset(keys[id(c)] for c in node._children())
        fields: dict[str, Any] = {}
        if isinstance(node, (DeploymentNode, FunctionNode)):
            fields["deployment"] = key
            fields["target"] = node._deployment.func_or_class
        elif isinstance(node, MethodNode):
            fields["deployment"] = keys[id(node._parent)]
            fields["method"] = node.method
        elif isinstance(node, InputAttributeNode):
            fields["access"] = (node._access, node._key)
            args = (ir.Ref(keys[id(node._parent)]),)
        elif isinstance(node, DriverNode):
            adapter = node.http_adapter
        records[key] = ir.NodeIR(
            key=key,
            kind=kind,
            label=node._label(),
            call_site=node._call_site,
            args=args,
            kwargs=kwargs,
            deps=deps,
            **fields,
        )

    dangling = []
    for node in order:
        if isinstance(node, InputNode):
            for consumer in node._consumers:
                if id(consumer) not in keys and consumer not in dangling:
                    dangling.append(consumer)
    return Captured(
        root=keys[id(root)],
        nodes=records,
        sources={keys[id(n)]: n for n in order},
        dangling=tuple(dangling),
        http_adapter=adapter,
    )
