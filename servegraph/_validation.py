"""Turn pydantic validation errors into one-line messages in the user's words.

>>> from pydantic import BaseModel, Field
>>> class M(BaseModel):
...     n: int = Field(ge=1)
>>> try:
...     M(n=0)
... except Exception as e:
...     print(format_errors(e, "cfg"))
['cfg.n: must be >= 1, got 0']
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError


def route_prefix_problem(value: str) -> str | None:
    """Why Ray Serve would refuse ``value`` as a route prefix, or None if it is valid.

    The one copy of the rule: ``serve.run``, the ``route_prefix`` option and deploy configs all ask it.

    >>> route_prefix_problem("/hello") is None
    True
    >>> route_prefix_problem("/hello/")
    "may not end with a trailing '/' (unless it is just '/')"

    The words are Ray Serve's, so code and tests that match on them see the same text.
    """
    if not value.startswith("/"):
        return "must start with a forward slash ('/')"
    if len(value) > 1 and value.endswith("/"):
        return "may not end with a trailing '/' (unless it is just '/')"
    if "{" in value or "}" in value:
        return "may not contain wildcards ('{' or '}')"
    return None


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name a misspelt one most likely meant, if any is close."""
    match = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str, choices: Iterable[str], *, lead: str = "; ") -> str:
    """The one "did you mean" hint: ``lead`` + "did you mean 'x'?" for the closest choice, or "" if none is close.

    >>> did_you_mean("predcit", ["predict", "train"])
    "; did you mean 'predict'?"
    >>> did_you_mean("zzz", ["predict"])
    ''
    """
    hint = closest(name, choices)
    return f"{lead}did you mean {hint!r}?" if hint else ""


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: Any) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {bound}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg[:1].lower() + msg[1:]


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Optional[...]``, ``list[...]`` or ``dict[str, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Field names of the model found by following ``loc`` (list indexes skipped) from ``model``."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _nested_model(field.annotation) if field is not None else None
        if current is None:
            return ()
    return tuple(current.model_fields) if current is not None else ()


def format_errors(
    exc: ValidationError, prefix: str = "", fields: Iterable[str] | type[BaseModel] = ()
) -> list[str]:
    """One line per error: ``path: what is wrong, got VALUE``.

    ``fields`` are the valid names at the top level, used to suggest the
    closest one for an unknown field; pass the model class instead to get
    suggestions at every depth (``applications[0].deployments[1].num_replica``).
    A problem with a whole object or list (a model validator) leaves out what it got.
    """
    model = fields if isinstance(fields, type) and issubclass(fields, BaseModel) else None
    top = tuple(model.model_fields) if model is not None else tuple(fields)  # type: ignore[arg-type]
    lines = []
    for err in exc.errors():
        where = _loc(prefix, err["loc"])
        what = _describe(err)
        if err["type"] == "extra_forbidden":
            loc = err["loc"]
            if model is not None:
                choices: tuple[str, ...] = _fields_at(model, loc[:-1])
            else:
                choices = top if len(loc) == 1 else ()
            line = what + did_you_mean(str(loc[-1]), choices)
        elif err["type"] == "missing" or isinstance(err.get("input"), (dict, list)):
            line = what
        else:
            line = f"{what}, got {err['input']!r}"
        lines.append(f"{where}: {line}" if where else line)
    return lines
