"""Errors about ``.sg`` files, each located at a token and shown with its source line and a caret.

The classes join the tree drawn in :mod:`servegraph.errors`::

    GraphError
    ├── SgSyntaxError(GraphError, SyntaxError)  the text does not follow the grammar, or a
    │                                           statement is misplaced (two outputs, a bad literal)
    ├── SgNameError(GraphError, NameError)      a name is unknown, defined twice, or used before
    │                                           its definition
    └── ExportError(GraphError, ValueError)     a Python graph holds something a .sg file cannot say

Problems the DSL itself finds (bad ``.bind()`` arguments, unknown options, a
missing method, an import that does not resolve) keep their classes
(:class:`~servegraph.errors.BindError`, ...), relocated to the token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..errors import (
    BindError,
    CycleError,
    Diagnostic,
    GraphError,
    ImportPathError,
    InputNodeError,
    OptionError,
    OptionValueError,
    raise_diagnostics,
)
from .ast import Span


class SgSyntaxError(GraphError, SyntaxError):
    code = "syntax"


class SgNameError(GraphError, NameError):
    code = "name"


class ExportError(GraphError, ValueError):
    code = "export"


#: Which exception a diagnostic's code raises (the first error's code picks the class).
_CLASSES: dict[str, type[GraphError]] = {
    "syntax": SgSyntaxError,
    "name": SgNameError,
    "cycle": CycleError,
    "input-node": InputNodeError,
    "bind-arguments": BindError,
    "unknown-option": OptionError,
    "option-value": OptionValueError,
    "import-path": ImportPathError,
}


#: Characters of a long source line shown around the spot an error points at.
_WINDOW = 100


class Source:
    """A file's text and name, to point at a token in it."""

    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.lines = text.split("\n")

    def excerpt(self, span: Span) -> str:
        """The source line and a caret under ``span``, indented to sit under a diagnostic.

        >>> print(Source("x = A(]", "f.sg").excerpt(Span(1, 7)))
            x = A(]
                  ^
        """
        if not 1 <= span.line <= len(self.lines):
            return ""
        line = self.lines[span.line - 1].rstrip("\r")
        col = min(max(span.col, 1), len(line) + 1)
        width = max(1, min(span.width, len(line) - col + 1, _WINDOW // 2))
        if len(line) > _WINDOW:  # show the part of a long line around the spot
            start = max(0, min(col - 1 - _WINDOW // 2, len(line) - _WINDOW))
            head = "..." if start else ""
            tail = "..." if start + _WINDOW < len(line) else ""
            line = head + line[start : start + _WINDOW] + tail
            col = col - start + len(head)
        # Keep tabs in the caret line's prefix so the caret lines up in any terminal.
        prefix = "".join(ch if ch == "\t" else " " for ch in line[: col - 1])
        return f"    {line}\n    {prefix}{'^' * width}"

    def diagnostic(self, code: str, message: str, span: Span, node: str | None = None) -> Diagnostic:
        """A diagnostic at ``span`` whose message ends with the source line and a caret."""
        return self.locate(Diagnostic(code, message, subject=node), span)

    def locate(self, diagnostic: Diagnostic, span: Span) -> Diagnostic:
        """``diagnostic`` (from the DSL, say) placed at ``span`` of this file, with its source line and caret."""
        return dataclasses.replace(
            diagnostic, file=self.filename, line=span.line, col=max(span.col, 1), excerpt=self.excerpt(span) or None
        )


def raise_located(diagnostics: Sequence[Diagnostic]) -> None:
    """Raise one exception carrying every diagnostic, in file order; the first one picks the class.

    The message has the shape :func:`servegraph.errors.raise_diagnostics` gives, so
    the CLI prints ``.sg`` problems like any other graph's.
    """
    errors = sorted(diagnostics, key=lambda d: (d.line or 0, d.col or 0))
    if errors:
        raise_diagnostics(errors, classes=_CLASSES, where=str(errors[0].file), continuation="  ")
