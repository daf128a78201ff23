"""``@serve.ingress(app)``: a FastAPI (or any ASGI) app as a deployment's HTTP interface, as in Ray Serve.

Routes may be the class's own methods (``@app.get("/")`` on ``def hello(self)``):
at decoration time each becomes a route whose ``self`` is a FastAPI dependency
returning the replica's instance, so routes reach its state and its constructor
handles. Path and query parameters, bodies, validation, middleware, exception
handlers, ``/docs`` and ``/openapi.json`` all come from FastAPI. The app's
startup hooks run on each replica after the constructor, as Ray Serve runs them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

#: The instance of each ingress class in this process, by (module, qualname): what ``self`` resolves to.
_INSTANCES: dict[tuple[str, str], Any] = {}


def _route_view(endpoint: Any, get_self: Any) -> Any:
    """``endpoint`` as FastAPI should call it: ``self`` a dependency, the other parameters keyword-only."""
    from fastapi import Depends

    sig = inspect.signature(endpoint, eval_str=True)
    first, *rest = sig.parameters.values()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [first.replace(default=Depends(get_self), kind=inspect.Parameter.KEYWORD_ONLY)] + [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind in positional else p for p in rest
    ]
    view: Any
    if inspect.iscoroutinefunction(endpoint):

        async def async_view(**kwargs: Any) -> Any:
            return await endpoint(**kwargs)

        view = async_view
    else:
        # FastAPI runs a sync endpoint in its thread pool, as it would the method.
        view = functools.partial(endpoint)
    view.__signature__ = sig.replace(parameters=params)
    view.__name__ = endpoint.__name__
    view.__doc__ = endpoint.__doc__
    return view


def class_based_view(app: Any, cls: type) -> None:
    """Make the app's routes that are methods of ``cls`` take ``self`` from the replica (Ray's CBV)."""
    from fastapi.routing import APIRoute

    key = (cls.__module__, cls.__qualname__)

    def get_self() -> Any:
        return _INSTANCES[key]

    prefix = cls.__qualname__ + "."
    # Rebuilt in place (route order decides matches), with every setting the route was made with;
    # not with include_router, whose routers hold a lock and cannot be sent to replicas.
    settings = [n for n in inspect.signature(APIRoute.__init__).parameters if n not in ("self", "path", "endpoint")]
    for i, route in enumerate(app.router.routes):
        # By qualname, not identity: FastAPI allows two routes on methods of the same name.
        if isinstance(route, APIRoute) and getattr(route.endpoint, "__qualname__", "").startswith(prefix):
            kwargs = {n: getattr(route, n) for n in settings if hasattr(route, n)}
            app.router.routes[i] = APIRoute(route.path, _route_view(route.endpoint, get_self), **kwargs)


async def _start_lifespan(app: Any) -> None:
    """Run the app's startup hooks (the ASGI lifespan protocol), and keep its lifespan open."""
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict:
        message = next(messages, None)
        if message is not None:
            return message
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete" and not started.done():
            started.set_result(None)
        elif message["type"] == "lifespan.startup.failed" and not started.done():
            started.set_exception(RuntimeError(f"the app's startup failed: {message.get('message', '')}"))

    async def run() -> None:
        try:
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        finally:
            if not started.done():  # an app without lifespan support
                started.set_result(None)

    task = asyncio.get_running_loop().create_task(run())
    _LIFESPANS.append((task, stop))
    await started


_LIFESPANS: list[tuple[asyncio.Task, asyncio.Event]] = []


def _rebuild(cls: type, state: dict, locks: tuple[str, ...]) -> Any:
    import threading

    obj = cls.__new__(cls)  # type: ignore[call-overload]
    obj.__dict__.update(state)
    for name in locks:
        obj.__dict__[name] = threading.Lock()
    return obj


def _reduce_without_locks(obj: Any) -> tuple:
    """Pickle an object of FastAPI's with its locks left out (a new one each on the replica)."""
    import threading

    lock_type = type(threading.Lock())
    locks = tuple(k for k, v in vars(obj).items() if isinstance(v, lock_type))
    state = {k: v for k, v in vars(obj).items() if k not in locks}
    return (_rebuild, (type(obj), state, locks))


def _make_apps_picklable() -> None:
    """Newer FastAPI routers made by ``include_router`` hold a lock, so an app using one cannot be
    pickled to a replica as it is; teach pickle to leave the lock out (it only guards a cache)."""
    import copyreg

    import fastapi.routing

    included = getattr(fastapi.routing, "_IncludedRouter", None)
    if included is not None and included not in copyreg.dispatch_table:
        copyreg.pickle(included, _reduce_without_locks)


def ingress(app: Any) -> Any:
    """Serve the FastAPI (or any ASGI) ``app`` as the decorated deployment class's HTTP interface.

    Raises:
        ValueError: not used on a class, or on a class that defines ``__call__`` (as Ray Serve raises).
    """

    def decorate(cls: Any) -> Any:
        if not inspect.isclass(cls):
            raise ValueError("@serve.ingress must be used with a class")
        if "__call__" in vars(cls):
            raise ValueError(f"{cls.__name__} defines __call__; with @serve.ingress the FastAPI app answers HTTP")
        if hasattr(app, "router"):
            _make_apps_picklable()
            class_based_view(app, cls)
        key = (cls.__module__, cls.__qualname__)
        user_init = cls.__init__

        class ASGIIngress(cls):
            async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
                result = user_init(self, *args, **kwargs)
                if inspect.isawaitable(result):
                    await result
                _INSTANCES[key] = self
                await _start_lifespan(app)

            async def __call__(self, request: Any) -> Any:
                from .runtime.common.http_codec import asgi_response

                # A StreamingResponse from a route streams to the client chunk by chunk, as in Ray Serve.
                return await asgi_response(app, dict(request.scope), await request.body())

        ASGIIngress.__init__.__signature__ = inspect.signature(user_init)  # type: ignore[attr-defined]
        functools.update_wrapper(ASGIIngress, cls, updated=())
        ASGIIngress._servegraph_ingress = app
        return ASGIIngress

    return decorate


__all__ = ["ingress"]
