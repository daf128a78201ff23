"""Errors servegraph raises, rooted at :class:`GraphError`.

Each subclass also inherits the builtin it resembles, so ``except TypeError``
keeps working for code written against Ray Serve::

    GraphError(Exception)
    ├── BindError(GraphError, TypeError)            bad .bind() arguments, unknown method
    ├── OptionError(GraphError, TypeError)          unknown deployment option
    ├── OptionValueError(GraphError, ValueError)    option value out of range
    ├── CycleError(GraphError, ValueError)          the graph has a cycle
    ├── InputNodeError(GraphError, ValueError)      more than one InputNode
    ├── UnreachableNodeError(GraphError, ValueError) a node never reaches the output
    ├── ResourceError(GraphError, RuntimeError)     the graph cannot be placed on the cluster
    ├── SerializationError(GraphError, TypeError)   a bound argument cannot be serialized
    ├── ConfigError(GraphError, ValueError)         a deploy config is invalid
    ├── ImportPathError(GraphError, ImportError)    MODULE:ATTR does not resolve to a graph
    ├── RenderError(GraphError, RuntimeError)       a diagram cannot be drawn (graphviz missing, unknown format)
    └── DeploymentError(GraphError, RuntimeError)   a replica failed to start, a deployment is gone
        └── BackPressureError(DeploymentError)       a handle's queue is full (max_queued_requests); HTTP 503

Errors found by ``compile()`` carry every diagnostic of the graph in
``.diagnostics``; the exception's class is that of the first one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a graph, located at the user's source line."""

    code: str
    message: str
    file: str | None = None
    line: int | None = None
    node: str | None = None
    severity: str = "error"
    col: int | None = None

    def location(self) -> str:
        if self.file is None:
            return "<unknown>"
        if self.col:
            return f"{self.file}:{self.line}:{self.col}"
        return f"{self.file}:{self.line}"

    def format(self) -> str:
        return f"{self.location()}: {self.severity}: {self.message}"

    def to_dict(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "node": self.node,
        }


class GraphError(Exception):
    """Root of every error servegraph raises about a user's graph."""

    code = "graph-error"

    def __init__(self, message: str, diagnostics: tuple[Diagnostic, ...] = ()):
        super().__init__(message)
        self.diagnostics = tuple(diagnostics)


class BindError(GraphError, TypeError):
    code = "bind-arguments"


class OptionError(GraphError, TypeError):
    code = "unknown-option"


class OptionValueError(GraphError, ValueError):
    code = "option-value"


class CycleError(GraphError, ValueError):
    code = "cycle"


class InputNodeError(GraphError, ValueError):
    code = "input-node"


class UnreachableNodeError(GraphError, ValueError):
    code = "unreachable"


class ResourceError(GraphError, RuntimeError):
    code = "resources"


class SerializationError(GraphError, TypeError):
    code = "serialization"


class ConfigError(GraphError, ValueError):
    code = "config"


class ImportPathError(GraphError, ImportError):
    code = "import-path"


class RenderError(GraphError, RuntimeError):
    code = "render"


class DeploymentError(GraphError, RuntimeError):
    code = "deployment"


class BackPressureError(DeploymentError):
    """Every replica is busy and the handle already queues ``max_queued_requests`` requests."""

    code = "back-pressure"


ERROR_CLASSES = {
    cls.code: cls
    for cls in (
        BindError,
        OptionError,
        OptionValueError,
        CycleError,
        InputNodeError,
        UnreachableNodeError,
        ResourceError,
        SerializationError,
        ConfigError,
        ImportPathError,
        RenderError,
        DeploymentError,
    )
}


def raise_diagnostics(
    diagnostics: Sequence[Diagnostic],
    *,
    classes: Mapping[str, type[GraphError]] | None = None,
    where: str = "the graph",
    continuation: str = "    ",
) -> None:
    """Raise one exception carrying every error diagnostic; the first one picks its class.

    Args:
        classes: error classes by diagnostic code, beyond :data:`ERROR_CLASSES`.
        where: what the errors are in, for the header of a message with several.
        continuation: indent of a diagnostic's second and later lines (``.sg``
            errors keep their caret under the source line with two spaces).
    """
    errors = [d for d in diagnostics if d.severity == "error"]
    if not errors:
        return
    cls = {**ERROR_CLASSES, **(classes or {})}.get(errors[0].code, GraphError)
    if len(errors) == 1:
        message = errors[0].format()
    else:
        message = f"{len(errors)} errors in {where}:\n" + "\n".join(
            "  " + d.format().replace("\n", "\n" + continuation) for d in errors
        )
    raise cls(message, tuple(diagnostics))
