"""Resolve what a CLI command was pointed at (``MODULE:ATTR`` or a ``.sg`` file) into graph nodes."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import TYPE_CHECKING

from ..dsl.nodes import DAGNode
from ..errors import ImportPathError

if TYPE_CHECKING:
    from ..grammar.build import SgGraph


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What a command was pointed at, loaded: the graph, and what its source says about serving it."""

    node: DAGNode
    #: ``MODULE:ATTR``, or ``FILE.sg:GRAPH`` for a text graph (what a config's ``args.graph`` holds).
    import_path: str
    #: A ``.sg`` graph's ``at "/route"``; None when the source does not say.
    route_prefix: str | None = None


def load_target(spec: str, *, name: str | None = None) -> Target:
    """The graph ``spec`` names, with its route prefix where a ``.sg`` file gives one.

    Every command that takes a graph loads it here, so ``run``, ``build``, ``render`` and ``check``
    all honour a ``.sg`` graph's ``at "/route"`` alike.
    """
    path, graph = None, name
    if spec.endswith(".sg"):
        path = spec
    elif ".sg:" in spec:  # FILE.sg:GRAPH, as `servegraph build` writes a .sg graph's import path
        path, _, in_spec = spec.rpartition(":")
        graph = name or in_spec
    if path is None:
        return Target(load_app(spec), spec)
    sg = load_sg_graph(path, name=graph)
    return Target(sg.node, f"{path}:{sg.name}", sg.route_prefix)


def load_app(spec: str, *, name: str | None = None) -> DAGNode:
    """The graph ``spec`` names: ``module:attr`` importable from the current directory, or a ``.sg`` file.

    Raises:
        ImportPathError: the module or attribute does not exist, or is not a graph.
        GraphError: the graph itself is wrong (a bind error at import time, a .sg syntax error).
    """
    if spec.endswith(".sg") or ".sg:" in spec:
        return load_target(spec, name=name).node
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ImportPathError(f"{spec!r} is not an import path; expected MODULE:ATTR, e.g. hello:app, or a .sg file")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ImportPathError(
                f"cannot import {module_name!r} (from {spec!r}): no module named {exc.name!r} in {os.getcwd()} or on sys.path"
            ) from None
        raise
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ImportPathError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})") from None
    if not isinstance(value, DAGNode):
        raise ImportPathError(
            f"{spec} is a {type(value).__name__}, not a graph; point at the result of .bind(), "
            "e.g. app = Model.bind()"
        )
    return value


def load_sg_graph(path: str, *, name: str | None = None) -> SgGraph:
    """The graph named ``name`` (or the only one) in a ``.sg`` file, with its route prefix."""
    try:
        from ..grammar import load_graph
    except ImportError:
        raise ImportPathError(f"{path}: .sg files are not supported by this build of servegraph") from None
    return load_graph(path, name=name)
