"""Carry unresolved ObjectRefs across an actor call so Ray resolves them at the consumer.

Ray resolves ObjectRefs only when they are top-level task arguments, so a
value holding refs (a MultiOutputNode's list of results) is sent as a template,
with each ref replaced by a slot, followed by the refs themselves as top-level
arguments. The consuming replica receives the values straight from the object
store, never through the caller. Calls to a user's method do not use it: there,
as in Ray, refs nested in containers arrive as refs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import ray.cloudpickle
from ray import ObjectRef

from ..._walk import contains_type, map_leaves


class Slot:
    """Position of a ref among the call's top-level arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self) -> tuple:
        return (Slot, (self.index,))

    def __repr__(self) -> str:
        return f"Slot({self.index})"


def extend_import_path(paths: tuple[str, ...] | list[str]) -> None:
    """Put ``paths`` on this process's import path as PYTHONPATH would (ahead of the installed packages), and
    on its PYTHONPATH, for the processes it starts. Paths already there stay where they are."""
    new = [path for path in dict.fromkeys(paths) if path not in sys.path]
    sys.path[1:1] = new
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, *inherited]))


def loads_with_paths(data: bytes, paths: tuple[str, ...] | list[str]) -> Any:
    """Unpickle user code sent by a driver, with the driver's import directories on sys.path.

    Appended, not prepended, so they never shadow this process's own modules.
    """
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    return ray.cloudpickle.loads(data)


def to_slots(value: Any, refs: list[ObjectRef]) -> Any:
    """``value`` with every ObjectRef nested in it appended to ``refs`` and replaced by its Slot.

    ``value`` itself comes back when it holds no ref: no copy on the common path.
    """
    if type(value) in _REF:
        refs.append(value)
        return Slot(len(refs) - 1)
    if not contains_type(value, _REF):  # the request path: most arguments hold no ref
        return value

    def slot(leaf: Any) -> Any:
        if type(leaf) in _REF:
            refs.append(leaf)
            return Slot(len(refs) - 1)
        return leaf

    return map_leaves(value, slot)


#: The types carried as refs: ObjectRef, and the data plane's subclasses of it (see ``treat_as_ref``).
_REF: set[type] = {ObjectRef}


def treat_as_ref(cls: type) -> None:
    """Carry instances of ``cls`` (an ObjectRef subclass) as refs: the data plane's driver results."""
    _REF.add(cls)


_SLOT = frozenset({Slot})


def flatten(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[ObjectRef]]:
    """Split arguments into (template args, template kwargs, refs)."""
    refs: list[ObjectRef] = []
    return tuple([to_slots(a, refs) for a in args]), {k: to_slots(v, refs) for k, v in kwargs.items()}, refs


def unflatten(args: tuple, kwargs: dict, values: tuple) -> tuple[tuple, dict]:
    """Put resolved values back where their refs were."""
    if not values:
        return args, kwargs

    def fill(leaf: Any) -> Any:
        return values[leaf.index] if type(leaf) is Slot else leaf

    return tuple(map_leaves(a, fill) for a in args), {k: map_leaves(v, fill) for k, v in kwargs.items()}
