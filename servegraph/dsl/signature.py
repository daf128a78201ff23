"""Check ``.bind()`` arguments against the callable they will be passed to."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from .._validation import did_you_mean


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and C extensions may have none
        return None


#: How to fix arguments that do not fit: the hint of every ``.bind()`` argument error (a ``.sg``
#: file, which has no ``.bind()``, gives its own).
BIND_HINT = "fix the arguments passed to .bind()."


class BindProblem(NamedTuple):
    """Why arguments do not fit a signature, and the keyword argument at fault if one is."""

    text: str
    keyword: str | None = None


def bind_problem(
    fn: Callable[..., Any], args: tuple, kwargs: dict, *, drop_self: bool
) -> BindProblem | None:
    """Why ``fn(*args, **kwargs)`` would fail to bind, or None if it would bind.

    ``drop_self`` binds a placeholder for ``self`` (unbound methods, ``__init__``).

    >>> def f(a, b=1): ...
    >>> bind_problem(f, (), {}, drop_self=False)
    BindProblem(text="missing a required argument: 'a'", keyword=None)
    >>> bind_problem(f, (1,), {"c": 2}, drop_self=False)
    BindProblem(text="got an unexpected keyword argument 'c'", keyword='c')
    >>> bind_problem(f, (), {"bb": 2}, drop_self=False).text
    "got an unexpected keyword argument 'bb'; did you mean 'b'?"
    >>> bind_problem(f, (1,), {"a": 2}, drop_self=False)
    BindProblem(text="multiple values for argument 'a'", keyword='a')
    """
    sig = _signature(fn)
    if sig is None:
        return None
    # A misspelt keyword is the likelier mistake than the argument Python would report missing.
    params = list(sig.parameters.values())[1 if drop_self else 0 :]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in kwargs:
            if key not in names:
                return BindProblem(f"got an unexpected keyword argument {key!r}" + did_you_mean(key, names), key)
    try:
        if drop_self:
            sig.bind(None, *args, **kwargs)
        else:
            sig.bind(*args, **kwargs)
    except TypeError as exc:
        # A keyword also given by position is the one keyword Python's binding refuses by name.
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        taken = next((key for key in kwargs if key in positional[: len(args)]), None)
        return BindProblem(str(exc), taken)
    return None


def describe_signature(name: str, fn: Callable[..., Any]) -> str:
    sig = _signature(fn)
    return f"{name}{sig}" if sig is not None else name


def public_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name in dir(cls)
        if (not name.startswith("_") or name == "__call__") and callable(getattr(cls, name, None))
    )


def missing_method_hint(cls: type, method: str) -> str:
    methods = public_methods(cls)
    hint = did_you_mean(method, methods, lead="")
    return (hint + " " if hint else "") + f"Methods of {cls.__name__}: {', '.join(methods) or '(none)'}."


#: The methods a function deployment answers to: ``__call__``, and ``predict`` (what Ray Serve's
#: ``DAGDriver`` and older handles call). Replicas on Ray, local testing mode and the Ray Serve
#: backend all ask :func:`function_method_problem`, so a name works everywhere or nowhere.
FUNCTION_METHODS = ("__call__", "predict")


def function_method_problem(deployment: str, method: str) -> str | None:
    """Why function deployment ``deployment`` cannot be called as ``method``, or None if it can.

    >>> function_method_problem("f", "predict") is None
    True
    >>> function_method_problem("f", "predcit")
    "function deployment 'f' has only __call__ and predict, not 'predcit'; did you mean 'predict'?"
    """
    if method in FUNCTION_METHODS:
        return None
    return (
        f"function deployment {deployment!r} has only {' and '.join(FUNCTION_METHODS)}, not {method!r}"
        + did_you_mean(method, FUNCTION_METHODS)
    )
