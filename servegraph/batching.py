"""``@serve.batch``: requests that reach one replica are grouped into one call, as in Ray Serve.

The decorated ``async def`` takes a list (one item per request) and returns a
list of the same length; each caller still calls it with one item and gets its
own result. A batch is sent when it has ``max_batch_size`` items or when
``batch_wait_timeout_s`` has passed since its first item arrived. An exception
raised by the batch reaches every request in it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any


class _Queue:
    """The pending requests of one batched method on one instance (or of one batched function)."""

    def __init__(self, fn: Callable[..., Any], max_batch_size: int, batch_wait_timeout_s: float):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.items: asyncio.Queue[tuple[tuple, dict, asyncio.Future]] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def put(self, args: tuple, kwargs: dict) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.items.put_nowait((args, kwargs, future))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        return future

    async def _next_batch(self) -> list[tuple[tuple, dict, asyncio.Future]]:
        batch = [await self.items.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_timeout_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                while len(batch) < self.max_batch_size and not self.items.empty():
                    batch.append(self.items.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self.items.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._call(batch)
            if self.items.empty():
                return

    async def _call(self, batch: list[tuple[tuple, dict, asyncio.Future]]) -> None:
        first_args, first_kwargs, _ = batch[0]
        # Every positional and keyword argument becomes a list, one item per request.
        args = [[item[0][i] for item in batch] for i in range(len(first_args))]
        kwargs = {k: [item[1][k] for item in batch] for k in first_kwargs}
        try:
            results = await self.fn(*args, **kwargs)
            if not isinstance(results, list) or len(results) != len(batch):
                raise TypeError(
                    f"@serve.batch function {getattr(self.fn, '__qualname__', self.fn)!r} must return a list with one "
                    f"result per request ({len(batch)}), got {type(results).__name__}"
                    + (f" of length {len(results)}" if isinstance(results, list) else "")
                )
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def batch(
    _func: Callable[..., Any] | None = None, *, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.0
) -> Any:
    """Group calls to an ``async def`` method or function into batches: ``@serve.batch`` or
    ``@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.1)``.

    Raises:
        TypeError: the function is not ``async def``.
        ValueError: ``max_batch_size`` < 1 or ``batch_wait_timeout_s`` < 0.
    """
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    if not isinstance(batch_wait_timeout_s, (int, float)) or batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got {batch_wait_timeout_s!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"functions decorated with @serve.batch must be 'async def'; {fn.__qualname__} is not")
        params = list(inspect.signature(fn).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"__servegraph_batch_{fn.__name__}"
        function_queue: list[_Queue] = []

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if is_method:
                self, args = args[0], args[1:]
                queue = self.__dict__.get(attr)
                if queue is None:
                    queue = _Queue(functools.partial(fn, self), max_batch_size, batch_wait_timeout_s)
                    self.__dict__[attr] = queue
            else:
                if not function_queue:
                    function_queue.append(_Queue(fn, max_batch_size, batch_wait_timeout_s))
                queue = function_queue[0]
            return await queue.put(args, kwargs)

        wrapper._servegraph_batch = (max_batch_size, batch_wait_timeout_s)  # type: ignore[attr-defined]
        return wrapper

    return decorate(_func) if _func is not None else decorate


__all__ = ["batch"]
