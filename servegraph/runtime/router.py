"""Routes one deployment's requests among its replicas from inside the caller.

Power of two choices on in-flight counts the router tracks itself: each
submitted request's ObjectRef stays in its replica's list until Ray reports it
done (checked with ``ray.wait(fetch_local=False)``, so results are never pulled
into the caller). When every replica has ``max_ongoing_requests`` in flight,
new requests wait in the caller until one finishes. No controller round trip.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence

import ray
from ray import ObjectRef
from ray.actor import ActorHandle

#: The pseudo-method that sends (scope, body) to the ingress's HTTP entry point.
HTTP = "<http>"

#: How often a waiting async caller looks for a free slot (seconds).
_POLL_S = 0.001


class Router:
    def __init__(self, deployment: str, replicas: Sequence[ActorHandle], max_ongoing: int):
        if not replicas:
            raise ValueError(f"deployment {deployment!r} has no replicas")
        self.deployment = deployment
        self.replicas = list(replicas)
        self.max_ongoing = max_ongoing
        self._in_flight: list[list[ObjectRef]] = [[] for _ in self.replicas]
        self._lock = threading.Lock()
        self._rng = random.Random()

    # Counting -------------------------------------------------------------------
    def _prune(self, i: int) -> int:
        refs = self._in_flight[i]
        if refs:
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            self._in_flight[i] = pending
        return len(self._in_flight[i])

    def _try_pick(self) -> int | None:
        """A replica with a free slot (fewer in flight of two random ones), or None if all are full."""
        n = len(self.replicas)
        if n == 1:
            if len(self._in_flight[0]) < self.max_ongoing or self._prune(0) < self.max_ongoing:
                return 0
            return None
        i, j = self._rng.sample(range(n), 2)
        ci, cj = self._prune(i), self._prune(j)
        best, count = (i, ci) if ci <= cj else (j, cj)
        if count < self.max_ongoing:
            return best
        counts = [self._prune(k) for k in range(n)]
        best = min(range(n), key=counts.__getitem__)
        return best if counts[best] < self.max_ongoing else None

    def _send(self, i: int, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        ref: ObjectRef
        if method == HTTP:
            ref = self.replicas[i].handle_http.remote(*args)
        elif not kwargs:
            # Ray resolves top-level refs itself; refs nested in containers arrive as refs, as in Ray.
            ref = self.replicas[i].call.remote(method, *args)
        else:
            # Keyword values go as top-level arguments too, so Ray resolves their refs (and only theirs).
            ref = self.replicas[i].handle_request.remote(method, tuple(kwargs), *args, *kwargs.values())
        self._in_flight[i].append(ref)
        return ref

    # Submitting ------------------------------------------------------------------
    def submit(self, method: str, args: tuple, kwargs: dict, timeout_s: float | None = None) -> ObjectRef:
        """Send a request, blocking only while every replica is full."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                i = self._try_pick()
                if i is not None:
                    return self._send(i, method, args, kwargs)
                waiting = [r for refs in self._in_flight for r in refs]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"every replica of {self.deployment!r} stayed busy for {timeout_s}s")
            ray.wait(waiting, num_returns=1, timeout=remaining, fetch_local=False)

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        """Send a request from an event loop; waits (without blocking the loop) while every replica is full."""
        while True:
            with self._lock:
                i = self._try_pick()
                if i is not None:
                    return self._send(i, method, args, kwargs)
            await asyncio.sleep(_POLL_S)

    def any_replica(self) -> ActorHandle:
        return self.replicas[self._rng.randrange(len(self.replicas))]


