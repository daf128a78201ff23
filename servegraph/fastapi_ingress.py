"""``@serve.ingress(app)``: a FastAPI app as a deployment's HTTP interface, as in Ray Serve.

Routes may be the class's own methods (``@app.get("/")`` on ``def hello(self)``):
on each replica they are bound to its instance, so they reach its state and
its constructor handles. Path and query parameters, bodies, validation,
``/docs`` and ``/openapi.json`` all come from FastAPI.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


def _bound_view(endpoint: Any, instance: Any) -> Any:
    """``endpoint`` with ``self`` bound, with the signature FastAPI should read (``self`` dropped)."""
    sig = inspect.signature(endpoint, eval_str=True)
    params = list(sig.parameters.values())[1:]
    view: Any
    if inspect.iscoroutinefunction(endpoint):

        async def async_view(*args: Any, **kwargs: Any) -> Any:
            return await endpoint(instance, *args, **kwargs)

        view = async_view
    else:
        # FastAPI runs a sync endpoint in its thread pool, as it would the method.
        view = functools.partial(endpoint, instance)

    view.__signature__ = sig.replace(parameters=params)
    view.__name__ = endpoint.__name__
    view.__doc__ = endpoint.__doc__
    return view


def bind_views(app: Any, cls: type, instance: Any) -> Any:
    """Rebind the app's routes that are methods of ``cls`` to ``instance`` (once per replica)."""
    from fastapi import APIRouter
    from fastapi.routing import APIRoute

    methods = {id(v) for k in cls.__mro__ for v in vars(k).values()}
    keep, views = [], APIRouter()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and id(route.endpoint) in methods:
            route.endpoint = _bound_view(route.endpoint, instance)
            views.routes.append(route)
        else:
            keep.append(route)
    app.router.routes = keep
    app.include_router(views)
    app.openapi_schema = None
    return app


def ingress(app: Any) -> Any:
    """Serve the FastAPI (or any ASGI) ``app`` as the decorated deployment class's HTTP interface.

    Raises:
        ValueError: not used on a class (as Ray Serve raises).
    """

    def decorate(cls: Any) -> Any:
        if not inspect.isclass(cls):
            raise ValueError("@serve.ingress must be used with a class")
        if "__call__" in vars(cls):
            raise ValueError(f"{cls.__name__} defines __call__; with @serve.ingress the FastAPI app answers HTTP")

        class ASGIIngress(cls):  # type: ignore[misc, valid-type]
            async def __call__(self, request: Any) -> Any:
                from starlette.responses import Response

                from .runtime.http_codec import call_asgi

                asgi = self.__dict__.get("_servegraph_asgi")
                if asgi is None:
                    has_views = hasattr(app, "router")
                    asgi = self.__dict__["_servegraph_asgi"] = bind_views(app, cls, self) if has_views else app
                status, headers, body = await call_asgi(asgi, dict(request.scope), await request.body())
                response = Response(body, status_code=status)
                response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
                return response

        functools.update_wrapper(ASGIIngress, cls, updated=())
        ASGIIngress._servegraph_ingress = app  # type: ignore[attr-defined]
        return ASGIIngress

    return decorate


__all__ = ["ingress"]
