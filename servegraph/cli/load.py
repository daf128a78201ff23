"""Resolve what a CLI command was pointed at (``MODULE:ATTR`` or a ``.sg`` file) into graph nodes."""

from __future__ import annotations

import importlib
import os
import sys

from ..dsl.nodes import DAGNode
from ..errors import ImportPathError


def load_app(spec: str, *, name: str | None = None) -> DAGNode:
    """The graph ``spec`` names: ``module:attr`` importable from the current directory, or a ``.sg`` file.

    Raises:
        ImportPathError: the module or attribute does not exist, or is not a graph.
        GraphError: the graph itself is wrong (a bind error at import time, a .sg syntax error).
    """
    if spec.endswith(".sg"):
        return load_sg(spec, name=name)
    if ".sg:" in spec:  # FILE.sg:GRAPH, as `servegraph build` writes a .sg graph's import path
        path, _, graph = spec.rpartition(":")
        return load_sg(path, name=name or graph)
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


def load_sg(path: str, *, name: str | None = None) -> DAGNode:
    """The graph named ``name`` (or the only/last one) in a ``.sg`` file."""
    try:
        from ..grammar import load_file
    except ImportError:
        raise ImportPathError(f"{path}: .sg files are not supported by this build of servegraph") from None
    return load_file(path, name=name)
