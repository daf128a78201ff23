"""Write the compiled IR (nodes, edges, deployments, plan) as JSON, and read it back.

Bound arguments are kept as JSON where they are JSON: lists, objects with
string keys, strings, numbers, booleans, null. Everything else is tagged so it
comes back as it was:

* ``{"$ref": "n3"}`` a node's value, ``{"$handle": "Model"}`` a deployment handle;
* ``{"$namedtuple": ["module:qualname", [...]]}`` a namedtuple of an importable type;
* ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}`` (non-string keys),
  ``{"$float": "nan"}``;
* ``{"$import": "module:qualname"}`` a module-level function or class;
* ``{"$pickle": "<base64>"}`` anything else, with cloudpickle — the same bytes
  a replica would receive, so only load files you wrote.

Deployment targets are not stored: :func:`load_ir` re-imports them from their
``import_path``, so the code must be importable where the file is loaded.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import os
from typing import TYPE_CHECKING, Any

from ... import errors
from ..._walk import is_namedtuple
from ...dsl.callsite import CallSite
from ...dsl.options import DeploymentOptions
from .. import ir
from ..config.app import AppInfo, resolve
from ..ir import key_order
from ..version import code_version
from .deploy_config import require_ok

if TYPE_CHECKING:
    from ..compiled import CompiledGraph

FORMAT = "servegraph.ir"
VERSION = 1


# -- values -------------------------------------------------------------------
def encode(value: Any) -> Any:
    """A JSON-able form of a bound argument (see the module docstring for the tags).

    >>> encode((1, [2.5, "x"], {"k": None}))
    {'$tuple': [1, [2.5, 'x'], {'k': None}]}
    """
    if isinstance(value, ir.Ref):
        return {"$ref": value.key}
    if isinstance(value, ir.ObjectTemplate):
        return {"$object": [base64.b64encode(value.data).decode("ascii"), [encode(m) for m in value.markers]]}
    if isinstance(value, ir.HandleRef):
        if value.method is not None:
            return {"$handle": [value.deployment, value.method]}
        return {"$handle": value.deployment}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if type(value) is list:
        return [encode(v) for v in value]
    if is_namedtuple(value):
        path = _importable(type(value))
        if path is not None:  # the same namedtuple type comes back, not a plain tuple
            return {"$namedtuple": [path, [encode(v) for v in value]]}
    elif type(value) is tuple:
        return {"$tuple": [encode(v) for v in value]}
    if type(value) is dict:
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"$dict": [[encode(k), encode(v)] for k, v in value.items()]}
    path = _importable(value)
    if path is not None:
        return {"$import": path}
    import cloudpickle

    return {"$pickle": base64.b64encode(cloudpickle.dumps(value)).decode("ascii")}


def decode(value: Any) -> Any:
    """The bound argument :func:`encode` wrote."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag == "$ref":
            return ir.Ref(body)
        if tag == "$handle":
            return ir.HandleRef(*body) if isinstance(body, list) else ir.HandleRef(body)
        if tag == "$object":
            return ir.ObjectTemplate(base64.b64decode(body[0]), tuple(decode(m) for m in body[1]))
        if tag == "$tuple":
            return tuple(decode(v) for v in body)
        if tag == "$namedtuple":
            return import_target(body[0], what="a namedtuple type")._make(decode(v) for v in body[1])
        if tag == "$dict":
            return {_hashable(decode(k)): decode(v) for k, v in body}
        if tag == "$float":
            return float(body)
        if tag == "$import":
            return import_target(body, what="a bound argument")
        if tag == "$pickle":
            import cloudpickle

            return cloudpickle.loads(base64.b64decode(body))
    return {k: decode(v) for k, v in value.items()}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _importable(value: Any) -> str | None:
    """``module:qualname`` when importing it gives back this very object."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        return f"{module}:{qualname}" if import_target(f"{module}:{qualname}", unwrap=False) is value else None
    except errors.ConfigError:
        return None


def import_target(path: str, *, what: str = "a deployment", unwrap: bool = True) -> Any:
    """The object ``module:qualname`` names; a ``Deployment`` gives its class or function.

    Raises:
        ConfigError: the module or attribute cannot be imported.
    """
    module_name, _, qualname = path.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise errors.ConfigError(f"cannot import {what} from {path!r}: {exc}") from None
    if unwrap:
        from ...dsl.deployment import Deployment

        if isinstance(value, Deployment):
            value = value.func_or_class
    return value


# -- records ------------------------------------------------------------------
def _site(site: CallSite) -> list[Any]:
    return [site.file, site.line, site.col]


def _pairs(pairs: tuple[tuple[str, Any], ...]) -> list[list[Any]]:
    return [[k, encode(v)] for k, v in pairs]


def _node(record: ir.NodeIR) -> dict[str, Any]:
    return {
        "key": record.key,
        "kind": record.kind,
        "label": record.label,
        "call_site": _site(record.call_site),
        "deployment": record.deployment,
        "method": record.method,
        "args": [encode(a) for a in record.args],
        "kwargs": _pairs(record.kwargs),
        "access": [record.access[0], encode(record.access[1])] if record.access else None,
        "deps": sorted(record.deps, key=key_order),
        **({"route": _route(record.route)} if record.route is not None else {}),
    }


def _route(route: ir.RouteIR) -> dict[str, Any]:
    """A switch's or split's rule: keys and weights as JSON, predicates as imports (or pickles)."""
    return {
        "mode": route.mode,
        "labels": list(route.labels),
        "choices": [encode(c) for c in route.choices],
        "default": route.default,
        "name": route.name,
        "site": route.site,
    }


def _load_route(data: dict[str, Any] | None) -> ir.RouteIR | None:
    if data is None:
        return None
    return ir.RouteIR(
        mode=data["mode"],
        labels=tuple(data["labels"]),
        choices=tuple(decode(c) for c in data["choices"]),
        default=data["default"],
        name=data["name"],
        site=data["site"],
    )


def _deployment(dep: ir.DeploymentIR) -> dict[str, Any]:
    return {
        "name": dep.name,
        "node": dep.node,
        "import_path": dep.import_path,
        "is_function": dep.is_function,
        "init_args": [encode(a) for a in dep.init_args],
        "init_kwargs": _pairs(dep.init_kwargs),
        "options": encode(dep.options.model_dump(exclude_unset=True)),
        "call_site": _site(dep.call_site),
        "handles": list(dep.handles),
    }


def _step(step: ir.PlanStep) -> dict[str, Any]:
    return {
        "key": step.key,
        "kind": step.kind,
        "deployment": step.deployment,
        "method": step.method,
        "args": [encode(a) for a in step.args],
        "kwargs": _pairs(step.kwargs),
        "access": [encode(step.access[0]), step.access[1], encode(step.access[2])] if step.access else None,
        **({"route": _route(step.route)} if step.route is not None else {}),
    }


def to_data(compiled: CompiledGraph) -> dict[str, Any]:
    """The compiled graph as a JSON-able dict."""
    require_ok(compiled)
    app = resolve(compiled)
    edges = sorted(compiled.ir.edges, key=lambda e: (key_order(e.source), key_order(e.target)))
    plan = compiled.plan
    return {
        "format": FORMAT,
        "version": VERSION,
        "application": {"name": app.name, "route_prefix": app.route_prefix, "import_path": app.import_path},
        "root": compiled.ir.root,
        "ingress": compiled.ingress,
        "nodes": [_node(n) for n in compiled.ir.nodes],
        "edges": [{"from": e.source, "to": e.target, "kind": e.kind, "label": e.label} for e in edges],
        "deployments": [_deployment(d) for d in compiled.ir.deployments],
        "plan": None
        if plan is None
        else {"input": plan.input, "steps": [_step(s) for s in plan.steps], "output": encode(plan.output)},
        "http_adapter": encode(compiled.ir.http_adapter),
        **({"routes": [[route, _plan(p)] for route, p in compiled.ir.routes]} if compiled.ir.routes else {}),
    }


def _plan(plan: ir.Plan) -> dict[str, Any]:
    return {"input": plan.input, "steps": [_step(s) for s in plan.steps], "output": encode(plan.output)}


def to_json(compiled: CompiledGraph) -> str:
    """The compiled graph as JSON text: 2-space indents, keys in a fixed order, a final newline."""
    return json.dumps(to_data(compiled), indent=2, allow_nan=False) + "\n"


# -- loading ------------------------------------------------------------------
def _call_site(value: list[Any]) -> CallSite:
    file, line, col = value
    return CallSite(file, line, col)


def _decode_pairs(pairs: list[list[Any]]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, decode(v)) for k, v in pairs)


def _load_node(data: dict[str, Any]) -> ir.NodeIR:
    access = data["access"]
    return ir.NodeIR(
        key=data["key"],
        kind=data["kind"],
        label=data["label"],
        call_site=_call_site(data["call_site"]),
        deployment=data["deployment"],
        method=data["method"],
        args=tuple(decode(a) for a in data["args"]),
        kwargs=_decode_pairs(data["kwargs"]),
        access=(access[0], decode(access[1])) if access else None,
        deps=frozenset(data["deps"]),
        route=_load_route(data.get("route")),
    )


def _load_deployment(data: dict[str, Any]) -> ir.DeploymentIR:
    try:
        options = DeploymentOptions.model_validate(decode(data["options"]))
    except Exception as exc:  # a hand-edited file: say which deployment
        raise errors.ConfigError(f"deployment {data['name']!r}: invalid options: {exc}") from None
    target = import_target(data["import_path"], what=f"deployment {data['name']!r}")
    return ir.DeploymentIR(
        name=data["name"],
        node=data["node"],
        target=target,
        import_path=data["import_path"],
        is_function=data["is_function"],
        init_args=tuple(decode(a) for a in data["init_args"]),
        init_kwargs=_decode_pairs(data["init_kwargs"]),
        options=options,
        call_site=_call_site(data["call_site"]),
        handles=tuple(data["handles"]),
        code_version=code_version(target, options.version),
    )


def _load_step(data: dict[str, Any]) -> ir.PlanStep:
    access = data["access"]
    return ir.PlanStep(
        key=data["key"],
        kind=data["kind"],
        deployment=data["deployment"],
        method=data["method"],
        args=tuple(decode(a) for a in data["args"]),
        kwargs=_decode_pairs(data["kwargs"]),
        access=(decode(access[0]), access[1], decode(access[2])) if access else None,
        route=_load_route(data.get("route")),
    )


def _read(source: str | os.PathLike[str] | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, dict):
        return source, "<ir>"
    name = os.fspath(source)
    try:
        with open(name, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise errors.ConfigError(f"{name}: cannot read the compiled graph: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise errors.ConfigError(f"{name}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    return data, name


def _check_format(data: Any, name: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise errors.ConfigError(f"{name}: not a compiled graph (written by servegraph build --format json)")
    if data.get("version") != VERSION:
        raise errors.ConfigError(
            f"{name}: compiled graph format version {data.get('version')!r}, this servegraph reads version "
            f"{VERSION}; rebuild it with servegraph build --format json"
        )


def _load_plan(plan: dict[str, Any]) -> ir.Plan:
    return ir.Plan(input=plan["input"], steps=tuple(_load_step(s) for s in plan["steps"]), output=decode(plan["output"]))


def _with_deployment(node: ir.NodeIR, dep: ir.DeploymentIR | None) -> ir.NodeIR:
    """A deployment node with its target, options and name, which the file keeps in ``deployments``."""
    if dep is None:
        return node
    return dataclasses.replace(node, target=dep.target, options=dep.options, name=dep.name)


def _build_ir(data: dict[str, Any], name: str) -> ir.AppIR:
    plan = data["plan"]
    try:
        deployments = tuple(_load_deployment(d) for d in data["deployments"])
        by_node = {d.node: d for d in deployments}
        nodes = tuple(_with_deployment(_load_node(n), by_node.get(n["key"])) for n in data["nodes"])
        return ir.AppIR(
            nodes=nodes,
            deployments=deployments,
            root=data["root"],
            edges=tuple(ir.EdgeIR(e["from"], e["to"], e["kind"], e["label"]) for e in data["edges"]),
            import_path=data["application"]["import_path"],
            ingress=data["ingress"],
            plan=None
            if plan is None
            else ir.Plan(
                input=plan["input"], steps=tuple(_load_step(s) for s in plan["steps"]), output=decode(plan["output"])
            ),
            http_adapter=decode(data["http_adapter"]),
            routes=tuple((route, _load_plan(p)) for route, p in data.get("routes", [])),
        )
    except errors.ConfigError as exc:
        raise errors.ConfigError(f"{name}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.ConfigError(f"{name}: malformed compiled graph ({type(exc).__name__}: {exc})") from None


def load_ir(source: str | os.PathLike[str] | dict[str, Any]) -> ir.AppIR:
    """The AppIR a JSON file (or its parsed dict) holds, deployment targets re-imported.

    Raises:
        ConfigError: the file is not a compiled graph, or a target cannot be imported.
    """
    data, name = _read(source)
    _check_format(data, name)
    return _build_ir(data, name)


def load_compiled(source: str | os.PathLike[str] | dict[str, Any]) -> CompiledGraph:
    """A CompiledGraph (graph, IR, application settings) from a JSON file, as ``servegraph build`` wrote it."""
    from ..compiled import CompiledGraph

    data, name = _read(source)
    _check_format(data, name)
    app_ir = _build_ir(data, name)
    app = data["application"]
    return CompiledGraph(
        ir=app_ir,
        app=AppInfo(name=app["name"], route_prefix=app["route_prefix"], import_path=app["import_path"]),
    )
