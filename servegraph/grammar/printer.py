"""Syntax tree to canonical ``.sg`` text: what ``servegraph fmt`` prints and ``export`` writes.

One statement or option per line, four-space indents, one space around ``=``,
double-quoted strings, bare map keys where they are names. Comments are kept:
one that ends a line stays at the end of that statement's line, one on a line
of its own stays above the statement that follows it (a comment inside a
statement that spans lines moves above it, since the statement becomes one
line). A blank line in the source is kept (runs of them become one), and
graphs and deployment blocks are set apart by one.
"""

from __future__ import annotations

from typing import Any

from . import ast
from .syntax import NAME_RE, quote

INDENT = "    "
_LITERAL_WORDS = {"true", "false", "null"}


def literal_text(value: Any) -> str:
    """A plain value as the language writes it.

    >>> literal_text([1, 2.5, "a", True, None])
    '[1, 2.5, "a", true, null]'
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key_text(k)}: {literal_text(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} has no literal form")  # pragma: no cover - callers check


def key_text(key: Any) -> str:
    """A map key: bare when it is a name, else a literal."""
    if isinstance(key, str) and NAME_RE.match(key) and key not in _LITERAL_WORDS:
        return key
    return literal_text(key)


def expr_text(expr: ast.Expr) -> str:
    """An expression on one line, in canonical form."""
    if isinstance(expr, ast.Literal):
        return literal_text(expr.value)
    if isinstance(expr, ast.NameRef):
        return expr.name.text
    if isinstance(expr, ast.ListExpr):
        return "[" + ", ".join(expr_text(item) for item in expr.items) + "]"
    if isinstance(expr, ast.MapExpr):
        return "{" + ", ".join(f"{key_text(k.value)}: {expr_text(v)}" for k, v in expr.entries) + "}"
    parts = [expr_text(expr.atom)]
    for trailer in expr.trailers:
        if isinstance(trailer, ast.Call):
            args = (f"{a.name.text}={expr_text(a.value)}" if a.name else expr_text(a.value) for a in trailer.args)
            parts.append("(" + ", ".join(args) + ")")
        elif isinstance(trailer, ast.Attr):
            parts.append("." + trailer.name.text)
        else:
            parts.append("[" + expr_text(trailer.key) + "]")
    return "".join(parts)


def statement_text(stmt: ast.Statement) -> str:
    if isinstance(stmt, ast.InputStmt):
        return f"input {stmt.name.text}"
    if isinstance(stmt, ast.Assign):
        return f"{stmt.target.text} = {expr_text(stmt.value)}"
    return "output " + ", ".join(expr_text(v) for v in stmt.values)


def import_text(item: ast.ImportStmt) -> str:
    names = (f"{n.text} as {a.text}" if a is not None else n.text for n, a in item.names)
    return f"from {item.module_path} import {', '.join(names)}"


class _Printer:
    def __init__(self, module: ast.Module):
        self.comments = sorted(module.comments, key=lambda c: (c.line, c.col))
        self.next_comment = 0
        self.source_lines = module.source.split("\n")
        self.out: list[str] = []
        self.block_start = True  # no blank line right after "{" or at the top of the file

    # -- layout helpers -----------------------------------------------------------
    def blank_in_source(self, line: int) -> bool:
        return 2 <= line <= len(self.source_lines) + 1 and not self.source_lines[line - 2].strip()

    def emit(self, depth: int, text: str, blank: bool = False) -> None:
        if blank and not self.block_start and self.out and self.out[-1] != "":
            self.out.append("")
        self.out.append(INDENT * depth + text if text else "")
        self.block_start = False

    def take_before(self, line: int) -> list[ast.Comment]:
        taken = []
        while self.next_comment < len(self.comments) and self.comments[self.next_comment].line < line:
            taken.append(self.comments[self.next_comment])
            self.next_comment += 1
        return taken

    def take_on(self, line: int, allowed: bool = True) -> str:
        if (
            allowed
            and self.next_comment < len(self.comments)
            and self.comments[self.next_comment].line == line
        ):
            comment = self.comments[self.next_comment]
            self.next_comment += 1
            return "  " + comment.text
        return ""

    def lead(self, depth: int, line: int, force_blank: bool = False) -> bool:
        """Emit the comments above ``line``; return whether the line itself wants a blank line before it."""
        comments = self.take_before(line)
        first = True
        for comment in comments:
            self.emit(depth, comment.text, blank=(force_blank and first) or self.blank_in_source(comment.line))
            first = False
        last = comments[-1].line if comments else 0
        if comments:
            return self.blank_in_source(line) and line - 1 > last
        return force_blank or self.blank_in_source(line)

    # -- items ----------------------------------------------------------------------
    def simple(self, depth: int, text: str, line: int, end_line: int, next_line: int | None, force_blank: bool = False) -> None:
        blank = self.lead(depth, line, force_blank)
        inner = self.take_before(end_line)  # comments inside a multi-line statement move above it
        for i, comment in enumerate(inner):
            self.emit(depth, comment.text, blank=blank and i == 0)
            blank = False
        self.emit(depth, text + self.take_on(end_line, next_line != end_line), blank=blank)

    def block(
        self,
        header: str,
        line: int,
        open_line: int,
        end_line: int,
        entries: list[tuple[str, int, int]],
        force_blank: bool,
    ) -> None:
        blank = self.lead(0, line, force_blank)
        inner = self.take_before(open_line)
        for i, comment in enumerate(inner):
            self.emit(0, comment.text, blank=blank and i == 0)
            blank = False
        first_line = entries[0][1] if entries else end_line
        trailing = self.take_on(open_line, first_line != open_line)
        has_inner_comments = (
            self.next_comment < len(self.comments) and self.comments[self.next_comment].line < end_line
        )
        if not entries and not has_inner_comments:
            self.emit(0, f"{header} {{}}" + trailing + self.take_on(end_line, True), blank=blank)
            return
        self.emit(0, f"{header} {{" + trailing, blank=blank)
        self.block_start = True
        for i, (text, start, stop) in enumerate(entries):
            following = entries[i + 1][1] if i + 1 < len(entries) else end_line
            self.simple(1, text, start, stop, following)
        for comment in self.take_before(end_line):
            self.emit(1, comment.text, blank=self.blank_in_source(comment.line))
        self.block_start = False
        self.emit(0, "}" + self.take_on(end_line, True))

    def module(self, module: ast.Module) -> str:
        items = module.items
        for i, item in enumerate(items):
            following = items[i + 1].line if i + 1 < len(items) else None
            is_block = not isinstance(item, ast.ImportStmt)
            force = i > 0 and (is_block or not isinstance(items[i - 1], ast.ImportStmt))
            if isinstance(item, ast.ImportStmt):
                self.simple(0, import_text(item), item.line, item.end_line, following, force_blank=force)
            elif isinstance(item, ast.DeploymentDecl):
                header = f"deployment {item.name.text}" + (f" = {item.source.text}" if item.source else "")
                entries = [(f"{o.key.text}: {expr_text(o.value)}", o.line, o.end_line) for o in item.options]
                self.block(header, item.line, item.open_line, item.end_line, entries, force)
            else:
                header = f"graph {item.name.text}" + (f" at {quote(item.route.value)}" if item.route else "")
                entries = [(statement_text(s), s.line, s.end_line) for s in item.body]
                self.block(header, item.line, item.open_line, item.end_line, entries, force)
        for comment in self.take_before(10**12):
            self.emit(0, comment.text, blank=self.blank_in_source(comment.line))
        return "\n".join(self.out) + "\n" if self.out else ""


def format_module(module: ast.Module) -> str:
    """The canonical text of a parsed file, comments kept."""
    return _Printer(module).module(module)
