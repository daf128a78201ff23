"""Routes one deployment's requests among its replicas from inside the caller (the data plane).

Power of two choices on in-flight counts the router tracks itself: each
submitted request's ObjectRef stays in its replica's list until Ray reports it
done (checked with ``ray.wait(fetch_local=False)``, so results are never pulled
into the caller). The replica set is pushed to the router by the controller
(:mod:`.long_poll`); in-flight counts survive those updates. Nothing on the
request path asks the controller anything.

When every replica has ``max_ongoing_requests`` in flight, callers wait in the
router in FIFO order: the first waits for any in-flight request to finish, the
others wait for their turn. ``max_queued_requests`` bounds that queue
(:class:`BackPressureError` beyond it). A replica whose call failed with actor
death is dropped at once, before the controller's update arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import hashlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import ObjectRef
from ray.actor import ActorHandle

from ...errors import BackPressureError, DeploymentError, DeploymentUnavailableError
from .. import ray_compat
from ..common import telemetry, tracing
from ..common.context import current_replica, current_request, new_request_id
from ..common.records import HTTP, CallHeader, ModelCall, StreamMethod, call_header


@dataclasses.dataclass(frozen=True, slots=True)
class Routing:
    """How a handle's requests pick their replica (``handle.options(session_id=, _prefer_local_routing=)``).

    ``session_id``: the session's requests go to one replica (the first of an order made from the session id
    and the replica ids, the same in every process) while it has room, else to the next in that order; when
    replicas come and go, only the sessions of the replicas that went move. ``prefer_local``: True picks a
    replica on this process's node first when one has room, False any node's; None keeps the router's default
    (callers in actors prefer their node, drivers do not).
    """

    session_id: str = ""
    prefer_local: bool | None = None


#: The routing of the handle sending now: set by the handle around a send (a task it creates for the send
#: inherits it), read where a replica is picked.
ROUTING: contextvars.ContextVar[Routing | None] = contextvars.ContextVar("servegraph_routing", default=None)


def session_rank(session_id: str, replica_id: str) -> int:
    """Where ``replica_id`` stands for ``session_id`` (highest first): rendezvous hashing, stable across processes.

    >>> session_rank("s", "a") == session_rank("s", "a")
    True
    """
    digest = hashlib.blake2b(f"{session_id}\0{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


#: The calls the request being handled made (set by a replica around each request): cancelling the
#: request cancels them, as Ray Serve propagates cancellation to child requests.
CHILD_CALLS: contextvars.ContextVar[list[ObjectRef] | None] = contextvars.ContextVar("servegraph_child_calls", default=None)


def _caller(app: str) -> tuple[str, ...]:
    """The edge source of a call made by this process's code: its replica's deployment (qualified by its
    application when that is another one), or none for a driver or proxy."""
    replica = current_replica()
    if replica is None:
        return ()
    return (replica.deployment,) if replica.app_name == app else (f"{replica.app_name}/{replica.deployment}",)


#: How long a waiting caller sleeps at most before it looks again (membership changes also wake it).
_RECHECK_S = 0.1

#: How long callers wait for a deployment's first replica set from the controller.
MEMBERSHIP_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Membership:
    """What the controller pushes to routers about one deployment."""

    #: (replica id, actor) of every replica that takes requests.
    replicas: tuple[tuple[str, ActorHandle], ...]
    max_ongoing: int
    max_queued: int = -1
    #: How often routers report load, or None when the deployment does not autoscale.
    metrics_interval_s: float | None = None
    #: False once the deployment (or its application) is deleted, or when it never existed.
    exists: bool = True
    #: The multiplexed models each replica holds or is loading (in the order of ``replicas``); () if none.
    models: tuple[frozenset[str], ...] = ()
    #: The node each replica runs on (in the order of ``replicas``); () if unknown.
    nodes: tuple[str | None, ...] = ()
    #: False once the deployment failed to deploy and no replica runs: requests fail at once (as in Ray Serve).
    available: bool = True


def _dropped(deployment: str, queued: int, max_queued: int) -> str:
    """Ray Serve's words for a request refused by back-pressure, then which deployment and what to do."""
    return (
        f"Request dropped due to backpressure (num_queued_requests={queued}, max_queued_requests={max_queued}). "
        f"(servegraph: every replica of {deployment!r} is busy; retry later)"
    )


class _Waiter:
    """A caller waiting for a free replica: a thread (event) or a coroutine (future on its loop).

    A coroutine that will release its request (the HTTP proxy's) leaves its request with the waiter: the caller
    whose release frees a slot sends it at once, on the same loop (see :meth:`Router.release`), instead of waking
    this coroutine to send it a few loop turns later.
    """

    __slots__ = ("event", "loop", "future", "thread", "request", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, request: tuple | None = None):
        self.loop = loop
        self.event = threading.Event() if loop is None else None
        self.future = loop.create_future() if loop is not None else None
        #: The thread of the waiter's loop: woken from there, it needs no wake-up through the loop's pipe.
        self.thread = threading.get_ident()
        #: (method, args, kwargs, context) to send for it, or None if the waiter sends its request itself.
        self.request = request
        #: What was sent for it by a release (an ObjectRef), or the error sending raised.
        self.sent: Any = None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        else:
            assert self.loop is not None
            if threading.get_ident() == self.thread:
                self.loop.call_soon(_resolve, self.future)
            else:
                self.loop.call_soon_threadsafe(_resolve, self.future)

    async def sleep(self, timeout_s: float) -> None:
        """Until woken, or ``timeout_s`` (a coroutine's waiter)."""
        assert self.loop is not None and self.future is not None
        timer = self.loop.call_later(timeout_s, _resolve, self.future)
        try:
            await self.future
        finally:
            timer.cancel()
        self.future = self.loop.create_future()


def _resolve(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Router:
    def __init__(
        self, app: str, deployment: str, on_queued: Callable[[], None] | None = None, local_node: str | None = None
    ):
        self.app = app
        self.deployment = deployment
        #: This process's node when it prefers replicas there (proxies and replicas do, as Ray Serve's
        #: proxies do): a request crosses nodes only when no replica on its own node has room.
        self._local_node = local_node
        #: Indexes of the replicas on ``_local_node``, when some (not all) replicas are there; else None.
        self._local: list[int] | None = None
        #: This process's node, for a handle that asks to prefer it (``_prefer_local_routing``); found when first asked.
        self._own_node: str | None = None
        self._nodes: list[str | None] = []
        self.replicas: list[ActorHandle] = []
        #: Per replica, the functions that send a call to each of its methods (see ray_compat.actor_caller).
        self._calls: list[dict[str, Callable[..., Any]]] = []
        self._ids: list[str] = []
        self._actor_ids: list[str] = []
        #: Per replica, the multiplexed models it holds (from the controller), and where this router sent
        #: a model last (so its next requests follow before the controller's update arrives).
        self._models: list[frozenset[str]] = []
        self._sent_model_to: dict[str, str] = {}
        #: Per replica, its requests in flight (a dict used as an ordered set: a release finds its ref by hash,
        #: not by comparing it with each of up to max_ongoing_requests others).
        self._in_flight: list[dict[ObjectRef, None]] = []
        #: In-flight requests whose caller tells :meth:`release` when their answer came (the HTTP proxy): while
        #: every request in flight is one of them, a waiting caller needs no ray.wait to learn of a free slot.
        self._released: set[ObjectRef] = set()
        self.max_ongoing = 1
        self.max_queued = -1
        self.metrics_interval_s: float | None = None
        #: None until the controller's first answer; then whether the deployment exists.
        self._exists: bool | None = None
        #: False while the deployment failed to deploy and has no replica (see Membership.available).
        self._available = True
        self._dead: set[str] = set()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._on_queued = on_queued
        self._created = time.monotonic()
        #: Set once the controller's first answer arrived (or the router was closed).
        self._known = threading.Event()
        #: Ray Serve's ``handle`` tag (app#deployment#id) and the calling actor's id, for router metrics.
        self._handle_tag = f"{app}#{deployment}#{new_request_id()[:6]}"
        self._actor_tag = ray.get_runtime_context().get_actor_id() or ""
        #: Ray Serve's handle_source tag: who calls through this router.
        #: (Routers in actors get ``local_node``: a replica's, else the proxy's; a driver's is UNKNOWN, as in Ray Serve.)
        self._handle_source = "REPLICA" if current_replica() is not None else "PROXY" if local_node is not None else "UNKNOWN"
        self._gauges = telemetry.add_gauge_source(self._gauge_values) if telemetry.ENABLED else None

    # Membership ---------------------------------------------------------------------
    def update(self, membership: Membership) -> None:
        """Install a new replica set, keeping in-flight counts of replicas that stay."""
        with self._lock:
            old = dict(zip(self._ids, self._in_flight, strict=True))
            old_calls = dict(zip(self._actor_ids, self._calls, strict=True))
            live = [(rid, actor) for rid, actor in membership.replicas if ray_compat.actor_id_hex(actor) not in self._dead]
            self.replicas = [actor for _, actor in live]
            self._ids = [rid for rid, _ in live]
            held = dict(zip((rid for rid, _ in membership.replicas), membership.models, strict=False))
            self._models = [held.get(rid, frozenset()) for rid in self._ids]
            where = dict(zip((rid for rid, _ in membership.replicas), membership.nodes, strict=False))
            self._nodes = [where.get(rid) for rid in self._ids]
            self._find_local()
            self._actor_ids = [ray_compat.actor_id_hex(actor) for actor in self.replicas]
            self._in_flight = [old.get(rid, {}) for rid in self._ids]
            self._calls = [old_calls.get(actor_id, {}) for actor_id in self._actor_ids]
            self.max_ongoing = membership.max_ongoing
            self.max_queued = membership.max_queued
            self.metrics_interval_s = membership.metrics_interval_s
            self._exists = membership.exists
            self._available = membership.available
            self._known.set()
            self._wake_head()

    def close(self) -> None:
        """This process left the runtime (``serve.shutdown()``): queued callers fail now instead of waiting."""
        if self._gauges is not None:
            telemetry.remove_gauge_source(self._gauges)
        with self._lock:
            self._exists = False
            self._known.set()
            for waiter in self._waiters:
                waiter.wake()

    def drop_actor(self, actor_id: str) -> bool:
        """Stop sending to a replica whose actor died; True if this router had it."""
        with self._lock:
            self._dead.add(actor_id)
            if actor_id not in self._actor_ids:
                return False
            i = self._actor_ids.index(actor_id)
            for column in (self.replicas, self._calls, self._ids, self._actor_ids, self._in_flight, self._models, self._nodes):
                del column[i]
            self._find_local()
            return True

    def _find_local(self) -> None:
        if self._local_node is None:
            return
        local = [i for i, node in enumerate(self._nodes) if node == self._local_node]
        self._local = local if 0 < len(local) < len(self._nodes) else None

    # Counting -------------------------------------------------------------------
    def _prune(self, i: int) -> int:
        """Replica ``i``'s requests in flight, after dropping those Ray reports done.

        Requests whose callers release them (see :meth:`release`) leave when released, so Ray is asked only
        about the others: a proxy picking a replica for every HTTP request makes no ``ray.wait`` call at all.
        """
        refs = self._in_flight[i]
        if refs:
            released = self._released
            asked = [r for r in refs if r not in released] if released else list(refs)
            if asked:
                ready, _ = ray.wait(asked, num_returns=len(asked), timeout=0, fetch_local=False)
                if ready:
                    done = set(ready)
                    self._in_flight[i] = {r: None for r in refs if r not in done}
        return len(self._in_flight[i])

    def load(self) -> int:
        """Requests this router has queued or in flight: what it reports to the autoscaler."""
        with self._lock:
            return len(self._waiters) + sum(self._prune(i) for i in range(len(self.replicas)))

    def _try_pick(self, method: str = "") -> int | None:
        """A replica with a free slot (fewer in flight of two random ones), or None if all are full.

        A request naming a multiplexed model goes to a replica holding it when one has room; one sent with a
        :class:`Routing` (see :data:`ROUTING`) as that asks.
        """
        if type(method) is ModelCall:
            return self._pick_for_model(method.model_id)
        routing = ROUTING.get()
        local = self._local
        if routing is not None:
            if routing.session_id:
                return self._pick_for_session(routing)
            if routing.prefer_local is not None:
                local = self._own_local() if routing.prefer_local else None
        if local is not None:  # this node's replicas first, the least loaded with room
            best = min(local, key=self._prune)
            if self._prune(best) < self.max_ongoing:
                return best
        return self._pick_any()

    def _own_local(self) -> list[int] | None:
        """Indexes of the replicas on this process's node (None if none is)."""
        if self._own_node is None:
            self._own_node = self._local_node or ray.get_runtime_context().get_node_id()
        local = [i for i, node in enumerate(self._nodes) if node == self._own_node]
        return local or None

    def _session_order(self, routing: Routing) -> list[int]:
        order = sorted(range(len(self.replicas)), key=lambda k: session_rank(routing.session_id, self._ids[k]), reverse=True)
        if routing.prefer_local:
            local = set(self._own_local() or ())
            order.sort(key=lambda k: k not in local)  # stable: this node's first, each part in the session's order
        return order

    def _pick_for_session(self, routing: Routing) -> int | None:
        for k in self._session_order(routing):
            if self._prune(k) < self.max_ongoing:
                return k
        return None

    def _pick_any(self) -> int | None:
        n = len(self.replicas)
        if n == 1:
            if len(self._in_flight[0]) < self.max_ongoing or self._prune(0) < self.max_ongoing:
                return 0
            return None
        if n == 0:
            return None
        i, j = self._rng.sample(range(n), 2)
        ci, cj = self._prune(i), self._prune(j)
        best, count = (i, ci) if ci <= cj else (j, cj)
        if count < self.max_ongoing:
            return best
        counts = [self._prune(k) for k in range(n)]
        best = min(range(n), key=counts.__getitem__)
        return best if counts[best] < self.max_ongoing else None

    def _pick_for_model(self, model_id: str) -> int | None:
        last = self._sent_model_to.get(model_id)
        holders = [k for k, rid in enumerate(self._ids) if model_id in self._models[k] or rid == last]
        best = min(holders, key=self._prune, default=None)
        if best is None or self._prune(best) >= self.max_ongoing:
            best = self._try_pick()  # none holds it, or they are full: the least loaded loads it
        if best is not None:
            self._sent_model_to[model_id] = self._ids[best]
        return best

    def _header(self, method: str) -> CallHeader:
        """What the call is sent with: ``method``, the caller's request (a new id for a call outside any) and
        the edge it takes (see records.CallHeader)."""
        request = current_request()
        if request is None:  # a driver's call: a new request (in the driver's own trace, if it traces)
            carried: tuple[str, str, str, str] = (new_request_id(), "", self.app, tracing.current_traceparent() if tracing.ENABLED else "")
        else:
            carried = (request.request_id, request.route, request.app, request.trace)
        callers = getattr(method, "callers", None)
        if telemetry.ENABLED:
            telemetry.record(("router", self.app, self.deployment, carried[1], self._handle_tag, self._actor_tag), None)
        return call_header(method, carried, _caller(self.app) if callers is None else callers, time.time())

    def _gauge_values(self) -> list[tuple[str, dict[str, str], float]]:
        tags = {"deployment": self.deployment, "application": self.app, "handle": self._handle_tag, "actor_id": self._actor_tag}
        with self._lock:
            queued = len(self._waiters)
            ongoing = sum(self._prune(k) for k in range(len(self.replicas)))
            no_replica = not self.replicas
        # Ray Serve's scheduling tasks are requests looking for a replica: here, the callers waiting for room
        # (in backoff: waiting while no replica exists at all, e.g. scaled to zero).
        source = {
            "app": self.app, "deployment": self.deployment, "actor_id": self._actor_tag, "application": self.app,
            "handle_source": self._handle_source,
        }  # fmt: skip
        return [
            ("serve_deployment_queued_queries", tags, queued),
            ("serve_num_ongoing_requests_at_replicas", tags, ongoing),
            ("serve_num_scheduling_tasks", source, queued),
            ("serve_num_scheduling_tasks_in_backoff", source, queued if no_replica else 0),
        ]

    def _sender(self, i: int, method: str) -> Callable[..., ObjectRef]:
        """What sends a call to replica ``i``'s ``method`` (made on first use, see ray_compat.actor_caller)."""
        calls = self._calls[i]
        send = calls.get(method)
        if send is None:
            send = calls[method] = ray_compat.actor_caller(self.replicas[i], method)
        return send

    def _send(self, i: int, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        ref: ObjectRef
        if method == HTTP:
            if telemetry.ENABLED:
                request = current_request()
                route = request.route if request is not None else ""
                telemetry.record(("router", self.app, self.deployment, route, self._handle_tag, self._actor_tag), None)
            ref = self._sender(i, "handle_http")(*args)
        elif type(method) is ModelCall:
            ref = self._sender(i, "call_model")(method.model_id, self._header(method), list(kwargs), *args, *kwargs.values())
        elif type(method) is StreamMethod:
            stream: Any = self.replicas[i].call_stream.options(num_returns="streaming").remote(
                self._header(method), list(kwargs), *args, *kwargs.values()
            )
            self._in_flight[i][stream.completed()] = None  # in flight until the generator ends
            return stream
        elif not kwargs:
            # Ray resolves top-level refs itself; refs nested in containers arrive as refs, as in Ray.
            ref = self._sender(i, "call")(self._header(method), *args)
        else:
            # Keyword values go as top-level arguments too, so Ray resolves their refs (and only theirs); their
            # names as a list, which Ray packs with msgpack (a tuple would be pickled).
            ref = self._sender(i, "handle_request")(self._header(method), list(kwargs), *args, *kwargs.values())
        self._in_flight[i][ref] = None
        children = CHILD_CALLS.get()
        if children is not None:
            children.append(ref)
        return ref

    # Waiting ----------------------------------------------------------------------
    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].wake()

    def _check_usable(self) -> None:
        if not self._available and not self.replicas:
            raise DeploymentUnavailableError(self.deployment, self.app)
        if self._exists is False:
            raise DeploymentError(
                f"deployment {self.deployment!r} of application {self.app!r} does not exist (deleted, or never "
                "deployed); `servegraph status` lists what runs"
            )
        if self._exists is None and time.monotonic() - self._created > MEMBERSHIP_TIMEOUT_S:
            raise DeploymentError(
                f"cannot reach the servegraph controller to learn the replicas of {self.deployment!r} "
                f"(waited {MEMBERSHIP_TIMEOUT_S:g}s); is the application deployed on this cluster?"
            )

    def _enqueue(self, waiter: _Waiter) -> None:
        if 0 <= self.max_queued <= len(self._waiters):
            raise BackPressureError(_dropped(self.deployment, len(self._waiters), self.max_queued))
        self._waiters.append(waiter)
        if not self.replicas and self._on_queued is not None:
            self._on_queued()  # tell the autoscaler now: it may have scaled to zero

    def _turn(self, waiter: _Waiter, method: str = "") -> tuple[int | None, list[ObjectRef] | None]:
        """Under the lock: a replica index if it is ``waiter``'s turn and a slot is free; else what to wait on."""
        if self._waiters[0] is not waiter:
            return None, None
        self._check_usable()
        i = self._try_pick(method)
        if i is not None:
            self._waiters.popleft()
            self._wake_head()
            return i, None
        return None, [r for refs in self._in_flight for r in refs]

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                was_head = self._waiters[0] is waiter
                self._waiters.remove(waiter)
                if was_head:
                    self._wake_head()

    # Submitting ------------------------------------------------------------------
    def submit(self, method: str, args: tuple, kwargs: dict, timeout_s: float | None = None) -> ObjectRef:
        """Send a request, blocking only while every replica is full (or none is known yet)."""
        with self._lock:
            ref = self._send_if_free(method, args, kwargs)
            if ref is not None:
                return ref
            waiter = _Waiter()
            self._enqueue(waiter)
        return self._send_in_turn(waiter, method, args, kwargs, timeout_s)

    def submit_nowait(self, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        """Send a request without waiting for room: code outside an event loop (the driver) calls this.

        With every replica busy, the request goes to the least loaded one and waits in that replica's
        queue (replicas run at most ``max_ongoing_requests`` at once; see replica.py), so the caller gets
        an ObjectRef at once, as Ray Serve's handles return at once. Waits only while no replica exists
        yet (a new handle learning the replicas, a deployment scaled to zero).

        Raises:
            BackPressureError: ``max_queued_requests`` requests already wait for these replicas.
        """
        if not self._known.is_set():  # a new router: learn the replicas first (tens of ms), then choose
            self._known.wait(MEMBERSHIP_TIMEOUT_S)
        with self._lock:
            if self._exists and self.replicas:
                if not self._waiters:
                    i = self._try_pick(method)
                    if i is not None:
                        return self._send(i, method, args, kwargs)
                counts = [self._prune(k) for k in range(len(self.replicas))]
                queued = len(self._waiters) + sum(max(0, c - self.max_ongoing) for c in counts)
                if 0 <= self.max_queued <= queued:
                    raise BackPressureError(_dropped(self.deployment, queued, self.max_queued))
                routing = ROUTING.get()
                if routing is not None and routing.session_id and type(method) is not ModelCall:
                    return self._send(self._session_order(routing)[0], method, args, kwargs)  # waits in its session's replica
                return self._send(min(range(len(counts)), key=counts.__getitem__), method, args, kwargs)
        return self.submit(method, args, kwargs)

    def _send_in_turn(
        self,
        waiter: _Waiter,
        method: str,
        args: tuple,
        kwargs: dict,
        timeout_s: float | None,
    ) -> ObjectRef:
        """Wait for ``waiter``'s turn and a free replica, then send; leaves the queue however it ends."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                with self._lock:
                    i, refs = self._turn(waiter, method)
                    if i is not None:
                        return self._send(i, method, args, kwargs)
                remaining = _RECHECK_S if deadline is None else min(_RECHECK_S, deadline - time.monotonic())
                if remaining <= 0:
                    raise TimeoutError(f"every replica of {self.deployment!r} stayed busy for {timeout_s}s")
                if refs:
                    ray.wait(refs, num_returns=1, timeout=remaining, fetch_local=False)
                else:
                    assert waiter.event is not None
                    waiter.event.wait(remaining)
                    waiter.event.clear()
        except BaseException:
            self._leave(waiter)
            raise

    def _send_if_free(self, method: str, args: tuple, kwargs: dict) -> ObjectRef | None:
        """Under the lock: send now if no caller is queued and a replica has room; else None (nothing sent)."""
        if not self._waiters and self._exists:
            i = self._try_pick(method)
            if i is not None:
                return self._send(i, method, args, kwargs)
        return None

    def send_if_room(self, method: str, args: tuple, kwargs: dict) -> ObjectRef | None:
        """Send a request now if no caller is queued and a replica has room; else None (nothing sent)."""
        with self._lock:
            return self._send_if_free(method, args, kwargs)

    async def submit_async(self, method: str, args: tuple, kwargs: dict, releases: bool = False) -> ObjectRef:
        """Send a request from an event loop; waits (without blocking the loop) while every replica is full.

        ``releases``: the caller awaits the answer and then calls :meth:`release` with the ref, so the next
        waiting caller learns of the free slot at once, on this loop.
        """
        with self._lock:
            ref = self._send_if_free(method, args, kwargs)
            if ref is not None:
                return self._sent(ref, releases)
            request = (method, args, kwargs, contextvars.copy_context()) if releases else None
            waiter = _Waiter(asyncio.get_running_loop(), request)
            self._enqueue(waiter)
        try:
            while True:
                if waiter.sent is not None:  # a release sent it
                    return self._handed(waiter)
                with self._lock:
                    i, refs = self._turn(waiter, method)
                    if i is not None:
                        return self._sent(self._send(i, method, args, kwargs), releases)
                    # Only requests whose callers release them are in flight: a release wakes the head.
                    told = refs is not None and len(self._released) >= len(refs) and all(r in self._released for r in refs)
                if refs and not told:
                    await asyncio.to_thread(ray.wait, refs, num_returns=1, timeout=_RECHECK_S, fetch_local=False)
                else:
                    await waiter.sleep(_RECHECK_S)
        except BaseException:
            self._leave(waiter)
            if isinstance(waiter.sent, ObjectRef):  # sent for it, but it was cancelled before it woke
                ray.cancel(waiter.sent)
                self.release(waiter.sent, answered=False)
            raise

    @staticmethod
    def _handed(waiter: _Waiter) -> ObjectRef:
        if isinstance(waiter.sent, BaseException):
            raise waiter.sent
        return waiter.sent

    def _hand_off(self) -> None:
        """Under the lock, on a waiter's loop, a slot just freed: send the waiting requests that fit now.

        Sent here, the next request leaves in the same loop turn as the answer that freed its slot; woken
        instead, its coroutine would send it two or three turns later, and under load every turn is long.
        """
        while self._waiters:
            head = self._waiters[0]
            future = head.future
            if head.request is None or head.thread != threading.get_ident() or future is None or future.done():
                head.wake()  # it sends for itself (or it was cancelled, and leaves the queue itself)
                return
            method, args, kwargs, context = head.request
            if self._exists is not True:
                head.wake()  # it raises what _check_usable says
                return
            i = context.run(self._try_pick, method)  # with the routing its handle sent it with
            if i is None:
                return  # the next release tries again
            self._waiters.popleft()
            try:
                head.sent = self._sent(context.run(self._send, i, method, args, kwargs), True)
            except Exception as exc:  # sending failed: the waiter raises it, as if it had sent
                head.sent = exc
            future.set_result(None)

    def _sent(self, ref: ObjectRef, releases: bool) -> ObjectRef:
        if releases:
            self._released.add(ref)
        return ref

    def release(self, ref: ObjectRef, answered: bool = True) -> None:
        """A request is over (one sent with ``releases=True``, or any whose answer its caller read, see
        responses.Answered): ``answered``, its slot is free now (the head of the queue is woken); not answered
        (cancelled), it counts until Ray reports it done, as other requests do."""
        with self._lock:
            self._released.discard(ref)
            if not answered:
                return
            for refs in self._in_flight:
                if ref in refs:
                    del refs[ref]
                    self._hand_off()
                    return

    def any_replica(self) -> ActorHandle:
        with self._lock:
            if not self.replicas:
                raise DeploymentError(f"deployment {self.deployment!r} has no running replica")
            return self.replicas[self._rng.randrange(len(self.replicas))]


@telemetry.expander("router")
def _router_metrics(key: tuple, values: list, deployments: dict, edges: dict) -> None:
    _, app, deployment, route, handle, actor_id = key
    n = len(values)
    telemetry.inc("serve_handle_request_counter", {"handle": handle, "deployment": deployment, "route": route, "application": app}, n)
    telemetry.inc(
        "serve_num_router_requests",
        {"deployment": deployment, "route": route, "application": app, "handle": handle, "actor_id": actor_id},
        n,
    )
