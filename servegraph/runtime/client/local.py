"""Local testing mode: the same graph, run in this process without Ray.

For fast unit tests of user graphs. Each deployment gets one in-process
instance; calls run on one background event loop. Handles keep their types
and semantics, except that results are :class:`LocalRef` objects, not Ray
ObjectRefs: ``await ref`` and ``ref.result()`` work, ``ray.get(ref)`` does not.
There is no HTTP proxy, and resources and replica counts are not enforced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from typing import Any

from ..._walk import map_leaves_async
from ...compiler import compile, ir
from ...compiler.config.app import DEFAULT_APP_NAME
from ...dsl.nodes import DAGNode
from ...dsl.signature import function_method_problem
from ..actors.replica import construct
from ..common.plan import PlanInputError, drive, run_plan
from ..common.records import StreamMethod
from ..data.handle import DeploymentResponse, DriverTarget, RayServeDeploymentHandle, RayServeSyncHandle, RoutesTarget

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="servegraph-local", daemon=True).start()
        return _loop


class LocalRef:
    """The result of a call in local testing mode: ``await`` it or call ``.result()``."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future):
        self._future = future

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)

    def __await__(self):
        return asyncio.wrap_future(self._future).__await__()

    def done(self) -> bool:
        return self._future.done()


async def _resolve(value: Any) -> Any:
    """Await every result nested in ``value``."""
    return await map_leaves_async(value, _resolve_leaf)


async def _resolve_leaf(value: Any) -> Any:
    if isinstance(value, (LocalRef, DeploymentResponse, asyncio.Future)):
        value = await value
        return await _resolve(value) if isinstance(value, LocalRef) else value
    return value


async def _resolve_top(value: Any) -> Any:
    if isinstance(value, (LocalRef, DeploymentResponse, asyncio.Future)):
        return await _resolve(value)
    return value


class _LocalDeployment:
    """One deployment's single in-process instance; the local twin of a DeploymentInfo's router."""

    def __init__(self, spec: ir.DeploymentIR, handles: dict[str, _LocalDeployment]):
        self.name = spec.name
        self.spec = spec

        def inject(marker: ir.Ref | ir.HandleRef) -> Any:
            assert isinstance(marker, ir.HandleRef)  # a constructor's nodes are all handles
            return RayServeDeploymentHandle(_LocalTarget(handles[marker.deployment]), marker.method or "__call__")

        if spec.is_function:
            self.instance = None
        else:
            args = ir.map_markers(spec.init_args, inject)
            kwargs = dict(ir.map_markers(spec.init_kwargs, inject))
            self.instance, init = construct(spec.target, args, kwargs)
            if init is not None:
                asyncio.run_coroutine_threadsafe(_await(init), _background_loop()).result()
            if spec.options.user_config is not None:
                result = self.instance.reconfigure(spec.options.user_config)
                if inspect.isawaitable(result):
                    asyncio.run_coroutine_threadsafe(_await(result), _background_loop()).result()

    def method(self, name: str) -> Any:
        if self.instance is None:
            problem = function_method_problem(self.name, name)
            if problem is not None:  # the same rule as a replica on Ray
                raise AttributeError(problem)
            return self.spec.target
        return getattr(self.instance, name)

    def call(self, method: str, args: tuple, kwargs: dict) -> LocalRef:
        async def run() -> Any:
            # Only top-level results are awaited; nested ones arrive as LocalRefs, as refs do on Ray.
            real_args = [await _resolve_top(a) for a in args]
            real_kwargs = {k: await _resolve_top(v) for k, v in kwargs.items()}
            result = self.method(method)(*real_args, **real_kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return LocalRef(asyncio.run_coroutine_threadsafe(run(), _background_loop()))


async def _await(value: Any) -> Any:
    return await value


class _LocalTarget:
    """A handle target calling one local deployment."""

    def __init__(self, deployment: _LocalDeployment):
        self._deployment = deployment
        self.name = deployment.name

    def submit(self, method: str, args: tuple, kwargs: dict) -> LocalRef:
        _refuse_stream(method)
        return self._deployment.call(method, args, kwargs)

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> LocalRef:
        _refuse_stream(method)
        return self._deployment.call(method, args, kwargs)


def _refuse_stream(method: str) -> None:
    if type(method) is StreamMethod:
        raise NotImplementedError(
            "handle.options(stream=True) needs Ray: local testing mode does not stream; run the graph with serve.run(app)"
        )


def _value(value: Any) -> Any:
    """A local result's value, waited for (a switch choosing its branch from a node's output)."""
    return value.result() if isinstance(value, LocalRef) else value


class _LocalPlanTarget:
    """Runs an InputNode graph's plan against local deployments."""

    name = "DAGDriver"
    runs_graph = True  # see PlanTarget

    def __init__(self, plan: ir.Plan, deployments: dict[str, _LocalDeployment]):
        self._plan = plan
        self._deployments = deployments

    def submit(self, method: str, args: tuple, kwargs: dict) -> LocalRef:
        def handle(name: str) -> RayServeSyncHandle:
            return RayServeSyncHandle(_LocalTarget(self._deployments[name]))

        gen = run_plan(self._plan, args, kwargs, handle)
        out = drive(gen, lambda call: self._deployments[call[0]].call(*call[1:]), resolve=_value)
        if isinstance(out, LocalRef):
            return out
        return LocalRef(asyncio.run_coroutine_threadsafe(_resolve(out), _background_loop()))

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> LocalRef:
        return self.submit(method, args, kwargs)


def run_local(target: DAGNode, *, name: str = DEFAULT_APP_NAME) -> RayServeSyncHandle:
    """Compile ``target`` and run it in this process; returns the same handle type as ``serve.run``."""
    compiled = compile(target)
    deployments: dict[str, _LocalDeployment] = {}
    for spec in compiled.ir.deployments:
        deployments[spec.name] = _LocalDeployment(spec, deployments)
    if compiled.ir.ingress is not None:
        ingress = _LocalTarget(deployments[compiled.ir.ingress])
        return RayServeSyncHandle(DriverTarget(ingress) if compiled.ir.driven else ingress)
    if compiled.ir.routes:
        return RayServeSyncHandle(
            RoutesTarget({route: _LocalPlanTarget(plan, deployments) for route, plan in compiled.ir.routes})
        )
    assert compiled.ir.plan is not None
    return RayServeSyncHandle(_LocalPlanTarget(compiled.ir.plan, deployments))


__all__ = ["LocalRef", "PlanInputError", "run_local"]
