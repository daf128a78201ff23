"""The syntax tree of a ``.sg`` file: what the user wrote, with positions, before any name is resolved.

The parser (:mod:`.syntax`) makes it, the builder (:mod:`.build`) turns it into
DSL nodes, the printer (:mod:`.printer`) writes it back canonically, and the
exporter (:mod:`.export`) makes one from a Python graph. Lines and columns are
1-based, as editors show them. Postfix chains (``a.b(c)[0]``) are kept flat so
that a long chain never means deep recursion.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """Where a token or construct starts, and how many characters to underline."""

    line: int
    col: int
    width: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Name:
    text: str
    span: Span


# Expressions ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Literal:
    """A string, number, ``true``/``false`` or ``null``; ``bare`` marks a map key written without quotes."""

    value: Any
    span: Span
    bare: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class NameRef:
    name: Name

    @property
    def span(self) -> Span:
        return self.name.span


@dataclasses.dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclasses.dataclass(frozen=True, slots=True)
class MapExpr:
    entries: tuple[tuple[Literal, Expr], ...]
    span: Span


@dataclasses.dataclass(frozen=True, slots=True)
class Arg:
    """One call argument; ``name`` is set for ``name=value``."""

    value: Expr
    name: Name | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    args: tuple[Arg, ...]
    span: Span  # the "("


@dataclasses.dataclass(frozen=True, slots=True)
class Attr:
    name: Name


@dataclasses.dataclass(frozen=True, slots=True)
class Index:
    key: Expr
    span: Span  # the "["


Trailer = Call | Attr | Index


@dataclasses.dataclass(frozen=True, slots=True)
class Postfix:
    """``atom`` followed by calls, ``.attr`` and ``[key]``, left to right."""

    atom: Expr
    trailers: tuple[Trailer, ...]

    @property
    def span(self) -> Span:
        return self.atom.span


Expr = Literal | NameRef | ListExpr | MapExpr | Postfix


# Statements -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class InputStmt:
    """``input request``: the graph's InputNode."""

    name: Name
    line: int
    end_line: int


@dataclasses.dataclass(frozen=True, slots=True)
class Assign:
    """``name = expr``."""

    target: Name
    value: Expr
    line: int
    end_line: int


@dataclasses.dataclass(frozen=True, slots=True)
class OutputStmt:
    """``output expr`` or ``output a, b`` (a MultiOutputNode)."""

    values: tuple[Expr, ...]
    span: Span  # the keyword
    line: int
    end_line: int


Statement = InputStmt | Assign | OutputStmt


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """``key: value`` in a deployment block."""

    key: Name
    value: Expr
    line: int
    end_line: int


@dataclasses.dataclass(frozen=True, slots=True)
class ImportStmt:
    """``from MODULE import NAME [as ALIAS], ...``."""

    module: tuple[Name, ...]
    names: tuple[tuple[Name, Name | None], ...]
    line: int
    end_line: int

    @property
    def module_path(self) -> str:
        return ".".join(part.text for part in self.module)


@dataclasses.dataclass(frozen=True, slots=True)
class DeploymentDecl:
    """``deployment NAME [= SOURCE] { options }``: ``NAME = SOURCE.options(...)`` in Python."""

    name: Name
    source: Name | None
    options: tuple[Option, ...]
    line: int
    open_line: int  # the "{"
    end_line: int  # the "}"


@dataclasses.dataclass(frozen=True, slots=True)
class GraphDecl:
    """``graph NAME [at "/route"] { statements }``."""

    name: Name
    route: Literal | None
    body: tuple[Statement, ...]
    line: int
    open_line: int
    end_line: int


Item = ImportStmt | DeploymentDecl | GraphDecl


@dataclasses.dataclass(frozen=True, slots=True)
class Comment:
    text: str
    line: int
    col: int


@dataclasses.dataclass(frozen=True, slots=True)
class Module:
    """A whole file: its items in order, and its comments (kept for the formatter)."""

    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = ()
    filename: str = "<string>"
    source: str = ""
