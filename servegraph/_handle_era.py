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
   or ``ray.get`` again, is the old API; ``.result()`` on a call, or an awaited call used as a value,
   is the new one (both seen: old, the seed's code keeps working exactly);
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
#: that cannot read the code (a class defined in a script's ``__main__``) uses the same one.
DECIDED = "__servegraph_handle_era__"

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
    if isinstance(decided, tuple) and len(decided) == 2:
        return HandleEra(*decided)
    env = os.environ.get(RAY_ENV)
    if env in ("1", "0"):
        return HandleEra(NEW if env == "1" else OLD, f"{RAY_ENV}={env}")
    for era in (_from_annotations(target), _from_code(target), _from_imports(target)):
        if era is not None:
            return era
    return HandleEra(OLD, "nothing in the code says otherwise (a call's result is awaited twice, as in Ray Serve 2.0-2.4)")


def record_handle_era(target: Any) -> HandleEra:
    """Decide for ``target`` here (the driver, which can read its code) and record it on ``target``."""
    if DECIDED in getattr(target, "__dict__", {}):
        delattr(target, DECIDED)  # decide again: the code or the environment may have changed
    era = handle_era(target)
    try:
        setattr(target, DECIDED, (era.api, era.reason))
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


class _Uses(ast.NodeVisitor):
    """Collects evidence of each API in a deployment's code."""

    def __init__(self) -> None:
        self.old: list[tuple[int, str]] = []
        self.new: list[tuple[int, str]] = []
        #: Names bound to ``await <handle call>`` (an ObjectRef under the old API, a value under the new).
        self.awaited_names: dict[str, int] = {}
        self.name_uses: list[tuple[str, int, str]] = []

    def visit_Await(self, node: ast.Await) -> None:
        inner = node.value
        if isinstance(inner, ast.Await) and _is_handle_call(inner.value):
            self.old.append((node.lineno, "awaits a handle call's result twice"))
        elif isinstance(inner, ast.Name):
            self.name_uses.append((inner.id, node.lineno, "await"))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        value = node.value
        if isinstance(value, ast.Await) and _is_handle_call(value.value):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.awaited_names[target.id] = node.lineno
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "result" and _is_handle_call(func.value):
            self.new.append((node.lineno, "calls .result() on a handle call"))
        if isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name) and func.value.id == "ray":
            for arg in node.args:
                if isinstance(arg, ast.Name):
                    self.name_uses.append((arg.id, node.lineno, "ray.get"))
        self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if isinstance(node.value, ast.Await) and _is_handle_call(node.value.value):
            self.new.append((node.lineno, "returns an awaited handle call as its value"))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        for side in (node.left, node.right):
            if isinstance(side, ast.Await) and _is_handle_call(side.value):
                self.new.append((node.lineno, "computes with an awaited handle call's value"))
        self.generic_visit(node)

    def finish(self) -> None:
        for name, line, how in self.name_uses:
            if name in self.awaited_names:
                self.old.append((line, f"{'awaits' if how == 'await' else 'ray.get()s'} {name!r}, an awaited handle call's result"))


def _from_code(target: Any) -> HandleEra | None:
    found = _tree(target)
    if found is None:
        return None
    tree, first = found
    uses = _Uses()
    uses.visit(tree)
    uses.finish()
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
