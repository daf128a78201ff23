"""The one walker for values nested in arguments: lists, tuples, namedtuples and dicts.

Every layer that looks inside a bound or passed argument asks this module (the DSL finding graph
nodes, capture turning them into markers, checks, the JSON emitter, the runtime codec carrying refs,
handles resolving responses, local testing mode), so they all agree on what is a container:

* ``list``, ``tuple`` and ``dict`` of exactly those types, and namedtuples (rebuilt as the same
  namedtuple, so a ``Point`` bound or passed arrives as a ``Point``);
* a dict's keys are walked like its values (a graph node or a ref may be a key);
* everything else is a leaf, subclasses of list and dict included: rebuilding one as its base type
  would change what the user passed (capture pickles such objects whole instead).

>>> from collections import namedtuple
>>> P = namedtuple("P", "x y")
>>> map_leaves([P(1, 2), {"k": 3}], lambda v: v * 10 if isinstance(v, int) else v)
[P(x=10, y=20), {'k': 30}]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

__all__ = [
    "any_leaf",
    "contains_type",
    "is_container",
    "is_namedtuple",
    "iter_leaves",
    "map_leaves",
    "map_leaves_async",
]


def is_namedtuple(value: Any) -> bool:
    """A namedtuple instance (``collections.namedtuple`` or ``typing.NamedTuple``)."""
    return isinstance(value, tuple) and type(value) is not tuple and hasattr(type(value), "_fields")


def is_container(value: Any) -> bool:
    """Whether the walker looks inside ``value``."""
    kind = type(value)
    return kind is list or kind is tuple or kind is dict or is_namedtuple(value)


def iter_leaves(value: Any) -> Iterator[Any]:
    """The leaves nested in ``value`` (dict keys before their values), in order; ``value`` if it is one."""
    kind = type(value)
    if kind is list or kind is tuple or (kind is not dict and is_namedtuple(value)):
        for item in value:
            yield from iter_leaves(item)
    elif kind is dict:
        for key, item in value.items():
            yield from iter_leaves(key)
            yield from iter_leaves(item)
    else:
        yield value


def contains_type(value: Any, kinds: AbstractSet[type]) -> bool:
    """Whether a leaf whose exact type is in ``kinds`` is nested in ``value``.

    The request path's question (is there a ref to carry?), so it avoids generators and callbacks:
    an argument holding no such leaf costs one scan and no copy.
    """
    kind = type(value)
    if kind in kinds:
        return True
    if kind in _SCALARS:
        return False
    if kind is list or kind is tuple or (kind is not dict and is_namedtuple(value)):
        for item in value:
            if contains_type(item, kinds):
                return True
        return False
    if kind is dict:
        for key, item in value.items():
            if contains_type(key, kinds) or contains_type(item, kinds):
                return True
    return False


#: Leaves a scan can pass over without asking whether they are containers.
_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def any_leaf(value: Any, predicate: Callable[[Any], bool]) -> bool:
    """Whether some leaf nested in ``value`` satisfies ``predicate`` (stops at the first)."""
    return any(predicate(leaf) for leaf in iter_leaves(value))


def _rebuild(value: Any, items: list[Any]) -> Any:
    kind = type(value)
    if kind is list:
        return items
    if kind is tuple:
        return tuple(items)
    return kind._make(items)  # a namedtuple: the same type, not a plain tuple


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` with each leaf replaced by ``fn(leaf)``, container types kept.

    A container whose leaves all come back as they were is returned itself, not copied: the request
    path maps arguments that usually hold nothing to replace.
    """
    kind = type(value)
    if kind is list or kind is tuple or (kind is not dict and is_namedtuple(value)):
        items = []
        changed = False
        for item in value:
            new = map_leaves(item, fn)
            changed = changed or new is not item
            items.append(new)
        return _rebuild(value, items) if changed else value
    if kind is dict:
        pairs = []
        changed = False
        for key, item in value.items():
            new_key, new_item = map_leaves(key, fn), map_leaves(item, fn)
            changed = changed or new_key is not key or new_item is not item
            pairs.append((new_key, new_item))
        return dict(pairs) if changed else value
    return fn(value)


async def map_leaves_async(value: Any, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """:func:`map_leaves` with an async ``fn``, leaves awaited one after another in order."""
    kind = type(value)
    if kind is list or kind is tuple or (kind is not dict and is_namedtuple(value)):
        items = [await map_leaves_async(item, fn) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return _rebuild(value, items)
    if kind is dict:
        pairs = [(await map_leaves_async(k, fn), await map_leaves_async(v, fn)) for k, v in value.items()]
        if all(nk is k and nv is v for (nk, nv), (k, v) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    return await fn(value)
