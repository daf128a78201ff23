"""``@serve.batch``: requests that reach one replica are grouped into one call, as in Ray Serve 2.x.

The decorated ``async def`` takes lists (one item per request, for each of its parameters) and returns a
list of the same length; each caller still calls it with one item and gets its own result. A batch is sent
when it holds ``max_batch_size`` items (counted by ``batch_size_fn`` when given) or when
``batch_wait_timeout_s`` has passed since its first item arrived; at most ``max_concurrent_batches`` run
at once, and a batch waiting for room keeps taking the requests that arrive meanwhile. An exception raised
by the batch reaches every request in it.

An async *generator* can be batched too: each time it yields a list, every request's own stream gets its
item; an item that is ``StopIteration`` (or ``StopAsyncIteration``) ends that request's stream early.
Each caller iterates its own results with ``async for`` (or returns them as a ``StreamingResponse``).

A batch holds requests for one multiplexed model only (``serve.get_multiplexed_model_id()`` inside it
gives that model), and requests that passed their arguments in different shapes (a parameter by keyword
in one, left to its default in another) go in separate batches. ``set_max_batch_size`` and
``set_batch_wait_timeout_s`` on the decorated function change the next batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import functools
import inspect
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from .errors import GraphError
from .runtime.common.context import (
    get_multiplexed_model_id,
    has_running_loop,
    reset_multiplexed_model_id,
    set_multiplexed_model_id,
)

#: What a batched generator yields for a request whose stream has ended (Ray Serve's sentinels).
_SENTINELS = (StopIteration, StopAsyncIteration)
#: A request's stream items: a value, its end, or the error it ends with.
_ITEM, _END, _ERROR = 0, 1, 2


class BatchSizeError(GraphError, TypeError):
    """A batched function returned (or yielded) a result whose length is not the batch's.

    A ``RayServeException`` (``servegraph.exceptions``) as in Ray Serve, and a ``TypeError``.
    """


@dataclasses.dataclass(eq=False)  # hashed by identity: it keys its function's queues
class _Settings:
    """One decorated function's batching options, shared by every instance's queue (the setters change them)."""

    max_batch_size: int
    batch_wait_timeout_s: float
    max_concurrent_batches: int
    batch_size_fn: Callable[[list], int] | None


@dataclasses.dataclass(eq=False)
class _Request:
    """One caller's item: its arguments by parameter, where its answer goes, and its multiplexed model."""

    arguments: dict[str, Any]
    model_id: str
    #: The answer of a function (None for a generator).
    future: asyncio.Future | None = None
    #: The items of a generator's request, as (kind, value).
    stream: asyncio.Queue | None = None
    #: The caller stopped listening (a cancelled await, a closed stream): left out of what is still to run.
    gone: bool = False

    def first_item(self) -> Any:
        return next(iter(self.arguments.values()), None)

    def fail(self, exc: BaseException) -> None:
        if self.stream is not None:
            self.stream.put_nowait((_ERROR, exc))
        elif self.future is not None and not self.future.done():
            self.future.set_exception(exc)


#: Each batched function's queue, per event loop (a queue's events and semaphore belong to the loop that made
#: them), by the function's settings. Reached through _function_queue, never from the decorator's closures: those
#: are pickled by value with a deployment's code, and a weak dictionary cannot be.
_FUNCTION_QUEUES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Settings, _Queue]] = weakref.WeakKeyDictionary()


def _function_queue(fn: Callable[..., Any], parameters: list[inspect.Parameter], settings: _Settings, generator: bool) -> _Queue:
    """The queue of a batched function (not a method) on the running loop."""
    queues = _FUNCTION_QUEUES.setdefault(asyncio.get_running_loop(), {})
    queue = queues.get(settings)
    if queue is None:
        queue = queues[settings] = _Queue(fn, parameters, settings, generator)
    return queue


class _Queue:
    """The pending requests of one batched method on one instance (or of one batched function), on one loop."""

    def __init__(self, fn: Callable[..., Any], parameters: list[inspect.Parameter], settings: _Settings, generator: bool):
        self.fn = fn
        self.loop = asyncio.get_running_loop()
        self.parameters = parameters
        self.settings = settings
        self.generator = generator
        self.pending: collections.deque[_Request] = collections.deque()
        self.arrived = asyncio.Event()
        self.room = asyncio.Semaphore(settings.max_concurrent_batches)
        self.task: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()

    def put(self, request: _Request) -> None:
        self.pending.append(request)
        self.arrived.set()
        if self.task is None or self.task.done():
            # Not in any request's context: a batch serves several (each sub-batch sets its own model id).
            self.task = _clean_context().run(self.loop.create_task, self._run())

    def _size(self, batch: list[_Request]) -> int:
        size_fn = self.settings.batch_size_fn
        return len(batch) if size_fn is None else size_fn([r.first_item() for r in batch])

    async def _run(self) -> None:
        """Form batches while requests keep coming; each runs once there is room (``max_concurrent_batches``)."""
        while self.pending:
            await self.room.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self.room.release()
                raise
            if not batch:
                self.room.release()
                continue
            task = asyncio.get_running_loop().create_task(self._process(batch))
            self.running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.room.release()

    async def _next_batch(self) -> list[_Request]:
        """The next batch: up to the size limit, waiting at most ``batch_wait_timeout_s`` after its first item."""
        while self.pending and self.pending[0].gone:
            self.pending.popleft()
        if not self.pending:
            return []
        loop = asyncio.get_running_loop()
        max_size, wait_s = self.settings.max_batch_size, self.settings.batch_wait_timeout_s
        first = self.pending.popleft()
        if self.settings.batch_size_fn is not None and self._size([first]) > max_size:
            first.fail(RuntimeError(
                "Size of item is greater than max_batch_size. Please increase the max_batch_size or check the "
                "implementation of the batch_size_fn."
            ))  # fmt: skip
            return []
        batch, deadline = [first], loop.time() + wait_s
        while True:
            full = False
            while self.pending:
                if self.pending[0].gone:
                    self.pending.popleft()
                    continue
                batch.append(self.pending[0])
                if self._size(batch) > max_size:
                    batch.pop()  # it waits, first in line, for the next batch
                    full = True
                    break
                self.pending.popleft()
            remaining = deadline - loop.time()
            if full or self._size(batch) >= max_size or remaining <= 0:
                return batch
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _process(self, batch: list[_Request]) -> None:
        """Run a batch: one call per multiplexed model and argument shape, side by side."""
        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            if not request.gone:
                groups.setdefault((request.model_id, tuple(request.arguments)), []).append(request)
        await asyncio.gather(*(self._call(group) for group in groups.values()))

    async def _call(self, group: list[_Request]) -> None:
        token = set_multiplexed_model_id(group[0].model_id)
        try:
            args, kwargs = self._batched_arguments(group)
            if self.generator:
                await self._stream(self.fn(*args, **kwargs), group)
                return
            results = await self.fn(*args, **kwargs)
            _check_length(results, len(group), self.fn)
        except Exception as exc:
            for request in group:
                request.fail(exc)
            return
        finally:
            reset_multiplexed_model_id(token)
        for request, result in zip(group, results, strict=True):
            if request.future is not None and not request.future.done():
                request.future.set_result(result)

    def _batched_arguments(self, group: list[_Request]) -> tuple[list, dict]:
        """Each parameter's values as one list, positional where the function takes it so."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for parameter in self.parameters:
            name = parameter.name
            if name not in group[0].arguments:
                continue  # left to its default by every request of the group
            values = [r.arguments[name] for r in group]
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(list(column) for column in zip(*values, strict=True))
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update({key: [v[key] for v in values] for key in values[0]})
            elif parameter.kind is inspect.Parameter.KEYWORD_ONLY or kwargs:
                kwargs[name] = values
            else:
                args.append(values)
        return args, kwargs

    async def _stream(self, generator: AsyncIterator, group: list[_Request]) -> None:
        """Hand each yielded list's items to their requests' streams; end every stream when it ends."""
        open_ = list(group)
        try:
            async for results in generator:
                _check_length(results, len(group), self.fn)
                for request, item in zip(group, results, strict=True):
                    if request not in open_:
                        continue
                    if item is StopIteration or item is StopAsyncIteration or isinstance(item, _SENTINELS):
                        open_.remove(request)
                        request.stream.put_nowait((_END, None))  # type: ignore[union-attr]
                    elif not request.gone:
                        request.stream.put_nowait((_ITEM, item))  # type: ignore[union-attr]
                if not any(not r.gone for r in open_):
                    break  # every caller left: stop the user's generator
        except Exception as exc:
            for request in open_:
                request.fail(exc)
            open_ = []
        finally:
            for request in open_:
                request.stream.put_nowait((_END, None))  # type: ignore[union-attr]
            aclose = getattr(generator, "aclose", None)
            if aclose is not None:
                await aclose()


def _clean_context() -> contextvars.Context:
    context = contextvars.copy_context()
    context.run(set_multiplexed_model_id, "")
    return context


def _check_length(results: Any, expected: int, fn: Callable[..., Any]) -> None:
    try:
        length = len(results)
    except TypeError:
        length = None
    if length != expected:
        got = f"length {length}" if length is not None else f"a {type(results).__name__}"
        raise BatchSizeError(
            f"Batched function doesn't preserve batch size. The input list has length {expected} but the returned "
            f"list has {got}: @serve.batch function {getattr(fn, '__qualname__', fn)!r} must return a list with one "
            f"result per request ({expected})."
        )


def _validate(max_batch_size: Any, batch_wait_timeout_s: Any, max_concurrent_batches: Any, batch_size_fn: Any) -> int:
    """Ray Serve's checks and exception types (TypeError for a wrong type, ValueError for a wrong value)."""
    if isinstance(max_batch_size, float) and max_batch_size.is_integer():
        max_batch_size = int(max_batch_size)
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool):
        raise TypeError(f"max_batch_size must be integer >= 1, got {max_batch_size!r}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    if not isinstance(batch_wait_timeout_s, (int, float)) or isinstance(batch_wait_timeout_s, bool):
        raise TypeError(f"batch_wait_timeout_s must be a float >= 0, got {batch_wait_timeout_s!r}")
    if batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be a float >= 0, got {batch_wait_timeout_s!r}")
    if not isinstance(max_concurrent_batches, int) or isinstance(max_concurrent_batches, bool) or max_concurrent_batches < 1:
        raise TypeError(f"max_concurrent_batches must be an integer >= 1, got {max_concurrent_batches!r}")
    if batch_size_fn is not None and not callable(batch_size_fn):
        raise TypeError(f"batch_size_fn must be a callable or None, got {type(batch_size_fn).__name__}")
    return max_batch_size


def batch(
    _func: Callable[..., Any] | None = None,
    /,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    batch_size_fn: Callable[[list], int] | None = None,
) -> Any:
    """Group calls to an ``async def`` method or function (or async generator) into batches: ``@serve.batch`` or
    ``@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.1)``. Ray Serve's defaults and options.

    Raises:
        TypeError: the function is not ``async def``, or an option has the wrong type.
        ValueError: ``max_batch_size`` < 1 or ``batch_wait_timeout_s`` < 0.
    """
    if _func is not None and not callable(_func):
        raise TypeError("@serve.batch can only be used to decorate functions or methods.")
    size = _validate(max_batch_size, batch_wait_timeout_s, max_concurrent_batches, batch_size_fn)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        generator = inspect.isasyncgenfunction(fn)
        if not (generator or inspect.iscoroutinefunction(fn)):
            raise TypeError(
                f"Functions decorated with @serve.batch must be 'async def'; {getattr(fn, '__qualname__', fn)} is not"
            )
        signature = inspect.signature(fn)
        parameters = list(signature.parameters.values())
        is_method = bool(parameters) and parameters[0].name == "self"
        item_parameters = parameters[1:] if is_method else parameters
        settings = _Settings(size, float(batch_wait_timeout_s), max_concurrent_batches, batch_size_fn)
        attr = f"__servegraph_batch_{fn.__name__}"

        def enqueue(args: tuple, kwargs: dict, request: _Request) -> None:
            if is_method:
                self, args = args[0], args[1:]
                queue = self.__dict__.get(attr)
                if queue is None or queue.loop is not asyncio.get_running_loop():
                    queue = _Queue(functools.partial(fn, self), item_parameters, settings, generator)
                    self.__dict__[attr] = queue
            else:
                queue = _function_queue(fn, item_parameters, settings, generator)
            queue.put(request)

        def arguments_of(args: tuple, kwargs: dict) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)  # a TypeError names what the call got wrong, as calling fn would
            arguments = dict(bound.arguments)
            if is_method:
                arguments.pop(parameters[0].name)
            return arguments

        if generator:

            async def results(request: _Request, queued: bool, args: tuple, kwargs: dict) -> Any:
                if not queued:
                    enqueue(args, kwargs, request)
                try:
                    while True:
                        kind, value = await request.stream.get()  # type: ignore[union-attr]
                        if kind == _END:
                            return
                        if kind == _ERROR:
                            raise value
                        yield value
                finally:
                    request.gone = True

            @functools.wraps(fn)
            def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
                # Queued when called, not when first iterated (as in Ray Serve): callers that make their streams
                # first and read them one after another still share a batch.
                request = _Request(arguments_of(args, kwargs), get_multiplexed_model_id(), stream=asyncio.Queue())
                queued = has_running_loop()
                if queued:
                    enqueue(args, kwargs, request)
                return results(request, queued, args, kwargs)

            wrapper: Any = stream_wrapper
        else:

            @functools.wraps(fn)
            async def call_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = _Request(
                    arguments_of(args, kwargs), get_multiplexed_model_id(), future=asyncio.get_running_loop().create_future()
                )
                enqueue(args, kwargs, request)
                try:
                    return await request.future  # type: ignore[misc]
                finally:
                    request.gone = True

            wrapper = call_wrapper

        def set_max_batch_size(new_max_batch_size: int) -> None:
            settings.max_batch_size = _validate(new_max_batch_size, settings.batch_wait_timeout_s, 1, None)

        def set_batch_wait_timeout_s(new_batch_wait_timeout_s: float) -> None:
            _validate(settings.max_batch_size, new_batch_wait_timeout_s, 1, None)
            settings.batch_wait_timeout_s = float(new_batch_wait_timeout_s)

        # Ray Serve's names, on the function (a bound method reaches them too: self.handler.set_max_batch_size(4)).
        wrapper.set_max_batch_size = set_max_batch_size
        wrapper.set_batch_wait_timeout_s = set_batch_wait_timeout_s
        wrapper._get_max_batch_size = lambda: settings.max_batch_size
        wrapper._get_batch_wait_timeout_s = lambda: settings.batch_wait_timeout_s
        wrapper._servegraph_batch = settings
        return wrapper

    return decorate(_func) if _func is not None else decorate


__all__ = ["BatchSizeError", "batch"]
