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
from typing import Any, Iterable

from pydantic import ValidationError


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name a misspelt one most likely meant, if any is close."""
    match = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: dict) -> str:
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


def format_errors(exc: ValidationError, prefix: str = "", fields: Iterable[str] = ()) -> list[str]:
    """One line per error: ``path: what is wrong, got VALUE``.

    ``fields`` are the valid names at the top level, used to suggest the
    closest one for an unknown field.
    """
    lines = []
    for err in exc.errors():
        where = _loc(prefix, err["loc"])
        what = _describe(err)
        if err["type"] == "extra_forbidden":
            hint = closest(str(err["loc"][-1]), fields) if len(err["loc"]) == 1 else None
            lines.append(f"{where}: {what}" + (f"; did you mean '{hint}'?" if hint else ""))
        elif err["type"] == "missing":
            lines.append(f"{where}: {what}")
        else:
            lines.append(f"{where}: {what}, got {err['input']!r}")
    return lines
