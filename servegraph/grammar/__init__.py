"""The ``.sg`` graph language: a second front end that builds the same DSL nodes as ``.bind()`` code.

A ``.sg`` file imports deployments, sets their options, and describes graphs;
:func:`load_file` turns one into the node ``servegraph.compile()`` takes, so
checks, configs, diagrams and the runtime are shared with Python graphs.
docs/language.md describes the language; ``servegraph.lark`` is its grammar.

>>> print(format_source("graph g {output   f( 1,x=[2] )}"))
graph g {
    output f(1, x=[2])
}
<BLANKLINE>
"""

from __future__ import annotations

import os

from ..dsl import DAGNode
from ..errors import ImportPathError
from .build import SgFile, SgGraph, build
from .errors import ExportError, SgNameError, SgSyntaxError
from .export import export
from .printer import format_module
from .syntax import parse_module


def parse(text: str, filename: str = "<string>") -> SgFile:
    """Parse ``.sg`` text and build all its graphs.

    Imports in the text are resolved with the file's directory (the current
    directory for ``"<string>"``) first on ``sys.path``.

    Raises:
        GraphError: a subclass for the first problem (SgSyntaxError, SgNameError, BindError,
            OptionError, ImportPathError, ...); ``.diagnostics`` holds every problem in the file,
            each at its ``file:line:col`` with the source line and a caret.
    """
    return build(parse_module(text, filename))


def _read(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise ImportPathError(f"{os.fspath(path)}: no such .sg file") from None
    except UnicodeDecodeError as exc:
        raise SgSyntaxError(f"{os.fspath(path)}: error: the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ImportPathError(f"{os.fspath(path)}: cannot read the file: {exc.strerror}") from None


def parse_file(path: str | os.PathLike[str]) -> SgFile:
    """:func:`parse` on a file's text."""
    return parse(_read(path), os.fspath(path))


def load_graph(path: str | os.PathLike[str], name: str | None = None) -> SgGraph:
    """The graph ``name`` of a file (or its only graph), with its route prefix.

    Raises:
        ImportPathError: no graph has that name, or there are several and no name was given.
    """
    return parse_file(path).graph(name)


def load_file(path: str | os.PathLike[str], name: str | None = None) -> DAGNode:
    """The output node of graph ``name`` in a ``.sg`` file (or of its only graph): what ``compile()`` takes."""
    return load_graph(path, name).node


def route_prefix_of(path: str | os.PathLike[str], name: str | None = None) -> str | None:
    """The route prefix (``graph NAME at "/route"``) of a graph in a file; None when the file does not say."""
    return load_graph(path, name).route_prefix


def format_source(text: str, filename: str = "<string>") -> str:
    """``text`` in canonical form, comments kept. Runs no imports.

    Raises:
        SgSyntaxError: the text does not parse.
    """
    return format_module(parse_module(text, filename))


__all__ = [
    "ExportError",
    "SgFile",
    "SgGraph",
    "SgNameError",
    "SgSyntaxError",
    "export",
    "format_source",
    "load_file",
    "load_graph",
    "parse",
    "parse_file",
    "route_prefix_of",
]
