"""Running an InputNode graph's plan for one request, independent of how calls are sent.

:func:`run_plan` is a generator: it yields each call ``(deployment, method,
args, kwargs)`` and is sent back the call's result (an unresolved ObjectRef,
or a LocalRef in local testing mode), which later calls receive as an argument.
Sync callers, async callers and local testing mode drive the same generator.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Generator
from typing import Any

import ray
from ray import ObjectRef

from ...compiler import ir
from ...errors import NoRouteError
from ..common.records import EdgeMethod
from .records import INPUT

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


class Resolve:
    """What a plan yields, besides calls, when it needs a result's value now: a switch choosing its branch
    from a node's output. The driver sends back the value (:func:`drive`, :func:`drive_async`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


_random = random.Random()


def choose(route: ir.RouteIR, value: Any = None) -> int:
    """The branch a request takes: by the value's key, the first predicate true of it, or by weight.

    Raises:
        NoRouteError: the value matches no branch and the switch has no default (HTTP 400).
    """
    if route.mode == ir.BY_WEIGHT:
        return _random.choices(range(len(route.choices)), weights=route.choices)[0]
    found: int | None = None
    if route.mode == ir.BY_KEY:
        try:
            found = route.keyed().get(value)
        except TypeError:  # an unhashable value equals no key
            found = None
    else:
        count = len(route.choices) - (1 if route.default else 0)
        found = next((i for i, predicate in enumerate(route.choices[:count]) if predicate(value)), None)
    if found is not None:
        return found
    if route.default:
        return len(route.choices) - 1
    known = [repr(c) if route.mode == ir.BY_KEY else label for c, label in zip(route.choices, route.labels, strict=True)]
    raise NoRouteError(f"Switch (made at {route.site})", value, known)


_CALLERS: dict[int, tuple[ir.Plan, dict[str, tuple[str, ...]]]] = {}


def step_callers(plan: ir.Plan) -> dict[str, tuple[str, ...]]:
    """For each call step, its callers in edge metrics: the deployments whose results it takes (through
    routing and output steps), and ``<input>`` where it reads the request's input or takes no node's result.
    """
    cached = _CALLERS.get(id(plan))
    if cached is not None and cached[0] is plan:
        return cached[1]
    steps = {step.key: step for step in plan.steps}

    def sources(markers: Any, seen: set[str]) -> set[str]:
        found: set[str] = set()
        for marker in ir.iter_markers(markers):
            if not isinstance(marker, ir.Ref):
                continue
            step = steps.get(marker.key)
            if step is None or step.kind == ir.INPUT_ATTR:
                found.add(INPUT)
            elif step.kind != ir.OUTPUT and step.kind not in ir.ROUTING and step.deployment is not None:
                found.add(step.deployment)
            elif marker.key not in seen:
                seen.add(marker.key)
                found |= sources((step.args, step.kwargs), seen)
        return found

    callers = {
        step.key: tuple(sorted(sources((step.args, step.kwargs), set()))) or (INPUT,)
        for step in plan.steps
        if step.kind not in (ir.INPUT_ATTR, ir.OUTPUT) and step.kind not in ir.ROUTING and step.deployment is not None
    }
    if len(_CALLERS) > 64:
        _CALLERS.clear()
    _CALLERS[id(plan)] = (plan, callers)
    return callers


def _waits_for(step: ir.PlanStep) -> list[str]:
    """The keys a step needs before it runs; a routing node's branches wait for its choice."""
    if step.kind == ir.INPUT_ATTR:
        assert step.access is not None
        return [step.access[0].key]
    markers = step.args[:1] if step.kind == ir.SWITCH else () if step.kind == ir.SPLIT else (step.args, step.kwargs)
    return [m.key for m in ir.iter_markers(markers) if isinstance(m, ir.Ref)]


def _run_routed(plan: ir.Plan, args: tuple, kwargs: dict, handle: Callable[[str], Any]) -> Generator[Any, Any, Any]:
    """:func:`run_plan` for a plan with switches or splits: only the steps the chosen branches need run.

    Steps run in plan order, demanded from the output: a routing step chooses its branch (waiting for
    its value if that is a node's output), then runs the steps that branch needs and nothing else. Input
    reads happen when a step needs them, so a branch not taken may read what the request lacks.
    """
    steps = {step.key: step for step in plan.steps}
    order = {step.key: i for i, step in enumerate(plan.steps)}
    callers = step_callers(plan)
    values: dict[str, Any] = {}
    if plan.input is not None:
        values[plan.input] = plan_input(args, kwargs)

    def needed(root: str) -> list[str]:
        found: set[str] = set()
        stack = [root]
        while stack:
            key = stack.pop()
            if key in found or key in values or key not in steps:
                continue
            found.add(key)
            stack.extend(_waits_for(steps[key]))
        return sorted(found, key=order.__getitem__)

    def substitute(value: Any) -> Any:
        def fn(marker: ir.Ref | ir.HandleRef) -> Any:
            if isinstance(marker, ir.HandleRef):
                return handle(marker.deployment)
            return values[marker.key]

        return ir.map_markers(value, fn)

    def run(keys: list[str]) -> Generator[Any, Any, None]:
        for key in keys:
            if key in values:
                continue  # run by a branch chosen earlier in this loop
            step = steps[key]
            if step.kind == ir.INPUT_ATTR:
                assert step.access is not None
                source, access, name = step.access
                values[key] = read_input(values[source.key], access, name)
            elif step.kind == ir.OUTPUT:
                values[key] = substitute(step.args[0])
            elif step.kind in ir.ROUTING:
                assert step.route is not None
                value = None
                if step.kind == ir.SWITCH:
                    value = yield Resolve(substitute(step.args[0]))
                branch = step.route.branches(step.args)[choose(step.route, value)]
                yield from run(needed(branch.key))
                values[key] = values[branch.key]
            else:
                assert step.deployment is not None and step.method is not None
                method = EdgeMethod(step.method, callers[key])
                values[key] = yield (step.deployment, method, substitute(step.args), dict(substitute(step.kwargs)))

    yield from run(needed(plan.output.key))
    return values[plan.output.key]


def run_plan(plan: ir.Plan, args: tuple, kwargs: dict, handle: Callable[[str], Any]) -> Generator[Call, Any, Any]:
    """Yield every call of one request in plan order; return the output (a result, or a list of them).

    ``handle(name)`` makes the handle passed where a deployment is an argument. A plan with a switch
    or split also yields :class:`Resolve` where it needs a result's value to choose a branch.
    """
    if plan.routed:
        return (yield from _run_routed(plan, args, kwargs, handle))
    values = read_inputs(plan, args, kwargs)
    callers = step_callers(plan)

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
            call = (step.deployment, EdgeMethod(step.method, callers[step.key]), substitute(step.args), dict(substitute(step.kwargs)))
            values[step.key] = yield call
    return values[plan.output.key]


def resolve_ref(value: Any) -> Any:
    """A result's value, waited for (an ObjectRef); anything else is a value already."""
    return ray.get(value) if isinstance(value, ObjectRef) else value


def drive(gen: Generator[Call, Any, Any], send: Callable[[Call], Any], resolve: Callable[[Any], Any] = resolve_ref) -> Any:
    """Run a plan generator, sending each call with ``send`` (and each :class:`Resolve` to ``resolve``);
    returns the plan's output."""
    try:
        call = next(gen)
        while True:
            call = gen.send(resolve(call.value) if isinstance(call, Resolve) else send(call))
    except StopIteration as stop:
        return stop.value


async def _await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def drive_async(
    gen: Generator[Call, Any, Any], send: Callable[[Call], Any], resolve: Callable[[Any], Any] = _await
) -> Any:
    """:func:`drive` for an async ``send`` (and ``resolve``: a result is awaited for its value)."""
    try:
        call = next(gen)
        while True:
            call = gen.send(await (resolve(call.value) if isinstance(call, Resolve) else send(call)))
    except StopIteration as stop:
        return stop.value
