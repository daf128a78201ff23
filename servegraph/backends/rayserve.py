"""The Ray Serve backend: a compiled graph lowered onto Ray Serve's own deployments.

:func:`build_app` is a Ray Serve *application builder*. A config that names it,

.. code-block:: yaml

    import_path: servegraph.backends.rayserve:build_app
    args: {graph: "hello:language_classifier"}

runs on stock Ray Serve (``serve run``, ``serve deploy``, a KubeRay RayService's
``serveConfigV2``); ``servegraph build`` writes exactly that, and
``servegraph deploy`` reads ``args.graph`` to run the same file on servegraph's
runtime. The builder loads the graph, compiles it with every check, and returns
a Ray Serve application with the same deployments (names, options), route and
handle wiring. User code keeps the seed's semantics:

- constructor handles are :class:`SeedHandle`\\ s, which behave as
  ``RayServeDeploymentHandle``: ``.remote()`` returns an ``asyncio.Task``
  resolving to an ObjectRef (two awaits);
- a result passed unawaited into another ``.remote()`` travels as a ref: the
  consuming replica gets the value from the producer, never through the caller;
- an InputNode graph runs as the same plan (:func:`servegraph.runtime.common.plan.run_plan`),
  in an ingress deployment named ``DAGDriver`` as Ray Serve's own used to be.

Ray Serve's options for each deployment are the ones ``servegraph build`` writes
(:func:`servegraph.compiler.emit.deploy_config.deployment_config`), so a config's
``deployments`` entries override them on Ray Serve exactly as on servegraph.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import ray
from pydantic import ValidationError
from ray import ObjectRef, serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from .._validation import format_errors
from .._walk import any_leaf, is_container, map_leaves, map_leaves_async
from ..compiler import CompiledGraph, compile, ir
from ..compiler.config.app import RAY_SERVE_BUILDER
from ..compiler.config.schema import BuilderArgs
from ..compiler.emit.deploy_config import PLAN_DRIVER, deployment_config, plan_driver_name, splits_entry
from ..dsl.options import DEFAULT_REPLICA_CPUS
from ..dsl.routing import weights_problem
from ..dsl.signature import FUNCTION_METHODS
from ..errors import ConfigError, NoRouteError
from ..runtime import ray_compat
from ..runtime.common.codec import to_slots, unflatten
from ..runtime.common.http_codec import decode_json_body, encode_result, text
from ..runtime.common.plan import PlanInputError, drive_async, run_plan

#: The ingress deployment that runs an InputNode graph's plan (Ray Serve's name for it).
DRIVER_NAME = PLAN_DRIVER
#: It only waits on downstream calls, so it takes many requests at once (Ray Serve's DAGDriver took 100).
DRIVER_MAX_ONGOING_REQUESTS = 100
#: The replica method that receives calls whose arguments hold results nested in lists, tuples or dicts.
_NESTED_CALL = "_servegraph_call"

__all__ = ["DRIVER_NAME", "SeedHandle", "application", "build_app"]


# Entry points ---------------------------------------------------------------------------------


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: ``args`` is ``{"graph": "module:attr", "resource_check": false}``.

    Raises:
        ConfigError: ``args`` is not what the builder takes.
        GraphError: the graph does not load or fails a check (Ray Serve shows the message as the
            application's status).
    """
    try:
        parsed = BuilderArgs.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(
            f"{RAY_SERVE_BUILDER}: bad args: " + "; ".join(format_errors(exc, "args", BuilderArgs))
        ) from None
    from ..cli.load import load_app

    node = load_app(parsed.graph)
    resources = ray.available_resources() if parsed.resource_check else None
    return application(compile(node, cluster_resources=resources))


def application(compiled: CompiledGraph) -> Application:
    """The compiled graph as a Ray Serve application (what ``serve.run`` takes), ready to deploy."""
    app_ir = compiled.ir
    bound: dict[str, Application] = {}
    for dep in app_ir.deployments:  # dependencies first, so every handle's target is bound already
        options = deployment_config(dep)
        name = options.pop("name")
        deployment: Any = serve.deployment(_replica_class(dep), name=name, **options)

        def to_app(marker: ir.Ref | ir.HandleRef) -> Application:
            assert isinstance(marker, ir.HandleRef)  # a constructor's nodes are all handles
            return bound[marker.deployment]

        args = ir.map_markers(dep.init_args, to_app)
        kwargs = dict(ir.map_markers(dep.init_kwargs, to_app))
        bound[dep.name] = deployment.bind(*args, **kwargs)
    if app_ir.ingress is not None:
        return bound[app_ir.ingress]
    assert app_ir.plan is not None
    name = plan_driver_name(bound)
    # Split weights travel as the driver's user_config (a config's deployments entry for it overrides them),
    # and its plan holds fixed ones: a config that only shifts traffic changes the user_config, which Ray
    # Serve applies to the live replica (reconfigure) with no restart.
    splits = splits_entry(compiled)
    user_config: dict[str, Any] = {"user_config": splits["user_config"]} if splits is not None else {}
    driver: Any = serve.deployment(
        PlanDriver,
        name=name,
        num_replicas=1,
        max_ongoing_requests=DRIVER_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": DEFAULT_REPLICA_CPUS},
        **user_config,
    )
    return driver.bind(_code_weights(app_ir.plan), bound, app_ir.http_adapter)


def _code_weights(plan: ir.Plan) -> ir.Plan:
    """The plan with every split at equal weights: the same init arguments whatever a config says."""
    return plan.with_weights({name: dict.fromkeys(w, 1) for name, w in plan.split_weights().items()})


# Handles with the seed's semantics ------------------------------------------------------------


class SeedHandle:
    """``RayServeDeploymentHandle`` over Ray Serve's ``DeploymentHandle``.

    ``.remote()`` returns an ``asyncio.Task`` resolving to a ``ray.ObjectRef``
    (``await`` it twice); ``handle.method.remote()`` calls another method;
    ``.options(use_new_handle_api=True)`` gives Ray Serve's own DeploymentHandle.
    """

    __slots__ = ("_handle", "_method")

    def __init__(self, handle: DeploymentHandle, method: str = "__call__"):
        self._handle = handle
        self._method = method

    @property
    def deployment_name(self) -> str:
        return self._handle.deployment_name

    @property
    def method_name(self) -> str:
        return self._method

    def __getattr__(self, name: str) -> SeedHandle:
        if name.startswith("_") and name != "__call__":
            raise AttributeError(name)
        return SeedHandle(self._handle, name)

    def options(
        self, *, method_name: str | None = None, use_new_handle_api: bool | None = None, **options: Any
    ) -> Any:
        handle = self._handle.options(**options) if options else self._handle
        if use_new_handle_api:
            return handle.options(method_name=method_name or self._method)
        return SeedHandle(handle, method_name or self._method)

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Task[ObjectRef]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "RayServeDeploymentHandle.remote() returns an asyncio.Task and needs a running event loop: "
                "call it from an async method"
            ) from None
        return loop.create_task(self._object_ref(args, kwargs))

    async def _object_ref(self, args: tuple, kwargs: dict) -> ObjectRef:
        response = await send(self._handle, self._method, args, kwargs)
        return await ray_compat.serve_response_ref(response)

    def __reduce__(self) -> tuple:
        return (SeedHandle, (self._handle, self._method))

    def __repr__(self) -> str:
        return f"RayServeDeploymentHandle(deployment={self.deployment_name!r}, method={self._method!r})"


async def _resolve(value: Any, top: bool) -> Any:
    """Tasks (from :class:`SeedHandle`) awaited to their ObjectRefs; responses nested in containers too.

    Ray Serve resolves a DeploymentResponse only as a top-level argument, Ray an
    ObjectRef only as a top-level task argument: nested ones are sent by
    :func:`send` as extra top-level arguments instead.
    """
    if is_container(value):
        return await map_leaves_async(value, _resolve_nested)
    if isinstance(value, asyncio.Future):
        return await value
    return value


async def _resolve_nested(value: Any) -> Any:
    if isinstance(value, asyncio.Future):
        return await value
    if isinstance(value, DeploymentResponse):
        return await ray_compat.serve_response_ref(value)
    return value


def _has_future(value: Any) -> bool:
    return any_leaf(value, lambda leaf: isinstance(leaf, (asyncio.Future, DeploymentResponse)))


async def send(handle: DeploymentHandle, method: str, args: tuple, kwargs: dict) -> Any:
    """Call ``method`` through ``handle`` with the producers' results passed as refs, never as values."""
    if _has_future((args, kwargs)):
        args = tuple([await _resolve(a, True) for a in args])
        kwargs = {k: await _resolve(v, True) for k, v in kwargs.items()}
    refs: list[ObjectRef] = []
    nested_args = tuple(a if type(a) is ObjectRef else to_slots(a, refs) for a in args)
    nested_kwargs = {k: v if type(v) is ObjectRef else to_slots(v, refs) for k, v in kwargs.items()}
    if refs:
        return handle.options(method_name=_NESTED_CALL).remote(method, nested_args, nested_kwargs, *refs)
    return handle.options(method_name=method).remote(*args, **kwargs)


def _adapt(value: Any) -> Any:
    """Ray Serve's constructor handles, wherever they are in the arguments, as :class:`SeedHandle`\\ s."""
    return map_leaves(value, lambda leaf: SeedHandle(leaf) if isinstance(leaf, DeploymentHandle) else leaf)


# Replicas -------------------------------------------------------------------------------------


async def _nested_call(instance: Any, method: str, args: tuple, kwargs: dict, values: tuple) -> Any:
    args, kwargs = unflatten(args, kwargs, values)
    result = getattr(instance, method)(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _replica_class(dep: ir.DeploymentIR) -> type:
    """The class Ray Serve runs for ``dep``: the user's class with handles adapted, or a function's wrapper."""
    target = dep.target
    if dep.is_function:
        return _function_class(target)

    class Replica(target):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*_adapt(args), **_adapt(kwargs))

        async def _servegraph_call(self, method: str, args: tuple, kwargs: dict, *values: Any) -> Any:
            return await _nested_call(self, method, args, kwargs, values)

    # The user's name in Ray Serve's logs; pickled by value, since no module holds this class.
    Replica.__name__ = target.__name__
    Replica.__qualname__ = target.__qualname__
    Replica.__module__ = target.__module__
    Replica.__doc__ = target.__doc__
    return Replica


def _function_class(function: Any) -> type:
    """A function deployment as a class: ``__call__`` (and ``predict``, as servegraph's replicas allow)."""
    # Ray Serve awaits a method only if it is ``async def``, so the wrapper keeps the function's kind.
    async def call_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await function(*args, **kwargs)

    def call_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    call = call_async if inspect.iscoroutinefunction(function) else call_sync

    async def nested(self: Any, method: str, args: tuple, kwargs: dict, *values: Any) -> Any:
        return await _nested_call(self, method, args, kwargs, values)

    namespace = {
        **{method: call for method in FUNCTION_METHODS},
        _NESTED_CALL: nested,
        "__module__": getattr(function, "__module__", __name__),
        "__qualname__": getattr(function, "__qualname__", "function"),
        "__doc__": function.__doc__,
    }
    return type(getattr(function, "__name__", "function"), (), namespace)


class PlanDriver:
    """The ingress of an InputNode graph: runs the graph's plan per request, as servegraph's proxy does.

    Called over HTTP, the input is the JSON body (or the ``http_adapter``'s
    result); through a handle, the call's arguments. Each step gets its upstream
    results as refs; only the output is awaited.
    """

    def __init__(self, plan: ir.Plan, handles: dict[str, DeploymentHandle], http_adapter: Any = None):
        self._plan = plan
        self._handles = handles
        self._http_adapter = http_adapter

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Ray Serve's user_config: the splits' weights, checked by the rule the code's are, applied without a restart.

        Raises:
            ConfigError: weights for a split the graph lacks, or that do not split traffic.
        """
        splits = {s.route.name: s.route for s in self._plan.steps if s.route is not None and s.route.name is not None}
        weights = config.get("splits", {})
        for name, given in weights.items():
            route = splits.get(name)
            problem = f"the graph has no split {name!r}" if route is None else weights_problem(given, route.labels)
            if problem is not None:
                raise ConfigError(f"{DRIVER_NAME} user_config.splits.{name}: {problem}")
        self._plan = self._plan.with_weights(weights)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from starlette.requests import Request

        if len(args) == 1 and not kwargs and isinstance(args[0], Request):
            return await self._http(args[0])
        return await self._run(args, kwargs)

    async def _run(self, args: tuple, kwargs: dict) -> Any:
        gen = run_plan(self._plan, args, kwargs, lambda name: SeedHandle(self._handles[name]))
        out = await drive_async(gen, lambda call: send(self._handles[call[0]], call[1], call[2], call[3]))
        if isinstance(out, list):  # MultiOutputNode
            return [await v if isinstance(v, (DeploymentResponse, ObjectRef)) else v for v in out]
        if isinstance(out, (DeploymentResponse, ObjectRef)):
            return await out
        return out

    async def _http(self, request: Any) -> Any:
        from starlette.responses import Response

        if self._http_adapter is not None:
            value = self._http_adapter(request)
            if inspect.isawaitable(value):
                value = await value
        else:
            try:
                value = decode_json_body(await request.body())
            except ValueError as exc:
                status, headers, body = text(400, f"request body is not valid JSON: {exc}")
                return Response(body, status_code=status, headers=dict(headers))
        try:
            result = await self._run((value,), {})
        except (PlanInputError, NoRouteError) as exc:
            status, headers, body = text(400, str(exc))
        else:
            status, headers, body = encode_result(result)
        return Response(body, status_code=status, headers=dict(headers))
