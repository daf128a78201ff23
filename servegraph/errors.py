"""Errors servegraph raises, rooted at :class:`GraphError`.

Each subclass also inherits the builtin it resembles, so ``except TypeError``
keeps working for code written against Ray Serve::

    GraphError(Exception)
    ├── BindError(GraphError, TypeError)            bad .bind() arguments, unknown method (also in a
    │                                               handle call in deployment code), a generator as a node
    ├── OptionError(GraphError, TypeError)          unknown deployment option
    ├── OptionValueError(GraphError, ValueError)    option value out of range
    ├── CycleError(GraphError, ValueError)          the graph has a cycle
    ├── InputNodeError(GraphError, ValueError)      more than one InputNode
    ├── RoutingError(GraphError, ValueError)        a malformed switch or split: no branches, unknown keys,
    │                                               keys that cannot cover the value without a default, bad weights
    ├── NoRouteError(GraphError, LookupError)       a request's value matches no branch of a switch; HTTP 400
    ├── UnreachableNodeError(GraphError, ValueError) a node never reaches the output
    ├── ResourceError(GraphError, RuntimeError)     the graph cannot be placed on the cluster
    ├── SerializationError(GraphError, TypeError)   a bound argument cannot be serialized
    ├── ConfigError(GraphError, ValueError)         a deploy config is invalid
    ├── ImportPathError(GraphError, ImportError)    MODULE:ATTR does not resolve to a graph
    ├── RenderError(GraphError, RuntimeError)       a diagram cannot be drawn (graphviz missing, unknown format)
    ├── DeploymentError(GraphError, RuntimeError)   a replica failed to start, a deployment is gone
    │   └── BackPressureError(DeploymentError)       a handle's queue is full (max_queued_requests); HTTP 503
    └── NoSuchMethodError(GraphError, AttributeError) a call names a method the running deployment lacks

Errors found by ``compile()`` carry every diagnostic of the graph in
``.diagnostics``; the exception's class is that of the first one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem, as data: what it is (``code``, ``severity``), where (``file``, ``line``, ``col``: the
    site), what it is about (``subject``, and ``call``, the call as the user wrote it), what was got and
    what was expected, and how to fix it (``hint``).

    :attr:`message` is rendered from these fields; nothing reads a message back. A front end that
    shows the same problem differently (a ``.sg`` file calls ``Model(...)`` where Python calls
    ``Model.bind()``) replaces fields (``dataclasses.replace``), never edits the text.

    >>> d = Diagnostic("bind-arguments", "missing a required argument: 'x'", call="Model.bind()",
    ...                expected="Model.__init__(self, x)", hint="fix the arguments passed to .bind().")
    >>> d.message
    "Model.bind(): missing a required argument: 'x'. Expected Model.__init__(self, x); fix the arguments passed to .bind()."
    """

    code: str
    #: What is wrong, in the user's words (without the site, the call or the hint).
    summary: str
    file: str | None = None
    line: int | None = None
    #: The node, deployment or option the problem is about.
    subject: str | None = None
    severity: str = "error"
    col: int | None = None
    #: The call the problem is in, as the user wrote it (``Model.bind()``; ``Model(...)`` in a ``.sg`` file).
    call: str | None = None
    got: str | None = None
    expected: str | None = None
    #: How to fix it: a sentence.
    hint: str | None = None
    #: The keyword argument the problem is about, if one (a text front end points at it).
    keyword: str | None = None
    #: The source line with a caret under the spot (text graphs), shown below the message.
    excerpt: str | None = None

    @property
    def node(self) -> str | None:
        """The subject (the name ``--format json`` has always used)."""
        return self.subject

    @property
    def site(self) -> str | None:
        """``file:line[:col]``, or None when the problem has no place in the user's code."""
        return None if self.file is None else self.location()

    @property
    def message(self) -> str:
        """The problem in one paragraph, rendered from the fields (plus the excerpt, if any)."""
        text = (f"{self.call}: " if self.call else "") + self.summary
        if self.got is not None:
            text += f", got {self.got}"
        if self.expected is not None:
            text += f". Expected {self.expected}"
        if self.hint:
            # After a summary ending in a line break (a table), the hint starts the next line.
            text += ("; " if self.expected is not None else "" if text.endswith("\n") else " ") + self.hint
        return text + (f"\n{self.excerpt}" if self.excerpt else "")

    def location(self) -> str:
        if self.file is None:
            return "<unknown>"
        if self.col:
            return f"{self.file}:{self.line}:{self.col}"
        return f"{self.file}:{self.line}"

    def format(self) -> str:
        """``site: severity: message``, as compilers print diagnostics."""
        return f"{self.location()}: {self.severity}: {self.message}"

    def located(self) -> str:
        """``site: message`` (or the message alone without a site): how an exception raised at once reads."""
        return f"{self.location()}: {self.message}" if self.file is not None else self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "node": self.subject,
            "got": self.got,
            "expected": self.expected,
            "hint": self.hint,
        }


class GraphError(Exception):
    """Root of every error servegraph raises about a user's graph.

    Raised with a :class:`Diagnostic` (its message is rendered from it), or with a plain message for
    problems that have no place in the user's code; either way ``.diagnostic`` holds the data and
    ``.diagnostics`` every problem found with it (``compile()`` reports them all at once).
    """

    code = "graph-error"

    def __init__(self, message: str | Diagnostic, diagnostics: tuple[Diagnostic, ...] = ()):
        if isinstance(message, Diagnostic):
            diagnostic, text = message, message.located()
        else:
            errors = [d for d in diagnostics if d.severity == "error"]
            diagnostic, text = (errors[0] if errors else Diagnostic(self.code, message)), message
        super().__init__(text)
        self.diagnostic = diagnostic
        self.diagnostics = tuple(diagnostics) or (diagnostic,)


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


class RoutingError(GraphError, ValueError):
    code = "routing"


class NoRouteError(GraphError, LookupError):
    """A request's value matches no branch of a switch that has no default (HTTP 400).

    ``got`` is the value, ``keys`` the keys (or predicate names) the switch knows, ``switch`` where it was made.
    """

    code = "no-route"

    def __init__(self, switch: str, got: Any, keys: Sequence[str]):
        self.switch, self.got, self.keys = switch, got, tuple(keys)
        super().__init__(
            Diagnostic(
                self.code,
                f"{switch}: the request's value {got!r} matches no branch and the switch has no default",
                subject=switch,
                expected="one of " + ", ".join(self.keys),
                hint="send one of those values, or give the switch a default branch.",
            )
        )


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


class DeploymentUnavailableError(DeploymentError):
    """The deployment failed to deploy (its replicas' starts kept failing) and no replica runs: its requests
    fail at once, as in Ray Serve, instead of waiting for a replica that will not come."""

    code = "deployment-unavailable"

    def __init__(self, deployment: str, app: str):
        self.deployment, self.app = deployment, app
        super().__init__(
            f"Deployment(name='{deployment}', app='{app}') is unavailable because it failed to deploy. "
            f"(servegraph: `servegraph status` says why; deploy the application again once it is fixed)"
        )

    def __reduce__(self) -> tuple:
        return (DeploymentUnavailableError, (self.deployment, self.app))


class NoSuchMethodError(GraphError, AttributeError):
    """A handle call names a method the deployment's replicas do not have (``except RayServeException`` catches
    it, as Ray Serve raises it; ``except AttributeError`` too)."""

    code = "no-such-method"


ERROR_CLASSES = {
    cls.code: cls
    for cls in (
        BindError,
        OptionError,
        OptionValueError,
        CycleError,
        InputNodeError,
        RoutingError,
        UnreachableNodeError,
        ResourceError,
        SerializationError,
        ConfigError,
        ImportPathError,
        RenderError,
        DeploymentError,
    )
}
#: Diagnostic codes raised as a class whose own code is another: mistakes of the same kind.
ERROR_CLASSES.update(
    {
        "handle-call": BindError,  # a handle call inside deployment code with an unknown method or bad arguments
        "streaming": BindError,  # a generator bound as a graph node, whose value cannot be passed on
        "annotation": BindError,  # mismatched annotations across an edge (an error only with --strict)
    }
)


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
