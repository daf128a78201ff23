"""Pass 1, capture: walk the bound nodes from the output and record each as a NodeIR.

The only pass that reads the user's DSL objects: it copies into the IR all that
later passes, checks and emitters need (targets, options, call sites, labels),
so after it nothing looks back. Keys are positions in a depth-first walk in
argument order (``n0`` is the output), so the same graph always gets the same
keys. Cycles (possible only by mutating a bound list after ``.bind()``) are
recorded, not followed.
"""

from __future__ import annotations

from typing import Any

from ..._walk import map_leaves
from ...dsl.driver import DriverNode
from ...dsl.nodes import (
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
from ...dsl.routing import Split, Switch
from .. import ir
from ..config.app import find_import_path


def _kind(node: DAGNode) -> str:
    return {
        InputNode: ir.INPUT,
        InputAttributeNode: ir.INPUT_ATTR,
        DeploymentNode: ir.DEPLOYMENT,
        MethodNode: ir.METHOD,
        FunctionNode: ir.FUNCTION,
        MultiOutputNode: ir.OUTPUT,
        DriverNode: ir.DRIVER,
        Switch: ir.SWITCH,
        Split: ir.SPLIT,
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


def capture(root: DAGNode) -> ir.AppIR:
    """The graph whose output is ``root``, as IR records (edges, names and options come from later passes)."""
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
        def leaf(item: Any) -> Any:
            if isinstance(item, DAGNode):
                return marker(item, in_constructor)
            if is_user_object(item) and any(True for _ in iter_nodes(item)):
                return object_template(item, lambda node: marker(node, in_constructor))
            return item

        return map_leaves(value, leaf)

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
            fields["options"] = node._deployment.deployment_options
        elif isinstance(node, MethodNode):
            fields["deployment"] = keys[id(node._parent)]
            fields["method"] = node.method
        elif isinstance(node, InputAttributeNode):
            fields["access"] = (node._access, node._key)
            args = (ir.Ref(keys[id(node._parent)]),)
        elif isinstance(node, DriverNode):
            adapter = node.http_adapter
        elif isinstance(node, Switch):
            fields["route"] = ir.RouteIR(
                ir.BY_KEY if node._mode == "keys" else ir.BY_PREDICATE,
                node._labels,
                node._choices,
                default=node._has_default,
                site=str(node._call_site),
            )
        elif isinstance(node, Split):
            fields["route"] = ir.RouteIR(ir.BY_WEIGHT, node._labels, node._choices, name=node.name, site=str(node._call_site))
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

    unreachable: list[ir.UnreachableIR] = []
    seen: set[int] = set()
    for node in order:
        if isinstance(node, InputNode):
            for consumer in node._consumers:
                if id(consumer) not in keys and id(consumer) not in seen:
                    seen.add(id(consumer))
                    unreachable.append(ir.UnreachableIR(consumer._label(), consumer._call_site))
    return ir.AppIR(
        nodes=tuple(records[f"n{i}"] for i in range(len(order))),
        root=keys[id(root)],
        unreachable=tuple(unreachable),
        http_adapter=adapter,
        import_path=find_import_path(root),
    )
