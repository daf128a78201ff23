"""Checks of switches and splits against the graph: keys against the value's annotation, predicates that
must reach the plan's drivers, split names a deploy config can tell apart.

What a routing node can judge alone (no branches, bad weights, a key that is not plain data) fails when
the user makes it (:mod:`servegraph.dsl.routing`); what needs the graph is here. Branch outputs that
cannot meet at their consumer are the annotation check's (it judges each branch on its own).
"""

from __future__ import annotations

import typing
from typing import Any

from ...errors import Diagnostic
from .. import ir
from ..context import PassContext
from . import types
from .code import _Producers
from .rules import _default_serializer, _diag


def _finite_values(hint: Any) -> set[Any] | None:
    """Every value ``hint`` allows, when they are few enough to list (``bool``, ``Literal``, ``None``
    and unions of them); None otherwise.

    >>> sorted(_finite_values(typing.Literal["a", "b"]))
    ['a', 'b']
    >>> _finite_values(bool) == {True, False}, _finite_values(str)
    (True, None)
    """
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is bool:
        return {True, False}
    if hint is None or hint is type(None):
        return {None}
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return set(typing.get_args(hint))
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        out: set[Any] = set()
        for member in typing.get_args(hint):
            found = _finite_values(member)
            if found is None:
                return None
            out |= found
        return out
    return None


def _shown(values: set[Any] | list[Any]) -> str:
    return ", ".join(sorted((repr(v) for v in values), key=str))


def _check_keys(record: ir.NodeIR, route: ir.RouteIR, producers: _Producers) -> list[Diagnostic]:
    value = record.args[0]
    if not isinstance(value, ir.Ref):
        return []
    keys = list(route.keyed())
    out = []
    for produced in producers.of(value.key):
        allowed = _finite_values(produced.hint)
        returns = f"its value comes from {produced.who}, which returns {types.show(produced.hint)} ({produced.line})"
        if allowed is not None:
            unknown = [k for k in keys if not any(k == v and type(k) is type(v) for v in allowed)]
            missing = [v for v in allowed if not any(k == v and type(k) is type(v) for k in keys)]
        else:
            unknown = [k for k in keys if types.relation(type(k), produced.hint) == types.NEVER]
            missing = []
        for key in unknown:
            out.append(
                _diag(
                    "routing",
                    record,
                    f"key {key!r} can never match: {returns}",
                    "remove the branch, or fix the key or the annotation.",
                    call="Switch()",
                    got=repr(key),
                    expected="one of " + _shown(allowed) if allowed is not None else f"a {types.show(produced.hint)}",
                )
            )
        if route.default:
            continue
        if missing:
            out.append(
                _diag(
                    "routing",
                    record,
                    f"no branch takes {_shown(missing)} and the switch has no default: {returns}.",
                    "Add a branch for each, or a default=... branch.",
                    call="Switch()",
                )
            )
        elif allowed is None:
            # A str or int value: no list of keys covers it. Doubtful, not wrong: a warning (--strict refuses).
            out.append(
                _diag(
                    "routing",
                    record,
                    f"keys {_shown(keys)} cannot cover every {types.show(produced.hint)} and the switch has no "
                    f"default: {returns}; a request with another value fails with HTTP 400.",
                    "Add a default=... branch, or annotate the value with Literal[...] of the keys.",
                    call="Switch()",
                    severity="warning",
                )
            )
    return out


def check_routing(app: ir.AppIR, ctx: PassContext) -> list[Diagnostic]:
    """Switch keys that can never match the value's annotation, or that leave values of a ``bool`` or
    ``Literal`` uncovered without a default; predicates that cannot be sent to the plan's drivers; two
    splits with one name (a deploy config sets weights by name)."""
    out: list[Diagnostic] = []
    nodes = {record.key: record for record in app.nodes}
    producers = _Producers(nodes)
    dumps = ctx.serializer or _default_serializer
    splits: dict[str, ir.NodeIR] = {}
    for record in app.nodes:
        route = record.route
        if route is None:
            continue
        if route.mode == ir.BY_KEY:
            out.extend(_check_keys(record, route, producers))
        elif route.mode == ir.BY_PREDICATE:
            for label, predicate in zip(route.labels, route.choices, strict=True):
                if predicate is None:
                    continue  # the default
                try:
                    dumps(predicate)
                except Exception as exc:  # any failure to pickle is the user's to fix
                    out.append(
                        _diag(
                            "serialization",
                            record,
                            f"predicate {label} cannot be serialized to send to the plan's drivers: "
                            f"{type(exc).__name__}: {exc}.",
                            "Define it at module level, without locks, sockets or open files in what it uses.",
                            call="Switch()",
                        )
                    )
        elif route.name is not None:
            first = splits.setdefault(route.name, record)
            if first is not record:
                out.append(
                    _diag(
                        "routing",
                        record,
                        f"two splits are named {route.name!r} (the other made at {first.call_site}); a deploy "
                        "config sets weights by name.",
                        "Give each split its own name=.",
                        call="Split()",
                    )
                )
    return out
