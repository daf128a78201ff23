"""A replica: one Ray actor running one instance of the user's class (or function).

Classes with no ``async def`` methods run in a threaded actor, which Ray calls
with less overhead; classes with async methods run in an async actor, where
constructor handles return ``asyncio.Task`` objects as in the seed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from typing import Any

import ray

from .._validation import closest
from ..compiler import ir
from ..dsl.signature import public_methods
from .codec import unflatten
from .handle import DeploymentInfo, async_handle
from .http_codec import HTTPResult, encode_error, encode_result, make_request


def is_async_target(target: Any) -> bool:
    if not inspect.isclass(target):
        return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)
    for name in dir(target):
        attr = inspect.getattr_static(target, name, None)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
            return True
    return False


def split_keywords(names: tuple[str, ...], values: tuple) -> tuple[tuple, dict]:
    """A call sent as ``(names, *args, *keyword values)``: every value top-level, so Ray resolves its refs.

    >>> split_keywords(("k",), (1, 2, 3))
    ((1, 2), {'k': 3})
    """
    n = len(values) - len(names)
    return values[:n], dict(zip(names, values[n:], strict=True))


def construct(cls: type, args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """An instance of ``cls``, and the coroutine of its ``async def __init__`` (None if it has none).

    As Ray Serve does: ``__new__`` then ``__init__``, so an async constructor's
    coroutine can be awaited on the replica's event loop.
    """
    if not inspect.iscoroutinefunction(getattr(cls, "__init__", None)):
        return cls(*args, **kwargs), None
    instance = cls.__new__(cls)  # type: ignore[call-overload]
    return instance, instance.__init__(*args, **kwargs)


def call_http(fn: Callable[..., Any], scope: dict, body: bytes) -> Any:
    """Call an HTTP entry point as Ray Serve does: with the Request, or with nothing if it takes no parameters."""
    try:
        takes_nothing = not inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read: pass the request
        takes_nothing = False
    return fn() if takes_nothing else fn(make_request(scope, body))


class _ReplicaCore:
    """What both actor kinds share: construction, dispatch and HTTP."""

    def __init__(
        self,
        app: str,
        deployment: str,
        target: Any,
        is_function: bool,
        init_args: tuple,
        init_kwargs: tuple,
        handles: dict[str, DeploymentInfo],
    ):
        self._app = app
        self._deployment = deployment
        self._is_function = is_function

        def inject(marker: ir.Ref | ir.HandleRef) -> Any:
            assert isinstance(marker, ir.HandleRef)  # a constructor's nodes are all handles
            return async_handle(handles[marker.deployment], marker.method or "__call__")

        #: An ``async def __init__``'s coroutine (then its Task) until it has finished.
        self._init: Any = None
        if is_function:
            self._instance = None
            self._function = target
        else:
            args = ir.map_markers(init_args, inject)
            kwargs = dict(ir.map_markers(init_kwargs, inject))
            self._instance, self._init = construct(target, args, kwargs)

    def __repr__(self) -> str:
        # Ray shows an actor's repr in errors from it: name the deployment, not this class.
        return f"replica of deployment {self._deployment!r}"

    def _method(self, name: str) -> Callable[..., Any]:
        if self._is_function:
            if name not in ("__call__", "predict"):
                raise AttributeError(f"function deployment {self._deployment!r} has only __call__, not {name!r}")
            return self._function
        try:
            return getattr(self._instance, name)
        except AttributeError:
            hint = closest(name, public_methods(type(self._instance)))
            raise AttributeError(
                f"deployment {self._deployment!r} has no method {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
            ) from None

    def _reconfigure_sync(self, user_config: Any) -> Any:
        fn = getattr(self._instance, "reconfigure", None)
        if fn is None:
            raise TypeError(
                f"deployment {self._deployment!r} has user_config set but no reconfigure(self, config) method"
            )
        return fn(user_config)

    def ready(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def check_health(self) -> bool:
        fn = getattr(self._instance, "check_health", None)
        if fn is not None:
            fn()
        return True

    def gather(self, template: Any, *values: Any) -> Any:
        (out,), _ = unflatten((template,), {}, values)
        return out


class SyncReplica(_ReplicaCore):
    def call(self, method: str, *args: Any) -> Any:
        return self._method(method)(*args)

    def handle_request(self, method: str, names: tuple[str, ...], *values: Any) -> Any:
        args, kwargs = split_keywords(names, values)
        return self._method(method)(*args, **kwargs)

    def handle_http(self, scope: dict, body: bytes) -> HTTPResult:
        try:
            result = call_http(self._method("__call__"), scope, body)
            if inspect.isawaitable(result):  # an async __call__ assigned at runtime
                result = asyncio.run(_awaited(result))
            return encode_result(result)
        except Exception as exc:  # a user error becomes an HTTP 500, never a dead proxy
            return encode_error(exc)

    def reconfigure(self, user_config: Any) -> None:
        self._reconfigure_sync(user_config)


class AsyncReplica(_ReplicaCore):
    async def _initialized(self) -> None:
        """Finish an ``async def __init__`` (once, shared by every request that arrives meanwhile)."""
        if not isinstance(self._init, asyncio.Task):
            self._init = asyncio.ensure_future(self._init)
        await self._init
        self._init = None

    async def ready(self) -> dict:  # type: ignore[override]
        if self._init is not None:
            await self._initialized()
        return _ReplicaCore.ready(self)

    async def call(self, method: str, *args: Any) -> Any:
        if self._init is not None:
            await self._initialized()
        result = self._method(method)(*args)
        if inspect.isawaitable(result):
            result = await result
            if inspect.isawaitable(result):  # a ref returned by an async method: its value, as over HTTP
                result = await result
        return result

    async def handle_request(self, method: str, names: tuple[str, ...], *values: Any) -> Any:
        if self._init is not None:
            await self._initialized()
        args, kwargs = split_keywords(names, values)
        result = self._method(method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
            if inspect.isawaitable(result):  # a ref returned by an async method: its value, as over HTTP
                result = await result
        return result

    async def handle_http(self, scope: dict, body: bytes) -> HTTPResult:
        if self._init is not None:
            await self._initialized()
        try:
            result = call_http(self._method("__call__"), scope, body)
            if inspect.isawaitable(result):
                result = await result
                if inspect.isawaitable(result):  # a ref returned by an async method: its value, as over HTTP
                    result = await result
            return encode_result(result)
        except Exception as exc:  # a user error becomes an HTTP 500, never a dead proxy
            return encode_error(exc)

    async def reconfigure(self, user_config: Any) -> None:
        if self._init is not None:
            await self._initialized()
        result = self._reconfigure_sync(user_config)
        if inspect.isawaitable(result):
            await result

    async def check_health(self) -> bool:  # type: ignore[override]
        fn = getattr(self._instance, "check_health", None)
        if fn is not None:
            result = fn()
            if inspect.isawaitable(result):
                await result
        return True


async def _awaited(value: Any) -> Any:
    return await value


def replica_actor_class(target: Any) -> Any:
    """The Ray actor class for ``target``: async if it has async methods."""
    return _ASYNC if is_async_target(target) else _SYNC


_SYNC = ray.remote(SyncReplica)
_ASYNC = ray.remote(AsyncReplica)
