"""A deployment's code version: the same in every process for the same code.

Taken from the user's ``version=`` option, else from the class's (or
function's) module, name and source, never from a pickle of the class, which
differs from process to process. Computed where the code was written (the
driver, at compile time), since a class shipped by value has no source file
where it lands.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import cloudpickle


def code_version(target: Any, version: str | None) -> str:
    """The user's ``version=`` option, else a hash of the target's module, name and source."""
    if version is not None:
        return f"user:{version}"
    h = hashlib.sha256()
    h.update(f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', '')}".encode())
    try:
        h.update(inspect.getsource(target).encode())
    except (OSError, TypeError):  # defined where no source file exists (a REPL): fall back to its bytes
        h.update(cloudpickle.dumps(target))
    return h.hexdigest()[:16]
