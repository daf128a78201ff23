"""A DAGDriver's HTTP face, as Ray Serve's: a FastAPI app whose http_adapter is a dependency.

The adapter turns the request into the graph's input (by default the
``starlette.requests.Request`` itself); the graph runs from the proxy like any
caller; the result goes back through FastAPI (JSON, or a Response as it is).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of the functions
# made here at runtime, and their types are imported inside the functions.
import inspect
from typing import Any

from ...errors import NoRouteError
from .http_codec import encode_error, make_request, portable_scope
from .plan import PlanInputError


def as_dependency(adapter: Any) -> Any:
    """The adapter as a FastAPI dependency: a pydantic model reads the body; a one-argument
    function with no annotation gets the Request (servegraph accepts it; Ray asks for the annotation)."""
    from fastapi import Body
    from pydantic import BaseModel
    from starlette.requests import Request

    if inspect.isclass(adapter) and issubclass(adapter, BaseModel):
        model = adapter

        def read_body(inp: model = Body(...)) -> Any:  # type: ignore[valid-type]  # noqa: B008
            return inp

        return read_body
    params = list(inspect.signature(adapter).parameters.values())
    if len(params) == 1 and params[0].annotation is inspect.Parameter.empty:

        async def with_request(request: Request) -> Any:
            value = adapter(request)
            return await value if inspect.isawaitable(value) else value

        return with_request
    return adapter


def _jsonable(value: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    encoders: dict[Any, Any] = {}
    try:
        import numpy as np

        encoders = {np.ndarray: lambda a: a.tolist(), np.generic: lambda x: x.item()}
    except ImportError:  # pragma: no cover - numpy comes with Ray
        pass
    return jsonable_encoder(value, custom_encoder=encoders)


def driver_app(routes: dict[str, Any], adapter: Any) -> Any:
    """A FastAPI app serving each ``route -> target`` (``"/{path:path}"`` for a single graph)."""
    from fastapi import Depends, FastAPI
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    dependency = as_dependency(adapter)
    app = FastAPI()

    def add(route: str, target: Any) -> None:
        async def handle_request(inp: Any = Depends(dependency)) -> Any:  # noqa: B008
            if isinstance(inp, Request):  # the default adapter: send a Request a replica can rebuild
                inp = make_request(portable_scope(inp.scope), await inp.body())
            try:
                ref = await target.submit_async("__call__", (inp,), {})
                result = await ref
            except (PlanInputError, NoRouteError) as exc:
                return PlainTextResponse(str(exc), status_code=400)
            except Exception as exc:  # the user's error: 500 with its type and message
                status, headers, body = encode_error(exc)
                return Response(body, status_code=status, headers=dict(headers))
            if isinstance(result, Response):
                return result
            return JSONResponse(_jsonable(result))

        app.add_api_route(route, handle_request, methods=["GET", "POST"])

    for route, target in routes.items():
        add(route, target)
    return app


#: The route a single graph's driver answers on: every path under its prefix.
MATCH_ALL = "/{path:path}"


def adapter_problem(app: Any) -> str | None:
    """Why the app's http_adapter cannot be served (checked in the driver, before anything changes)."""
    adapter = route_adapter(app)
    if adapter is None:
        return None
    try:
        driver_app({MATCH_ALL: None}, adapter)
    except Exception as exc:  # FastAPI refuses the adapter's parameters, or lacks a package for them
        return f"the DAGDriver's http_adapter {getattr(adapter, '__name__', adapter)!r} cannot be served: {exc}"
    return None


def route_adapter(app: Any) -> Any:
    """The http_adapter an application's route runs, or None for none.

    A DAGDriver without one gets Ray Serve's default, which hands the graph the
    Request; an InputNode graph served without a DAGDriver (servegraph's own
    shortcut) takes the JSON body, and a plain ingress gets the Request.
    """

    if app.http_adapter is not None:
        return app.http_adapter
    if app.driven:
        from ...http_adapters import starlette_request

        return starlette_request
    return None
