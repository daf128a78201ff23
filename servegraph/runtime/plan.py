"""Running an InputNode graph's plan for one request, independent of how calls are sent.

:func:`run_plan` is a generator: it yields each call ``(deployment, method,
args, kwargs)`` and is sent back the call's result (an unresolved ObjectRef,
or a LocalRef in local testing mode), which later calls receive as an argument.
Sync callers, async callers and local testing mode drive the same generator.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import ray
from ray import ObjectRef

from ..compiler import ir

Call = tuple[str, str, tuple, dict]


class PlanInput:
    """The input of a graph called with several arguments: ``inp[i]`` positional, ``inp["k"]`` keyword."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple, kwargs: dict):
        self.args = args
        self.kwargs = kwargs

    def get(self, access: str, key: Any) -> Any:
        if access == "item" and isinstance(key, int):
            return self.args[key]
        return self.kwargs[key]


class PlanInputError(LookupError):
    """The request's input lacks a part the graph reads (``inp["key"]``, ``inp[0]``, ``inp.attr``)."""


def plan_input(args: tuple, kwargs: dict) -> Any:
    """Called with one positional argument, the input is that value; otherwise a PlanInput."""
    if len(args) == 1 and not kwargs:
        return args[0]
    return PlanInput(args, kwargs)


def read_input(value: Any, access: str, key: Any) -> Any:
    try:
        if isinstance(value, PlanInput):
            return value.get(access, key)
        if isinstance(value, ObjectRef):
            value = ray.get(value)
        if access == "item" or isinstance(value, dict):
            return value[key]
        return getattr(value, key)
    except (LookupError, AttributeError, TypeError) as exc:
        shown = f"[{key!r}]" if access == "item" else f".{key}"
        raise PlanInputError(
            f"the graph reads input{shown} but the request's input ({type(value).__name__}) has none: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def read_inputs(plan: ir.Plan, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The request's input and every read of it the graph makes (``inp["k"]``, ``inp.x``), by node key.

    Read before any call is sent, so a request lacking what the graph reads fails whole (PlanInputError).
    The plan and the compiled lanes both start from this.
    """
    values: dict[str, Any] = {}
    if plan.input is not None:
        values[plan.input] = plan_input(args, kwargs)
    for step in plan.steps:
        if step.kind == ir.INPUT_ATTR:
            assert step.access is not None
            source, access, key = step.access
            values[step.key] = read_input(values[source.key], access, key)
    return values


def run_plan(plan: ir.Plan, args: tuple, kwargs: dict, handle: Callable[[str], Any]) -> Generator[Call, Any, Any]:
    """Yield every call of one request in plan order; return the output (a result, or a list of them).

    ``handle(name)`` makes the handle passed where a deployment is an argument.
    """
    values = read_inputs(plan, args, kwargs)

    def substitute(value: Any) -> Any:
        def fn(marker: ir.Ref | ir.HandleRef) -> Any:
            if isinstance(marker, ir.HandleRef):
                return handle(marker.deployment)
            return values[marker.key]

        return ir.map_markers(value, fn)

    for step in plan.steps:
        if step.kind == ir.INPUT_ATTR:
            continue  # read above
        elif step.kind == ir.OUTPUT:
            values[step.key] = substitute(step.args[0])
        else:
            assert step.deployment is not None and step.method is not None
            call = (step.deployment, step.method, substitute(step.args), dict(substitute(step.kwargs)))
            values[step.key] = yield call
    return values[plan.output.key]


def drive(gen: Generator[Call, Any, Any], send: Callable[[Call], Any]) -> Any:
    """Run a plan generator, sending each call with ``send``; returns the plan's output."""
    try:
        call = next(gen)
        while True:
            call = gen.send(send(call))
    except StopIteration as stop:
        return stop.value


async def drive_async(gen: Generator[Call, Any, Any], send: Callable[[Call], Any]) -> Any:
    """:func:`drive` for an async ``send``."""
    try:
        call = next(gen)
        while True:
            call = gen.send(await send(call))
    except StopIteration as stop:
        return stop.value
