"""Model multiplexing, as in Ray Serve: many models served by one deployment, each replica holding a few.

``@serve.multiplexed(max_num_models_per_replica=N)`` on an async loader (``async def get_model(self,
model_id: str)``) caches what it returns per replica; beyond N models the least recently used one is
unloaded (its ``__del__`` called). A request names its model with ``handle.options(multiplexed_model_id=
"a")`` or the HTTP header ``serve_multiplexed_model_id``; code reads it with ``serve.get_multiplexed_model_id()``.
Routers send a model's requests to a replica that holds it when one has room (else the least loaded one,
which then loads it): each replica reports the models it holds to the controller, which pushes them to
every router with the replica set.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

from .runtime.common import telemetry
from .runtime.common.context import get_multiplexed_model_id

__all__ = ["get_multiplexed_model_id", "multiplexed"]

#: Where a replica's model cache lives on the object (or function) whose loader it wraps.
_CACHE_ATTRIBUTE = "__servegraph_multiplexed_models"


def multiplexed(func: Callable[..., Any] | None = None, max_num_models_per_replica: int = 3) -> Any:
    """Decorate an async model loader so each replica keeps at most ``max_num_models_per_replica`` models.

    Raises:
        TypeError: the loader is not an async function taking one model id (and ``self``).
        ValueError: ``max_num_models_per_replica`` is neither positive nor -1 (no limit).
    """
    if not isinstance(max_num_models_per_replica, int) or isinstance(max_num_models_per_replica, bool):
        raise TypeError("max_num_models_per_replica must be an integer.")
    if max_num_models_per_replica != -1 and max_num_models_per_replica <= 0:
        raise ValueError("max_num_models_per_replica must be positive.")

    def decorate(loader: Callable[..., Any]) -> Any:
        if not callable(loader):
            raise TypeError("The `multiplexed` decorator must be used with a function or method.")
        if not inspect.iscoroutinefunction(loader):
            raise TypeError("@serve.multiplexed can only be used to decorate async functions or methods.")
        params = inspect.signature(loader).parameters
        if not 1 <= len(params) <= 2:
            raise TypeError(
                "@serve.multiplexed can only be used to decorate functions or methods with at least one "
                "'model_id: str' argument."
            )
        is_method = len(params) == 2

        @functools.wraps(loader)
        async def load(*args: Any) -> Any:
            if len(args) != (2 if is_method else 1):
                raise TypeError(
                    f"{loader.__qualname__} is @serve.multiplexed: call it with one model id, got {len(args)} arguments"
                )
            owner = args[0] if is_method else load
            cache = getattr(owner, _CACHE_ATTRIBUTE, None)
            if cache is None:
                cache = _ModelCache(loader, max_num_models_per_replica)
                setattr(owner, _CACHE_ATTRIBUTE, cache)
            return await cache.get(args[-1], args[0] if is_method else None)

        load.__servegraph_multiplexed__ = True  # type: ignore[attr-defined]
        return load

    return decorate(func) if func is not None else decorate


class _ModelCache:
    """One replica's models: loaded once each (concurrent requests for a model share one load), LRU-evicted."""

    def __init__(self, loader: Callable[..., Any], capacity: int):
        self._loader = loader
        self._capacity = capacity
        self.models: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}

    async def get(self, model_id: str, owner: Any) -> Any:
        if not isinstance(model_id, str):
            raise TypeError(f"a multiplexed model id is a str, got {type(model_id).__name__}")
        tags = telemetry.replica_tags()
        if tags:
            telemetry.count("serve_multiplexed_get_model_requests_counter", tuple(tags.values()))
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        pending = self._loading.get(model_id)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._loading[model_id] = asyncio.get_running_loop().create_future()
        try:
            while self._capacity != -1 and len(self.models) >= self._capacity:
                await self._unload_oldest()
            started = time.perf_counter()
            model = await (self._loader(owner, model_id) if owner is not None else self._loader(model_id))
            self.models[model_id] = model
            if tags:
                telemetry.observe("serve_multiplexed_model_load_latency_ms", tags, (time.perf_counter() - started) * 1000.0)
                telemetry.inc("serve_multiplexed_models_load_counter", tags)
                telemetry.set_gauge("serve_registered_multiplexed_model_id", {**tags, "model_id": model_id}, 1)
            pending.set_result(model)
            return model
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._loading[model_id]
            if tags:
                telemetry.set_gauge("serve_num_multiplexed_models", tags, len(self.models))
            _report(tuple(self.models) + tuple(self._loading))

    async def _unload_oldest(self) -> None:
        model_id, model = self.models.popitem(last=False)
        started = time.perf_counter()
        destructor = getattr(type(model), "__del__", None)
        if destructor is not None:
            if inspect.iscoroutinefunction(destructor):
                await destructor(model)
            else:
                await asyncio.get_running_loop().run_in_executor(None, destructor, model)
            _disarm(model)
        tags = telemetry.replica_tags()
        if tags:
            telemetry.observe("serve_multiplexed_model_unload_latency_ms", tags, (time.perf_counter() - started) * 1000.0)
            telemetry.inc("serve_multiplexed_models_unload_counter", tags)
            telemetry.set_gauge("serve_registered_multiplexed_model_id", {**tags, "model_id": model_id}, 0)


#: Per model class, a subclass whose ``__del__`` does nothing (see _disarm).
_DISARMED: dict[type, type] = {}


def _disarm(model: Any) -> None:
    """Run a model's ``__del__`` once: Python calls it again when the object is collected, so the unloaded
    model becomes an instance of a subclass without one (its own attributes and methods unchanged)."""
    cls = type(model)
    quiet = _DISARMED.get(cls)
    if quiet is None:
        quiet = _DISARMED[cls] = type(cls.__name__, (cls,), {"__del__": lambda self: None, "__module__": cls.__module__})
    try:
        model.__class__ = quiet
    except TypeError:  # a builtin or slotted type: its __del__ may run again when collected
        pass


def _report(model_ids: tuple[str, ...]) -> None:
    """Tell the controller which models this replica holds (it pushes them to routers); best effort."""
    from .runtime.actors.replica import report_models

    report_models(model_ids)
