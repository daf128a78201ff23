"""Whether a value of one type annotation can be passed where another is expected: one rule, used by
the annotation check across edges (and across a switch's branches).

:func:`relation` answers with one of four verdicts:

* ``FITS``: every value of the producer's type satisfies the consumer's (``bool`` into ``int``,
  ``list[int]`` into ``Sequence[int]``, anything into ``Any``), decided by beartype's
  ``is_subhint``, which knows generics, unions, ``Literal``, ``Annotated`` and ``Any``;
* ``MAYBE``: some values may satisfy it and some not (``Optional[int]`` into ``int``,
  ``object`` into ``int``, ``str`` into ``Literal["a"]``): a doubtful case, a warning;
* ``NEVER``: no value of the producer's type can satisfy it (``list[int]`` into ``str``,
  ``Literal["a"]`` into ``Literal["b"]``, ``NDArray[float64]`` into ``NDArray[int64]``): an error;
* ``UNKNOWN``: the annotations cannot be judged (type variables, protocols, forward references
  left unresolved): nothing is said.

``NEVER`` is said only where the runtime classes (a generic's origin, a literal's values) are
unrelated, or a generic's parameters are, so a verdict of ``NEVER`` is never a guess.

>>> relation(list[int], str)
'never'
>>> relation(typing.Optional[int], int)
'maybe'
>>> relation(int, float)
'fits'
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

FITS = "fits"
MAYBE = "maybe"
NEVER = "never"
UNKNOWN = "unknown"

#: Numbers Python converts implicitly where the typing world accepts them (PEP 484's numeric tower,
#: which beartype leaves out by default).
_WIDENS = {(int, float), (int, complex), (float, complex)}


def _strip(hint: Any) -> Any:
    """``hint`` without ``Annotated[...]`` metadata; ``None`` as ``NoneType``."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return type(None) if hint is None else hint


def _is_union(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin is typing.Union or origin is types.UnionType


def _runtime_class(hint: Any) -> type | None:
    """The class every value of ``hint`` is an instance of (a generic's origin), or None if unknown."""
    origin = typing.get_origin(hint)
    cls = origin if origin is not None else hint
    if not isinstance(cls, type) or getattr(cls, "_is_protocol", False):
        return None
    return cls


def _plain(hint: Any) -> bool:
    """A class that is not a generic alias, a protocol or an ABC with a subclass hook."""
    return (
        isinstance(hint, type)
        and typing.get_origin(hint) is None
        and not getattr(hint, "_is_protocol", False)
        and type(hint) is type
    )


def _subclass(a: type, b: type) -> bool | None:
    try:
        return issubclass(a, b) or (a, b) in _WIDENS
    except TypeError:  # a class issubclass cannot judge (a non-runtime protocol, an odd metaclass)
        return None


def _combine_all(verdicts: list[str]) -> str:
    """Every part must fit: NEVER if one never does; FITS if all do."""
    if NEVER in verdicts:
        return NEVER
    if UNKNOWN in verdicts:
        return UNKNOWN
    return FITS if all(v == FITS for v in verdicts) else MAYBE


def _best(verdicts: list[str]) -> str:
    """One alternative must fit: the best verdict among them."""
    for verdict in (FITS, MAYBE, UNKNOWN):
        if verdict in verdicts:
            return verdict
    return NEVER


def _is_subhint(produced: Any, wanted: Any) -> bool:
    from beartype.door import is_subhint  # a maintained type-hint checker: generics, unions, Literal, Any

    try:
        return bool(is_subhint(produced, wanted))
    except Exception:  # a hint beartype does not know (numpy's NDArray): judged by its parts below
        return False


def relation(produced: Any, wanted: Any) -> str:
    """How a value annotated ``produced`` fits a parameter annotated ``wanted``: FITS, MAYBE, NEVER or UNKNOWN.

    >>> relation(typing.Literal["a"], typing.Literal["b"])
    'never'
    >>> relation(str, typing.Literal["a", "b"])
    'maybe'
    >>> relation(typing.Any, int)
    'fits'
    """
    produced, wanted = _strip(produced), _strip(wanted)
    if produced is typing.Any or wanted is typing.Any or wanted is object:
        return FITS
    if isinstance(produced, (str, typing.ForwardRef)) or isinstance(wanted, (str, typing.ForwardRef)):
        return UNKNOWN
    if isinstance(produced, typing.TypeVar) or isinstance(wanted, typing.TypeVar):
        return UNKNOWN
    if _is_union(produced):
        verdicts = [relation(member, wanted) for member in typing.get_args(produced)]
        if all(v == FITS for v in verdicts):
            return FITS
        if all(v == NEVER for v in verdicts):
            return NEVER
        return UNKNOWN if UNKNOWN in verdicts and FITS not in verdicts and MAYBE not in verdicts else MAYBE
    if _is_union(wanted):
        return _best([relation(produced, member) for member in typing.get_args(wanted)])
    if _plain(produced) and _plain(wanted):
        # Plain classes: is_subhint would answer issubclass; asked here, a graph of plain annotations
        # never imports beartype (0.15 s).
        return FITS if issubclass(produced, wanted) or (produced, wanted) in _WIDENS else _class_relation(produced, wanted)
    if _is_subhint(produced, wanted):
        return FITS
    return _literal_relation(produced, wanted) or _class_relation(produced, wanted)


def _literal_relation(produced: Any, wanted: Any) -> str | None:
    """The verdict where either side is a ``Literal[...]``; None when neither is."""
    p_literal = typing.get_origin(produced) is typing.Literal
    w_literal = typing.get_origin(wanted) is typing.Literal
    if p_literal and w_literal:
        p_values, w_values = set(typing.get_args(produced)), set(typing.get_args(wanted))
        if p_values <= w_values:
            return FITS
        return MAYBE if p_values & w_values else NEVER
    if p_literal:  # Literal["a"] into a class: as its values' classes
        return _combine_all([relation(type(value), wanted) for value in typing.get_args(produced)])
    if w_literal:  # a class into Literal["a"]: only some of its values are the one wanted
        cls = _runtime_class(produced)
        if cls is None:
            return UNKNOWN
        return MAYBE if any(isinstance(value, cls) for value in typing.get_args(wanted)) else NEVER
    return None


def _class_relation(produced: Any, wanted: Any) -> str:
    """The verdict from the runtime classes, then (for related generics) from their parameters."""
    p_cls, w_cls = _runtime_class(produced), _runtime_class(wanted)
    if p_cls is None or w_cls is None:
        return UNKNOWN
    down, up = _subclass(p_cls, w_cls), _subclass(w_cls, p_cls)
    if down is None or up is None:
        return UNKNOWN
    if not down and not up:
        return NEVER  # unrelated classes: no value is an instance of both
    p_args, w_args = typing.get_args(produced), typing.get_args(wanted)
    if not down:  # the consumer wants a narrower class (object into int, Sequence into list)
        params = _parameters(p_args, w_args)
        return NEVER if params == NEVER else MAYBE
    if not w_args:
        return FITS
    if not p_args:
        return MAYBE  # a bare list into list[int]: its items are not known
    return _parameters(p_args, w_args)


def _parameters(p_args: tuple[Any, ...], w_args: tuple[Any, ...]) -> str:
    """The verdict of a generic's parameters, pairwise (``tuple[int, ...]`` as many as the other has)."""
    if not p_args or not w_args:
        return UNKNOWN
    if len(w_args) == 2 and w_args[1] is Ellipsis:
        p_items = p_args[:1] if len(p_args) == 2 and p_args[1] is Ellipsis else p_args
        return _combine_all([relation(p, w_args[0]) for p in p_items])
    if len(p_args) == 2 and p_args[1] is Ellipsis:
        return _combine_all([relation(p_args[0], w) for w in w_args])
    if len(p_args) != len(w_args):
        return UNKNOWN
    if any(isinstance(a, (list, tuple)) or a is Ellipsis for a in p_args + w_args):
        return UNKNOWN  # Callable[[...], ...] and other shapes: not judged by parts
    return _combine_all([relation(p, w) for p, w in zip(p_args, w_args, strict=True)])


def show(hint: Any) -> str:
    """An annotation as the user wrote it: ``int``, ``list[int]``, ``Optional[str]``.

    >>> show(int), show(list[int]), show(typing.Optional[str])
    ('int', 'list[int]', 'Optional[str]')
    """
    if isinstance(hint, type) and typing.get_origin(hint) is None and not isinstance(hint, types.GenericAlias):
        return hint.__qualname__
    if isinstance(hint, enum.Enum):
        return repr(hint)
    return repr(hint).replace("typing.", "").replace("collections.abc.", "")


__all__ = ["FITS", "MAYBE", "NEVER", "UNKNOWN", "relation", "show"]
