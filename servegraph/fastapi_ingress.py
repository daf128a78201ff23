"""``@serve.ingress(app)``: a FastAPI (or any ASGI) app as a deployment's HTTP interface, as in Ray Serve.

Routes may be the class's own methods (``@app.get("/")`` on ``def hello(self)``), also when declared on an
``APIRouter`` that the app includes: at decoration time each becomes a route whose ``self`` is a FastAPI
dependency returning the instance that serves the request, so routes reach its state and its constructor
handles. Path and query parameters, bodies, validation, middleware, exception handlers, ``/docs`` and
``/openapi.json`` all come from FastAPI. The app's startup hooks run on each replica after the constructor,
and its shutdown hooks when the replica stops, before the class's own ``__del__``, as Ray Serve runs them.

One app may serve several ingress classes: each deployment answers the app's plain routes and its own
class's, and the other classes' routes are not found there (404), as in Ray Serve. A deployment serves the
routes the app had when ``@serve.ingress`` ran: routes added later are not found either (Ray Serve freezes a
copy of the app there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Iterator
from typing import Any

#: Where ``__call__`` puts the instance serving a request in the request's ASGI scope: what ``self`` resolves to.
_INSTANCE = "servegraph.ingress_instance"
#: The attribute of a route's view naming the classes whose replicas serve it (see :func:`class_based_view`).
_OWNERS = "_servegraph_owners"
#: The attribute of a view holding the method it calls.
_METHOD = "_servegraph_method"
#: The instance attribute holding the app's open lifespan on a replica.
_LIFESPAN = "_servegraph_lifespan"


# FastAPI's private parts used here, each checked on FastAPI 0.165.0 ---------------------------------------


def _included_router_type() -> type | None:
    """FastAPI >= 0.137's ``_IncludedRouter``: what ``include_router`` adds to the app instead of copies of the
    router's routes; it holds the router (``original_router``), the include's prefix (``include_context``) and a
    lock guarding a cache of the routes. None on older FastAPI, which copies the routes into the app."""
    import fastapi.routing

    return getattr(fastapi.routing, "_IncludedRouter", None)


def _routes_changed(router: Any) -> None:
    """Tell FastAPI that a router's routes changed in place: its includes cache their routes by this counter
    (``APIRouter._routes_version``; an older FastAPI has none and caches nothing)."""
    if isinstance(getattr(router, "_routes_version", None), int):
        router._routes_version += 1


def _api_routes(router: Any, seen: frozenset[int] = frozenset()) -> Iterator[tuple[Any, int, Any]]:
    """``(router, index, route)`` for every ``APIRoute`` under ``router``, those of the routers it includes too
    (``router.routes[index]`` is the route)."""
    from fastapi.routing import APIRoute

    included: Any = _included_router_type()  # Any: a type only when FastAPI has it
    for i, route in enumerate(list(router.routes)):
        if isinstance(route, APIRoute):
            yield router, i, route
        elif included is not None and isinstance(route, included) and id(route.original_router) not in seen:
            yield from _api_routes(route.original_router, seen | {id(router)})


def _rebuild_included_router(kind: type, fields: dict) -> Any:
    # The process unpickling it (the controller) may pickle it again, for a replica, without ever having
    # run @serve.ingress: teach its pickle too.
    _make_apps_picklable()
    return kind(**fields)


def _reduce_included_router(router: Any) -> tuple:
    """An included router pickled as the arguments its constructor requires; the copy makes its own lock
    and an empty cache (which holds routes as they were, before class_based_view replaced some)."""
    required = {
        f.name: getattr(router, f.name)
        for f in dataclasses.fields(router)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return (_rebuild_included_router, (type(router), required))


def _make_apps_picklable() -> None:
    """An app that includes a router holds a ``threading.Lock`` (in each ``_IncludedRouter``), so it cannot be
    pickled to a replica as it is: teach pickle to leave the lock and the cache it guards out."""
    import copyreg

    included = _included_router_type()
    if included is not None and dataclasses.is_dataclass(included) and included not in copyreg.dispatch_table:
        copyreg.pickle(included, _reduce_included_router)


# Routes on the class's methods ----------------------------------------------------------------------------


@functools.cache
def _self_dependency() -> Any:
    """The FastAPI dependency that is ``self`` of a route on a method: the ingress instance answering the
    request (made on first use, as starlette is imported only then)."""
    from starlette.requests import HTTPConnection

    async def serving_instance(connection: HTTPConnection) -> Any:
        instance = connection.scope.get(_INSTANCE)
        if instance is None:  # the app called outside its deployment (say, a TestClient on the bare app)
            raise RuntimeError(
                f"{connection.url.path!r} is a route on a method of a @serve.ingress class: only that "
                "deployment can answer it (there is no instance to be its `self` here)"
            )
        return instance

    # FastAPI reads the parameter's type to pass the request; this module's annotations are strings, and
    # HTTPConnection is no global of it to resolve one against.
    serving_instance.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("connection", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection)]
    )
    return serving_instance


def _route_view(endpoint: Any, owner: str) -> Any:
    """``endpoint`` as FastAPI should call it: ``self`` a dependency, the other parameters keyword-only."""
    from fastapi import Depends

    sig = inspect.signature(endpoint, eval_str=True)
    first, *rest = sig.parameters.values()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [first.replace(default=Depends(_self_dependency()), kind=inspect.Parameter.KEYWORD_ONLY)] + [
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
    setattr(view, _METHOD, endpoint)
    setattr(view, _OWNERS, {owner})
    return view


def _class_key(cls: type) -> str:
    """The name a route's view records for the class whose replicas serve it (equal in every process)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _method_prefixes(cls: type) -> tuple[str, ...]:
    """How the qualnames of the methods of ``cls`` and of its bases begin.

    Taken when ``@serve.ingress`` runs: a class pickled by value comes back with ``__qualname__`` its bare
    name (its functions keep theirs)."""
    return tuple(base.__qualname__ + "." for base in cls.__mro__ if base is not object)


def class_based_view(app: Any, owner: str, prefixes: tuple[str, ...]) -> None:
    """Make the app's routes that are methods of the class ``owner`` (their qualnames begin with one of
    ``prefixes``) take ``self`` from the replica serving the request, as Ray Serve's class-based view does;
    routes on included routers too.

    Each is rebuilt in place (route order decides matches) with every setting it was made with, and its view
    records the classes it belongs to, so a replica of another class sharing the app leaves it out
    (see :func:`_serve_only_routes_of`).
    """
    from fastapi.routing import APIRoute

    settings = [n for n in inspect.signature(APIRoute.__init__).parameters if n not in ("self", "path", "endpoint")]
    for router, i, route in _api_routes(app.router):
        method = getattr(route.endpoint, _METHOD, route.endpoint)
        # By qualname, not identity: FastAPI allows two routes on methods of the same name; and a method a
        # base class defines names the base.
        if not getattr(method, "__qualname__", "").startswith(prefixes):
            continue
        owners = getattr(route.endpoint, _OWNERS, None)
        if owners is not None:  # a view already: of this class, or of another with this method (a shared base)
            owners.add(owner)
            continue
        kwargs = {n: getattr(route, n) for n in settings if hasattr(route, n)}
        router.routes[i] = APIRoute(route.path, _route_view(method, owner), **kwargs)
        _routes_changed(router)


def _serve_only_routes_of(app: Any, owner: str, frozen: int | None = None) -> None:
    """Drop the routes added to ``app`` after its first ``frozen`` ones (those ``@serve.ingress`` saw) and the
    routes of the other ingress classes that share it (Ray Serve's deployments each answer only their own
    class's routes, of the app as it was decorated). In place: a replica is the only ingress instance in its
    process."""
    if frozen is not None and len(app.router.routes) > frozen:
        del app.router.routes[frozen:]
        _routes_changed(app.router)
    others: dict[int, tuple[Any, set[int]]] = {}
    for router, i, route in _api_routes(app.router):
        owners = getattr(route.endpoint, _OWNERS, None)
        if owners is not None and owner not in owners:
            others.setdefault(id(router), (router, set()))[1].add(i)
    for router, drop in others.values():
        router.routes[:] = [r for i, r in enumerate(router.routes) if i not in drop]
        _routes_changed(router)
    if getattr(app, "openapi_schema", None) is not None:  # /openapi.json made before: it listed them
        app.openapi_schema = None


# The app's lifespan: startup hooks after the constructor, shutdown hooks when the replica stops ------------


class _Lifespan:
    """The app's ASGI lifespan on one replica: ``start`` runs its startup hooks (and a lifespan context
    manager's entry), ``shutdown`` its shutdown hooks (and the manager's exit)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._sent: set[str] = set()
        self._error: BaseException | None = None

    async def start(self) -> None:
        """Run the startup hooks; raises what they raised. An app without lifespan support starts as it is."""
        started = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run(started))
        await started

    async def _run(self, started: asyncio.Future) -> None:
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict:
            message = next(messages, None)
            if message is not None:
                return message
            await self._stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict) -> None:
            self._sent.add(message["type"])
            if message["type"] == "lifespan.startup.complete" and not started.done():
                started.set_result(None)

        try:
            await self._app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        except Exception as exc:  # a failed hook; or, before any message, an app that has no lifespan
            self._error = exc if self._sent else None
        finally:
            if not started.done():
                if self._error is not None:
                    started.set_exception(self._error)
                else:
                    started.set_result(None)

    async def shutdown(self) -> None:
        """Run the shutdown hooks (once); raises what they raised."""
        task, self._task = self._task, None
        if task is None or "lifespan.startup.complete" not in self._sent:
            return
        self._stop.set()
        await task
        if self._error is not None:
            raise self._error


async def _shut_down(instance: Any, lifespan: _Lifespan, user_del: Any) -> None:
    """The app's shutdown hooks, then the class's own ``__del__`` (whatever the hooks did), as Ray Serve runs them."""
    try:
        await lifespan.shutdown()
    finally:
        if user_del is not None:
            result = user_del(instance)
            if inspect.isawaitable(result):
                await result


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
        owner, prefixes = _class_key(cls), _method_prefixes(cls)
        #: How many routes the app has now: routes added later (they go at the end) are not this deployment's,
        #: as Ray Serve serves a copy of the app frozen here.
        frozen = len(app.router.routes) if hasattr(app, "router") else None
        if hasattr(app, "router"):
            _make_apps_picklable()
            class_based_view(app, owner, prefixes)
        user_init = cls.__init__
        user_del = getattr(cls, "__del__", None)

        class ASGIIngress(cls):
            async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
                from .runtime.common.context import current_replica

                result = user_init(self, *args, **kwargs)
                if inspect.isawaitable(result):
                    await result
                if hasattr(app, "router") and current_replica() is not None:
                    _serve_only_routes_of(app, owner, frozen)
                lifespan = _Lifespan(app)
                await lifespan.start()
                self.__dict__[_LIFESPAN] = lifespan

            async def __call__(self, request: Any) -> Any:
                from .runtime.common.http_codec import asgi_response

                scope = dict(request.scope)
                scope[_INSTANCE] = self
                # A StreamingResponse from a route streams to the client chunk by chunk, as in Ray Serve.
                return await asgi_response(app, scope, await request.body())

            def __del__(self) -> Any:
                """The replica stops (its drain calls this, and awaits what it returns): the app's shutdown hooks,
                then the class's own ``__del__``."""
                lifespan = self.__dict__.pop(_LIFESPAN, None)
                try:
                    loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:  # the garbage collector, with no event loop to run the hooks on
                    loop = None
                if lifespan is None or loop is None:
                    return user_del(self) if user_del is not None else None
                # A task, not a coroutine: it runs also when the garbage collector is the caller (nobody awaits).
                return loop.create_task(_shut_down(self, lifespan, user_del))

        ASGIIngress.__init__.__signature__ = inspect.signature(user_init)  # type: ignore[attr-defined]
        functools.update_wrapper(ASGIIngress, cls, updated=())
        ASGIIngress._servegraph_ingress = app
        return ASGIIngress

    return decorate


__all__ = ["ingress"]
