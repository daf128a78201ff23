"""Handles: how callers reach a deployment (or an InputNode graph's plan).

Exactly the seed's semantics:

- ``RayServeSyncHandle.remote()`` returns a ``ray.ObjectRef``, blocking only
  until a replica is chosen (``serve.run`` returns one).
- ``RayServeDeploymentHandle.remote()`` (constructor handles inside replicas)
  returns an ``asyncio.Task`` that resolves to an ObjectRef: two awaits.
- ``handle.options(use_new_handle_api=True)`` gives a ``DeploymentHandle``
  whose ``.remote()`` returns a ``DeploymentResponse``: one await, or ``.result()``.
- Any of these results passed unawaited into another ``.remote()`` travels as
  a ref: the consuming replica receives the value from the producer.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import time
from typing import Any, cast

import ray
from ray import ObjectRef

from ..._walk import any_leaf, map_leaves, map_leaves_async
from ...compiler import ir
from ..common.codec import flatten
from ..common.context import has_running_loop
from ..common.plan import drive, drive_async, run_plan
from ..common.records import ModelCall, StreamMethod
from .graph_ref import GraphRef
from .lanes import LaneBroken, lanes_for
from .long_poll import runtime_client
from .responses import (
    SYNC_IN_LOOP,
    DriverResponse,
    RequestCancelledError,
    awaited_resending,
    read,
    resend_delay,
)
from .responses import user_error as _user_error
from .router import ROUTING, Router, Routing


class DeploymentInfo:
    """Names a deployment for a handle: (application, deployment). Picklable; never lists replicas.

    The process's router for it learns the replicas from the controller and
    follows them across redeploys, replica deaths and controller restarts.
    """

    __slots__ = ("app", "name", "_router")

    def __init__(self, app: str, name: str):
        self.app = app
        self.name = name
        self._router: Router | None = None

    def __reduce__(self) -> tuple:
        return (DeploymentInfo, (self.app, self.name))

    def __repr__(self) -> str:
        return f"DeploymentInfo({self.app!r}, {self.name!r})"

    def router(self) -> Router:
        """The process's router for this deployment (looked up once per DeploymentInfo: this is the hot path)."""
        router = self._router
        if router is None:
            router = self._router = runtime_client().router(self.app, self.name)
        return router


# Resolving what callers pass in ----------------------------------------------------


def _is_pending(value: Any) -> bool:
    kind = type(value)
    return kind is DeploymentResponse or isinstance(value, (GraphRef, asyncio.Future, concurrent.futures.Future))


#: Argument types that never hold anything to resolve: calls passing only these skip the walk.
_PLAIN_TYPES = frozenset((str, int, float, bytes, bool, type(None)))


def _needs_resolving(value: Any) -> bool:
    return any_leaf(value, _is_pending)


def _call_needs_resolving(args: tuple, kwargs: dict) -> bool:
    """Whether a call's arguments hold something to resolve first; told without walking them when each is a
    str, number, bytes or None (the common case on the request path)."""
    plain = _PLAIN_TYPES
    if all(type(a) in plain for a in args) and all(type(v) in plain for v in kwargs.values()):
        return False
    return _needs_resolving((args, kwargs))


def _resolve_one_sync(value: Any) -> Any:
    if type(value) is DeploymentResponse:
        value = value._object_ref_sync()
    if isinstance(value, GraphRef):
        return value.get()  # a compiled lane's output: the value itself
    if isinstance(value, asyncio.Future):
        raise TypeError(
            "an asyncio.Task from RayServeDeploymentHandle.remote() was passed to a sync handle; "
            "await it first, or make the call from async code with a RayServeDeploymentHandle"
        )
    if isinstance(value, concurrent.futures.Future):
        return value.result()
    return value


def _resolve_sync(value: Any) -> Any:
    """Replace DeploymentResponses by their ObjectRefs (outside an event loop)."""
    return map_leaves(value, _resolve_one_sync)


async def _resolve_one_async(value: Any) -> Any:
    if type(value) is DeploymentResponse:
        value = await value._object_ref()
    if isinstance(value, GraphRef):
        return value.get()
    if isinstance(value, asyncio.Future):
        return await value
    if isinstance(value, concurrent.futures.Future):
        return await asyncio.wrap_future(value)
    return value


async def _resolve_async(value: Any) -> Any:
    """Await Tasks and DeploymentResponses down to ObjectRefs, without awaiting the refs."""
    return await map_leaves_async(value, _resolve_one_async)


def _prepare_sync(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if _call_needs_resolving(args, kwargs):
        return _resolve_sync(args), _resolve_sync(kwargs)
    return args, kwargs


async def _prepare_async(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if _call_needs_resolving(args, kwargs):
        return await _resolve_async(args), await _resolve_async(kwargs)
    return args, kwargs


# Targets: a deployment, or a plan -----------------------------------------------------


class DeploymentTarget:
    __slots__ = ("info",)

    def __init__(self, info: DeploymentInfo):
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    def submit(self, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        args, kwargs = _prepare_sync(args, kwargs)
        return self.info.router().submit(method, args, kwargs)

    def submit_nowait(self, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        """Send without waiting for room (see Router.submit_nowait)."""
        args, kwargs = _prepare_sync(args, kwargs)
        return self.info.router().submit_nowait(method, args, kwargs)

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> ObjectRef:
        args, kwargs = await _prepare_async(args, kwargs)
        return await self.info.router().submit_async(method, args, kwargs)

    def send_now(self, method: str, args: tuple, kwargs: dict) -> ObjectRef | None:
        """Send from an event loop without a task, when nothing in the arguments is to be awaited first and a
        replica has room; None otherwise (then :meth:`submit_async` waits its turn)."""
        if _call_needs_resolving(args, kwargs):
            return None
        return self.info.router().send_if_room(method, args, kwargs)

    def answered(self, ref: ObjectRef) -> None:
        """A request's answer arrived: its replica's slot is free now (see responses.Answered)."""
        self.info.router().release(ref)


class PlanTarget:
    """Runs an InputNode graph's requests from the caller.

    On a compiled lane when the controller gave this process one with room
    (see lanes.py); otherwise as a plan of actor calls: each call gets its
    upstream refs, only the output is awaited.
    """

    __slots__ = ("app", "plan", "infos", "name", "_lanes", "_lanes_checked")
    #: Its requests reach several deployments: a handle option that picks one replica cannot apply.
    runs_graph = True

    def __init__(self, app: str, plan: ir.Plan, infos: dict[str, DeploymentInfo], name: str = "DAGDriver"):
        self.app = app
        self.plan = plan
        self.infos = infos
        self.name = name
        self._lanes: Any = None
        #: (the LaneSet's plan generation, whether its plan is this handle's) checked last.
        self._lanes_checked: tuple[int, bool] = (-1, False)

    def __reduce__(self) -> tuple:
        return (PlanTarget, (self.app, self.plan, self.infos, self.name))

    def _lane_set(self) -> Any:
        """This process's lanes for the graph, if they run this handle's plan (an old handle's plan runs as a plan)."""
        lanes = self._lanes
        if lanes is None:
            lanes = self._lanes = lanes_for(self.app)
        generation = lanes.generation
        if self._lanes_checked[0] != generation:
            self._lanes_checked = (generation, lanes.plan == self.plan)
        return lanes if self._lanes_checked[1] else None

    def _finish(self, out: Any) -> ObjectRef:
        if type(out) is ObjectRef:
            return out
        template, _, refs = flatten((out,), {})
        if not refs:
            return ray.put(out)
        # MultiOutputNode: one ref for the list, gathered on a replica the graph already uses.
        first = next(s.deployment for s in self.plan.steps if s.deployment)
        return self.infos[first].router().any_replica().gather.remote(template[0], *refs)

    def _handle(self, handle_cls: type) -> Any:
        return lambda name: handle_cls(DeploymentTarget(self.infos[name]))

    def submit(self, method: str, args: tuple, kwargs: dict, object_ref: bool = True) -> Any:
        """Run one request: an ObjectRef of the output, as the seed's handles give.

        With ``object_ref=False`` (DeploymentHandle, the HTTP proxy), a graph on the compiled path
        answers with a GraphRef instead, which skips the object store (see graph_ref.py).
        """
        args, kwargs = _prepare_sync(args, kwargs)
        lanes = self._lane_set()
        lane = lanes.pick() if lanes is not None else None
        if lane is not None:
            # Sent now, read when asked for: ``.result(timeout_s=)`` then bounds the whole wait.
            sent = _LaneResult(self, lanes, lane, args, kwargs)
            if not object_ref:
                return sent
            out: GraphRef = sent.finish()
        elif lanes is not None and lanes.unsettled():
            out = self._plan_retrying(args, kwargs)  # a lane just broke: a replica may be dead under the plan too
        else:  # not compiled, or every lane is full: the plan, as any request before lanes
            return self._plan(args, kwargs)
        return out.to_object_ref() if object_ref else out

    def _plan_retrying(self, args: tuple, kwargs: dict, timeout: float | None = None) -> GraphRef:
        """The plan, waited for here and sent once more if a replica died under it: a request caught by a
        fault is not lost (a plain ObjectRef could not be re-sent). ``timeout`` bounds the whole wait.

        Raises:
            GetTimeoutError: no answer within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        resends = 0
        while True:
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                return GraphRef(ray.get(self._plan(args, kwargs), timeout=remaining))
            except ray.exceptions.RayActorError as exc:  # before RayTaskError: a death may come wrapped in one
                delay = resend_delay(exc, resends)
                if delay is None:
                    return GraphRef(error=exc)
            except ray.exceptions.RayTaskError as exc:
                return GraphRef(error=exc)
            resends += 1
            time.sleep(delay)

    def _plan(self, args: tuple, kwargs: dict) -> ObjectRef:
        gen = run_plan(self.plan, args, kwargs, self._handle(RayServeSyncHandle))
        out = drive(gen, lambda call: self.infos[call[0]].router().submit(*call[1:]))
        return self._finish(out)

    async def submit_async(self, method: str, args: tuple, kwargs: dict, object_ref: bool = True) -> Any:
        args, kwargs = await _prepare_async(args, kwargs)
        lanes = self._lane_set()
        lane = lanes.pick() if lanes is not None else None
        if lane is not None:
            out = await self._run_async(lanes, lane, args, kwargs)
        elif lanes is not None and lanes.unsettled():
            out = await self._plan_retrying_async(args, kwargs)
        else:
            return await self._plan_async(args, kwargs)
        return out.to_object_ref() if object_ref else out

    async def _run_async(self, lanes: Any, lane: Any, args: tuple, kwargs: dict) -> GraphRef:
        try:
            # A lane's answer is waited for on a thread: this event loop keeps serving meanwhile.
            ok, out = await asyncio.get_running_loop().run_in_executor(lanes.callers(), lanes.run_on, lane, args, kwargs)
        except ray.exceptions.RayTaskError as exc:
            return GraphRef(error=exc)
        return GraphRef(out) if ok else await self._plan_retrying_async(args, kwargs)

    async def _plan_retrying_async(self, args: tuple, kwargs: dict) -> GraphRef:
        resends = 0
        while True:
            try:
                return GraphRef(await (await self._plan_async(args, kwargs)))
            except ray.exceptions.RayActorError as exc:
                delay = resend_delay(exc, resends)
                if delay is None:
                    return GraphRef(error=exc)
            except ray.exceptions.RayTaskError as exc:
                return GraphRef(error=exc)
            resends += 1
            await asyncio.sleep(delay)

    async def _plan_async(self, args: tuple, kwargs: dict) -> ObjectRef:
        gen = run_plan(self.plan, args, kwargs, self._handle(RayServeDeploymentHandle))
        out = await drive_async(gen, lambda call: self.infos[call[0]].router().submit_async(*call[1:]))
        return self._finish(out)


class _LaneResult(GraphRef):
    """A request sent on a compiled lane whose answer is read when asked for (``ray.get``, ``.result()``).

    So ``DeploymentHandle.remote()`` returns as soon as the request is sent, and a caller's
    ``.result(timeout_s=)`` bounds the whole wait. A lane that breaks under the request sends it on
    the plan instead (within what is left of the timeout); an answer nobody asks for is read in the
    background, so its lane keeps its room.
    """

    def __init__(self, target: PlanTarget, lanes: Any, lane: Any, args: tuple, kwargs: dict):
        super().__init__()
        self._pending: tuple[Any, ...] | None = None
        try:
            sent = lanes.start_on(lane, args, kwargs)
        except LaneBroken:  # not sent: the plan now, waited for here like a broken lane's requests
            lanes._forget(lane)
            self._take(target._plan_retrying(args, kwargs))
            return
        self._pending = (target, lanes, lane, sent, args, kwargs)

    def _take(self, answer: GraphRef) -> None:
        self._value, self._error = answer._value, answer._error

    def finish(self, timeout: float | None = None) -> _LaneResult:
        """Read the answer (a user's error is kept, as a GraphRef keeps it); itself, for chaining.

        Raises:
            GetTimeoutError: no answer within ``timeout`` seconds (still pending: ask again later).
        """
        pending = self._pending
        if pending is not None:
            target, lanes, lane, sent, args, kwargs = pending
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                ok, out = lanes.finish_on(lane, sent, timeout)
            except ray.exceptions.RayTaskError as exc:
                ok, out, self._error = True, None, exc
            self._pending = None
            if ok:
                self._value = out
            else:  # the lane broke under it: the plan, in what is left of the time
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._take(target._plan_retrying(args, kwargs, remaining))
        return self

    def get(self, timeout: float | None = None) -> Any:
        return GraphRef.get(self.finish(timeout))

    result = get

    def __reduce__(self) -> tuple:
        self.get()
        return super().__reduce__()

    def __deepcopy__(self, memo: dict) -> GraphRef:
        self.get()
        return super().__deepcopy__(memo)

    def __del__(self) -> None:
        pending = self._pending
        if pending is not None:  # dropped unread: read it in the background
            pending[1].abandon(pending[2], pending[3])


class DriverTarget:
    """``DAGDriver.bind(deployment)``: ``predict`` calls the deployment's ``__call__``, as Ray's
    DAGDriver.predict does; the deployment's own methods stay reachable."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any):
        self.inner = inner

    def __reduce__(self) -> tuple:
        return (DriverTarget, (self.inner,))

    @property
    def name(self) -> str:
        return self.inner.name

    def submit(self, method: str, args: tuple, kwargs: dict) -> Any:
        return self.inner.submit("__call__" if method == "predict" else method, args, kwargs)

    def submit_nowait(self, method: str, args: tuple, kwargs: dict) -> Any:
        inner = getattr(self.inner, "submit_nowait", self.inner.submit)
        return inner("__call__" if method == "predict" else method, args, kwargs)

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> Any:
        return await self.inner.submit_async("__call__" if method == "predict" else method, args, kwargs)


class RoutesTarget:
    """A DAGDriver bound to ``{route: graph}``: ``predict_with_route(route, *args)`` runs that route's graph."""

    __slots__ = ("routes", "name")
    runs_graph = True  # see PlanTarget

    def __init__(self, routes: dict[str, Any], name: str = "DAGDriver"):
        self.routes = routes
        self.name = name

    def __reduce__(self) -> tuple:
        return (RoutesTarget, (self.routes, self.name))

    def _route(self, method: str, args: tuple) -> tuple[Any, tuple]:
        if method != "predict_with_route" or not args:
            raise AttributeError(
                f"this DAGDriver serves several graphs ({', '.join(sorted(self.routes))}): call "
                f"handle.predict_with_route.remote(route, ...), not .{method}.remote()"
            )
        route, *rest = args
        if route not in self.routes:
            raise KeyError(f"{route} does not exist in dags routes ({', '.join(sorted(self.routes))})")
        return self.routes[route], tuple(rest)

    def submit(self, method: str, args: tuple, kwargs: dict) -> Any:
        target, rest = self._route(method, args)
        return target.submit("__call__", rest, kwargs)

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> Any:
        target, rest = self._route(method, args)
        return await target.submit_async("__call__", rest, kwargs)


# Handles ------------------------------------------------------------------------------


class _HandleBase:
    def __init__(
        self, target: Any, method: str = "__call__", stream: bool = False, model_id: str = "", routing: Routing | None = None
    ):
        self._target = target
        self._method = method
        self._stream = stream
        self._model_id = model_id
        #: How this handle's requests pick their replica (session_id, _prefer_local_routing), if it says.
        self._routing = routing
        #: What the router is asked to call: a StreamMethod makes it a streaming call, a ModelCall
        #: one that names a multiplexed model.
        self._call: str = ModelCall(method, model_id) if model_id else StreamMethod(method) if stream else method

    @property
    def deployment_name(self) -> str:
        return self._target.name

    @property
    def method_name(self) -> str:
        return self._method

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") and name != "__call__":
            raise AttributeError(name)
        method = type(self)(self._target, name, self._stream, self._model_id, self._routing)
        # Kept on this handle: ``self.model.predict.remote(x)`` on every request finds it as an attribute.
        self.__dict__[name] = method
        return method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Send a call (what comes back depends on the handle's kind, see each ``_send``)."""
        if self._routing is None:
            return self._send(*args, **kwargs)
        token = ROUTING.set(self._routing)  # a task made to send the call takes it along
        try:
            return self._send(*args, **kwargs)
        finally:
            ROUTING.reset(token)

    def _send(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def options(
        self,
        *,
        method_name: str | None = None,
        use_new_handle_api: bool | None = None,
        stream: bool | None = None,
        multiplexed_model_id: str | None = None,
        session_id: str | None = None,
        _prefer_local_routing: bool | None = None,
        **unsupported: Any,
    ) -> _HandleBase:
        """A handle to the same deployment; ``use_new_handle_api=True`` gives a DeploymentHandle,
        ``stream=True`` one whose calls yield a generator method's results as they come,
        ``multiplexed_model_id`` one whose requests name that model (see multiplex.py), ``session_id`` one
        whose requests stay on one replica while it has room, ``_prefer_local_routing`` one whose requests
        go to this node's replicas first (True) or to any node's (False) (see router.Routing)."""
        given = sorted(k for k, v in unsupported.items() if v is not None)
        if given:
            raise TypeError(
                f"handle.options() got {', '.join(given)}, which servegraph does not support; it takes "
                "method_name, use_new_handle_api, stream, multiplexed_model_id, session_id and _prefer_local_routing"
            )
        routing = self._routing
        if session_id is not None or _prefer_local_routing is not None:
            if not isinstance(session_id, (str, type(None))):
                raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
            if not isinstance(_prefer_local_routing, (bool, type(None))):
                raise TypeError(f"_prefer_local_routing must be a bool, got {type(_prefer_local_routing).__name__}")
            if getattr(self._target, "runs_graph", False):
                raise TypeError(
                    "session_id and _prefer_local_routing pick a replica of one deployment; this handle runs a graph "
                    "(an InputNode graph or a DAGDriver), whose requests reach several"
                )
            old = routing or Routing()
            routing = Routing(
                old.session_id if session_id is None else session_id,
                old.prefer_local if _prefer_local_routing is None else _prefer_local_routing,
            )
        if stream and isinstance(self._target, PlanTarget):
            raise TypeError("stream=True calls a deployment's generator method; an InputNode graph cannot stream")
        model_id = self._model_id if multiplexed_model_id is None else multiplexed_model_id
        if not isinstance(model_id, str):
            raise TypeError(f"multiplexed_model_id must be a str, got {type(model_id).__name__}")
        if model_id and not isinstance(self._target, (DeploymentTarget, DriverTarget)):
            raise TypeError("multiplexed_model_id names a model of one deployment; an InputNode graph's handle cannot take it")
        if model_id and (self._stream if stream is None else stream):
            raise TypeError("servegraph cannot yet stream a multiplexed request: use stream=True or multiplexed_model_id")
        cls = DeploymentHandle if use_new_handle_api else type(self)
        if use_new_handle_api is False and issubclass(cls, DeploymentHandle):
            # As in Ray Serve: the old handle for the context, sync in a driver, async in an event loop.
            cls = RayServeDeploymentHandle if has_running_loop() else RayServeSyncHandle
        return cls(self._target, method_name or self._method, self._stream if stream is None else stream, model_id, routing)

    def __reduce__(self) -> tuple:
        return (type(self), (self._target, self._method, self._stream, self._model_id, self._routing))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(deployment={self.deployment_name!r}, method={self._method!r})"


def _respond(target: Any, method: str, args: tuple, kwargs: dict) -> Any:
    """Send a request from code outside an event loop: a result that serves both handle eras,
    a ``DriverResponse`` (an ObjectRef with DeploymentResponse's methods; see responses.py)."""
    nowait = getattr(target, "submit_nowait", None)
    out = nowait(method, args, kwargs) if nowait is not None else target.submit(method, args, kwargs)
    if type(out) is ObjectRef:
        return DriverResponse.of(out, lambda: target.submit(method, args, kwargs), answered=getattr(target, "answered", None))
    return out  # a compiled lane's GraphRef, or a LocalRef in local testing mode


class RayServeSyncHandle(_HandleBase):
    """``.remote()`` returns a ``ray.ObjectRef`` that is also a DeploymentResponse (``.result()``).

    It never waits for a free replica: with every replica busy the request waits in the least loaded
    replica's queue (``max_queued_requests`` bounds how many wait; see Router.submit_nowait).
    """

    def _send(self, *args: Any, **kwargs: Any) -> Any:
        if self._stream:
            return DeploymentResponseGenerator(stream=self._target.submit(self._call, args, kwargs))
        return _respond(self._target, self._call, args, kwargs)


class RayServeDeploymentHandle(_HandleBase):
    """``.remote()`` returns an ``asyncio.Task`` resolving to an ObjectRef: await twice."""

    def _send(self, *args: Any, **kwargs: Any) -> Any:
        """An ``asyncio.Task`` in async code; in a sync method (no event loop), the ObjectRef itself,
        as Ray Serve 2.0's lazy sync handles gave it, so ``ray.get(handle.remote(x))`` works there.
        With ``stream=True``, a DeploymentResponseGenerator (``async for`` / ``for``)."""
        loop = asyncio._get_running_loop()  # None outside an event loop (get_running_loop raises there)
        if loop is None:
            out = self._target.submit(self._call, args, kwargs)
            return DeploymentResponseGenerator(stream=out) if self._stream else out
        if self._stream:
            return DeploymentResponseGenerator(task=loop.create_task(self._target.submit_async(self._call, args, kwargs)))
        ref = _sent_now(self._target, self._call, args, kwargs)
        if ref is not None:  # sent already: a done future gives it, one loop turn and one task sooner
            target, method = self._target, self._call
            done = loop.create_future()
            done.set_result(
                DriverResponse.of(ref, resend_async=lambda: target.submit_async(method, args, kwargs), answered=target.answered)
            )
            return done
        return loop.create_task(_sent_resending(self._target, self._call, args, kwargs))


def _sent_now(target: Any, method: str, args: tuple, kwargs: dict) -> ObjectRef | None:
    """The call sent at once from an event loop (a deployment's, with a replica free and nothing to resolve),
    else None: then a task sends it when it can."""
    send_now = getattr(target, "send_now", None)
    if send_now is None:
        return None
    try:
        return send_now(method, args, kwargs)
    except Exception:  # raised where the caller awaits, as a task's would be: the task sends it again
        return None


async def _sent_resending(target: Any, method: str, args: tuple, kwargs: dict) -> Any:
    """Send a call from an event loop: its ObjectRef as a DriverResponse whose ``await`` sends the call again
    if the replica it reached dies (see responses.py); another target's answer (a lane's) as it is."""
    out = await target.submit_async(method, args, kwargs)
    if type(out) is not ObjectRef:
        return out
    return DriverResponse.of(out, resend_async=lambda: target.submit_async(method, args, kwargs), answered=getattr(target, "answered", None))


_NO_OBJECT_REF = {"object_ref": False}


class DeploymentHandle(_HandleBase):
    """The new handle API: ``.remote()`` returns a DeploymentResponse (one await, or ``.result()``),
    or with ``stream=True`` a DeploymentResponseGenerator."""

    def _send(self, *args: Any, **kwargs: Any) -> Any:
        call = (self._target, self._method, args, kwargs)
        # A DeploymentResponse needs no ObjectRef: a compiled graph's answer skips the object store.
        extra = _NO_OBJECT_REF if type(self._target) is PlanTarget else {}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._stream:
                return DeploymentResponseGenerator(stream=self._target.submit(self._call, args, kwargs))
            if not extra:
                out = _respond(self._target, self._call, args, kwargs)
                return out if type(out) is DriverResponse else DeploymentResponse(ref=out, call=call)
            target, method = self._target, self._call
            out = target.submit(method, args, kwargs, **extra)
            if type(out) is ObjectRef:  # the plan's answer: sent again on a replica's death, as _respond's are
                return DriverResponse.of(out, lambda: target.submit(method, args, kwargs))
            return DeploymentResponse(ref=out, call=call)
        if not self._stream:
            ref = _sent_now(self._target, self._call, args, kwargs)
            if ref is not None:
                return DeploymentResponse(ref=ref, call=call)
        task = loop.create_task(self._target.submit_async(self._call, args, kwargs, **extra))
        return DeploymentResponseGenerator(task=task) if self._stream else DeploymentResponse(task=task, call=call)


class AppHandle(RayServeSyncHandle, DeploymentHandle):
    """What ``serve.run`` and ``get_app_handle`` return: a ``RayServeSyncHandle`` (the seed's code) that is
    also a ``DeploymentHandle`` (Ray Serve 2.x code); its ``.remote()`` results serve both (see responses.py).

    Inside an event loop it is a DeploymentHandle (one ``await`` gives the value; nothing blocks the loop).
    """

    def _send(self, *args: Any, **kwargs: Any) -> Any:
        if has_running_loop():
            return DeploymentHandle._send(self, *args, **kwargs)
        return RayServeSyncHandle._send(self, *args, **kwargs)


class DeploymentResponseGenerator:
    """The results of a streaming call, as the replica's generator yields them.

    ``for x in gen`` outside an event loop, ``async for x in gen`` inside one (as in Ray Serve).
    """

    __slots__ = ("_stream", "_task", "_values")

    def __init__(self, *, stream: Any = None, task: asyncio.Task | None = None):
        self._stream = stream
        self._task = task
        self._values: Any = None

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        """The next result (``next(gen)``, ``for x in gen``), outside an event loop."""
        if self._stream is None or has_running_loop():  # it would block the loop (Ray Serve refuses alike)
            raise RuntimeError(SYNC_IN_LOOP + " Use `async for` instead.")
        if self._values is None:
            self._values = self._read()
        return next(self._values)

    def _read(self) -> Any:
        for ref in self._stream:
            try:
                yield ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise _user_error(exc) from None

    def _to_object_ref_gen_sync(self, _record_telemetry: bool = True) -> Any:
        """Ray Serve's name: Ray's ObjectRefGenerator under this stream (outside an event loop)."""
        if self._stream is None or has_running_loop():
            raise RuntimeError(SYNC_IN_LOOP + " Use `await gen._to_object_ref_gen()` instead.")
        return self._stream

    async def _to_object_ref_gen(self, _record_telemetry: bool = True) -> Any:
        if self._stream is None:
            self._stream = await self._task  # type: ignore[misc]
        return self._stream

    async def __aiter__(self) -> Any:
        if self._stream is None:
            self._stream = await self._task  # type: ignore[misc]
        async for ref in self._stream:
            try:
                yield await ref
            except ray.exceptions.RayTaskError as exc:
                raise _user_error(exc) from None

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            ray.cancel(self._stream)


class DeploymentResponse(metaclass=abc.ABCMeta):  # noqa: B024  # ABCMeta only so driver results register as one
    """The future result of a DeploymentHandle call: ``await`` it, or ``.result()`` outside async code.

    If the replica dies before answering, the request is sent again to
    another replica (the caller holds its arguments, so nothing is lost;
    see ``responses.resend_delay`` for how often and when).
    """

    __slots__ = ("_ref", "_task", "_call", "_cancelled")

    def __init__(self, *, ref: ObjectRef | None = None, task: asyncio.Task | None = None, call: tuple | None = None):
        self._ref = ref
        self._task = task
        self._call = call
        self._cancelled = False

    async def _object_ref(self) -> ObjectRef:
        if self._ref is None:
            self._ref = await self._task  # type: ignore[misc]
        return self._ref

    def _object_ref_sync(self) -> ObjectRef:
        if self._ref is None:  # made in async code: only the loop that made it can send it
            raise RuntimeError(SYNC_IN_LOOP + " Use `await response` instead.")
        return self._ref

    async def _resend(self) -> ObjectRef:
        target, method, args, kwargs = cast(tuple, self._call)
        self._ref = await target.submit_async(method, args, kwargs)
        return self._ref

    def __await__(self):
        async def get() -> Any:
            if self._cancelled:
                raise RequestCancelledError()
            try:
                ref = await self._object_ref()
                # Sent again while the replicas it reaches die (responses.resend_delay's rule), if it can be.
                if self._call is None:
                    return await ref
                return await awaited_resending(ref, self._resend, getattr(self._call[0], "answered", None))
            except ray.exceptions.RayActorError:  # before RayTaskError: a death may come wrapped in one
                raise
            except (ray.exceptions.TaskCancelledError, asyncio.CancelledError):
                if self._cancelled:  # this response's cancel(), not the awaiting code's own cancellation
                    raise RequestCancelledError() from None
                raise
            except ray.exceptions.RayTaskError as exc:
                raise _user_error(exc) from None

        return get().__await__()

    async def _to_object_ref(self) -> ObjectRef:
        """Ray Serve's name: the ObjectRef of the result, without waiting for the result."""
        return await self._object_ref()

    def _to_object_ref_sync(self) -> ObjectRef:
        """Ray Serve's name: the ObjectRef of the result, outside an event loop."""
        if has_running_loop():
            raise RuntimeError(SYNC_IN_LOOP + " Await the response (or its _to_object_ref()) instead.")
        return self._object_ref_sync()

    def result(self, *, timeout_s: float | None = None) -> Any:
        """Block until the result is ready (not inside an event loop: await instead)."""
        if has_running_loop():  # blocking here would stall every request on the loop (Ray Serve refuses alike)
            raise RuntimeError(SYNC_IN_LOOP + " Use `await response` instead.")
        if self._cancelled:
            raise RequestCancelledError()
        ref = self._object_ref_sync()
        if isinstance(ref, GraphRef):  # a compiled lane's output (read now, if it was only sent)
            try:
                return ref.get(timeout_s)
            except ray.exceptions.RayTaskError as exc:
                raise _user_error(exc) from None
        if type(ref) is not ObjectRef:  # a LocalRef, in local testing mode
            return cast(Any, ref).result(timeout_s)
        call = self._call
        if call is None:
            return read(ref, timeout_s, None)
        target, method, args, kwargs = call

        def resend() -> ObjectRef:
            self._ref = target.submit(method, args, kwargs)
            return self._ref

        return read(ref, timeout_s, resend, getattr(target, "answered", None))

    def cancel(self) -> None:
        """Cancel the request (as Ray Serve: awaiting it, or ``.result()``, then raises RequestCancelledError):
        not sent yet, it is not sent; sent, Ray cancels the replica's task (a finished request is left alone)."""
        self._cancelled = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        elif task is not None and self._ref is None and not task.cancelled() and task.exception() is None:
            self._ref = task.result()  # sent already: the ref to cancel
        if self._ref is not None and isinstance(self._ref, ObjectRef):
            ray.cancel(self._ref)


# A driver's results are DeploymentResponses too (they are ObjectRefs as well: see responses.py).
DeploymentResponse.register(DriverResponse)


def deployment_handle(info: DeploymentInfo, *, driven: bool = False) -> RayServeSyncHandle:
    target = DeploymentTarget(info)
    return AppHandle(DriverTarget(target) if driven else target)


def plan_handle(app: str, plan: ir.Plan, infos: dict[str, DeploymentInfo]) -> RayServeSyncHandle:
    return AppHandle(PlanTarget(app, plan, infos))


def routes_handle(app: str, routes: tuple[tuple[str, ir.Plan], ...], infos: dict[str, DeploymentInfo]) -> RayServeSyncHandle:
    return AppHandle(RoutesTarget({route: PlanTarget(app, plan, infos) for route, plan in routes}))


def async_handle(info: DeploymentInfo, method: str = "__call__") -> RayServeDeploymentHandle:
    return RayServeDeploymentHandle(DeploymentTarget(info), method)


def new_api_handle(info: DeploymentInfo, method: str = "__call__") -> DeploymentHandle:
    """A constructor handle for code written for Ray Serve 2.5+: one ``await`` per call."""
    return DeploymentHandle(DeploymentTarget(info), method)


# Ray Serve's names for the same classes.
RayServeHandle = RayServeDeploymentHandle
