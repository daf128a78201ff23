"""The compiled path: an InputNode graph's requests run on Ray compiled graphs (the data plane's side).

The controller assigns *lanes* (one replica of every deployment the graph
calls; see ``lane_table.py``) to the processes that run the graph's requests:
a driver holding its handle, or the HTTP proxy. Each such process keeps one
:class:`LaneSet` per graph. It compiles every lane it is given into a Ray
compiled graph (``experimental_compile``: shared-memory channels between the
stages, no task submission per hop), sends each request to the lane with the
fewest in flight, and follows the assignments the controller pushes: a lane
taken away is torn down once idle, a new one is compiled beside the others.

A request that finds no lane with room, or whose lane breaks under it (a
replica died, the lane was released), runs on the plan path instead, as every
request did before: nothing is lost and nothing waits for a lane.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import sys
import threading
import time
import traceback
from typing import Any

import ray

from ...compiler import ir
from ...compiler.fast_path import call_keys, output_template
from .. import ray_compat
from ..common.context import REQUEST_KEY, current_request, new_request_id
from ..common.plan import read_inputs, step_callers
from ..common.records import LANES_KEY, LaneInfo
from .long_poll import ControllerUnavailable, runtime_client

#: Seconds after a lane breaks during which requests that find no lane are waited for and re-sent on a death.
UNSETTLED_S = 10.0
#: Longest a caller waiting for its answer sleeps before it checks whether it should read the lane itself.
WAKE_S = 0.05
#: Seconds a closing lane set waits for the lanes it is still compiling (each is torn down as it ends).
COMPILING_WAIT_S = 10.0
#: Seconds a lane set waits for a missing controller before it gives up telling it something (it may be gone
#: for good: a process that shut servegraph down must still exit).
CONTROLLER_WAIT_S = 5.0


class LaneBroken(Exception):
    """The lane cannot answer this request (a replica died, or the lane was released): use the plan path."""


class _Pending:
    __slots__ = ("ref", "done", "value", "error", "event")

    def __init__(self) -> None:
        self.ref: Any = None
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.event = threading.Event()


def _read(ref: Any, timeout: float) -> Any:
    """``ref.get(timeout)``, readable again after a timeout.

    Ray marks a compiled graph's ref as read before it waits, so a second ``get`` after a timeout
    would refuse; :func:`ray_compat.allow_reread` undoes the mark.
    """
    try:
        return ref.get(timeout=timeout)
    except ray.exceptions.RayChannelTimeoutError:
        ray_compat.allow_reread(ref)
        raise


def _is_user_error(exc: BaseException) -> bool:
    """A user's exception in a stage (the request fails, the lane is fine), not a broken lane."""
    return isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(
        exc, (ray.exceptions.RayActorError, ray.exceptions.RayChannelError)
    )


class Lane:
    """One compiled graph over one replica per deployment.

    Ray's CompiledDAG is not thread-safe, and its results come back in
    submission order. Callers submit under a lock; then whichever caller finds
    the reader free reads results in order, handing each to its caller, until
    its own has come (no thread of its own, so a lone caller pays no hand-off).
    """

    def __init__(self, info: LaneInfo, dag: Any, capacity: int):
        self.info = info
        self.dag = dag
        self.capacity = capacity
        self.in_flight = 0
        self.broken = False
        #: Why the lane broke (the first system error it met), for the controller and status.
        self.failure = ""
        self.retired = False
        self.actor_ids = {ray_compat.actor_id_hex(actor) for _, _, actor in info.members}
        self._submit = threading.Lock()
        self._read = threading.Lock()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, bundle: dict[str, Any]) -> _Pending:
        """Send one request (counted in flight by :meth:`acquire`); read its answer with :meth:`wait`.

        Raises:
            LaneBroken: the lane cannot take it (the request was not sent; it no longer counts in flight).
        """
        mine = _Pending()
        with self._submit:
            try:
                if self.broken:
                    raise LaneBroken()
                try:
                    mine.ref = self.dag.execute(bundle)
                except Exception as exc:
                    self.failure = self.failure or f"{type(exc).__name__}: {exc}"[:300]
                    self._break()
                    raise LaneBroken() from exc
            except LaneBroken:
                self.done()
                raise
            self._pending.append(mine)
        return mine

    def wait(self, mine: _Pending, timeout: float | None = None) -> Any:
        """The answer to a request sent by :meth:`submit`: a user's error raises as Ray raises it, a broken
        lane as LaneBroken, and no answer within ``timeout`` seconds as GetTimeoutError (the request stays
        on the lane; a later :meth:`wait` still gets it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not mine.done:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ray.exceptions.GetTimeoutError(f"the compiled graph did not answer within {timeout} s")
            if self._read.acquire(blocking=False):
                try:
                    while not mine.done:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            break
                        self._read_one(-1 if remaining is None else remaining)
                except ray.exceptions.RayChannelTimeoutError:
                    pass  # nothing was consumed: the deadline check above raises
                finally:
                    self._read.release()
                    with self._submit:
                        head = self._pending[0] if self._pending else None
                    if head is not None:
                        head.event.set()  # the oldest waiter reads next
            else:
                # Bounded: a wake-up set between wait() and clear() is not lost for long.
                mine.event.wait(WAKE_S if remaining is None else min(remaining, WAKE_S))
                mine.event.clear()
        if mine.error is not None:
            raise mine.error
        return mine.value

    def run(self, bundle: dict[str, Any]) -> Any:
        """Send one request and wait for its answer (see :meth:`submit`, :meth:`wait`)."""
        return self.wait(self.submit(bundle))

    def _read_one(self, timeout: float) -> None:
        """Read the oldest request's answer (``timeout`` -1: as long as it takes).

        Raises:
            RayChannelTimeoutError: not within ``timeout``; nothing was read, so it can be read again.
        """
        with self._submit:
            head = self._pending[0]
        try:
            ref = head.ref  # a MultiOutputNode's execute() gives one ref per output, all read together
            head.value = [_read(r, timeout) for r in ref] if isinstance(ref, list) else _read(ref, timeout)
        except ray.exceptions.RayChannelTimeoutError:
            raise
        except BaseException as exc:
            if _is_user_error(exc):
                head.error = exc
            else:
                self.failure = self.failure or f"{type(exc).__name__}: {exc}"[:300]
                self._break()
                head.error = LaneBroken()
                head.error.__cause__ = exc
        head.ref = None
        with self._submit:
            self._pending.popleft()
        head.done = True
        head.event.set()
        self.done()

    def _break(self) -> None:
        self.broken = True

    def acquire(self) -> bool:
        """Count one more request in flight, if there is room."""
        if self.broken or self.retired or self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        self._idle.clear()
        return True

    def done(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    def teardown(self, wait_s: float = 5.0) -> None:
        """Let requests in flight finish (up to ``wait_s``), then stop the compiled graph (never its actors)."""
        self.retired = True
        self._idle.wait(wait_s)
        try:
            self.dag.teardown(kill_actors=False)
        except Exception:
            pass


def _build(plan: ir.Plan, info: LaneInfo, capacity: int) -> Any:
    """Compile one lane: each call step becomes a ``lane_call`` of its replica, bound to its upstream stages."""
    from ray.dag import InputNode, MultiOutputNode

    actors = info.actors()
    calls = {s.key for s in plan.steps if s.kind not in (ir.INPUT_ATTR, ir.OUTPUT)}
    callers = step_callers(plan)
    nodes: dict[str, Any] = {}
    with InputNode() as bundle:
        for step in plan.steps:
            if step.key not in calls:
                continue
            upstream = [k for k in call_keys((step.args, step.kwargs), calls) if k in nodes]
            reads_input = any(
                isinstance(m, ir.Ref) and m.key not in calls for m in ir.iter_markers((step.args, step.kwargs))
            )
            sources: tuple[str | None, ...] = tuple(upstream)
            inputs = [nodes[k] for k in upstream]
            if reads_input or not upstream:  # every stage needs an input; a stage with none gets the bundle
                sources += (None,)
                inputs.append(bundle)
            # The request's context reaches a stage in the bundle or with an upstream result: each stage
            # answers (request, result), so no stage reads the input channel only for it.
            spec = (step.method, step.args, step.kwargs, sources, callers[step.key])
            assert step.deployment is not None  # a call step (see fast_path)
            nodes[step.key] = actors[step.deployment].lane_call.bind(spec, *inputs)
        template = output_template(plan)
        outputs = call_keys(template, calls)
        root = nodes[outputs[0]] if isinstance(template, ir.Ref) else MultiOutputNode([nodes[k] for k in outputs])
    # Ray would tear compiled graphs down with kill_actors=True when this process shuts down: replicas
    # outlive their callers, so servegraph tears its lanes down itself (and the controller releases the rest).
    return ray_compat.compile_lane(root, capacity)


class LaneSet:
    """This process's lanes for one application (see :func:`lanes_for`)."""

    def __init__(self, app: str):
        self.app = app
        #: The plan lanes run: the controller's (the deployed graph). None until it first answers.
        self.plan: ir.Plan | None = None
        #: Bumped when the plan changes, so callers re-check theirs against it (see PlanTarget).
        self.generation = 0
        self.lanes: dict[int, Lane | _Compiling] = {}
        self.reason = "waiting for the controller's lanes"
        #: Requests lanes answered in this process (for status and tests: proof the compiled path ran).
        self.served = 0
        #: Until when (monotonic) requests without a lane are waited for and re-sent on a replica's death:
        #: a lane just broke, so a replica may be dead and the plan's routers may not know yet.
        self._unsettled_until = 0.0
        #: RuntimeClient listener attributes: lanes are not autoscaling inputs.
        self.metrics_interval_s: float | None = None
        self._calls: set[str] = set()
        self._template: Any = None
        self._outputs: list[str] = []
        self._lock = threading.Lock()
        self._manager = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="servegraph-lanes")
        self._callers: concurrent.futures.ThreadPoolExecutor | None = None
        self._client = runtime_client()
        self._owner_id = self._client.client_id
        self._claiming = False
        self._closed = False
        self._client.subscribe((app, LANES_KEY), self)
        self._claim()
        _track(self)

    def _set_plan(self, plan: ir.Plan) -> None:
        self._calls = {s.key for s in plan.steps if s.kind not in (ir.INPUT_ATTR, ir.OUTPUT)}
        self._template = output_template(plan)
        self._outputs = call_keys(self._template, self._calls)
        self.plan = plan
        self.generation += 1

    def _capacity(self, info: LaneInfo) -> int:
        """In flight per lane: the smallest max_ongoing_requests of its deployments (as routers know them)."""
        limits = [self._client.router(self.app, deployment).max_ongoing for deployment, _, _ in info.members]
        return max(1, min(limits))

    # Owning lanes --------------------------------------------------------------------------
    def _claim(self) -> None:
        if self._claiming:
            return
        self._claiming = True
        context = ray.get_runtime_context()
        actor_id = context.get_actor_id()
        try:
            controller = self._client.controller(CONTROLLER_WAIT_S)
        except ControllerUnavailable:  # claimed again when the controller publishes (see update)
            self._claiming = False
            return
        ref = controller.claim_lanes.remote(self.app, self._owner_id, context.get_job_id(), actor_id, context.get_node_id())
        ref.future().add_done_callback(lambda _: setattr(self, "_claiming", False))

    def update(self, published: Any) -> None:
        """A new assignment from the controller (on the long-poll thread): compile new lanes, retire old ones."""
        if self._closed:
            return
        assignment = published.assignment
        if assignment.plan is not None and assignment.plan != self.plan:
            with self._lock:
                self._set_plan(assignment.plan)
        if assignment.reason:
            self.reason = assignment.reason
        elif self._owner_id not in published.owners:
            self._claim()  # a restarted controller, or a claim that crossed this answer: ask again
        mine = {lane.lane_id: lane for lane in assignment.lanes if lane.owner_id == self._owner_id}
        with self._lock:
            # A lane is the same lane only with the same replicas (a restarted controller numbers anew).
            stale = [i for i, lane in self.lanes.items() if i not in mine or _members(mine[i]) != _members(lane.info)]
            for lane_id in stale:
                lane = self.lanes.pop(lane_id)
                if isinstance(lane, Lane):  # one still compiling is torn down when it is ready (see _compile)
                    self._background(self._retire, lane, 5.0)
            for lane_id, info in mine.items():
                if lane_id not in self.lanes:
                    self.lanes[lane_id] = _Compiling(info)
                    self._background(self._compile, info)
            if not mine and not assignment.reason:
                self.reason = "no lane assigned to this process" if assignment.lanes else "waiting for lanes"

    def _compile(self, info: LaneInfo) -> None:
        try:
            assert self.plan is not None
            capacity = self._capacity(info)
            dag = _build(self.plan, info, capacity)
        except Exception as exc:
            if self._closed:  # the lane set closed meanwhile (its application deleted): nothing to report
                return
            traceback.print_exc()
            with self._lock:
                self.lanes.pop(info.lane_id, None)
            reason = f"{type(exc).__name__}: {exc}"
            # A replica of the lane died while it was compiled (a rollout stopping it, a fault): the lane is re-formed
            # over the running replicas, as a lane that breaks. Anything else keeps the application on the plan path.
            died = isinstance(exc, ray.exceptions.RayActorError)
            self._tell_controller("lane_broken" if died else "lane_failed", info.lane_id, reason)
            self._tell_controller("lane_retired", info.lane_id, _members(info))  # nothing of it is left to tear down
            return
        lane = Lane(info, dag, capacity)
        with self._lock:
            pending = self.lanes.get(info.lane_id)
            if isinstance(pending, _Compiling) and pending.info is info:
                self.lanes[info.lane_id] = lane
                self.reason = ""
                return
        self._retire(lane, 0)  # taken away while it compiled

    def _retire(self, lane: Lane, wait_s: float) -> None:
        """Tear a lane the controller took away down, then say so: its replicas are released (and may be
        stopped) at once, instead of after the grace the controller gives owners."""
        lane.teardown(wait_s)
        if not self._closed:
            self._tell_controller("lane_retired", lane.info.lane_id, _members(lane.info))

    def drop_actor(self, actor_id: str) -> None:
        for lane in list(self.lanes.values()):
            if isinstance(lane, Lane) and actor_id in lane.actor_ids:
                lane._break()

    def load(self) -> int:
        return 0

    def close(self) -> None:
        """Tear every lane down and give them back (this process is leaving)."""
        if self._closed:
            return
        self._closed = True
        self._client.unsubscribe((self.app, LANES_KEY), self)
        if not ray.is_initialized() or ray.get_runtime_context().gcs_address != self._client.cluster:
            self._stop_threads()
            return  # disconnected (or on another cluster): the controller releases what this process held
        with self._lock:
            lanes, self.lanes = list(self.lanes.values()), {}
        for lane in lanes:
            if isinstance(lane, Lane):
                lane.teardown(1.0)
        if any(isinstance(lane, _Compiling) for lane in lanes):
            # A lane still compiling is torn down by its compile when that ends (see _compile): wait for it, so it
            # is not torn down after the controller killed its replicas (an application being deleted), where Ray's
            # monitor thread fails in its own teardown and prints a traceback.
            try:
                self._manager.submit(lambda: None).result(timeout=COMPILING_WAIT_S)
            except Exception:  # shut down already, or slower than the bound: the controller releases the rest
                pass
        self._tell_controller("release_lanes", self._owner_id, wait_s=1.0)
        self._stop_threads()

    def forget_all(self) -> None:
        """servegraph was shut down: stop using every lane and every thread, telling no one (the controller
        is gone; the replicas' loops ended with them)."""
        self._closed = True
        self._client.unsubscribe((self.app, LANES_KEY), self)
        with self._lock:
            self.lanes = {}
        self._stop_threads()

    def _background(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the manager thread (in order), unless this lane set was closed."""
        try:
            self._manager.submit(fn, *args)
        except RuntimeError:  # shut down
            pass

    def _stop_threads(self) -> None:
        self._manager.shutdown(wait=False, cancel_futures=True)
        if self._callers is not None:
            self._callers.shutdown(wait=False, cancel_futures=True)

    def _tell_controller(self, method: str, *args: Any, wait_s: float = CONTROLLER_WAIT_S) -> None:
        """Send the controller ``method(app, *args)``, unless none answers within ``wait_s`` (best effort)."""
        try:
            getattr(self._client.controller(wait_s), method).remote(self.app, *args)
        except Exception:  # gone, or restarting: it re-forms lanes from replica states without this
            pass

    # Requests ------------------------------------------------------------------------------
    def _pick(self) -> Lane | None:
        with self._lock:
            best = None
            for lane in self.lanes.values():
                if isinstance(lane, Lane) and not lane.broken and not lane.retired and lane.in_flight < lane.capacity:
                    if best is None or lane.in_flight < best.in_flight:
                        best = lane
            if best is not None and best.acquire():
                return best
        return None

    def bundle(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The request's input, every input read the graph makes, by key (PlanInputError as on the plan path),
        and the request's context (see replica.REQUEST_KEY)."""
        assert self.plan is not None
        bundle = read_inputs(self.plan, args, kwargs)
        request = current_request()
        bundle[REQUEST_KEY] = (
            (new_request_id(), "", self.app, "")
            if request is None
            else (request.request_id, request.route, request.app, request.trace)
        )
        return bundle

    def pick(self) -> Lane | None:
        """The lane with the fewest requests in flight and room for one more (counted as taken), or None."""
        if not self.lanes:
            return None
        return self._pick()

    def run_on(self, lane: Lane, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """(True, output) from ``lane`` (taken by :meth:`pick`); (False, None) if the lane broke: send the
        request on the plan path.

        A user's exception raises as Ray raises it (RayTaskError wrapping it); a
        request whose input lacks what the graph reads raises PlanInputError, as on the plan path.
        """
        try:
            sent = self.start_on(lane, args, kwargs)
        except LaneBroken:
            self._forget(lane)
            return False, None
        return self.finish_on(lane, sent)

    def start_on(self, lane: Lane, args: tuple, kwargs: dict) -> tuple[_Pending, dict[str, Any]]:
        """Send a request on ``lane`` (taken by :meth:`pick`) without waiting; :meth:`finish_on` reads it.

        Raises:
            LaneBroken: not sent. PlanInputError: the input lacks what the graph reads.
        """
        try:
            bundle = self.bundle(args, kwargs)
        except BaseException:
            lane.done()
            raise
        return lane.submit(bundle), bundle

    def finish_on(self, lane: Lane, sent: tuple[_Pending, dict[str, Any]], timeout: float | None = None) -> tuple[bool, Any]:
        """The answer to a request sent by :meth:`start_on`, as :meth:`run_on` gives it.

        Raises:
            GetTimeoutError: no answer within ``timeout`` seconds (it can be asked for again).
        """
        pending, bundle = sent
        try:
            out = lane.wait(pending, timeout)
        except LaneBroken:
            self._forget(lane)
            return False, None
        self.served += 1
        if isinstance(self._template, ir.Ref):
            return True, out[1]  # each stage answers (request, result)
        results = {key: answer[1] for key, answer in zip(self._outputs, out, strict=True)}

        def fill(marker: ir.Ref | ir.HandleRef) -> Any:
            assert isinstance(marker, ir.Ref)
            return results[marker.key] if marker.key in results else bundle[marker.key]

        return True, ir.map_markers(self._template, fill)

    def abandon(self, lane: Lane, sent: tuple[_Pending, dict[str, Any]]) -> None:
        """A caller dropped a request without reading it: read it in the background, so its lane keeps its room."""
        if not sent[0].done:
            try:
                self.callers().submit(_discard, lane, sent[0])
            except RuntimeError:  # this lane set was closed: nothing left to read it for
                pass

    def unsettled(self) -> bool:
        """Whether a lane broke in the last UNSETTLED_S seconds (see PlanTarget.submit)."""
        return time.monotonic() < self._unsettled_until

    def _forget(self, lane: Lane) -> None:
        """A lane broke: stop using it, and tell the controller, which re-forms lanes (or says why not)."""
        self._unsettled_until = time.monotonic() + UNSETTLED_S
        with self._lock:
            if self.lanes.get(lane.info.lane_id) is not lane:
                return
            del self.lanes[lane.info.lane_id]
        self._background(lane.teardown, 0)
        self._background(self._tell_controller, "lane_broken", lane.info.lane_id, lane.failure)

    def callers(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that wait on lanes for async callers (an event loop must not block)."""
        if self._callers is None:
            self._callers = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="servegraph-lane-caller")
        return self._callers

    def active(self) -> int:
        return sum(1 for lane in list(self.lanes.values()) if isinstance(lane, Lane) and not lane.broken)


def _discard(lane: Lane, pending: _Pending) -> None:
    try:
        lane.wait(pending)
    except BaseException:  # its error has no one to go to
        pass


def _members(info: LaneInfo) -> tuple[str, ...]:
    return tuple(replica_id for _, replica_id, _ in info.members)


class _Compiling:
    """A lane being compiled: it takes no requests yet."""

    __slots__ = ("info",)

    def __init__(self, info: LaneInfo):
        self.info = info


_OPEN: list[LaneSet] = []
_SETS: dict[tuple[int, str], LaneSet] = {}
_SETS_LOCK = threading.Lock()


def lanes_for(app: str) -> LaneSet:
    """This process's LaneSet for ``app`` (one per application and cluster connection: a lane has one owner)."""
    key = (id(runtime_client()), app)
    lanes = _SETS.get(key)
    if lanes is None:
        with _SETS_LOCK:
            lanes = _SETS.get(key)
            if lanes is None:
                lanes = _SETS[key] = LaneSet(app)
    return lanes


def _track(lanes: LaneSet) -> None:
    if not _OPEN:
        # Registered after ray.init's own exit handler, so it runs first (atexit is last in, first out):
        # lanes are torn down while the process is still connected.
        atexit.register(_close_all)
    _OPEN.append(lanes)


def forget_all_lanes() -> None:
    """servegraph was shut down in this process: every lane set stops (see LaneSet.forget_all)."""
    with _SETS_LOCK:
        sets = list(_SETS.values())
        _SETS.clear()
    for lanes in sets:
        lanes.forget_all()
    _OPEN.clear()


def close_lanes(app: str) -> None:
    """``app`` was deleted: this process's lanes for it are torn down and their threads stop."""
    with _SETS_LOCK:
        sets = [lanes for key, lanes in _SETS.items() if key[1] == app]
        for key in [key for key in _SETS if key[1] == app]:
            del _SETS[key]
    for lanes in sets:
        if lanes in _OPEN:
            _OPEN.remove(lanes)
        try:
            lanes.close()
        except Exception:
            lanes.forget_all()


def _close_all() -> None:
    for lanes in list(_OPEN):
        try:
            lanes.close()
        except Exception:
            print("servegraph: tearing down a compiled lane failed", file=sys.stderr)
    _OPEN.clear()
