"""Which handle API a deployment's code was written for, read from the code itself.

Inside a deployment one line means two things. The seed's code (Ray Serve 2.0-2.4's
``RayServeDeploymentHandle``) awaits a handle call twice: ``ref = await self.model.remote(x)`` gives an
ObjectRef, ``await ref`` the value. Ray Serve 2.5+ code (``DeploymentHandle``) awaits once:
``await self.model.remote(x)`` is the value. A constructor handle must be the kind its code expects, so
each deployment is read once, in this order (the first that decides wins):

1. an explicit choice: ``@serve.handle_api("new")`` (or ``"old"``) on the class or function;
2. Ray's own switch, the environment variable ``RAY_SERVE_ENABLE_NEW_HANDLE_API`` (``1`` or ``0``);
3. the constructor's annotations: ``DeploymentHandle`` (new) or ``RayServeDeploymentHandle`` /
   ``RayServeHandle`` (old);
4. how the code uses its handles' calls: a call's result awaited twice, or its awaited result awaited
   again or handed to ``ray.get``, ``ray.wait`` or ``asyncio.gather`` (which take refs), is the old API;
   ``.result()`` on a call, or an awaited call used as a value, is the new one (both seen: old, the seed's
   code keeps working exactly);
5. what the module imports: ``DeploymentHandle``/``DeploymentResponse`` (new) or
   ``RayServeDeploymentHandle``/``RayServeHandle`` (old);
6. nothing says: the old API, as the seed's code expects.

``servegraph check`` prints the choice and its reason for every deployment that receives handles.
This module reads code only (``ast``, ``inspect``): replicas import it without Ray Serve or the compiler.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
import textwrap
from typing import Any

NEW = "new"
OLD = "old"

#: The attribute ``serve.handle_api`` sets on a deployment's class or function.
ATTRIBUTE = "__servegraph_handle_api__"

#: Where the driver records its choice on a deployment's class or function before deploying it, so a replica
#: that cannot read the code (a class defined in a script's ``__main__``) uses the same one. The record holds the
#: deciding process's mark: that process decides afresh each time (its environment or code may have changed since).
DECIDED = "__servegraph_handle_era__"

#: This process, in a record (a pid alone repeats across machines and containers).
_THIS_PROCESS = f"{os.getpid()}-{os.urandom(6).hex()}"

#: Ray Serve's switch between the two APIs (Ray 2.5-2.9); servegraph honours it the same way.
RAY_ENV = "RAY_SERVE_ENABLE_NEW_HANDLE_API"

_NEW_NAMES = frozenset({"DeploymentHandle", "DeploymentResponse"})
_OLD_NAMES = frozenset({"RayServeDeploymentHandle", "RayServeHandle", "RayServeSyncHandle"})


@dataclasses.dataclass(frozen=True)
class HandleEra:
    """The handle API chosen for a deployment's constructor handles, and why (for ``servegraph check``)."""

    api: str  # NEW or OLD
    reason: str

    @property
    def handle_class(self) -> str:
        return "DeploymentHandle" if self.api == NEW else "RayServeDeploymentHandle"


def handle_api(api: str) -> Any:
    """Decorator: say which handle API a deployment's code uses (``"new"``: ``DeploymentHandle``, one
    ``await`` per call; ``"old"``: ``RayServeDeploymentHandle``, two). Put it under ``@serve.deployment``.

    Raises:
        ValueError: ``api`` is neither "new" nor "old".
    """
    if api not in (NEW, OLD):
        raise ValueError(f"serve.handle_api() takes 'new' (DeploymentHandle) or 'old' (RayServeDeploymentHandle), got {api!r}")

    def mark(target: Any) -> Any:
        inner = getattr(target, "func_or_class", target)  # also above @serve.deployment
        setattr(inner, ATTRIBUTE, api)
        return target

    return mark


def handle_era(target: Any) -> HandleEra:
    """Which handle API ``target`` (a deployment's class or function) expects; see the module docstring."""
    explicit = getattr(target, ATTRIBUTE, None)
    if explicit in (NEW, OLD):
        return HandleEra(explicit, f"serve.handle_api({explicit!r}) on {_name(target)}")
    decided = getattr(target, DECIDED, None)
    if isinstance(decided, tuple) and len(decided) == 3 and decided[2] != _THIS_PROCESS:
        return HandleEra(*decided[:2])
    env = os.environ.get(RAY_ENV)
    if env in ("1", "0"):
        return HandleEra(NEW if env == "1" else OLD, f"{RAY_ENV}={env}")
    for era in (_from_annotations(target), _from_code(target), _from_imports(target)):
        if era is not None:
            return era
    return HandleEra(OLD, "nothing in the code says otherwise (a call's result is awaited twice, as in Ray Serve 2.0-2.4)")


def record_handle_era(target: Any) -> HandleEra:
    """Decide for ``target`` here (the driver, which can read its code) and record it on ``target``."""
    era = handle_era(target)
    try:
        setattr(target, DECIDED, (era.api, era.reason, _THIS_PROCESS))
    except (AttributeError, TypeError):  # a builtin or slotted callable: the replica decides again
        pass
    return era


def _name(target: Any) -> str:
    return getattr(target, "__qualname__", repr(target))


def _annotation_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1].strip("'\"")
    return getattr(annotation, "__name__", "")


def _from_annotations(target: Any) -> HandleEra | None:
    init = getattr(target, "__init__", None) if inspect.isclass(target) else None
    annotations = getattr(init, "__annotations__", None) or {}
    for param, annotation in annotations.items():
        if param == "return":
            continue
        name = _annotation_name(annotation)
        if name in _NEW_NAMES:
            return HandleEra(NEW, f"the constructor's parameter {param!r} is annotated {name}")
        if name in _OLD_NAMES:
            return HandleEra(OLD, f"the constructor's parameter {param!r} is annotated {name}")
    return None


def _tree(target: Any) -> tuple[ast.AST, int] | None:
    try:
        source, first = inspect.getsourcelines(target)
        return ast.parse(textwrap.dedent("".join(source))), first
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None


def _is_handle_call(node: ast.AST) -> bool:
    """``<something>.remote(...)`` where something reaches ``self.<attr>`` (or a parameter's handle)."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "remote"


def _ref_taking_call(node: ast.AST | None) -> str | None:
    """What a call that takes ObjectRefs, not values, is called in a message (``ray.get``, ``ray.wait``,
    ``asyncio.gather``), or None: an awaited handle call handed to one was written for the old API."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
        return None
    name = f"{node.func.value.id}.{node.func.attr}"
    return name if name in ("ray.get", "ray.wait", "asyncio.gather") else None


def _ref_arguments(node: ast.Call) -> list[ast.AST]:
    """The arguments of a ref-taking call, with the items of a list or tuple literal among them."""
    out: list[ast.AST] = []
    for arg in node.args:
        out.extend(arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg.value if isinstance(arg, ast.Starred) else arg])
    return out


class _Uses:
    """Evidence of each API in a deployment's code, from where each ``await <handle call>`` sits."""

    def __init__(self) -> None:
        self.old: list[tuple[int, str]] = []
        self.new: list[tuple[int, str]] = []

    def read(self, tree: ast.AST) -> None:
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        awaited_names: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "result" and _is_handle_call(node.func.value):
                self.new.append((node.lineno, "calls .result() on a handle call"))
            if not (isinstance(node, ast.Await) and _is_handle_call(node.value)):
                continue
            parent = parents.get(node)
            holder = parents.get(parent) if isinstance(parent, (ast.List, ast.Tuple)) else parent
            if isinstance(parent, ast.Await):
                self.old.append((node.lineno, "awaits a handle call's result twice"))
            elif _ref_taking_call(holder) and node in _ref_arguments(holder):  # type: ignore[arg-type]
                self.old.append((node.lineno, f"passes an awaited handle call to {_ref_taking_call(holder)}()"))
            elif isinstance(parent, ast.Assign) and all(isinstance(t, ast.Name) for t in parent.targets):
                for target in parent.targets:
                    assert isinstance(target, ast.Name)
                    awaited_names[target.id] = node.lineno  # decided by what the code does with it next
            elif not isinstance(parent, ast.Expr):  # returned, computed with, put in a list, passed on
                self.new.append((node.lineno, "uses an awaited handle call as its value"))
        for node in ast.walk(tree):
            names: list[tuple[str, str]] = []
            if isinstance(node, ast.Await) and isinstance(node.value, ast.Name):
                names.append((node.value.id, "awaits"))
            elif (taker := _ref_taking_call(node)) is not None:
                assert isinstance(node, ast.Call)
                names.extend((arg.id, f"passes to {taker}()") for arg in _ref_arguments(node) if isinstance(arg, ast.Name))
            for name, how in names:
                if name in awaited_names:
                    self.old.append((getattr(node, "lineno", 0), f"{how} {name!r}, an awaited handle call's result"))
            value_use = _value_use(node, parents)
            if value_use is not None and value_use[0] in awaited_names:
                self.new.append((getattr(node, "lineno", 0), f"{value_use[1]} {value_use[0]!r}, an awaited handle call's result"))


#: What an ObjectRef has: an awaited handle call's result used otherwise is a value (the new API's).
_REF_ATTRIBUTES = frozenset({"hex", "binary", "future", "as_future", "task_id", "job_id", "is_nil", "call_site", "owner_address"})


def _value_use(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[str, str] | None:
    """(name, how) when ``node`` uses a name as a value no ObjectRef could be (subscripted, computed with,
    iterated, unpacked, or a method an ObjectRef lacks), else None."""
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return node.value.id, "subscripts"
    if isinstance(node, ast.BinOp):
        for side in (node.left, node.right):
            if isinstance(side, ast.Name):
                return side.id, "computes with"
    if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and isinstance(node.iter, ast.Name):
        return node.iter.id, "iterates over"
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and any(isinstance(t, ast.Tuple) for t in node.targets):
        return node.value.id, "unpacks"
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr not in _REF_ATTRIBUTES:
        if isinstance(parents.get(node), ast.Call) and parents[node].func is node:  # type: ignore[attr-defined]
            return node.value.id, f"calls .{node.attr}() on"
    return None


def _from_code(target: Any) -> HandleEra | None:
    found = _tree(target)
    if found is None:
        return None
    tree, first = found
    uses = _Uses()
    uses.read(tree)
    file = _short_file(target)
    if uses.old:
        line, what = min(uses.old)
        return HandleEra(OLD, f"the code {what} ({file}:{first + line - 1})")
    if uses.new:
        line, what = min(uses.new)
        return HandleEra(NEW, f"the code {what} ({file}:{first + line - 1})")
    return None


def _short_file(target: Any) -> str:
    try:
        return os.path.basename(inspect.getsourcefile(target) or "?")
    except TypeError:
        return "?"


def _from_imports(target: Any) -> HandleEra | None:
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    if module is None:
        return None
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if names & _NEW_NAMES:
                return HandleEra(NEW, f"its module imports {', '.join(sorted(names & _NEW_NAMES))}")
            if names & _OLD_NAMES:
                return HandleEra(OLD, f"its module imports {', '.join(sorted(names & _OLD_NAMES))}")
    return None
