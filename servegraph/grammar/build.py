"""Syntax tree to graph nodes: resolve names and imports, then build each graph with the DSL's public API.

Every node is made exactly as Python code would make it (``Model.bind(...)``,
``node.method.bind(...)``, ``InputNode()``, ``MultiOutputNode([...])``,
``DAGDriver.bind(...)``), with ``_call_site`` set to the token's
``file:line:col``; so checks, lowering, configs and the runtime treat a ``.sg``
graph like any other. Each problem becomes a diagnostic at its token and the
build goes on, so one run reports every error in the file; a name whose
definition failed is "broken" and its uses stay quiet instead of repeating it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Iterator
from typing import Any, cast

import networkx as nx

from .._validation import did_you_mean, route_prefix_problem
from ..dsl import (
    CallSite,
    DAGDriver,
    DAGNode,
    Deployment,
    DeploymentNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
    Split,
    Switch,
    deployment,
)
from ..dsl.options import make_options
from ..dsl.signature import BIND_HINT, missing_method_hint, public_methods
from ..errors import BindError, Diagnostic, GraphError, OptionError, OptionValueError, RoutingError
from . import ast
from .errors import Source, raise_located
from .syntax import KEYWORDS, MAX_DEPTH


@dataclasses.dataclass(frozen=True)
class SgGraph:
    """One ``graph`` of a ``.sg`` file: its output node and the route prefix it is served at.

    Attributes:
        node: what ``servegraph.compile()`` and ``serve.run()`` take.
        route_prefix: the ``at "/route"`` of the graph header; None when the file does not say.
    """

    name: str
    node: DAGNode
    route_prefix: str | None
    call_site: CallSite


@dataclasses.dataclass(frozen=True)
class SgFile:
    """Every graph of a ``.sg`` file, in file order, and the deployments its names stand for."""

    filename: str
    graphs: dict[str, SgGraph]
    deployments: dict[str, Deployment]

    @property
    def names(self) -> list[str]:
        return list(self.graphs)

    def graph(self, name: str | None = None) -> SgGraph:
        """The graph called ``name``; without a name, the file's only graph.

        Raises:
            ImportPathError: no graph has that name, or the file has several and no name was given.
        """
        from ..errors import ImportPathError

        if name is None:
            if len(self.graphs) == 1:
                return next(iter(self.graphs.values()))
            if not self.graphs:
                raise ImportPathError(f"{self.filename}: the file defines no graph; add one: graph NAME {{ ... }}")
            raise ImportPathError(
                f"{self.filename} defines {len(self.graphs)} graphs ({', '.join(self.graphs)}); "
                "say which one: name=... in Python, --name (or --graph for run) on the command line"
            )
        if name not in self.graphs:
            raise ImportPathError(
                f"{self.filename} has no graph {name!r}"
                + did_you_mean(name, self.graphs)
                + f" Graphs in the file: {', '.join(self.graphs) or '(none)'}."
            )
        return self.graphs[name]


class _Broken:
    """The value of a name whose definition failed: its error is already reported."""

    def __repr__(self) -> str:
        return "<broken>"


BROKEN: Any = _Broken()


@dataclasses.dataclass(frozen=True)
class _Builtin:
    name: str
    usage: str


_BUILTINS = {
    "DAGDriver": _Builtin("DAGDriver", 'DAGDriver(NODE, http_adapter="module:function")'),
    "MultiOutputNode": _Builtin("MultiOutputNode", "MultiOutputNode([NODE, NODE, ...])"),
    "Switch": _Builtin("Switch", "Switch(VALUE, {key: NODE, ...}, default=NODE)"),
    "Split": _Builtin("Split", 'Split({branch: NODE, ...}, weights={branch: PERCENT, ...}, name="NAME")'),
}
_PYTHON_LITERALS = {"True": "true", "False": "false", "None": "null"}


@dataclasses.dataclass
class _Binding:
    value: Any
    where: ast.Name
    kind: str  # "import", "deployment", "input", "value"
    configured: bool = False
    first_use: ast.Name | None = None


def _describe(value: Any) -> str:
    """A value as the user would call it in an error message."""
    if isinstance(value, DAGNode):
        if isinstance(value, InputNode):
            return "the input"
        if isinstance(value, InputAttributeNode):
            return f"the input part {value._label()}"
        if isinstance(value, DeploymentNode):
            return f"the deployment node {value._label()}(...)"
        return f"the result of {value._label()}(...)"
    if isinstance(value, Deployment):
        return f"the deployment {value.name}"
    if isinstance(value, _Builtin):
        return value.name
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "a map"}.get(
        type(value), type(value).__name__
    )


def _module_span(names: tuple[ast.Name, ...]) -> ast.Span:
    first, last = names[0].span, names[-1].span
    width = last.col + last.width - first.col if first.line == last.line else first.width
    return ast.Span(first.line, first.col, width)


def _defines_call(cls: type) -> bool:
    return any("__call__" in vars(klass) for klass in cls.__mro__ if klass is not object)


def _names_in(expr: ast.Expr) -> Iterator[ast.Name]:
    """Every name an expression refers to (not attribute or keyword names), without recursion."""
    stack: list[Any] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.NameRef):
            yield node.name
        elif isinstance(node, ast.ListExpr):
            stack.extend(reversed(node.items))
        elif isinstance(node, ast.MapExpr):
            stack.extend(value for _, value in reversed(node.entries))
        elif isinstance(node, ast.Postfix):
            for trailer in reversed(node.trailers):
                if isinstance(trailer, ast.Call):
                    stack.extend(arg.value for arg in reversed(trailer.args))
                elif isinstance(trailer, ast.Index):
                    stack.append(trailer.key)
            stack.append(node.atom)


class _Builder:
    def __init__(self, module: ast.Module):
        self.module = module
        self.source = Source(module.source, module.filename)
        self.filename = module.filename
        self.diagnostics: list[Diagnostic] = []
        self.top: dict[str, _Binding] = {}
        self.graphs: dict[str, SgGraph] = {}
        self.graph_names: dict[str, ast.Name] = {}
        self.input_depth: dict[int, int] = {}

    # -- helpers ----------------------------------------------------------------
    def error(self, code: str, message: str, span: ast.Span, node: str | None = None) -> Any:
        self.diagnostics.append(self.source.diagnostic(code, message, span, node))
        return BROKEN

    def site(self, span: ast.Span) -> CallSite:
        return CallSite(self.filename, span.line, span.col)

    def where(self, name: ast.Name) -> str:
        return f"line {name.span.line}, col {name.span.col}"

    def reserved(self, name: ast.Name) -> bool:
        """Report and return True if ``name`` may not name anything."""
        if name.text in KEYWORDS:
            self.error("syntax", f"'{name.text}' is a keyword, not a name; choose another name", name.span)
            return True
        if name.text in _PYTHON_LITERALS:
            self.error(
                "syntax",
                f"'{name.text}' cannot be a name here; the language writes it {_PYTHON_LITERALS[name.text]}",
                name.span,
            )
            return True
        if name.text in _BUILTINS:
            self.error("name", f"duplicate name '{name.text}': it is built in; choose another name", name.span)
            return True
        return False

    def declare_top(self, name: ast.Name, value: Any, kind: str) -> None:
        if self.reserved(name):
            return
        previous = self.top.get(name.text)
        if previous is not None:
            self.error(
                "name",
                f"duplicate name '{name.text}': already defined at {self.where(previous.where)}; "
                "give one of them another name (from MODULE import NAME as OTHER)",
                name.span,
            )
            return
        self.top[name.text] = _Binding(value, name, kind)

    # -- imports ----------------------------------------------------------------
    def base_dir(self) -> str:
        if self.filename.startswith("<"):
            return os.getcwd()
        return os.path.dirname(os.path.abspath(self.filename))

    def import_module(self, item: ast.ImportStmt) -> Any:
        path = item.module_path
        span = _module_span(item.module)
        base = self.base_dir()
        if base not in sys.path:
            # As Python does for a script: the .sg file's directory comes first.
            sys.path.insert(0, base)
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name and (path == exc.name or path.startswith(exc.name + ".")):
                siblings = [f[:-3] for f in os.listdir(base) if f.endswith(".py")] if os.path.isdir(base) else []
                return self.error(
                    "import-path",
                    f"cannot import module '{path}': no module named '{exc.name}' in {base} or on sys.path"
                    + did_you_mean(exc.name, siblings),
                    span,
                )
            return self.error("import-path", f"importing module '{path}' failed: {exc}", span)
        except (Exception, SystemExit) as exc:  # the user's module raised while importing
            text = str(exc).split("\n")[0]
            return self.error(
                "import-path", f"importing module '{path}' failed: {type(exc).__name__}: {text}", span
            )

    def import_stmt(self, item: ast.ImportStmt) -> None:
        module = self.import_module(item)
        for name, alias in item.names:
            local = alias or name
            value = BROKEN if module is BROKEN else self.imported(module, item.module_path, name)
            self.declare_top(local, value, "import")

    def imported(self, module: Any, path: str, name: ast.Name) -> Any:
        try:
            value = getattr(module, name.text)
        except AttributeError:
            choices = [
                attr
                for attr, obj in vars(module).items()
                if not attr.startswith("_") and (isinstance(obj, Deployment) or inspect.isclass(obj) or inspect.isfunction(obj))
            ]
            hint = did_you_mean(name.text, choices)
            return self.error(
                "import-path",
                f"module '{path}' has no '{name.text}'"
                + hint
                + (f" It has: {', '.join(sorted(choices))}." if choices and not hint else ""),
                name.span,
            )
        if isinstance(value, Deployment):
            return value
        if isinstance(value, DAGNode):
            return self.error(
                "import-path",
                f"'{path}.{name.text}' is a bound graph node, not a deployment; import the deployment "
                "classes and functions it is made of and build the graph here",
                name.span,
            )
        if inspect.isclass(value) or inspect.isroutine(value):
            try:
                return deployment(value)
            except (TypeError, ValueError) as exc:
                return self.error("import-path", f"'{path}.{name.text}' cannot be a deployment: {exc}", name.span)
        return self.error(
            "import-path",
            f"'{path}.{name.text}' is {_describe(value)}, not a class, function or deployment",
            name.span,
        )

    # -- deployments --------------------------------------------------------------
    def deployment_decl(self, item: ast.DeploymentDecl) -> None:
        if item.source is not None:  # deployment NEW = SOURCE { ... }
            base = self.top_deployment(item.source)
            self.declare_top(item.name, self.options(base, item.options, item.name), "deployment")
            if item.name.text in self.top and self.top[item.name.text].where is item.name:
                self.top[item.name.text].configured = True
            return
        binding = self.top.get(item.name.text)  # deployment NAME { ... } configures an imported NAME
        if binding is None:
            self.unknown(item.name, {})
        elif binding.configured:
            self.error(
                "name",
                f"duplicate deployment block for '{item.name.text}': already configured at "
                f"{self.where(binding.where)}; put all its options in one block",
                item.name.span,
            )
        elif binding.first_use is not None:
            self.error(
                "name",
                f"'{item.name.text}' is configured here but already used at {self.where(binding.first_use)}; "
                "move this block above its first use",
                item.name.span,
            )
        else:
            binding.value = self.options(binding.value, item.options, item.name)
            binding.configured = True
            binding.where = item.name

    def top_deployment(self, name: ast.Name) -> Any:
        binding = self.top.get(name.text)
        if binding is None:
            return self.unknown(name, {})
        if binding.first_use is None:
            binding.first_use = name
        return binding.value

    def options(self, base: Any, options: tuple[ast.Option, ...], block: ast.Name) -> Any:
        """``base`` with a block's options, validated by the DSL; each problem is put on its token."""
        seen: dict[str, ast.Name] = {}
        values: dict[str, Any] = {}
        broken = False
        for option in options:
            key = option.key.text
            if key in seen:
                broken = True
                self.error(
                    "option-value",
                    f"option '{key}' is set twice (first at {self.where(seen[key])}); keep one",
                    option.key.span,
                )
                continue
            seen[key] = option.key
            values[key] = self.literal(option.value)
            broken = broken or values[key] is BROKEN
        if broken or base is BROKEN:
            return BROKEN
        try:
            return _with_options(base, values)
        except (OptionError, OptionValueError, TypeError, ValueError) as exc:
            whole = exc
        # All together they fail: try each alone to find the one at fault. If each is fine
        # alone, the problem is how they combine (num_replicas with autoscaling_config).
        located = False
        for option in options:
            try:
                _with_options(base, {option.key.text: values[option.key.text]})
            except OptionError as exc:
                located = True
                self.located(exc.diagnostic, option.key.span, "unknown-option", base.name)
            except OptionValueError as exc:
                located = True
                self.located(exc.diagnostic, option.value.span, "option-value", base.name)
            except (TypeError, ValueError) as exc:  # raised by Python or pydantic, not by servegraph
                located = True
                self.error("option-value", str(exc), option.value.span, node=base.name)
        if not located:
            code = "unknown-option" if isinstance(whole, OptionError) else "option-value"
            if isinstance(whole, GraphError):
                self.located(whole.diagnostic, block.span, code, base.name)
            else:
                self.error(code, str(whole), block.span, node=base.name)
        return BROKEN

    def literal(self, expr: ast.Expr) -> Any:
        """A plain value (option values): no names, calls or graph nodes."""
        bad = next(_names_in(expr), None)
        if bad is not None:
            return self.error(
                "syntax",
                f"an option value is a plain value (string, number, true/false/null, list or map), "
                f"not the name '{bad.text}'" + (f"; write {_PYTHON_LITERALS[bad.text]}" if bad.text in _PYTHON_LITERALS else ""),
                bad.span,
            )
        return self.value(expr, {}, {})

    # -- graphs -------------------------------------------------------------------
    def graph(self, item: ast.GraphDecl) -> None:
        errors_before = len(self.diagnostics)
        name = item.name
        if name.text in self.graph_names:
            self.error(
                "name",
                f"duplicate graph name '{name.text}': already used at {self.where(self.graph_names[name.text])}",
                name.span,
            )
        else:
            self.graph_names[name.text] = name
        route = None
        if item.route is not None:
            route = item.route.value
            problem = route_prefix_problem(route)  # the one rule, as serve.run and configs apply it
            if problem is not None:
                self.error("syntax", f"route prefix {route!r} {problem}; Ray Serve refuses it too, e.g. \"/{name.text}\"", item.route.span)
        self.local_names(item)
        order: dict[str, int] = {}
        for i, stmt in enumerate(item.body):
            defined = stmt_name(stmt)
            if defined is not None:
                order.setdefault(defined.text, i)
        forward = self.check_order(item, order)
        outputs = [s for s in item.body if isinstance(s, ast.OutputStmt)]
        inputs = [s for s in item.body if isinstance(s, ast.InputStmt)]
        if not outputs:
            self.error(
                "syntax",
                f"graph '{name.text}' has no output; end it with `output VALUE` (or `output A, B` for several)",
                name.span,
            )
        for extra in outputs[1:]:
            self.error(
                "syntax",
                f"graph '{name.text}' already has an output at line {outputs[0].line}; a graph has one output "
                "statement: list several values in it (output a, b)",
                extra.span,
            )
        for another in inputs[1:]:
            self.error(
                "input-node",
                f"graph '{name.text}' already has an input ('{inputs[0].name.text}' at line {inputs[0].line}); "
                f"a graph has one input: take parts of it with {inputs[0].name.text}[0], "
                f"{inputs[0].name.text}[\"key\"] or {inputs[0].name.text}.attr",
                another.name.span,
            )
        bound: dict[str, Any] = {}
        root: Any = BROKEN
        for stmt in item.body:
            if isinstance(stmt, ast.InputStmt):
                node = InputNode(_call_site=self.site(stmt.name.span))
                self.input_depth[id(node)] = 0
                bound[stmt.name.text] = node
            elif isinstance(stmt, ast.Assign):
                bound[stmt.target.text] = self.value(stmt.value, bound, forward)
            else:
                root = self.output(stmt, bound, forward)
        if len(self.diagnostics) == errors_before and root is not BROKEN and name.text not in self.graphs:
            self.graphs[name.text] = SgGraph(name.text, root, route, self.site(name.span))

    def local_names(self, item: ast.GraphDecl) -> dict[str, ast.Name]:
        names: dict[str, ast.Name] = {}
        for stmt in item.body:
            name = stmt_name(stmt)
            if name is None or self.reserved(name):
                continue
            if name.text in names:
                self.error(
                    "name",
                    f"duplicate name '{name.text}': already defined at {self.where(names[name.text])}; "
                    "a name is given a value once",
                    name.span,
                )
            elif name.text in self.top:
                self.error(
                    "name",
                    f"duplicate name '{name.text}': already defined at {self.where(self.top[name.text].where)}; "
                    "choose another name for this value",
                    name.span,
                )
            else:
                names[name.text] = name
        return names

    def check_order(self, item: ast.GraphDecl, order: dict[str, int]) -> dict[str, ast.Name]:
        """Report uses before definitions (and the cycles they make); return the names used too early."""
        deps = nx.DiGraph()
        early: list[tuple[int, ast.Name]] = []
        for i, stmt in enumerate(item.body):
            exprs = [stmt.value] if isinstance(stmt, ast.Assign) else list(getattr(stmt, "values", ()))
            here = stmt_name(stmt)
            for expr in exprs:
                for ref in _names_in(expr):
                    j = order.get(ref.text)
                    if j is None:
                        continue
                    if here is not None:
                        deps.add_edge(here.text, ref.text)
                    if j >= i:
                        early.append((i, ref))
        forward: dict[str, ast.Name] = {}
        reported: set[frozenset[str]] = set()
        for i, ref in early:
            forward.setdefault(ref.text, ref)
            here = stmt_name(item.body[i])
            if here is not None and nx.has_path(deps, ref.text, here.text):
                path = [here.text] + nx.shortest_path(deps, ref.text, here.text)
                members = frozenset(path)
                if members in reported:
                    continue
                reported.add(members)
                self.error(
                    "cycle",
                    f"'{here.text}' depends on itself: {' -> '.join(path)}. A node cannot depend on its own "
                    "output; build each value from values defined above it",
                    ref.span,
                )
            else:
                definition = stmt_name(item.body[order[ref.text]])
                assert definition is not None
                self.error(
                    "name",
                    f"'{ref.text}' is used before its definition at {self.where(definition)}; "
                    "move the definition above this line",
                    ref.span,
                )
        return forward

    def output(self, stmt: ast.OutputStmt, bound: dict[str, Any], forward: dict[str, ast.Name]) -> Any:
        values = [self.value(v, bound, forward) for v in stmt.values]
        ok = True
        for expr, value in zip(stmt.values, values, strict=True):
            if value is BROKEN:
                ok = False
            elif not isinstance(value, DAGNode):
                ok = False
                self.error(
                    "bind-arguments",
                    f"output takes graph nodes (made by calling a deployment, or the input), got {_describe(value)}",
                    expr.span,
                )
        if not ok:
            return BROKEN
        if len(values) == 1:
            return values[0]
        return MultiOutputNode(values, _call_site=self.site(stmt.span))

    # -- expressions --------------------------------------------------------------
    def lookup(self, name: ast.Name, bound: dict[str, Any], forward: dict[str, ast.Name]) -> Any:
        if name.text in bound:
            return bound[name.text]
        if name.text in forward:
            return BROKEN  # reported as a use before definition
        binding = self.top.get(name.text)
        if binding is not None:
            if binding.first_use is None:
                binding.first_use = name
            return binding.value
        if name.text in _BUILTINS:
            return _BUILTINS[name.text]
        return self.unknown(name, bound)

    def unknown(self, name: ast.Name, bound: dict[str, Any]) -> Any:
        if name.text in _PYTHON_LITERALS:
            return self.error(
                "name", f"unknown name '{name.text}'; write {_PYTHON_LITERALS[name.text]}", name.span
            )
        choices = set(bound) | set(self.top) | set(_BUILTINS)
        advice = did_you_mean(name.text, choices, lead="") or "import it (from MODULE import NAME) or define it above (NAME = ...)"
        return self.error("name", f"unknown name '{name.text}'; {advice}", name.span)

    def value(self, expr: ast.Expr, bound: dict[str, Any], forward: dict[str, ast.Name]) -> Any:
        if isinstance(expr, ast.Literal):
            return expr.value
        if isinstance(expr, ast.NameRef):
            value = self.lookup(expr.name, bound, forward)
            if isinstance(value, Deployment):
                return self.error(
                    "bind-arguments",
                    f"'{expr.name.text}' is a deployment, not a graph node; call it to bind it: "
                    f"{expr.name.text}(...) (a bound deployment passed to a constructor becomes a handle)",
                    expr.span,
                )
            if isinstance(value, _Builtin):
                return self.error("bind-arguments", f"{value.name} must be called: {value.usage}", expr.span)
            return value
        if isinstance(expr, ast.ListExpr):
            items = [self.value(item, bound, forward) for item in expr.items]
            return BROKEN if any(item is BROKEN for item in items) else items
        if isinstance(expr, ast.MapExpr):
            out: dict[Any, Any] = {}
            keys: dict[Any, ast.Literal] = {}
            broken = False
            for key, item in expr.entries:
                value = self.value(item, bound, forward)
                broken = broken or value is BROKEN
                if key.value in keys and type(key.value) is type(keys[key.value].value):
                    self.error(
                        "syntax",
                        f"key {key.value!r} appears twice in this map (first at line {keys[key.value].span.line}); keep one",
                        key.span,
                    )
                    broken = True
                keys[key.value] = key
                out[key.value] = value
            return BROKEN if broken else out
        return self.postfix(expr, bound, forward)

    def postfix(self, expr: ast.Postfix, bound: dict[str, Any], forward: dict[str, ast.Name]) -> Any:
        if isinstance(expr.atom, ast.NameRef):
            current = self.lookup(expr.atom.name, bound, forward)
            label = expr.atom.name.text
        else:
            current = self.value(expr.atom, bound, forward)
            label = "this value"
        span = expr.atom.span
        trailers = expr.trailers
        i = 0
        while i < len(trailers):
            trailer = trailers[i]
            following = trailers[i + 1] if i + 1 < len(trailers) else None
            if isinstance(trailer, ast.Attr) and isinstance(following, ast.Call):
                current = self.method_call(current, label, trailer.name, following, bound, forward)
                label = f"{label}.{trailer.name.text}(...)"
                span = trailer.name.span
                i += 2
                continue
            if isinstance(trailer, ast.Call):
                current = self.call(current, label, span, trailer, bound, forward)
                label = f"{label}(...)"
                span = trailer.span
            elif isinstance(trailer, ast.Attr):
                current = self.attribute(current, label, trailer.name)
                label = f"{label}.{trailer.name.text}"
                span = trailer.name.span
            else:
                current = self.index(current, label, trailer, bound, forward)
                label = f"{label}[...]"
                span = trailer.span
            i += 1
        return current

    def arguments(
        self, call: ast.Call, bound: dict[str, Any], forward: dict[str, ast.Name]
    ) -> tuple[list[Any], dict[str, Any]] | None:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        names: dict[str, ast.Name] = {}
        ok = True
        for arg in call.args:
            value = self.value(arg.value, bound, forward)
            ok = ok and value is not BROKEN
            if arg.name is None:
                if names:
                    ok = False
                    self.error(
                        "bind-arguments",
                        "a positional argument cannot follow keyword arguments; put it before them",
                        arg.value.span,
                    )
                args.append(value)
            elif arg.name.text in names:
                ok = False
                self.error(
                    "bind-arguments",
                    f"keyword argument '{arg.name.text}' is given twice (first at {self.where(names[arg.name.text])})",
                    arg.name.span,
                )
            else:
                names[arg.name.text] = arg.name
                kwargs[arg.name.text] = value
        return (args, kwargs) if ok else None

    def bind_error(self, exc: GraphError, span: ast.Span, call: ast.Call, written: str) -> Any:
        """A DSL bind error shown at the call the user wrote (``written``, e.g. ``Model(...)``, where
        Python says ``Model.bind()``), pointing at the keyword argument it is about, if one."""
        found = exc.diagnostic
        fields: dict[str, Any] = {}
        if found.call is not None:
            fields["call"] = written
        if found.hint == BIND_HINT:
            fields["hint"] = "fix the arguments of the call."  # a .sg file has no .bind()
        for arg in call.args:
            if arg.name is not None and arg.name.text == found.keyword:
                span = arg.name.span
        return self.located(dataclasses.replace(found, **fields), span)

    def located(self, found: Diagnostic, span: ast.Span, code: str | None = None, node: str | None = None) -> Any:
        """A diagnostic from the DSL, placed at ``span`` of this file; stands for the node it failed to make."""
        fields: dict[str, Any] = {}
        if code is not None:
            fields["code"] = code
        if node is not None:
            fields["subject"] = node
        self.diagnostics.append(self.source.locate(dataclasses.replace(found, **fields), span))
        return BROKEN

    def call(
        self, callee: Any, label: str, span: ast.Span, call: ast.Call, bound: dict[str, Any], forward: dict[str, ast.Name]
    ) -> Any:
        arguments = self.arguments(call, bound, forward)
        if callee is BROKEN or arguments is None:
            return BROKEN
        args, kwargs = arguments
        site = self.site(span)
        if isinstance(callee, Deployment):
            try:
                return callee.bind(*args, _call_site=site, **kwargs)
            except BindError as exc:
                return self.bind_error(exc, span, call, f"{callee.name}(...)")
        if isinstance(callee, _Builtin):
            return self.builtin(callee, args, kwargs, site, span, call)
        if isinstance(callee, DeploymentNode):
            cls = cast(type, callee._deployment.func_or_class)
            if not _defines_call(cls):
                return self.error(
                    "bind-arguments",
                    f"{label}(...) calls the deployment, but {callee._deployment.name} has no __call__ method; "
                    f"call one of its methods instead: {label}.METHOD(...). "
                    f"Methods of {callee._deployment.name}: {', '.join(public_methods(cls)) or '(none)'}.",
                    call.span,
                    node=callee._deployment.name,
                )
            try:
                return callee.__call__.bind(*args, _call_site=site, **kwargs)
            except BindError as exc:
                return self.bind_error(exc, call.span, call, f"{callee._deployment.name}.__call__(...)")
        what = _describe(callee)
        if isinstance(callee, DAGNode):
            reason = "it has a value only when a request runs, so the graph cannot call it"
        else:
            reason = "only deployments, deployment nodes, DAGDriver, MultiOutputNode, Switch and Split can be called"
        return self.error("bind-arguments", f"{label} is {what}, which cannot be called: {reason}", call.span)

    def builtin(
        self, builtin: _Builtin, args: list[Any], kwargs: dict[str, Any], site: CallSite, span: ast.Span, call: ast.Call
    ) -> Any:
        if builtin.name == "DAGDriver":
            extra = set(kwargs) - {"http_adapter"}
            adapter = kwargs.get("http_adapter")
            if len(args) != 1 or extra or not (adapter is None or isinstance(adapter, str)):
                return self.error(
                    "bind-arguments",
                    f"DAGDriver takes one graph node and an optional http_adapter string: {builtin.usage}",
                    span,
                )
            try:
                return DAGDriver.bind(args[0], http_adapter=adapter, _call_site=site)
            except BindError as exc:
                return self.bind_error(exc, span, call, "DAGDriver(...)")
        if builtin.name in ("Switch", "Split"):
            return self.routing(builtin, args, kwargs, site, span, call)
        if len(args) != 1 or kwargs or not isinstance(args[0], list):
            return self.error(
                "bind-arguments", f"MultiOutputNode takes one list of graph nodes: {builtin.usage}", span
            )
        try:
            return MultiOutputNode(args[0], _call_site=site)
        except BindError as exc:
            return self.bind_error(exc, span, call, "MultiOutputNode(...)")

    def routing(
        self, builtin: _Builtin, args: list[Any], kwargs: dict[str, Any], site: CallSite, span: ast.Span, call: ast.Call
    ) -> Any:
        """``Switch(value, {key: node}, default=node)`` or ``Split({branch: node}, weights={...}, name="...")``.

        A switch by predicates is Python's only: a predicate is code, and a ``.sg`` file names no plain functions.
        """
        if builtin.name == "Switch":
            allowed, arity, shape_ok = {"default"}, 2, len(args) == 2 and isinstance(args[1], dict)
        else:
            allowed, arity, shape_ok = {"weights", "name"}, 1, len(args) == 1 and "weights" in kwargs
        extra = sorted(set(kwargs) - allowed)
        if not shape_ok or extra:
            why = f"unknown argument {extra[0]}=; " if extra else ""
            return self.error(
                "routing",
                f"{builtin.name} takes {arity} argument{'s' if arity > 1 else ''} and the keyword"
                f"{'s' if len(allowed) > 1 else ''} {', '.join(f'{k}=' for k in sorted(allowed))}: {why}write {builtin.usage}",
                span,
            )
        try:
            if builtin.name == "Switch":
                return Switch(args[0], args[1], _call_site=site, **kwargs)
            return Split(args[0], _call_site=site, **kwargs)
        except RoutingError as exc:
            return self.bind_error(exc, span, call, f"{builtin.name}(...)")

    def method_call(
        self,
        target: Any,
        label: str,
        method: ast.Name,
        call: ast.Call,
        bound: dict[str, Any],
        forward: dict[str, ast.Name],
    ) -> Any:
        arguments = self.arguments(call, bound, forward)
        if target is BROKEN or arguments is None:
            return BROKEN
        args, kwargs = arguments
        if isinstance(target, Deployment):
            return self.error(
                "bind-arguments",
                f"'{label}' is a deployment, not a graph node: bind it first, then call the method: "
                f"{label}(...).{method.text}(...)",
                method.span,
            )
        if not isinstance(target, DeploymentNode):
            if isinstance(target, (InputNode, InputAttributeNode)):
                reason = "the input has no methods; pass it to a deployment's method instead: NODE.METHOD(" + label + ")"
            elif isinstance(target, DAGNode):
                reason = "it has a value only when a request runs, so it has no methods here"
            else:
                reason = "only deployment nodes have methods to call"
            return self.error(
                "bind-arguments", f"cannot call .{method.text}(...) on {_describe(target)}: {reason}", method.span
            )
        name = target._deployment.name
        cls = cast(type, target._deployment.func_or_class)
        if method.text.startswith("_") and method.text != "__call__":
            return self.error(
                "bind-arguments",
                f"{name}.{method.text} is private (its name starts with '_'); only public methods can be "
                f"called from a graph: {missing_method_hint(cls, method.text)}",
                method.span,
                node=name,
            )
        if hasattr(DeploymentNode, method.text):
            return self.error(
                "bind-arguments",
                f"servegraph cannot bind a method called '{method.text}': graph nodes use that name "
                f"themselves (DeploymentNode.{method.text}); rename the method of {name}",
                method.span,
                node=name,
            )
        site = self.site(method.span)
        try:
            return getattr(target, method.text).bind(*args, _call_site=site, **kwargs)
        except BindError as exc:
            return self.bind_error(exc, method.span, call, f"{name}.{method.text}(...)")

    def attribute(self, target: Any, label: str, name: ast.Name) -> Any:
        if target is BROKEN:
            return BROKEN
        if isinstance(target, (InputNode, InputAttributeNode)):
            return self.input_part(target, name.text, "attr", name.span)
        if isinstance(target, (Deployment, DeploymentNode)):
            return self.error(
                "bind-arguments",
                f"{label}.{name.text} is a method; call it: {label}.{name.text}(...)"
                + (" (bind the deployment first)" if isinstance(target, Deployment) else ""),
                name.span,
            )
        return self.error(
            "bind-arguments",
            f"cannot take .{name.text} of {_describe(target)}: only the input has parts (.attr and [key])",
            name.span,
        )

    def index(
        self, target: Any, label: str, index: ast.Index, bound: dict[str, Any], forward: dict[str, ast.Name]
    ) -> Any:
        key = self.value(index.key, bound, forward)
        if target is BROKEN or key is BROKEN:
            return BROKEN
        if not isinstance(target, (InputNode, InputAttributeNode)):
            return self.error(
                "bind-arguments",
                f"cannot take [...] of {_describe(target)}: only the input has parts (.attr and [key])",
                index.span,
            )
        if isinstance(key, (list, dict, DAGNode)):
            return self.error(
                "bind-arguments",
                f"a part of the input is picked with a string or number key, not {_describe(key)}",
                index.key.span,
            )
        return self.input_part(target, key, "item", index.span)

    def input_part(self, parent: Any, key: Any, access: str, span: ast.Span) -> Any:
        depth = self.input_depth.get(id(parent), 0) + 1
        if depth > MAX_DEPTH:
            return self.error(
                "syntax", f"the input is taken apart more than {MAX_DEPTH} levels deep here", span
            )
        node = InputAttributeNode(parent, key, access, self.site(span))
        self.input_depth[id(node)] = depth
        return node

    # -- the file -----------------------------------------------------------------
    def build(self) -> SgFile:
        for item in self.module.items:
            if isinstance(item, ast.ImportStmt):
                self.import_stmt(item)
            elif isinstance(item, ast.DeploymentDecl):
                self.deployment_decl(item)
            else:
                self.graph(item)
        raise_located(self.diagnostics)
        return SgFile(
            filename=self.filename,
            graphs=dict(self.graphs),
            deployments={k: b.value for k, b in self.top.items() if isinstance(b.value, Deployment)},
        )


def _with_options(dep: Deployment, options: dict[str, Any]) -> Deployment:
    """``dep.options(**options)``, validated by the DSL's own ``make_options``.

    Called directly rather than through ``Deployment.options``, which prefixes its
    errors with the Python caller's line; here the error belongs to the .sg token.
    """
    return Deployment(dep.func_or_class, make_options(dep.deployment_options, **options))


def stmt_name(stmt: ast.Statement) -> ast.Name | None:
    if isinstance(stmt, ast.InputStmt):
        return stmt.name
    if isinstance(stmt, ast.Assign):
        return stmt.target
    return None


def build(module: ast.Module) -> SgFile:
    """Build every graph of a parsed file.

    Raises:
        GraphError: a subclass for the first problem in the file; ``.diagnostics`` has them all.
    """
    try:
        return _Builder(module).build()
    except RecursionError:  # a safety net: nesting is bounded by MAX_DEPTH well below the limit
        raise GraphError(f"{module.filename}:1:1: error: the file nests too deeply to build") from None
