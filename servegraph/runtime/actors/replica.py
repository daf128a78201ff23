"""A replica: one Ray actor running one instance of the user's class (or function).

Classes with no ``async def`` methods run in a threaded actor, which Ray calls
with less overhead; classes with async methods run in an async actor, where
constructor handles return ``asyncio.Task`` objects as in the seed.

The actor's own constructor only stores its arguments: the controller then
calls :meth:`initialize`, which runs the user's constructor and returns its
error as text instead of raising, so a failing ``__init__`` gives one clear
message (no actor-creation crash, no native stack dump) and the controller
decides whether to retry. Control calls (health checks, the death watch,
draining) run in their own concurrency group in threaded actors, so a replica
busy with ``max_ongoing_requests`` requests still answers them.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Generator
from typing import Any

import ray

from ..._handle_era import NEW, handle_era
from ..._validation import did_you_mean
from ...compiler import ir
from ...dsl.signature import function_method_problem, public_methods
from ...errors import NoSuchMethodError
from .. import ray_compat
from ..common import telemetry, tracing
from ..common.codec import extend_import_path, unflatten
from ..common.context import (
    REQUEST_KEY,
    RequestContext,
    get_replica_context,
    model_id_of,
    new_request_id,
    reset_multiplexed_model_id,
    reset_request,
    set_multiplexed_model_id,
    set_replica_context,
    set_request,
)
from ..common.http_codec import HTTPResult, encode_error, encode_result, make_request, request_id_of, to_wire
from ..common.records import (
    CALLERS,
    CONSTRUCTED,
    CONTROLLER_NAME,
    DRAINING,
    FAILED,
    INITIALIZING,
    INPUT,
    METHOD,
    NAMESPACE,
    READY,
    RECONFIGURING,
    REQUEST,
    SENT_AT,
    STOPPED,
    STREAM,
    CallHeader,
    call_header,
)
from ..common.user_frames import describe_user_error
from ..data.handle import DeploymentInfo, async_handle, new_api_handle
from ..data.long_poll import set_controller_locator
from ..data.responses import note_actor_death
from ..data.router import CHILD_CALLS
from . import replica_logging

#: A compiled lane's stage reads as Ray does (spinning, for the lowest latency) while requests keep coming;
#: after this many seconds without one it checks for the next every LANE_IDLE_POLL_S seconds instead (five times
#: that after ten quiet seconds), so an idle graph costs almost no CPU (see ray_compat.read_gently_when_idle).
LANE_IDLE_S = float(os.environ.get("SERVEGRAPH_LANE_IDLE_S", "1.0"))
LANE_IDLE_POLL_S = float(os.environ.get("SERVEGRAPH_LANE_IDLE_POLL_MS", "1.0")) / 1000

#: Threads a threaded replica keeps for control calls (watch, health check, reconfigure, drain, status).
CONTROL_THREADS = 4

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


def split_keywords(names: list[str] | tuple[str, ...], values: tuple) -> tuple[tuple, dict]:
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


def not_a_generator(method: str, result: Any) -> Any:
    """``result``, unless the method returned a generator, which only a streaming call can consume."""
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        raise TypeError(
            f"method {method!r} returned a generator; call it through handle.options(stream=True) to get its "
            "results as they come"
        )
    return result


def stream_of(method: str, result: Any) -> Any:
    if not (inspect.isgenerator(result) or inspect.isasyncgen(result)):
        raise TypeError(
            f"handle.options(stream=True) calls a generator method, but {method!r} returned "
            f"{type(result).__name__}; make it a generator (yield), or call it without stream=True"
        )
    return result


def streaming_response(result: Any) -> bool:
    global _StreamingResponse
    if _StreamingResponse is None:  # starlette on first use (asked on every HTTP request)
        from starlette.responses import StreamingResponse

        _StreamingResponse = StreamingResponse
    return isinstance(result, _StreamingResponse)


_StreamingResponse: Any = None


def takes_nothing(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes no parameters (then Ray Serve calls an HTTP entry point without the Request).

    Asked on every HTTP request, so the answer is kept per function (a bound method's by its function).
    """
    key = getattr(fn, "__func__", fn)
    try:
        return _TAKES_NOTHING[key]
    except KeyError:
        pass
    except TypeError:  # not hashable: read it each time
        key = None
    try:
        answer = not inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read: pass the request
        answer = False
    if key is not None:
        _TAKES_NOTHING[key] = answer
    return answer


#: takes_nothing's answers, by function (weakly: a redeployed class's functions are not kept alive).
_TAKES_NOTHING: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def call_http(fn: Callable[..., Any], scope: dict, body: bytes) -> Any:
    """Call an HTTP entry point as Ray Serve does: with the Request, or with nothing if it takes no parameters."""
    set_multiplexed_model_id(model_id_of(scope))  # every request sets it (to "" if it names no model)
    return fn() if takes_nothing(fn) else fn(make_request(scope, body))


#: The method requests over HTTP call, and its callers in edge metrics: the request's input.
HTTP_METHOD, HTTP_CALLERS = "__call__", (INPUT,)


def http_request_context(app: str, scope: dict) -> RequestContext:
    """An HTTP request's context in the replica: its id from the proxy (the ``X-Request-ID`` header), its
    route prefix (the scope's ``root_path``) and its ``traceparent`` header."""
    trace = ""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"traceparent":
            trace = value.decode("latin-1")
    return RequestContext(request_id_of(scope) or new_request_id(), scope.get("root_path") or "/", app, trace)


class _Handling:
    """One request in the user's code: its context set for the code (and the calls it makes), its time
    and outcome recorded when it ends (see telemetry.py), its observers (the access log) told, with the
    HTTP method and status for a request that came over HTTP."""

    __slots__ = ("replica", "method", "request", "callers", "sent_at", "http", "status", "error", "_token", "_t0", "_span")

    def __init__(
        self,
        replica: _ReplicaCore,
        method: str,
        request: RequestContext | None,
        callers: tuple[str, ...] | list[str] = (),
        sent_at: float = 0.0,
        http: str | None = None,
    ):
        self.replica = replica
        self.method = method
        self.request = request
        self.callers = callers
        #: ``time.time()`` when the caller sent it (0: unknown), for the edge's latency.
        self.sent_at = sent_at
        #: The HTTP method of a request that came over HTTP, else None.
        self.http = http
        #: The HTTP status answered (one that raised instead: ERROR, as Ray Serve's access line says).
        self.status: int | str = "ERROR"
        #: An error the request ended with that did not raise out of it (an HTTP 500).
        self.error: BaseException | None = None

    def __enter__(self) -> _Handling:
        request = self.request
        self._span = None
        if tracing._tracer is not None:  # this hop is a span; the calls it makes are its children
            replica = self.replica
            self._span, trace = tracing.start(
                f"{replica._deployment}.{self.method}",
                request.trace if request is not None else "",
                {"servegraph.application": replica._app, "servegraph.deployment": replica._deployment,
                 "servegraph.replica": replica._replica_id, "servegraph.request_id": request.request_id if request else ""},
            )  # fmt: skip
            if request is not None:
                request = RequestContext(request.request_id, request.route, request.app, trace)
        self._token = set_request(request)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        ms = (time.perf_counter() - self._t0) * 1000.0
        error = exc if exc is not None else self.error
        try:
            if telemetry.ENABLED:
                sent_at = self.sent_at
                edge_ms = max(ms, (time.time() - sent_at) * 1000.0) if sent_at else ms
                replica = self.replica
                route = self.request.route if self.request is not None else ""
                failed = type(getattr(error, "cause", None) or error).__name__ if error is not None else ""
                telemetry.record(
                    ("replica", replica._app, replica._deployment, replica._replica_id, route, self.method,
                     tuple(self.callers), failed),
                    (ms, edge_ms),
                )  # fmt: skip
            observers = telemetry.observers()
            if observers:
                http = (self.http, self.status) if self.http is not None else None
                for observer in observers:
                    observer(self.method, error is None, ms, error, http)
            if self._span is not None:
                tracing.end(self._span, error)
        finally:
            try:
                reset_request(self._token)
            except ValueError:  # a sync stream's generator resumed on another thread: its context is not ours
                pass


def _handling(replica: _ReplicaCore, header: CallHeader) -> _Handling:
    return _Handling(replica, header[METHOD], RequestContext(*header[REQUEST]), header[CALLERS], header[SENT_AT])


#: A request's work in the user's code as steps (see _ReplicaCore._call_steps): it yields each awaitable it
#: needs the value of and is sent that value back; its return value is the request's result.
Steps = Generator[Any, Any, Any]


def _run(steps: Steps) -> Any:
    """Run a request's steps in this thread (a threaded replica): what they await runs on an event loop of its own."""
    try:
        pending = next(steps)
        while True:
            try:
                value = asyncio.run(_awaited(pending))
            except BaseException as exc:  # the steps see it where they awaited (their handling records it)
                pending = steps.throw(exc)
            else:
                pending = steps.send(value)
    except StopIteration as done:
        return done.value


async def _run_async(steps: Steps) -> Any:
    """Run a request's steps on the replica's event loop (an async replica): what they await, awaited here."""
    try:
        pending = next(steps)
        while True:
            try:
                value = await pending
            except BaseException as exc:  # a cancelled request too: its handling records it, then it propagates
                pending = steps.throw(exc)
            else:
                pending = steps.send(value)
    except StopIteration as done:
        return done.value


class _ReplicaCore:
    """What both actor kinds share: construction, dispatch, draining and HTTP."""

    def __init__(
        self,
        app: str,
        deployment: str,
        replica_id: str,
        code: bytes,
        code_paths: tuple[str, ...],
        is_function: bool,
        locate: Callable[[], Any] | None = None,
    ):
        """``code``: the user's class or function and its constructor arguments, pickled (see replica_code);
        unpickled by :meth:`initialize` with ``code_paths`` (the deploying driver's import directories) on the
        import path. ``locate`` finds the controller for this process's handles (the controller hands in one
        that also starts it again, see control/locate.py)."""
        if locate is not None:
            set_controller_locator(locate)
        self._app = app
        self._deployment = deployment
        self._replica_id = replica_id
        self._context = set_replica_context(app, deployment, replica_id)
        self._code: bytes | None = code
        self._code_paths = code_paths
        self._target: Any = None
        self._is_function = is_function
        self._init: tuple[tuple, Any] = ((), ())
        self._instance: Any = None
        self._function: Any = None
        # Requests started and finished: next() on a count is atomic, so threads need no lock.
        self._started = itertools.count()
        self._finished = itertools.count()
        #: StreamingResponse bodies being pulled by the HTTP proxy, by stream id.
        self._streams: dict[int, Any] = {}
        self._stream_ids = itertools.count()
        #: The compiled loop this replica runs for a lane, if any (see _exec_tasks_recorded).
        self._lane_tasks: Any = None
        self._phase = CONSTRUCTED
        #: The one-line error of a constructor that raised (FAILED).
        self._init_error: str | None = None
        #: The user_config the user's code last accepted (reconfigure, or the constructor's first).
        self._applied_config: Any = None
        #: Counts watch calls: a newer one (a restarted controller's) ends the older ones (see watch).
        self._watch_gen = 0
        #: The deployment's logging_config as last applied (None: the defaults).
        self._logging_config: Any = None
        if tracing.ENABLED:
            tracing.setup(f"replica_{app}_{deployment}_{replica_id}")
        if telemetry.ENABLED:
            tags = {"deployment": deployment, "replica": replica_id, "application": app}
            telemetry.count("serve_deployment_replica_starts", (deployment, replica_id, app))
            telemetry.add_gauge_source(lambda: [("serve_replica_processing_queries", tags, self.ongoing())])
            telemetry.set_stats_sink(telemetry.send_to_controller)

    # Construction -------------------------------------------------------------------
    def _load_code(self) -> None:
        """Unpickle the user's code, its modules found on the driver's import directories.

        Here rather than as the actor's arguments: a replica then needs no runtime_env to find them, and
        Ray starts a worker with no runtime_env as one process instead of two (each importing Ray).
        The directories go on PYTHONPATH too, for processes the user's code starts.
        """
        if self._code is None:
            return
        extend_import_path(self._code_paths)
        self._target, init_args, init_kwargs = ray.cloudpickle.loads(self._code)
        self._init, self._code = (init_args, init_kwargs), None
        if self._is_function:
            self._function = self._target

    def _constructor_args(self) -> tuple[tuple, dict]:
        # The handle API this deployment's code was written for (see _handle_era.py).
        make = new_api_handle if handle_era(self._target).api == NEW else async_handle

        def inject(marker: ir.Ref | ir.HandleRef) -> Any:
            assert isinstance(marker, ir.HandleRef)  # a constructor's nodes are all handles
            return make(DeploymentInfo(self._app, marker.deployment), marker.method or "__call__")

        init_args, init_kwargs = self._init
        return ir.map_markers(init_args, inject), dict(ir.map_markers(init_kwargs, inject))

    def _failed(self, what: str, exc: BaseException) -> str:
        # The full traceback goes to the replica's log; the caller gets one line.
        print(f"{what} of deployment {self._deployment!r} failed:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        return describe_user_error(exc)

    def __repr__(self) -> str:
        # Ray shows an actor's repr in errors from it: name the deployment, not this class. Ray also asks
        # for it when the actor's creation failed before __init__ ran (its arguments would not unpickle).
        return f"replica of deployment {getattr(self, '_deployment', '?')!r}"

    def ready(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def _report(self) -> dict:
        """Where it runs, which phase it is in, and the user_config its code accepted (and logging_config applied)."""
        return {
            **self.ready(),
            "phase": self._phase,
            "error": self._init_error,
            "user_config": self._applied_config,
            "logging_config": self._logging_config,
        }

    def _configure_logging(self, logging_config: Any) -> str | None:
        """Apply a deployment's logging_config to this replica's logs (see replica_logging.py); the error as text."""
        try:
            replica_logging.configure(self._app, self._deployment, self._replica_id, logging_config)
        except OSError as exc:
            return f"logging_config: cannot write the replica's log: {exc}"
        self._logging_config = logging_config
        return None

    def _not_ready(self) -> str | None:
        """Why this replica cannot take requests or pass a health check yet, or None."""
        if self._phase in (READY, RECONFIGURING):
            return None
        return f"replica of deployment {self._deployment!r} is {self._phase}, not ready to serve"

    def ongoing(self) -> int:
        """Requests running on this replica now (approximate while they start or end)."""
        # Reading a count advances it; compensate by reading both the same way.
        return next(self._started) - next(self._finished)

    def _done(self) -> None:
        """A request ended: with none left, the access lines it wrote go to the file now (see replica_logging)."""
        next(self._finished)
        if self.ongoing() == 0:
            replica_logging.flush_pending()

    def _method(self, name: str) -> Callable[..., Any]:
        if self._is_function:
            problem = function_method_problem(self._deployment, name)
            if problem is not None:
                raise AttributeError(problem)
            return self._function
        try:
            return getattr(self._instance, name)
        except AttributeError:
            if self._instance is None:  # never on the hot path: only a replica whose constructor has not run
                raise RuntimeError(self._not_ready() or f"deployment {self._deployment!r} has no instance") from None
            available = [m for m in dir(self._instance) if not m.startswith("__") and callable(getattr(self._instance, m, None))]
            raise NoSuchMethodError(
                f"deployment {self._deployment!r} has no method {name!r}"
                + did_you_mean(name, public_methods(type(self._instance)))
                # Ray Serve's words, which code written for it may look for.
                + f" Tried to call a method {name!r} that does not exist. Available methods: {available}."
            ) from None

    def _reconfigure_sync(self, user_config: Any) -> Any:
        fn = getattr(self._instance, "reconfigure", None)
        if fn is None:
            raise TypeError(
                f"deployment {self._deployment!r} has user_config set but no reconfigure(self, config) method"
            )
        return fn(user_config)

    def _open_stream(self, response: Any) -> tuple:
        """Keep a StreamingResponse's body here; the proxy pulls it chunk by chunk (see HTTPStream)."""
        stream_id = next(self._stream_ids)
        body = response.body_iterator
        # Its iterator: a body may be an async iterable only (a handle's stream, DeploymentResponseGenerator).
        self._streams[stream_id] = _Stream(body.__aiter__() if hasattr(body, "__aiter__") else body)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        return (STREAM, ray.get_runtime_context().current_actor, stream_id, response.status_code, headers)

    def gather(self, template: Any, *values: Any) -> Any:
        (out,), _ = unflatten((template,), {}, values)
        return out

    def _destructor(self) -> Callable[[], Any] | None:
        return getattr(self._instance, "__del__", None) if self._instance is not None else None

    # Dispatch: one core for both actor kinds -------------------------------------------------------
    #: Whether a call's awaitable result is awaited: an async replica awaits an async method's coroutine
    #: (and a ref it returned); a threaded replica returns what the method returned.
    _awaits_results = False
    #: A threaded replica's slots (see SyncReplica): ordinary calls and a compiled lane's calls share them.
    _slots: threading.BoundedSemaphore | None = None

    def _call_steps(self, header: CallHeader, args: tuple, kwargs: dict) -> Steps:
        """One call of a method of the user's, as steps (see :data:`Steps`): _run or _run_async drives them."""
        next(self._started)
        slots = self._slots
        if slots is not None:
            slots.acquire()
        try:
            with _handling(self, header):
                method = header[METHOD]
                fn = self._method(method)
                if not kwargs and len(args) == 1 and type(args[0]).__name__ == "PortableRequest" and takes_nothing(fn):
                    args = ()  # a DAGDriver route's Request, to a method that takes none (as Ray Serve drops it)
                result = fn(*args, **kwargs)
                if self._awaits_results and inspect.isawaitable(result):
                    result = yield result
                    if inspect.isawaitable(result):  # a ref returned by an async method: its value, as over HTTP
                        result = yield result
                return not_a_generator(method, result)
        except ray.exceptions.RayActorError as exc:
            note_actor_death(exc)  # a replica this one called died: stop using it here at once
            raise
        finally:
            if slots is not None:
                slots.release()
            self._done()

    def _http_steps(self, scope: dict, body: bytes) -> Steps:
        """One HTTP request to the ingress's ``__call__``, as steps: (status, headers, body), or a stream's
        (STREAM, replica, stream id, status, headers); a user error becomes a 500, never a dead proxy."""
        next(self._started)
        try:
            request = http_request_context(self._app, scope)
            verb = str(scope.get("method") or "GET").upper()
            with _Handling(self, HTTP_METHOD, request, HTTP_CALLERS, 0.0, verb) as handling:
                try:
                    result = call_http(self._method(HTTP_METHOD), scope, body)
                    if inspect.isawaitable(result):  # an async __call__ (or one assigned at runtime)
                        result = yield result
                        if inspect.isawaitable(result):  # a ref returned by an async method: its value
                            result = yield result
                    answer: Any
                    if streaming_response(result):
                        answer = self._open_stream(result)
                        handling.status = answer[3]
                    else:
                        answer = to_wire(encode_result(result))
                        handling.status = answer[0]
                except ray.exceptions.RayActorError as exc:
                    note_actor_death(exc)  # a replica this one called died: stop using it here at once
                    raise  # and the proxy sends the request again
                except Exception as exc:
                    handling.error = exc
                    answer = to_wire(encode_error(exc))
                    handling.status = answer[0]
                return answer
        finally:
            self._done()

    # The compiled path ---------------------------------------------------------------------
    # A lane (see runtime/lanes.py) is a Ray compiled graph over one replica per deployment. Its
    # execution loop runs on the replica's "_ray_system" thread and calls ``lane_call`` once per
    # request; ordinary calls keep arriving beside it.
    def _lane_arguments(self, spec: tuple, values: tuple) -> tuple[CallHeader, tuple, dict]:
        """The call's header (the method, with the request) and its arguments: ``spec`` is (method, args,
        kwargs, sources, callers), ``values`` one per source.

        A source is the key of an upstream call (its answer: (request, result), see :meth:`lane_call`),
        or None for the request's input bundle (the input, every input read by key, and the request's
        context under :data:`REQUEST_KEY`).
        """
        method, args, kwargs, sources, callers = spec
        known: dict[str, Any] = {}
        bundle: dict[str, Any] = {}
        request = None
        for source, value in zip(sources, values, strict=True):
            if source is None:
                bundle = value
                request = bundle.get(REQUEST_KEY)
            else:
                request, known[source] = value

        def fill(marker: ir.Ref | ir.HandleRef) -> Any:
            assert isinstance(marker, ir.Ref)  # fast_path refuses graphs that pass handles per request
            return known[marker.key] if marker.key in known else bundle[marker.key]

        request = request or (new_request_id(), "", self._app, "")
        return call_header(method, request, callers, 0.0), ir.map_markers(args, fill), dict(ir.map_markers(kwargs, fill))


class SyncReplica(_ReplicaCore):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stopped = threading.Event()
        self._watch_changed = threading.Condition()
        #: At most max_ongoing_requests in the user's code at once. Ray's thread pool alone keeps that for
        #: ordinary calls; a compiled lane's calls come on a thread of their own, so they take a slot too.
        self._slots: threading.BoundedSemaphore | None = None
        #: One constructor run, one reconfigure and one drain at a time; a second caller (a restarted
        #: controller) waits for the first and gets its outcome.
        self._init_lock = threading.Lock()
        self._config_lock = threading.Lock()
        #: The event loop StreamingResponse bodies are read on (see stream_next); started on first use.
        self._streaming: asyncio.AbstractEventLoop | None = None
        self._streaming_lock = threading.Lock()
        self._drain_lock = threading.Lock()

    def initialize(self, user_config: Any = None, max_ongoing: int | None = None, logging_config: Any = None) -> str | None:
        """Run the user's constructor (and reconfigure) once; returns the error as text, or None."""
        with self._init_lock:
            if self._phase != CONSTRUCTED:  # started already (a restarted controller asks again): its outcome
                return self._init_error
            self._phase = INITIALIZING
            self._init_error = self._configure_logging(logging_config)
            if self._init_error is not None:
                self._phase = FAILED
                return self._init_error
            if max_ongoing:
                self._slots = threading.BoundedSemaphore(max_ongoing)
            try:
                self._load_code()
                if not self._is_function:
                    args, kwargs = self._constructor_args()
                    self._instance = self._context.servable_object = self._target(*args, **kwargs)
                if user_config is not None:
                    self._reconfigure_sync(user_config)
            except Exception as exc:
                self._phase, self._init_error = FAILED, self._failed("the constructor", exc)
                return self._init_error
            self._applied_config, self._phase = user_config, READY
            return None

    @ray.method(concurrency_group="control")
    def phase(self) -> dict:
        """Where the replica is in its lifecycle (see CONSTRUCTED ... STOPPED), for a restarted controller."""
        return self._report()

    def call(self, header: CallHeader, *args: Any) -> Any:
        return _run(self._call_steps(header, args, {}))

    def call_model(self, model_id: str, header: CallHeader, names: list[str], *values: Any) -> Any:
        """A request naming a multiplexed model: ``serve.get_multiplexed_model_id()`` gives it in the user's code."""
        token = set_multiplexed_model_id(model_id)
        try:
            return self.handle_request(header, names, *values)
        finally:
            reset_multiplexed_model_id(token)

    def handle_request(self, header: CallHeader, names: list[str], *values: Any) -> Any:
        return _run(self._call_steps(header, *split_keywords(names, values)))

    def lane_call(self, spec: tuple, *values: Any) -> tuple[tuple, Any]:
        """One stage of a compiled lane (see :meth:`_lane_arguments`): (the request, the result), so the
        request's context travels with the result to the next stages."""
        header, args, kwargs = self._lane_arguments(spec, values)
        return tuple(header[REQUEST]), _run(self._call_steps(header, args, kwargs))

    def call_stream(self, header: CallHeader, names: list[str], *values: Any) -> Any:
        """A generator method's results, one Ray object each, as they come (``num_returns="streaming"``)."""
        next(self._started)
        try:
            with _handling(self, header):
                method = header[METHOD]
                args, kwargs = split_keywords(names, values)
                # Not ``yield from``: Ray send()s into this generator, which must not reach the user's.
                for item in stream_of(method, self._method(method)(*args, **kwargs)):  # noqa: UP028
                    yield item
        finally:
            self._done()

    def stream_next(self, stream_id: int) -> bytes | None:
        """The next chunk of a StreamingResponse this replica returned over HTTP; None at its end.

        Every chunk of every stream is read on one event loop of this replica's: an async body
        (``async def gen(): ... await ...``) lives across reads, so it must keep its loop.
        """
        return asyncio.run_coroutine_threadsafe(_next_chunk(self._streams, stream_id), self._stream_loop()).result()

    @ray.method(concurrency_group="control")
    def stream_close(self, stream_id: int) -> None:
        """The client of an HTTP stream went away: close its body (the user's generator ends)."""
        asyncio.run_coroutine_threadsafe(_close_stream(self._streams, stream_id), self._stream_loop()).result()

    def _stream_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._streaming
        if loop is None:
            with self._streaming_lock:
                if self._streaming is None:
                    self._streaming = asyncio.new_event_loop()
                    threading.Thread(target=self._streaming.run_forever, name="servegraph-stream-bodies", daemon=True).start()
                loop = self._streaming
        return loop

    def handle_http(self, scope: dict, body: bytes) -> HTTPResult:
        return _run(self._http_steps(scope, body))

    @ray.method(concurrency_group="control")
    def reconfigure(self, user_config: Any) -> str | None:
        with self._config_lock:
            phase, self._phase = self._phase, RECONFIGURING
            try:
                self._reconfigure_sync(user_config)
            except Exception as exc:
                return self._failed("reconfigure()", exc)
            finally:
                self._phase = phase if self._phase == RECONFIGURING else self._phase
            self._applied_config = user_config
            return None

    @ray.method(concurrency_group="control")
    def configure_logging(self, logging_config: Any) -> str | None:
        """A new logging_config for the deployment: applied at once, nothing restarts (as in Ray Serve)."""
        return self._configure_logging(logging_config)

    @ray.method(concurrency_group="control")
    def check_health(self) -> None:
        problem = self._not_ready()
        if problem is not None:
            raise RuntimeError(problem)
        fn = getattr(self._instance, "check_health", None)
        if fn is not None:
            fn()

    @ray.method(concurrency_group="control")
    def watch(self) -> str | None:
        """Returns the replica's id once it has shut down (the controller learns of its death by this call
        failing instead), or None as soon as a newer watch replaces this one.

        A restarted controller watches every replica anew, and the dead controller's call keeps running
        here: it must not keep one of the replica's few control threads (a few restarts would leave none
        for health checks).
        """
        with self._watch_changed:
            self._watch_gen += 1
            mine = self._watch_gen
            self._watch_changed.notify_all()
            while not self._stopped.is_set() and self._watch_gen == mine:
                self._watch_changed.wait()
        return self._replica_id if self._stopped.is_set() else None

    @ray.method(concurrency_group="control")
    def prepare_for_shutdown(self, wait_loop_s: float, timeout_s: float) -> None:
        """Wait for running requests to finish (checking every ``wait_loop_s``), then run ``__del__`` (once)."""
        with self._drain_lock:
            draining = self._phase in (DRAINING, STOPPED)
            self._phase = self._phase if draining else DRAINING
        if draining:  # a restarted controller asks again: wait for the first drain
            self._stopped.wait(timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        while self.ongoing() > 0 and time.monotonic() < deadline:
            time.sleep(min(wait_loop_s, max(0.0, deadline - time.monotonic())))
        destructor = self._destructor()
        if destructor is not None:
            try:
                destructor()
            except Exception as exc:
                self._failed("__del__", exc)
        replica_logging.flush()  # the last access lines, before the controller kills this actor
        self._phase = STOPPED
        with self._watch_changed:
            self._stopped.set()
            self._watch_changed.notify_all()

    @ray.method(concurrency_group="control")
    def status(self) -> dict:
        return {**self.ready(), "ongoing": self.ongoing()}

    @ray.method(concurrency_group="control")
    def release_lane(self) -> bool:
        """End this replica's part in a compiled lane whose owner is gone or slow to let go; True if there was one."""
        return _release_lane(self)


class AsyncReplica(_ReplicaCore):
    _awaits_results = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stopped: asyncio.Event | None = None
        #: Done when the constructor has run (see SyncReplica's locks: one run, later callers get its outcome).
        self._initialized: asyncio.Future | None = None
        self._config_lock: asyncio.Lock | None = None
        self._watch_wake: asyncio.Condition | None = None
        #: At most max_ongoing_requests in the user's code at once. Routers keep to it on their own, but a
        #: driver's call sent while every replica is busy waits here (see Router.submit_nowait).
        self._gate: asyncio.Semaphore | None = None

    def _stop_event(self) -> asyncio.Event:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        return self._stopped

    async def initialize(self, user_config: Any = None, max_ongoing: int | None = None, logging_config: Any = None) -> str | None:
        """Run the user's constructor (and reconfigure) once; returns the error as text, or None."""
        if self._initialized is not None:  # started already (a restarted controller asks again): its outcome
            return await asyncio.shield(self._initialized)
        self._initialized = asyncio.get_running_loop().create_future()
        self._phase = INITIALIZING
        self._init_error = self._configure_logging(logging_config)
        if self._init_error is not None:
            self._phase = FAILED
            self._initialized.set_result(self._init_error)
            return self._init_error
        if max_ongoing:
            self._gate = asyncio.Semaphore(max_ongoing)
        #: Where lane_call (on the compiled graph's thread) runs the user's coroutines.
        self._loop = asyncio.get_running_loop()
        try:
            self._load_code()
            if not self._is_function:
                args, kwargs = self._constructor_args()
                self._instance, pending = construct(self._target, args, kwargs)
                self._context.servable_object = self._instance
                if pending is not None:  # ``async def __init__``, as Ray Serve allows
                    self._constructing = asyncio.current_task()  # what a shutdown meanwhile cancels
                    await pending
            if user_config is not None:
                result = self._reconfigure_sync(user_config)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:  # stopped while its constructor ran (see prepare_for_shutdown)
            self._phase, self._init_error = FAILED, "the replica was stopped while its constructor ran"
            self._initialized.set_result(self._init_error)
            raise
        except Exception as exc:
            self._phase, self._init_error = FAILED, self._failed("the constructor", exc)
        else:
            self._applied_config, self._phase = user_config, READY
        finally:
            self._constructing = None
        self._initialized.set_result(self._init_error)
        return self._init_error

    async def phase(self) -> dict:
        """Where the replica is in its lifecycle (see CONSTRUCTED ... STOPPED), for a restarted controller."""
        return self._report()

    async def call(self, header: CallHeader, *args: Any) -> Any:
        return await self._gated(self._call_steps(header, args, {}))

    async def call_model(self, model_id: str, header: CallHeader, names: list[str], *values: Any) -> Any:
        """A request naming a multiplexed model: ``serve.get_multiplexed_model_id()`` gives it in the user's code."""
        set_multiplexed_model_id(model_id)  # this call's own task context: nothing to reset
        return await self.handle_request(header, names, *values)

    async def handle_request(self, header: CallHeader, names: list[str], *values: Any) -> Any:
        return await self._gated(self._call_steps(header, *split_keywords(names, values)))

    async def _gated(self, steps: Steps) -> Any:
        """Run a call's steps once the gate lets it in (see _gate); cancelling it cancels the calls it made."""
        children: list = []
        token = CHILD_CALLS.set(children)
        try:
            gate = self._gate
            if gate is None:
                return await _run_async(steps)
            async with gate:
                return await _run_async(steps)
        except asyncio.CancelledError:
            _cancel_all(children)  # the request was cancelled: so are the calls it made
            raise
        finally:
            CHILD_CALLS.reset(token)  # lane_call runs this on a loop's shared context

    def lane_call(self, spec: tuple, *values: Any) -> tuple[tuple, Any]:
        """One stage of a compiled lane, run on this replica's event loop like any request: (request, result)."""
        header, args, kwargs = self._lane_arguments(spec, values)
        call = self._gated(self._call_steps(header, args, kwargs))
        return tuple(header[REQUEST]), asyncio.run_coroutine_threadsafe(call, self._loop).result()

    async def call_stream(self, header: CallHeader, names: list[str], *values: Any) -> Any:
        """A generator method's results, one Ray object each, as they come (``num_returns="streaming"``)."""
        next(self._started)
        try:
            with _handling(self, header):
                method = header[METHOD]
                args, kwargs = split_keywords(names, values)
                results = stream_of(method, self._method(method)(*args, **kwargs))
                if inspect.isasyncgen(results):
                    async for item in results:
                        yield item
                else:
                    for item in results:
                        yield item
        finally:
            self._done()

    async def stream_next(self, stream_id: int) -> bytes | None:
        """The next chunk of a StreamingResponse this replica returned over HTTP; None at its end."""
        return await _next_chunk(self._streams, stream_id)

    async def stream_close(self, stream_id: int) -> None:
        """The client of an HTTP stream went away: close its body (the user's generator ends)."""
        await _close_stream(self._streams, stream_id)

    async def handle_http(self, scope: dict, body: bytes) -> HTTPResult:
        return await _run_async(self._http_steps(scope, body))

    async def reconfigure(self, user_config: Any) -> str | None:
        if self._config_lock is None:
            self._config_lock = asyncio.Lock()
        async with self._config_lock:
            phase, self._phase = self._phase, RECONFIGURING
            try:
                result = self._reconfigure_sync(user_config)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                return self._failed("reconfigure()", exc)
            finally:
                self._phase = phase if self._phase == RECONFIGURING else self._phase
            self._applied_config = user_config
            return None

    async def configure_logging(self, logging_config: Any) -> str | None:
        """A new logging_config for the deployment: applied at once, nothing restarts (as in Ray Serve)."""
        return self._configure_logging(logging_config)

    async def check_health(self) -> None:
        problem = self._not_ready()
        if problem is not None:
            raise RuntimeError(problem)
        fn = getattr(self._instance, "check_health", None)
        if fn is not None:
            result = fn()
            if inspect.isawaitable(result):
                await result

    async def watch(self) -> str | None:
        """As SyncReplica.watch: a newer watch ends this one (an async actor counts a waiting call against
        its max_concurrency, so a dead controller's call must not wait here for ever)."""
        if self._watch_wake is None:
            self._watch_wake = asyncio.Condition()
        stopped = self._stop_event()
        async with self._watch_wake:
            self._watch_gen += 1
            mine = self._watch_gen
            self._watch_wake.notify_all()
            await self._watch_wake.wait_for(lambda: stopped.is_set() or self._watch_gen != mine)
        return self._replica_id if stopped.is_set() else None

    async def prepare_for_shutdown(self, wait_loop_s: float, timeout_s: float) -> None:
        """Wait for running requests to finish (checking every ``wait_loop_s``), then run ``__del__`` (once).

        A replica stopped while its ``async def __init__`` still runs stops the constructor there and runs
        ``__del__`` all the same, as Ray Serve does.
        """
        if self._phase in (DRAINING, STOPPED):  # a restarted controller asks again: wait for the first drain
            await self._stop_event().wait()
            return
        constructing = getattr(self, "_constructing", None)
        if constructing is not None and not constructing.done():
            constructing.cancel()
        self._phase = DRAINING
        deadline = time.monotonic() + timeout_s
        while self.ongoing() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(min(wait_loop_s, max(0.0, deadline - time.monotonic())))
        destructor = self._destructor()
        if destructor is not None:
            try:
                result = destructor()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._failed("__del__", exc)
        replica_logging.flush()  # the last access lines, before the controller kills this actor
        self._phase = STOPPED
        self._stop_event().set()
        if self._watch_wake is not None:
            async with self._watch_wake:
                self._watch_wake.notify_all()

    async def status(self) -> dict:
        return {**self.ready(), "ongoing": self.ongoing()}

    async def release_lane(self) -> bool:
        """End this replica's part in a compiled lane whose owner is gone or slow to let go; True if there was one."""
        return _release_lane(self)


def report_models(model_ids: tuple[str, ...]) -> None:
    """Tell the controller which multiplexed models this replica holds or is loading (see multiplex.py)."""
    try:
        context = get_replica_context()
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except Exception:  # outside a replica (a test calling the loader), or no controller now: nothing to tell
        return
    controller.record_models.remote(context.app_name, context.deployment, context.replica_tag, model_ids)


# Compiled lanes: which one this replica runs ----------------------------------------------
# Ray starts a compiled graph's loop on an actor with ``do_exec_tasks(actor, tasks, ...)`` and
# stops it with ``do_cancel_executable_tasks(actor, tasks)``, both sent by the graph's owner. A
# replica outlives owners (a driver that exits, a proxy that dies), so it records the tasks its
# loop runs: the controller can then stop that loop itself (release_lane), and the replica is free
# to join a new lane (an actor runs one compiled loop at a time).
def _record_lane_tasks(original: Callable[..., Any]) -> Callable[..., Any]:
    def exec_tasks_recorded(self: Any, tasks: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, _ReplicaCore):
            self._lane_tasks = tasks
            ray_compat.read_gently_when_idle(tasks, LANE_IDLE_S, LANE_IDLE_POLL_S)
        try:
            return original(self, tasks, *args, **kwargs)
        finally:
            if isinstance(self, _ReplicaCore) and getattr(self, "_lane_tasks", None) is tasks:
                self._lane_tasks = None

    return exec_tasks_recorded


# On a Ray without (the checked) compiled graphs this records nothing, and the compiled path is off.
ray_compat.wrap_compiled_loop(_record_lane_tasks)


def _release_lane(replica: _ReplicaCore) -> bool:
    tasks = getattr(replica, "_lane_tasks", None)
    if not tasks:
        return False
    ray_compat.cancel_compiled_loop(replica, tasks)  # one already closed by its owner: nothing to stop
    return True


class _Stream:
    """A StreamingResponse's body kept for the proxy's pulls, with the pull running now (a close cancels it)."""

    __slots__ = ("body", "pulling")

    def __init__(self, body: Any):
        self.body = body
        self.pulling: asyncio.Task | None = None


async def _next_chunk(streams: dict[int, Any], stream_id: int) -> bytes | None:
    stream = streams.get(stream_id)
    if stream is None:
        return None
    stream.pulling = asyncio.current_task()
    try:
        chunk = await stream.body.__anext__()
    except StopAsyncIteration:
        streams.pop(stream_id, None)
        return None
    finally:
        stream.pulling = None
    return chunk if isinstance(chunk, bytes) else str(chunk).encode("utf-8")


def _cancel_all(refs: list) -> None:
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # finished already, or not cancellable: nothing left running
            pass


async def _close_stream(streams: dict[int, Any], stream_id: int) -> None:
    """The client left: the body's generator is cancelled where it waits (its ``except CancelledError`` runs, as
    in Ray Serve), then closed."""
    stream = streams.pop(stream_id, None)
    if stream is None:
        return
    pulling = stream.pulling
    if pulling is not None and not pulling.done() and pulling is not asyncio.current_task():
        pulling.cancel()
        await asyncio.wait([pulling])  # the generator sees CancelledError inside its pending step
    close = getattr(stream.body, "aclose", None)
    if close is not None:
        try:
            await close()
        except RuntimeError:  # still running a step that ignored the cancellation: it ends with its task
            pass


async def _awaited(value: Any) -> Any:
    return await value


def replica_actor_class(target: Any) -> Any:
    """The Ray actor class for ``target``: async if it has async methods."""
    return _ASYNC if is_async_target(target) else _SYNC


#: Calls an async replica accepts beyond its max_ongoing_requests: drivers' calls sent while it was busy,
#: which wait at its gate (see AsyncReplica.call), leaving room for control calls in the same pool.
WAITING_ROOM = 256


def replica_concurrency(target: Any, max_ongoing_requests: int) -> int:
    """``max_concurrency`` for a replica: async actors run control calls and waiting calls in the same pool,
    so they get room for them; a sync replica's threads are its gate (waiting calls queue in Ray)."""
    return max_ongoing_requests + (CONTROL_THREADS + WAITING_ROOM if is_async_target(target) else 0)


_SYNC = ray.remote(concurrency_groups={"control": CONTROL_THREADS})(SyncReplica)  # type: ignore[call-overload]  # Ray's stubs omit concurrency_groups
_ASYNC = ray.remote(AsyncReplica)


@telemetry.expander("replica")
def _replica_metrics(key: tuple, values: list, deployments: dict, edges: dict) -> None:
    _, app, deployment, replica_id, route, method, callers, failed = key
    n = len(values)
    tags = {"deployment": deployment, "replica": replica_id, "application": app, "route": route}
    if failed:
        telemetry.inc("serve_deployment_error_counter", {**tags, "exception_type": failed}, n)
    else:
        telemetry.inc("serve_deployment_request_counter", tags, n)
    processing = [ms for ms, _ in values]
    for ms in processing:
        telemetry.observe("serve_deployment_processing_latency_ms", tags, ms)
    stats = deployments.get((app, deployment))
    if stats is None:
        stats = deployments[(app, deployment)] = telemetry.Stats()
    stats.add(processing, bool(failed))
    for caller in callers:
        edge_tags = {"application": app, "edge": f"{caller} -> {deployment}.{method}", "source": caller, "target": deployment, "method": method}
        telemetry.inc("servegraph_edge_calls", edge_tags, n)
        if failed:
            telemetry.inc("servegraph_edge_errors", edge_tags, n)
        latencies = [edge_ms for _, edge_ms in values]
        for ms in latencies:
            telemetry.observe("servegraph_edge_latency_ms", edge_tags, ms)
        edge = edges.get((app, caller, deployment, method))
        if edge is None:
            edge = edges[(app, caller, deployment, method)] = telemetry.Stats()
        edge.add(latencies, bool(failed))
