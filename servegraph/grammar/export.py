"""A Python graph as ``.sg`` text: the compiled IR written back as a syntax tree, then printed.

Working from the IR (not the bound nodes) means whatever compiles can be
exported, and parsing the text back compiles to the same IR: nodes get the
same keys because the text rebuilds the same shape, deployments the same
options because each block writes exactly the options that differ from what
the import gives. A node used once is written inline where it is used; a node
used twice gets a name, as it must, since one name is one node.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterator
from typing import Any

from ..compiler import CompiledGraph, compile
from ..compiler import ir as irmod
from ..dsl import DAGNode, Deployment, DeploymentOptions
from . import ast
from .errors import ExportError
from .printer import format_module
from .syntax import KEYWORDS, MAX_DEPTH, NAME_RE

#: Inline calls nest at most this deep before the exporter names an inner one.
INLINE_DEPTH = 6
_RESERVED = KEYWORDS | {"DAGDriver", "MultiOutputNode", "Switch", "Split", "True", "False", "None"}
_NOWHERE = ast.Span(0, 0)


def _name(text: str) -> ast.Name:
    return ast.Name(text, _NOWHERE)


def _ref(text: str) -> ast.NameRef:
    return ast.NameRef(_name(text))


def _snake(text: str) -> str:
    """``LanguageClassifier`` -> ``language_classifier``; anything else becomes a valid name."""
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", text).lower()
    text = re.sub(r"[^a-z0-9_]+", "_", text).strip("_") or "node"
    return text if not text[0].isdigit() else "n_" + text


class _Names:
    """Hands out names that are valid, not keywords, and not taken."""

    def __init__(self) -> None:
        self.taken: set[str] = set(_RESERVED)

    def claim(self, wanted: str) -> str:
        name, n = wanted, 1
        while name in self.taken:
            n += 1
            name = f"{wanted}_{n}"
        self.taken.add(name)
        return name


def _where(record: irmod.NodeIR) -> str:
    return f"{record.call_site}: {record.label}"


def literal(value: Any, what: str, depth: int = 0) -> ast.Expr:
    """A plain value as a literal expression.

    Raises:
        ExportError: a value the language cannot write (a tuple, an object, NaN, ...).
    """
    if depth > MAX_DEPTH // 2:
        raise ExportError(f"{what} nests lists and maps more than {MAX_DEPTH // 2} deep; a .sg file cannot hold it")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return ast.Literal(value, _NOWHERE)
    if kind is float:
        if not math.isfinite(value):
            raise ExportError(f"{what} is {value!r}, which a .sg file cannot write; use a finite number")
        return ast.Literal(value, _NOWHERE)
    if kind is list:
        return ast.ListExpr(tuple(literal(v, what, depth + 1) for v in value), _NOWHERE)
    if kind is dict:
        entries = []
        for k, v in value.items():
            if not (k is None or type(k) in (bool, int, str) or (type(k) is float and math.isfinite(k))):
                raise ExportError(
                    f"{what} has a map key {k!r} ({type(k).__name__}); .sg map keys are strings, numbers, "
                    "true/false or null"
                )
            entries.append((ast.Literal(k, _NOWHERE, bare=isinstance(k, str)), literal(v, what, depth + 1)))
        return ast.MapExpr(tuple(entries), _NOWHERE)
    raise ExportError(
        f"{what} is a {kind.__name__} ({value!r:.60}); a .sg file holds strings, numbers, true/false, null, "
        "lists, maps and graph nodes. Bind one of those instead (e.g. a list for a tuple)"
    )


def _option_value(value: Any, what: str) -> ast.Expr:
    if hasattr(value, "model_dump"):  # a nested options model (ray_actor_options, autoscaling_config)
        value = value.model_dump(exclude_defaults=True)
    return literal(value, what)


def _resolve_import(dep: irmod.DeploymentIR) -> tuple[str, str, DeploymentOptions]:
    """(module, attribute, options the import gives) for a deployment's code.

    Raises:
        ExportError: the code cannot be imported by name from a module.
    """
    module_name, _, qualname = dep.import_path.partition(":")
    where = f"{dep.call_site}: deployment {dep.name}"
    if module_name == "__main__":
        raise ExportError(
            f"{where}: {qualname} is defined in the script being run (__main__), which a .sg file cannot import; "
            "move it to a module"
        )
    if "." in qualname or "<" in qualname:
        raise ExportError(
            f"{where}: {qualname} is defined inside a function or class, so it cannot be imported by name; "
            "define it at module level"
        )
    try:
        value = getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"{where}: cannot import {module_name}.{qualname}: {exc}") from None
    if isinstance(value, Deployment) and value.func_or_class is dep.target:
        return module_name, qualname, value.deployment_options
    if value is dep.target:
        return module_name, qualname, DeploymentOptions()
    raise ExportError(
        f"{where}: {module_name}.{qualname} is not the code this deployment runs (the module rebinds the name); "
        "export a graph whose deployments are importable by their own names"
    )


def _option_diff(options: DeploymentOptions, base: DeploymentOptions, what: str) -> tuple[ast.Option, ...]:
    out = []
    for field in type(options).model_fields:
        value = getattr(options, field)
        if value != getattr(base, field):
            out.append(ast.Option(_name(field), _option_value(value, f"{what} option {field}"), 0, 0))
    return tuple(out)


class _Exporter:
    def __init__(self, compiled: CompiledGraph, graph_name: str, route_prefix: str | None):
        if compiled.ir is None:
            raise ExportError("the graph has a cycle, so it cannot be exported; fix the errors compile() reports")
        self.ir = compiled.ir
        self.root = compiled.graph.graph.get("root", "n0")
        self.graph_name = graph_name
        self.route_prefix = route_prefix
        self.records = {record.key: record for record in self.ir.nodes}
        self.dep_key = {dep.name: dep.node for dep in self.ir.deployments}
        self.names = _Names()
        self.callee: dict[str, str] = {}  # deployment name -> the name the .sg file calls
        self.items: list[ast.Item] = []
        self.statements: list[ast.Statement] = []
        self.variable: dict[str, str] = {}  # node key -> its name in the graph
        self.inline: dict[str, tuple[ast.Expr, int]] = {}  # node key -> (expression, nesting)

    # -- top level: imports and deployment blocks -----------------------------------
    def declare_deployments(self) -> None:
        by_target: dict[tuple[str, str], list[tuple[irmod.DeploymentIR, DeploymentOptions]]] = {}
        for dep in self.ir.deployments:
            module, attr, base = _resolve_import(dep)
            by_target.setdefault((module, attr), []).append((dep, base))
        imports: dict[str, list[tuple[str, str | None]]] = {}
        blocks: list[ast.DeploymentDecl] = []
        for (module, attr), deps in sorted(by_target.items()):
            local = self.names.claim(attr)
            imports.setdefault(module, []).append((attr, None if local == attr else local))
            base = deps[0][1]
            distinct: list[DeploymentOptions] = []
            for dep, _ in deps:
                if dep.options not in distinct:
                    distinct.append(dep.options)
            given: dict[int, str] = {}
            if len(distinct) == 1 and distinct[0] != base:  # one setting: configure the import itself
                blocks.append(self.block(local, None, distinct[0], base, deps[0][0]))
                given[0] = local
            else:
                for i, options in enumerate(distinct):
                    if options == base:
                        given[i] = local
                    else:  # names.claim numbers them: Model_2, Model_3, ...
                        alias = self.names.claim(f"{local}_2" if f"{local}_2" not in self.names.taken else local)
                        blocks.append(self.block(alias, local, options, base, deps[0][0]))
                        given[i] = alias
            for dep, _ in deps:
                self.callee[dep.name] = given[distinct.index(dep.options)]
        for module in sorted(imports):
            names = tuple((_name(attr), _name(alias) if alias else None) for attr, alias in imports[module])
            self.items.append(ast.ImportStmt(tuple(_name(p) for p in module.split(".")), names, 0, 0))
        self.items.extend(blocks)

    def block(
        self, name: str, source: str | None, options: DeploymentOptions, base: DeploymentOptions, dep: irmod.DeploymentIR
    ) -> ast.DeploymentDecl:
        diff = _option_diff(options, base, f"{dep.call_site}: deployment {dep.name}")
        return ast.DeploymentDecl(_name(name), _name(source) if source else None, diff, 0, 0, 0)

    # -- the graph --------------------------------------------------------------------
    def deployment_of(self, record: irmod.NodeIR) -> str:
        """The key of the deployment node a deployment, function or method node runs on."""
        assert record.deployment is not None, record
        return self.dep_key[record.deployment]

    def children(self, key: str) -> list[str]:
        record = self.records[key]
        out = []
        if record.kind == irmod.METHOD:
            out.append(self.deployment_of(record))
        for marker in irmod.iter_markers((record.args, record.kwargs)):
            out.append(marker.key if isinstance(marker, irmod.Ref) else self.dep_key[marker.deployment])
        return out

    def postorder(self) -> Iterator[str]:
        seen: set[str] = set()
        stack: list[tuple[str, bool]] = [(self.root, False)]
        while stack:
            key, expanded = stack.pop()
            if expanded:
                yield key
                continue
            if key in seen:
                continue
            seen.add(key)
            stack.append((key, True))
            stack.extend((child, False) for child in reversed(self.children(key)) if child not in seen)

    def value(self, template: Any, record: irmod.NodeIR, label: str) -> tuple[ast.Expr, int]:
        """An argument template as an expression, and how deep its inline calls nest."""
        if isinstance(template, irmod.HandleRef) and template.method is not None:
            raise ExportError(
                f"{_where(record)}: argument {label} is a handle to method {template.method!r}, "
                "which a .sg file cannot write; pass the deployment instead"
            )
        if isinstance(template, (irmod.Ref, irmod.HandleRef)):
            key = template.key if isinstance(template, irmod.Ref) else self.dep_key[template.deployment]
            return self.use(key)
        if type(template) is list:
            parts = [self.value(v, record, label) for v in template]
            return ast.ListExpr(tuple(p[0] for p in parts), _NOWHERE), max((p[1] for p in parts), default=0)
        if type(template) is dict:
            entries = []
            depth = 0
            for k, v in template.items():
                if isinstance(k, (irmod.Ref, irmod.HandleRef)):
                    raise ExportError(f"{_where(record)}: argument {label} uses a graph node as a map key")
                key_expr = literal(k, f"{_where(record)}: argument {label}")
                assert isinstance(key_expr, ast.Literal)
                expr, d = self.value(v, record, label)
                entries.append((key_expr, expr))
                depth = max(depth, d)
            return ast.MapExpr(tuple(entries), _NOWHERE), depth
        return literal(template, f"{_where(record)}: argument {label}"), 0

    def use(self, key: str) -> tuple[ast.Expr, int]:
        if key in self.variable:
            return _ref(self.variable[key]), 0
        return self.inline[key]

    def call(self, record: irmod.NodeIR) -> tuple[ast.Call, int]:
        args = []
        depth = 0
        for i, template in enumerate(record.args):
            expr, d = self.value(template, record, str(i))
            args.append(ast.Arg(expr))
            depth = max(depth, d)
        for name, template in record.kwargs:
            if not NAME_RE.match(name):
                raise ExportError(f"{_where(record)}: keyword argument {name!r} is not a name a .sg file can write")
            expr, d = self.value(template, record, name)
            args.append(ast.Arg(expr, _name(name)))
            depth = max(depth, d)
        return ast.Call(tuple(args), _NOWHERE), depth

    def expression(self, key: str) -> tuple[ast.Expr, int]:
        """The node as an expression (its inputs named or inlined), and its nesting depth."""
        record = self.records[key]
        kind = record.kind
        if kind == irmod.INPUT_ATTR:
            assert record.access is not None
            access, attr = record.access
            parent, depth = self.use(record.args[0].key)
            if access == "attr":
                if not isinstance(attr, str) or not NAME_RE.match(attr):
                    raise ExportError(f"{_where(record)}: attribute {attr!r} is not a name a .sg file can write")
                trailer: ast.Trailer = ast.Attr(_name(attr))
            else:
                key_expr = literal(attr, f"{_where(record)}: input key")
                if not isinstance(key_expr, ast.Literal):
                    raise ExportError(f"{_where(record)}: input key {attr!r} must be a string or number")
                trailer = ast.Index(key_expr, _NOWHERE)
            return _chain(parent, trailer), depth
        if kind in (irmod.DEPLOYMENT, irmod.FUNCTION):
            call, depth = self.call(record)
            assert record.deployment is not None
            return ast.Postfix(_ref(self.callee[record.deployment]), (call,)), depth + 1
        if kind == irmod.METHOD:
            target, target_depth = self.use(self.deployment_of(record))
            call, depth = self.call(record)
            if record.method == "__call__":
                return _chain(target, call), max(depth, target_depth) + 1
            assert record.method is not None
            return _chain(_chain(target, ast.Attr(_name(record.method))), call), max(depth, target_depth) + 1
        if kind == irmod.OUTPUT:
            (outputs,) = record.args
            items, depth = self.value(outputs, record, "0")
            call = ast.Call((ast.Arg(items),), _NOWHERE)
            return ast.Postfix(_ref("MultiOutputNode"), (call,)), depth + 1
        if kind == irmod.DRIVER:
            (dag,) = record.args
            expr, depth = self.value(dag, record, "0")
            args = [ast.Arg(expr)]
            if self.ir.http_adapter is not None:
                args.append(ast.Arg(self.adapter(record), _name("http_adapter")))
            return ast.Postfix(_ref("DAGDriver"), (ast.Call(tuple(args), _NOWHERE),)), depth + 1
        if record.route is not None:
            return self.routing(record)
        raise ExportError(f"{_where(record)}: a {kind} node cannot be written in a .sg file")  # pragma: no cover

    def routing(self, record: irmod.NodeIR) -> tuple[ast.Expr, int]:
        """``Switch(value, {key: node}, default=node)`` or ``Split({branch: node}, weights={...}, name=...)``."""
        route = record.route
        assert route is not None
        if route.mode == irmod.BY_PREDICATE:
            raise ExportError(f"{_where(record)}: a switch by predicates cannot be written in a .sg file (predicates are Python)")
        branches = route.branches(record.args)
        count = len(branches) - (1 if route.default else 0)
        entries, depth = [], 0
        for choice, label, branch in zip(route.choices[:count], route.labels[:count], branches[:count], strict=True):
            key = literal(choice if route.mode == irmod.BY_KEY else label, f"{_where(record)}: branch {label}")
            assert isinstance(key, ast.Literal)
            expr, d = self.value(branch, record, label)
            entries.append((key, expr))
            depth = max(depth, d)
        args = []
        if route.mode == irmod.BY_KEY:
            value, d = self.value(record.args[0], record, "value")
            args.append(ast.Arg(value))
            depth = max(depth, d)
        args.append(ast.Arg(ast.MapExpr(tuple(entries), _NOWHERE)))
        if route.default:
            expr, d = self.value(branches[-1], record, "default")
            args.append(ast.Arg(expr, _name("default")))
            depth = max(depth, d)
        if route.mode == irmod.BY_WEIGHT:
            weights = tuple(
                (literal(label, f"{_where(record)}: weight"), ast.Literal(weight, _NOWHERE))
                for label, weight in zip(route.labels, route.choices, strict=True)
            )
            args.append(ast.Arg(ast.MapExpr(weights, _NOWHERE), _name("weights")))  # type: ignore[arg-type]
            args.append(ast.Arg(ast.Literal(route.name, _NOWHERE), _name("name")))
        callee = "Switch" if route.mode == irmod.BY_KEY else "Split"
        return ast.Postfix(_ref(callee), (ast.Call(tuple(args), _NOWHERE),)), depth + 1

    def adapter(self, record: irmod.NodeIR) -> ast.Literal:
        adapter = self.ir.http_adapter
        module, qualname = getattr(adapter, "__module__", None), getattr(adapter, "__qualname__", "")
        try:
            found = getattr(importlib.import_module(module), qualname) if module and "." not in qualname else None
        except (ImportError, AttributeError):
            found = None
        if found is not adapter:
            raise ExportError(
                f"{_where(record)}: the http_adapter {adapter!r} cannot be imported by name; define it at module level"
            )
        return ast.Literal(f"{module}:{qualname}", _NOWHERE)

    def graph(self) -> ast.GraphDecl:
        uses: dict[str, int] = {}
        for key in self.records:
            for child in self.children(key):
                uses[child] = uses.get(child, 0) + 1
        for key in self.postorder():
            record = self.records[key]
            if record.kind == irmod.INPUT:
                self.variable[key] = self.names.claim("request")
                self.statements.append(ast.InputStmt(_name(self.variable[key]), 0, 0))
                continue
            if key == self.root:
                break
            expr, depth = self.expression(key)
            if uses.get(key, 0) > 1 or depth >= INLINE_DEPTH:
                self.variable[key] = self.names.claim(_variable_name(record))
                self.statements.append(ast.Assign(_name(self.variable[key]), expr, 0, 0))
            else:
                self.inline[key] = (expr, depth)
        root = self.records[self.root]
        if root.kind == irmod.INPUT:
            values: tuple[ast.Expr, ...] = (_ref(self.variable[self.root]),)
        elif root.kind == irmod.OUTPUT and len(root.args[0]) > 1:
            values = tuple(self.value(v, root, "0")[0] for v in root.args[0])
        else:
            values = (self.expression(self.root)[0],)
        self.statements.append(ast.OutputStmt(values, _NOWHERE, 0, 0))
        route = ast.Literal(self.route_prefix, _NOWHERE) if self.route_prefix else None
        return ast.GraphDecl(_name(self.graph_name), route, tuple(self.statements), 0, 0, 0)

    def module(self) -> ast.Module:
        self.declare_deployments()
        graph = self.graph()
        return ast.Module(tuple(self.items) + (graph,))


def _chain(expr: ast.Expr, trailer: ast.Trailer) -> ast.Postfix:
    if isinstance(expr, ast.Postfix):
        return ast.Postfix(expr.atom, expr.trailers + (trailer,))
    return ast.Postfix(expr, (trailer,))


def _variable_name(record: irmod.NodeIR) -> str:
    if record.kind == irmod.DEPLOYMENT:
        return _snake(record.deployment or record.label)
    if record.kind == irmod.FUNCTION:
        return _snake(record.deployment or record.label) + "_out"
    if record.kind == irmod.METHOD:
        method = "call" if record.method == "__call__" else record.method
        return f"{_snake(record.deployment or 'node')}_{_snake(method or 'call')}"
    if record.kind == irmod.INPUT_ATTR:
        return "request_" + _snake(str(record.access[1] if record.access else "part"))
    return {irmod.OUTPUT: "outputs", irmod.DRIVER: "driver"}.get(record.kind, "node")


def export_module(app: DAGNode | CompiledGraph, name: str = "app", route_prefix: str | None = None) -> ast.Module:
    """The syntax tree of a ``.sg`` file holding ``app`` as the graph ``name``."""
    if not NAME_RE.match(name) or name in _RESERVED:
        raise ExportError(f"{name!r} cannot name a graph: use letters, digits and '_', not a keyword")
    compiled = app if isinstance(app, CompiledGraph) else compile(app)
    if route_prefix is None:
        route_prefix = compiled.app.route_prefix
    return _Exporter(compiled, name, route_prefix).module()


def export(app: DAGNode | CompiledGraph, name: str = "app", *, route_prefix: str | None = None) -> str:
    """``.sg`` text for a Python graph (a bound node, or what ``compile()`` returned).

    Parsing the text back and compiling it gives the same IR (call sites aside).

    Raises:
        GraphError: the graph does not compile.
        ExportError: it holds something a ``.sg`` file cannot write (a tuple argument, a class
            defined inside a function, ...); the message names the node and its ``.bind()`` line.
    """
    return format_module(export_module(app, name, route_prefix))
