"""Graph nodes that ``.bind()`` returns.

A node records only what the user wrote: the target, the bound arguments,
options, and the call site. The compiler's capture pass turns nodes into IR.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .._walk import iter_leaves
from ..errors import BindError
from .callsite import CallSite, diagnostic, user_call_site
from .signature import BIND_HINT, bind_problem, describe_signature, missing_method_hint

if TYPE_CHECKING:
    from .deployment import Deployment


def iter_nodes(value: Any, _seen: set[int] | None = None) -> Iterator[DAGNode]:
    """Nodes nested in a bound argument, through lists, tuples, dicts and the attributes of user
    objects (as Ray Serve finds them), in order."""
    for leaf in iter_leaves(value):
        if isinstance(leaf, DAGNode):
            yield leaf
        elif is_user_object(leaf):
            seen = set() if _seen is None else _seen
            if id(leaf) not in seen and len(seen) < 1000:  # objects may refer to each other
                seen.add(id(leaf))
                inner = list(vars(leaf).values())
                # Subclasses of list and dict are leaves to the walker (it would rebuild them as their
                # base type) but Ray Serve finds nodes among their items too; capture pickles them whole.
                if isinstance(leaf, (list, tuple)):
                    inner.extend(leaf)
                elif isinstance(leaf, dict):
                    inner.extend(leaf.items())
                for item in inner:
                    yield from iter_nodes(item, seen)


def is_user_object(value: Any) -> bool:
    """An instance of a user's class whose attributes may hold graph nodes (not a class, function or module)."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, (type, DAGNode, types.FunctionType, types.MethodType, types.ModuleType))
        and not callable(getattr(value, "bind", None))
    )


#: Runs ``DAGNode.execute`` (handed in by servegraph/__init__.py: the DSL imports no runtime).
_EXECUTOR: Callable[[DAGNode, tuple, dict], Any] | None = None


def set_executor(executor: Callable[[DAGNode, tuple, dict], Any]) -> None:
    global _EXECUTOR
    _EXECUTOR = executor


class DAGNode:
    """Base of every node in a deployment graph."""

    _kind = "node"

    def __init__(self, args: tuple, kwargs: dict, call_site: CallSite):
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs)
        self._call_site = call_site
        for child in self._children():
            root = child._input_root()
            if root is not None:
                root._consumers.append(self)

    # Graph structure ---------------------------------------------------------
    def _children(self) -> list[DAGNode]:
        """Upstream nodes this node's bound arguments refer to, in argument order."""
        out = list(iter_nodes(self._bound_args))
        out.extend(iter_nodes(self._bound_kwargs))
        return out

    def _input_root(self) -> InputNode | None:
        return None

    def _label(self) -> str:
        return self._kind

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Ray's DAG API: run the graph once on Ray with these inputs, without an HTTP route.

        ``ray.get(dag.execute(1))`` gives the output; a graph whose output is a deployment gives a handle
        to it. The graph is deployed as an application of its own (kept for later ``execute`` calls,
        ended by ``serve.shutdown()``).
        """
        if _EXECUTOR is None:
            raise RuntimeError("dag.execute() needs servegraph's runtime: import servegraph first")
        return _EXECUTOR(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._label()} bound at {self._call_site}>"

    def __iter__(self):
        raise TypeError(
            f"{self._label()} is a graph node, not a value: its value exists only when a request runs. "
            "Pass the node itself to .bind() instead of unpacking it."
        )

    def __bool__(self) -> bool:
        raise TypeError(
            f"{self._label()} is a graph node, not a value; it cannot be used in 'if' or 'and/or' "
            "while the graph is being built. Move the branch into a deployment method."
        )


class DeploymentNode(DAGNode):
    """A bound deployment class: ``Model.bind(...)``. Calls to it are method nodes."""

    _kind = "deployment"

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict, call_site: CallSite):
        self._deployment = deployment
        super().__init__(args, kwargs, call_site)

    def _label(self) -> str:
        return self._deployment.name

    def __getattr__(self, method: str) -> _MethodBinder:
        if method.startswith("_") and method != "__call__":
            raise AttributeError(method)
        if method in ("bind", "remote") and not hasattr(self._deployment.func_or_class, method):
            raise _used_again(self, method)
        return _MethodBinder(self, method)

    def options(self, **kwargs: Any) -> DeploymentNode:
        """Ray's ``node.options(...)``: the same bound node with deployment options overridden."""
        return DeploymentNode(
            self._deployment.options(**kwargs), self._bound_args, self._bound_kwargs, self._call_site
        )


class _MethodBinder:
    """``node.method``: waits for ``.bind()`` to make a method-call node."""

    __slots__ = ("_parent", "_method")

    def __init__(self, parent: DeploymentNode, method: str):
        self._parent = parent
        self._method = method

    def bind(self, *args: Any, _call_site: CallSite | None = None, **kwargs: Any) -> MethodNode:
        site = user_call_site(_call_site)
        cls = cast(type, self._parent._deployment.func_or_class)
        name = self._parent._deployment.name
        fn = getattr(cls, self._method, None)
        if self._method == "__call__" and not any("__call__" in vars(k) for k in cls.__mro__[:-1]):
            fn = None  # every class has type.__call__; only one the class defines counts
        call = f"{name}.{self._method}.bind()"
        if fn is None or not callable(fn):
            raise BindError(
                diagnostic(
                    "bind-arguments",
                    f"{name} has no method {self._method!r};",
                    site,
                    subject=name,
                    call=call,
                    hint=missing_method_hint(cls, self._method),
                )
            )
        problem = bind_problem(fn, args, kwargs, drop_self=True)
        if problem is not None:
            raise BindError(
                diagnostic(
                    "bind-arguments",
                    problem.text,
                    site,
                    subject=name,
                    call=call,
                    expected=describe_signature(name + "." + self._method, fn),
                    hint=BIND_HINT,
                    keyword=problem.keyword,
                )
            )
        return MethodNode(self._parent, self._method, args, kwargs, site)

    def __getattr__(self, name: str) -> Any:
        if name == "remote":
            raise AttributeError(
                f".remote() cannot be used on ClassMethodNodes such as {self._parent._label()}.{self._method}: "
                "build the graph with .bind(), serve.run() it, and call .remote() on the handle it returns."
            )
        raise AttributeError(f"{self._parent._label()}.{self._method} has no attribute {name!r}; call .bind() on it")


def _used_again(node: DAGNode, name: str) -> AttributeError:
    """Ray's AttributeError for ``node.bind()`` / ``node.remote()`` on a node that is already bound."""
    if name == "bind":
        return AttributeError(
            f".bind() cannot be used again on {node._label()} (bound at {node._call_site}): it is already a "
            "graph node. Pass it to another deployment's .bind(), or serve.run() it."
        )
    prefix = ""
    if isinstance(node, (DeploymentNode, FunctionNode)):
        # In the words of both Ray eras: a bound deployment is a DAG node of its class (2.0-2.4), an
        # Application (2.5+).
        prefix = "'Application' object has no attribute 'remote'"
        if isinstance(node, DeploymentNode):
            prefix += f" (type object {node._label()!r} has no attribute 'remote')"
        prefix += ": "
    return AttributeError(
        f"{prefix}.remote() cannot be used on {node._label()} (bound at {node._call_site}), a graph node: "
        "serve.run() the graph and call .remote() on the handle it returns."
    )


class MethodNode(DAGNode):
    """A method call on a bound deployment: ``model.forward.bind(x)``."""

    _kind = "method"

    def __init__(self, parent: DeploymentNode, method: str, args: tuple, kwargs: dict, call_site: CallSite):
        self._parent = parent
        self._method = method
        super().__init__(args, kwargs, call_site)

    @property
    def parent(self) -> DeploymentNode:
        return self._parent

    @property
    def method(self) -> str:
        return self._method

    def _children(self) -> list[DAGNode]:
        return [self._parent, *super()._children()]

    def _label(self) -> str:
        return f"{self._parent._label()}.{self._method}"

    def __getattr__(self, name: str) -> Any:
        if name in ("bind", "remote"):
            raise _used_again(self, name)
        raise AttributeError(name)


class FunctionNode(DAGNode):
    """A bound function deployment: ``f.bind(x)``."""

    _kind = "function"

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict, call_site: CallSite):
        self._deployment = deployment
        super().__init__(args, kwargs, call_site)

    def _label(self) -> str:
        return self._deployment.name

    def __getattr__(self, name: str) -> Any:
        if name in ("bind", "remote"):
            raise _used_again(self, name)
        raise AttributeError(name)


_input_ids = itertools.count()


class InputNode(DAGNode):
    """The request's input. ``with InputNode() as inp:``; ``inp[0]``, ``inp["key"]``, ``inp.attr``.

    Called with one positional argument (as HTTP calls are, with the JSON body),
    the input is that value and ``inp[k]`` indexes into it. Called with several
    arguments, ``inp[i]`` is the i-th positional one and ``inp["k"]`` the keyword one.
    """

    _kind = "input"

    def __init__(self, *, _call_site: CallSite | None = None):
        super().__init__((), {}, user_call_site(_call_site))
        self._consumers: list[DAGNode] = []
        self._ordinal = next(_input_ids)

    def _input_root(self) -> InputNode:
        return self

    def _label(self) -> str:
        return "InputNode"

    def __enter__(self) -> InputNode:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __getitem__(self, key: Any) -> InputAttributeNode:
        return InputAttributeNode(self, key, "item", user_call_site())

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, "attr", user_call_site())


class InputAttributeNode(DAGNode):
    """``inp[key]`` or ``inp.attr``: a part of the request's input."""

    _kind = "input_attr"

    def __init__(self, parent: DAGNode, key: Any, access: str, call_site: CallSite):
        self._parent = parent
        self._key = key
        self._access = access  # "item" or "attr"
        super().__init__((), {}, call_site)
        root = parent._input_root()
        if root is not None:
            root._consumers.append(self)

    def _children(self) -> list[DAGNode]:
        return [self._parent]

    def _input_root(self) -> InputNode | None:
        return self._parent._input_root()

    def _label(self) -> str:
        base = self._parent._label()
        return f"{base}.{self._key}" if self._access == "attr" else f"{base}[{self._key!r}]"

    def __getitem__(self, key: Any) -> InputAttributeNode:
        return InputAttributeNode(self, key, "item", user_call_site())

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, "attr", user_call_site())


class MultiOutputNode(DAGNode):
    """Several outputs returned together as a list: ``MultiOutputNode([a, b])``."""

    _kind = "output"

    def __init__(self, outputs: list[DAGNode] | tuple[DAGNode, ...], *, _call_site: CallSite | None = None):
        site = user_call_site(_call_site)
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise BindError(
                diagnostic(
                    "bind-arguments", "MultiOutputNode() takes a non-empty list of graph nodes", site, subject="MultiOutputNode"
                )
            )
        for item in outputs:
            if not isinstance(item, DAGNode):
                raise BindError(
                    diagnostic(
                        "bind-arguments",
                        f"MultiOutputNode() got {type(item).__name__} {item!r};",
                        site,
                        subject="MultiOutputNode",
                        hint="every output must be a graph node made by .bind() or an InputNode",
                    )
                )
        super().__init__((list(outputs),), {}, site)

    @property
    def outputs(self) -> list[DAGNode]:
        return list(self._bound_args[0])

    def _label(self) -> str:
        return "MultiOutputNode"


__all__ = [
    "DAGNode",
    "DeploymentNode",
    "MethodNode",
    "FunctionNode",
    "InputNode",
    "InputAttributeNode",
    "MultiOutputNode",
]
