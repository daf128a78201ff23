"""Checks that read the deployments' code: handle calls inside it, and type annotations across edges.

Ray Serve finds both mistakes only when a request runs (a 500, or a wrong value passed along).
Each check is ``(app, ctx) -> list[Diagnostic]``, reading each node's ``target`` (the user's class or
function, kept in the IR) and registered in ``checks.CHECKS``.
Both checks are conservative: where the code cannot be read (no source, a dynamic attribute,
``*args``, a decorator that hides the signature, an annotation that cannot be judged) they
say nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Iterator
from typing import Any

from ...dsl.callsite import _display_path
from ...dsl.signature import bind_problem, describe_signature, function_method_problem, missing_method_hint
from ...errors import Diagnostic
from .. import ir
from ..context import PassContext
from . import types
from .rules import _diag

# -- handle calls ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HandleCall:
    """``self.<attr>.<method>.remote(...)`` (or ``self.<attr>.remote(...)``: method None) in a class body."""

    attr: str
    method: str | None
    line: int  # in the file
    positional: int
    keywords: tuple[str, ...]
    #: ``*args`` or ``**kwargs`` at the call: its arity cannot be known.
    unpacked: bool


def _self_attr(node: ast.AST) -> str | None:
    """``x`` for ``self.x``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _handle_of(node: ast.AST) -> str | None:
    """The handle attribute of ``self.x`` or ``self.x.options(...)``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "options"
    ):
        return _self_attr(node.func.value)
    return _self_attr(node)


def _parameter_of(value: ast.AST | None) -> str | None:
    """``p`` for ``p`` or ``p.options(...)`` (a handle kept with other options): the name stored."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "options":
        value = value.func.value
    return value.id if isinstance(value, ast.Name) else None


def _handle_call(call: ast.Call, first_line: int) -> HandleCall | None:
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "remote"):
        return None
    attr, method = _handle_of(func.value), None
    if attr is None and isinstance(func.value, ast.Attribute):
        attr, method = _handle_of(func.value.value), func.value.attr
    if attr is None:
        return None
    return HandleCall(
        attr=attr,
        method=method,
        line=first_line + call.lineno - 1,
        positional=sum(not isinstance(a, ast.Starred) for a in call.args),
        keywords=tuple(k.arg for k in call.keywords if k.arg is not None),
        unpacked=any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords),
    )


@dataclasses.dataclass(frozen=True)
class ClassCode:
    """What a class's source says about its handles: where each came from and how it is called."""

    file: str
    #: ``self.<attr> = <parameter>`` in ``__init__``, for attributes assigned nowhere else.
    stored: dict[str, str]
    calls: tuple[HandleCall, ...]


def read_class(cls: type) -> ClassCode | None:
    """The handle wiring in ``cls``'s own source, or None where it cannot be read."""
    try:
        lines, first_line = inspect.getsourcelines(cls)
        file = inspect.getsourcefile(cls)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    if file is None or not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return None
    body = tree.body[0]
    stored: dict[str, str] = {}
    assigned: dict[str, int] = {}  # how often each self attribute is assigned anywhere
    calls: list[HandleCall] = []
    for item in body.body:
        if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in item.args.posonlyargs + item.args.args + item.args.kwonlyargs}
        for node in ast.walk(item):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        attr = _self_attr(sub)
                        if attr is not None:
                            assigned[attr] = assigned.get(attr, 0) + 1
                            value = getattr(node, "value", None)
                            if (
                                item.name == "__init__"
                                and sub is target
                                and isinstance(node, (ast.Assign, ast.AnnAssign))
                                and _parameter_of(value) in params
                            ):
                                stored[attr] = _parameter_of(value) or ""
            elif isinstance(node, ast.Call):
                found = _handle_call(node, first_line)
                if found is not None:
                    calls.append(found)
            elif isinstance(node, ast.Name) and node.id == "setattr":
                return None  # attributes set by name: nothing can be said about them
    stored = {attr: param for attr, param in stored.items() if assigned.get(attr) == 1}
    return ClassCode(file=_display_path(file), stored=stored, calls=tuple(calls))


def _init_signature(cls: type) -> inspect.Signature | None:
    """``cls.__init__``'s signature, or None where it has none."""
    try:
        return inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return None


def _constructor_handles(record: ir.NodeIR, sig: inspect.Signature | None) -> dict[str, str]:
    """Constructor parameter -> node key of the deployment whose handle it receives (whole handles only)."""
    if sig is None:
        return {}
    try:
        bound = sig.bind(None, *record.args, **dict(record.kwargs))
    except TypeError:
        return {}
    out = {}
    for name, value in bound.arguments.items():
        if isinstance(value, ir.HandleRef) and value.method is None:
            out[name] = value.deployment
    return out


def _method_of(cls: type, name: str) -> tuple[Any, bool] | None:
    """``(callable, drop_self)`` for method ``name`` of ``cls``, or None if it has none."""
    static = inspect.getattr_static(cls, name, None)
    if static is None:
        return None
    if isinstance(static, staticmethod):
        return static.__func__, False
    fn = getattr(cls, name, None)
    if not callable(fn):
        return None
    return fn, not inspect.ismethod(fn)  # a classmethod comes bound


def check_handle_calls(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """Every ``self.<handle>.<method>.remote(...)`` in a deployment names a method its target has,
    with arguments its signature takes."""
    out: dict[tuple[str, int, str], Diagnostic] = {}
    # Per class, once: a graph binds the same few classes thousands of times, and inspect.signature
    # of a class without __init__ parses object.__init__'s text signature each time it is asked.
    code_of: dict[int, ClassCode | None] = {}
    init_of: dict[int, inspect.Signature | None] = {}
    for record in app.nodes:
        cls = record.target
        if record.kind != ir.DEPLOYMENT or not inspect.isclass(cls):
            continue
        if not any(isinstance(m, ir.HandleRef) for m in ir.iter_markers((record.args, record.kwargs))):
            continue  # no handle passed to this constructor: no handle call to check
        if id(cls) not in init_of:
            init_of[id(cls)] = _init_signature(cls)
        handles = _constructor_handles(record, init_of[id(cls)])
        if not handles:
            continue
        if id(cls) not in code_of:
            code_of[id(cls)] = read_class(cls)
        code = code_of[id(cls)]
        if code is None:
            continue
        for call in code.calls:
            param = code.stored.get(call.attr)
            key = handles.get(param) if param is not None else None
            if key is None:
                continue
            target_record = app.node(key)
            target = target_record.target
            if target_record.kind == ir.FUNCTION:
                diag = _check_function_call(record, call, param or call.attr, target_record, code.file)
            elif inspect.isclass(target):
                diag = _check_call(record, call, param or call.attr, target_record, target, code.file)
            else:
                continue
            if diag is not None:
                out.setdefault((diag.file or "", diag.line or 0, diag.message), diag)
    return list(out.values())


def _shown(call: HandleCall) -> str:
    return f"self.{call.attr}" + (f".{call.method}" if call.method else "") + ".remote()"


def _where(record: ir.NodeIR, param: str, target_record: ir.NodeIR) -> str:
    return (
        f"({record.label} bound at {record.call_site}; {param} is {target_record.label}, "
        f"bound at {target_record.call_site})"
    )


def _call_diag(record: ir.NodeIR, call: HandleCall, file: str, summary: str, **fields: Any) -> Diagnostic:
    """A handle-call diagnostic at the call's line in the deployment's code, about ``record``."""
    return Diagnostic("handle-call", summary, file=file, line=call.line, subject=record.name or record.label, **fields)


def _check_function_call(
    record: ir.NodeIR, call: HandleCall, param: str, target_record: ir.NodeIR, file: str
) -> Diagnostic | None:
    """A function deployment answers to the method names replicas and local mode accept (one rule)."""
    problem = function_method_problem(target_record.name or target_record.label, call.method or "__call__")
    if problem is None:
        return None
    return _call_diag(
        record,
        call,
        file,
        f"{record.label}: {_shown(call)}: {problem} {_where(record, param, target_record)};",
        hint=f"call it as self.{call.attr}.remote(...).",
    )


def _check_call(
    record: ir.NodeIR, call: HandleCall, param: str, target_record: ir.NodeIR, target: type, file: str
) -> Diagnostic | None:
    if "__getattr__" in {n for k in target.__mro__[:-1] for n in vars(k)}:
        return None  # methods made on the fly
    method = call.method or "__call__"
    shown, where = _shown(call), _where(record, param, target_record)
    found = _method_of(target, method)
    if method == "__call__" and not any("__call__" in vars(k) for k in target.__mro__[:-1]):
        found = None
    if found is None:
        if call.method is None:
            return None  # handle.remote() on a class without __call__: left to the runtime's message
        return _call_diag(
            record,
            call,
            file,
            f"{record.label}: {shown} calls {target_record.label}.{method}, which does not exist {where};",
            hint=missing_method_hint(target, method),
        )
    if call.unpacked:
        return None
    fn, drop_self = found
    placeholders = (None,) * call.positional
    problem = bind_problem(fn, placeholders, dict.fromkeys(call.keywords), drop_self=drop_self)
    if problem is None:
        return None
    return _call_diag(
        record,
        call,
        file,
        f"{record.label}: {shown} {problem.text} {where}",
        expected=describe_signature(target_record.label + "." + method, fn),
        hint="fix the arguments of the call.",
        keyword=problem.keyword,
    )


# -- type annotations across edges ----------------------------------------------------------------


def _hints(fn: Any) -> dict[str, Any] | None:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references, odd objects: nothing to say
        return None


def _callable_of(record: ir.NodeIR, nodes: dict[str, ir.NodeIR]) -> tuple[Any, bool] | None:
    """The function a method or function node runs, and whether its first parameter is ``self``."""
    if record.kind == ir.FUNCTION:
        return (record.target, False) if callable(record.target) else None
    if record.kind == ir.METHOD and record.deployment is not None:
        cls = nodes[record.deployment].target
        if not inspect.isclass(cls) or record.method is None:
            return None
        return _method_of(cls, record.method)
    return None


def _returns(fn: Any) -> Any:
    """``fn``'s return annotation (an async function's: what it returns when awaited), or None if it has
    none or is a generator."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return None
    hints = _hints(fn)
    if hints is None or "return" not in hints:
        return None
    return hints["return"]


def _inputs(record: ir.NodeIR) -> Iterator[tuple[int | str, ir.Ref]]:
    """(position or keyword, upstream ref) for the node's arguments that are an upstream value itself."""
    for i, value in enumerate(record.args):
        if isinstance(value, ir.Ref):
            yield i, value
    for name, value in record.kwargs:
        if isinstance(value, ir.Ref):
            yield name, value


def _parameters(fn: Any, drop_self: bool) -> tuple[list[inspect.Parameter], dict[str, Any]] | None:
    """``fn``'s parameters (without ``self``) and its resolved annotations, or None if it has none."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    hints = _hints(fn)
    if not hints:
        return None
    return list(sig.parameters.values())[1 if drop_self else 0 :], hints


def _line_of(fn: Any) -> str:
    try:
        return f"{_display_path(inspect.getsourcefile(fn) or '?')}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return "?"


@dataclasses.dataclass(frozen=True)
class _Produced:
    """What one producer gives a consumer: its annotation, the node, and where the annotation is.

    The words are made only for a diagnostic (:attr:`who`): a call site costs a path computation.
    """

    hint: Any
    record: ir.NodeIR
    #: The function whose return annotation it is (None for MultiOutputNode's list).
    fn: Any = None
    #: The routing nodes' branches it came through, outermost first (``Switch branch es: ``).
    via: str = ""

    @property
    def who(self) -> str:
        """``Typed.text (bound at file:line)``, after the branch of a routing node it came through."""
        return f"{self.via}{self.record.label} (bound at {self.record.call_site})"

    @property
    def line(self) -> str:
        """``file:line`` of the annotation."""
        return _line_of(self.fn) if self.fn is not None else str(self.record.call_site)


class _Producers:
    """Every value a node may give its consumers, with its annotation: one for a method or function node,
    one per branch for a switch or split (any may be the one a request takes), a list for MultiOutputNode.
    Annotations are read once per function: a graph binds the same few functions thousands of times."""

    def __init__(self, nodes: dict[str, ir.NodeIR]):
        self.nodes = nodes
        self._returns: dict[int, Any] = {}
        self._memo: dict[str, tuple[_Produced, ...]] = {}

    def of(self, key: str, depth: int = 0) -> tuple[_Produced, ...]:
        if key not in self._memo:
            self._memo[key] = self._find(key, depth)
        return self._memo[key]

    def _find(self, key: str, depth: int) -> tuple[_Produced, ...]:
        record = self.nodes.get(key)
        if record is None or depth > 50:  # routing nodes nested deeper than anyone writes: not judged
            return ()
        if record.kind in ir.ROUTING:
            out: list[_Produced] = []
            assert record.route is not None
            for label, value in zip(record.route.labels, record.route.branches(record.args), strict=True):
                if isinstance(value, ir.Ref):
                    for produced in self.of(value.key, depth + 1):
                        out.append(dataclasses.replace(produced, via=f"{record.label} branch {label}: {produced.via}"))
            return tuple(out)
        if record.kind == ir.OUTPUT and record.args and isinstance(record.args[0], list):
            members = [self.of(m.key, depth + 1) for m in record.args[0] if isinstance(m, ir.Ref)]
            if len(members) != len(record.args[0]) or any(len(m) != 1 for m in members):
                return ()
            # A union of the members' annotations (``Union[...]`` of one is that one): the list's items.
            item = typing.Union.__getitem__(tuple(m[0].hint for m in members))
            return (_Produced(list[item], record),)  # type: ignore[valid-type]
        found = _callable_of(record, self.nodes)
        if found is None:
            return ()
        fn = found[0]
        if id(fn) not in self._returns:
            self._returns[id(fn)] = _returns(fn)
        hint = self._returns[id(fn)]
        if hint is None:
            return ()
        return (_Produced(hint, record, fn),)


def check_annotations(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """A value passed along an edge whose producer's return annotation cannot fit the consumer's
    parameter annotation, judged by :func:`.types.relation` (beartype's ``is_subhint`` and the classes'
    own rules): an error where no value of one can be the other (``-> str`` into ``v: int``), a warning
    (an error with ``--strict``) where only some can (``-> Optional[int]`` into ``v: int``).

    A switch or split passes on the value of whichever branch a request takes, so each branch is judged
    against the consumer on its own.
    """
    out = []
    nodes = {record.key: record for record in app.nodes}
    producers = _Producers(nodes)
    # Per function, once: a graph binds the same few functions thousands of times.
    params_of: dict[int, tuple[list[inspect.Parameter], dict[str, Any]] | None] = {}
    verdicts: dict[tuple[int, int], str] = {}
    for record in app.nodes:
        consumer = _callable_of(record, nodes)
        if consumer is None:
            continue
        fn, drop_self = consumer
        if id(fn) not in params_of:
            params_of[id(fn)] = _parameters(fn, drop_self)
        found = params_of[id(fn)]
        if found is None:
            continue
        params, hints = found
        for place, ref in _inputs(record):
            if isinstance(place, int):
                if place >= len(params) or params[place].kind not in (
                    inspect.Parameter.POSITIONAL_ONLY,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                ):
                    continue
                param = params[place].name
            else:
                param = place
            if param not in hints:
                continue
            wanted = hints[param]
            for produced in producers.of(ref.key):
                memo = (id(produced.hint), id(wanted))
                if memo not in verdicts:
                    verdicts[memo] = types.relation(produced.hint, wanted)
                verdict = verdicts[memo]
                if verdict not in (types.NEVER, types.MAYBE):
                    continue
                never = verdict == types.NEVER
                out.append(
                    _diag(
                        "annotation",
                        record,
                        f"{param} is annotated {types.show(wanted)} ({_line_of(fn)}), but it gets "
                        f"{produced.who}, which returns {types.show(produced.hint)} ({produced.line})"
                        + (
                            f"; {types.show(produced.hint)} never fits {types.show(wanted)}."
                            if never
                            else f"; {types.show(produced.hint)} fits {types.show(wanted)} only sometimes."
                        ),
                        "Convert the value in one of them, or fix the annotation that is wrong.",
                        severity="error" if never else "warning",
                        call=f"{record.label}.bind()",
                    )
                )
    return out
