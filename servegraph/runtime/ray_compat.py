"""Ray's private, experimental and version-dependent APIs that servegraph uses, in one place.

Each entry says which Ray versions it was checked on and what happens where it is missing,
so a Ray upgrade is read here first. Everything was checked on Ray 2.60.0, the one version the
tests run (``pyproject.toml`` accepts no other); ``tests/test_ray_compat.py`` fails when any other
module of servegraph reaches into Ray's private or experimental parts.

Ray Compiled Graphs (the compiled path's lanes) are experimental in Ray and in maintenance
upstream: :func:`compiled_graphs_problem` turns the compiled path off, with the reason shown by
``servegraph status`` and ``check``, on any Ray it was not checked on or that lacks a piece it needs.

Token authentication: Ray 2.60 turns it on for every new local cluster ``ray.init()``
starts (``RAY_AUTH_MODE=token`` in that process and its children, with a token kept in
``~/.ray/auth_token``, or where ``RAY_AUTH_TOKEN_PATH`` says, or in ``RAY_AUTH_TOKEN``).
A second process reaches that cluster only with ``RAY_AUTH_MODE=token`` and the same
token; Ray sets the mode itself only for a local cluster it finds on its own
(``address="auto"``), never for an address it is given. Ray versions without token
authentication have none of these APIs: there the helpers report "no token needed"
and change nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Ray's environment variables for token authentication (``ray._private.authentication``).
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"

#: Lines Ray itself writes into every worker's .out and .err files so its log monitor can say which job
#: and actor they belong to (``ray._private.ray_constants.LOG_PREFIX_*``, the same since Ray 2.0).
WORKER_LOG_MARKERS = (":job_id:", ":actor_name:", ":task_name:", ":event_summary:", ":info_message:")


# -- token authentication (ray._raylet, ray._private.authentication; Ray 2.60) -----------------------


def _raylet() -> Any:
    import ray._raylet

    return ray._raylet


def token_auth_supported() -> bool:
    """Whether this Ray knows token authentication at all (False on Ray without it)."""
    return hasattr(_raylet(), "AuthenticationTokenLoader")


def auth_mode() -> str:
    """``"token"`` or ``"disabled"``: the mode this process uses (``"disabled"`` on Ray without auth)."""
    raylet = _raylet()
    if not token_auth_supported():
        return "disabled"
    return "token" if raylet.get_authentication_mode() == raylet.AuthenticationMode.TOKEN else "disabled"


def default_token_path() -> Path:
    """Where Ray keeps the token it generates: ``~/.ray/auth_token`` (``_get_default_token_path``)."""
    return Path.home() / ".ray" / "auth_token"


def token_path_in_use() -> str | None:
    """The file this process reads its token from, when it names one (``RAY_AUTH_TOKEN_PATH``); else None."""
    return os.environ.get(TOKEN_PATH_ENV) or None


def token_available() -> bool:
    """Whether this process can find a token (the environment, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray``)."""
    if not token_auth_supported():
        return False
    loader = _raylet().AuthenticationTokenLoader.instance()
    loader.reset_cache()
    return bool(loader.has_token(ignore_auth_mode=True))


def use_token_auth(token_path: str | None = None) -> None:
    """Send this process's token to the cluster, as Ray's own ``_enable_token_auth`` does for a cluster it finds.

    ``token_path`` (the file the cluster's starter named) is used unless this process names its own token.
    """
    if not token_auth_supported():
        return
    os.environ[AUTH_MODE_ENV] = "token"
    if token_path and not os.environ.get(TOKEN_ENV) and not os.environ.get(TOKEN_PATH_ENV):
        os.environ[TOKEN_PATH_ENV] = token_path
    raylet = _raylet()
    raylet.Config.initialize("")  # RayConfig caches the mode: read the environment again
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def token_metadata() -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries this process's token (empty without one)."""
    if not token_auth_supported():
        return ()
    loader = _raylet().AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return ()
    return tuple((k.lower(), v) for k, v in loader.get_token_for_http_header().items())


#: What :func:`ask_gcs` found.
ANSWERS, REFUSES_TOKEN, NO_ANSWER = "answers", "refuses", "no answer"


def ask_gcs(address: str, timeout: float, *, with_token: bool = False) -> str:
    """Ask the GCS at ``address`` for its cluster id, once: ``ANSWERS``, ``REFUSES_TOKEN`` or ``NO_ANSWER``.

    One gRPC call (``NodeInfoGcsService/GetClusterId``, the first thing Ray's own client asks)
    tells in milliseconds whether the cluster wants a token that this process would not send, where
    ``ray.init`` retries for 20 seconds printing a line a second. ``with_token`` sends this
    process's token, to learn whether it is the right one.
    """
    import grpc  # Ray's dependency; no stubs (mypy ignores its imports, see pyproject.toml)
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = token_metadata() if with_token else ()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]  # generated, no stubs
            stub.GetClusterId(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            return REFUSES_TOKEN if code == grpc.StatusCode.UNAUTHENTICATED else NO_ANSWER
    return ANSWERS


# -- the node this process is connected to (ray._private.worker._global_node; Ray 2.40-2.60) -------------


def _node() -> Any:
    import ray._private.worker

    return ray._private.worker._global_node


#: What Ray 2.60's ``ray._private.node.Node`` raises (a bare Exception) when the raylet it started has not
#: registered with the GCS after a fixed 30 s, as happens on a machine whose cores are all busy.
NODE_START_TIMEOUT = "timed out during startup"


def node_start_timed_out(exc: BaseException) -> bool:
    """Whether ``ray.init()`` failed only because its new node was slow to register (see NODE_START_TIMEOUT)."""
    return NODE_START_TIMEOUT in str(exc)


def started_cluster() -> bool:
    """Whether this process started the cluster it is connected to (``ray.init()`` made a new head node)."""
    node = _node()
    return bool(node is not None and getattr(node, "head", False))


def session_dir() -> str | None:
    """Ray's session directory of the connected node (its ``logs/`` holds every process's output); None via Ray Client."""
    node = _node()
    return node.get_session_dir_path() if node is not None else None


def logs_dir() -> str | None:
    """The connected node's log directory, where workers write ``worker-*-<pid>.out``/``.err``; None via Ray Client."""
    node = _node()
    return node.get_logs_dir_path() if node is not None else None


# -- Ray's "current cluster" file (ray._common.utils; Ray 2.60, ray._private.utils before) --------------


def ray_address_file() -> Path:
    """The file where ``ray start`` leaves its address for every later ``ray.init()`` on this machine."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # Ray before 2.4x kept it in ray._private.utils
        from ray._private.utils import get_ray_address_file
    return Path(get_ray_address_file(None))


# -- Ray Compiled Graphs (ray.dag.compiled_dag_node, ray.experimental.compiled_dag_ref; Ray 2.60.0) --------
#
# The compiled path (lanes.py, the replica's lane hook) uses, beyond Ray's documented ``ray.dag`` API:
# ``experimental_compile(_max_inflight_executions=)``, the module-level ``_compiled_dags`` registry,
# ``do_exec_tasks`` / ``do_cancel_executable_tasks`` (the loop a compiled graph runs on an actor),
# ``CompiledDAGRef`` (subclassed without its constructor) and its ``_ray_get_called`` mark.
# Where any is missing, or on a Ray not listed here, the compiled path stays off: every request runs
# on the plan of actor calls, and ``status``/``check`` say why (:func:`compiled_graphs_problem`).

#: Ray versions (major.minor) the compiled path was checked on.
COMPILED_GRAPHS_CHECKED = ("2.60",)


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


@functools.lru_cache(maxsize=1)
def compiled_graphs_problem() -> str | None:
    """Why this Ray cannot run compiled lanes (the compiled path then stays off), or None when it can.

    Checked on Ray 2.60.0. Probes every private piece the compiled path uses, so a Ray that renamed
    one falls back to the plan path with this reason instead of failing on a request.
    """
    version = _ray_version()
    if ".".join(version.split(".")[:2]) not in COMPILED_GRAPHS_CHECKED:
        checked = ", ".join(COMPILED_GRAPHS_CHECKED)
        return f"the compiled path is checked on Ray {checked} only; this is Ray {version}"
    try:
        import inspect

        from ray.dag import DAGNode
        from ray.dag import compiled_dag_node as cgraph
        from ray.experimental.compiled_dag_ref import CompiledDAGRef  # noqa: F401  # present is enough
    except ImportError as exc:
        return f"this Ray ({version}) lacks compiled graphs: {exc}"
    missing = [
        name
        for name in ("do_exec_tasks", "do_cancel_executable_tasks", "_compiled_dags")
        if not hasattr(cgraph, name)
    ]
    if "_max_inflight_executions" not in inspect.signature(DAGNode.experimental_compile).parameters:
        missing.append("experimental_compile(_max_inflight_executions=)")
    if missing:
        return f"this Ray ({version}) lacks what compiled lanes use: {', '.join(missing)}"
    return None


def compiled_ref_base() -> type:
    """The class a lane's finished answer subclasses so that ``ray.get`` reads it: ``CompiledDAGRef``.

    Ray 2.60's ``ray.get`` reads a CompiledDAGRef (or a list of them) by calling its ``get()``;
    servegraph's ``GraphRef`` subclasses it without calling its constructor (no compiled graph behind it).
    Where it is missing, ``object``: the compiled path is off there (:func:`compiled_graphs_problem`), so no
    GraphRef is ever made.
    """
    try:
        from ray.experimental.compiled_dag_ref import CompiledDAGRef
    except ImportError:
        return object
    return CompiledDAGRef


def compile_lane(root: Any, max_inflight: int) -> Any:
    """``root.experimental_compile(_max_inflight_executions=max_inflight)``, owned by servegraph alone.

    Ray registers every compiled graph in ``compiled_dag_node._compiled_dags`` and tears each down with
    ``kill_actors=True`` when this process shuts down; replicas outlive their callers, so servegraph takes
    the graph out of that registry and tears its lanes down itself. Checked on Ray 2.60.0; on a Ray without
    these the compiled path is off (:func:`compiled_graphs_problem`) and this is never called.
    """
    from ray.dag import compiled_dag_node as cgraph

    dag = root.experimental_compile(_max_inflight_executions=max_inflight)
    cgraph._compiled_dags.pop(dag.get_id(), None)
    return dag


def allow_reread(ref: Any) -> None:
    """Let a ``CompiledDAGRef`` whose ``get`` timed out be read again.

    Ray marks the ref as read (``_ray_get_called``) before it waits; nothing was consumed on a timeout
    (``CompiledDAG._execute_until`` resumes where it stopped), so the mark is undone. Checked on Ray
    2.60.0; the compiled path is off on a Ray without it.
    """
    ref._ray_get_called = False


def wrap_compiled_loop(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``compiled_dag_node.do_exec_tasks`` (the loop a compiled graph runs on an actor) by ``wrap(original)``.

    Ray starts that loop with ``do_exec_tasks(actor, tasks, ...)``, sent by the graph's owner; the replica
    records the tasks so the controller can stop the loop itself (:func:`cancel_compiled_loop`). Wrapping
    twice (a module reloaded) wraps Ray's original, never a wrapper. Checked on Ray 2.60.0; does nothing
    where :func:`compiled_graphs_problem` finds compiled graphs missing.
    """
    if compiled_graphs_problem() is not None:
        return
    from ray.dag import compiled_dag_node as cgraph

    original = getattr(cgraph, "_servegraph_original_exec_tasks", cgraph.do_exec_tasks)
    cgraph._servegraph_original_exec_tasks = original  # type: ignore[attr-defined]
    cgraph.do_exec_tasks = wrap(original)


def read_gently_when_idle(tasks: Any, idle_s: float, poll_s: float, slow_after_s: float = 10.0) -> None:
    """Make a compiled loop's reads stop spinning once its lane has been idle for ``idle_s`` seconds.

    Ray 2.60 waits for a channel's next value by spinning in C++ (``PlasmaObjectHeader::ReadAcquire``
    loops on ``sched_yield``), so every stage of an idle compiled graph keeps about a third of a core busy:
    a four-stage graph nobody calls fills a two-core laptop. Each input channel's ``read`` (the
    ``SynchronousReader`` of each ``ExecutableTask``, made when the tasks arrive) is wrapped: while values
    keep coming it reads as Ray does; after ``idle_s`` without one it checks once (``read(0)``) every
    ``poll_s`` seconds instead (every ``5 * poll_s`` once quiet for ``slow_after_s``), so the first request
    after a quiet spell waits at most that long per stage. Checked on Ray 2.60.0; tasks without these
    attributes are left as they are (the loop spins).
    """
    import time

    import ray

    timeout_error = ray.exceptions.RayChannelTimeoutError
    last = [time.monotonic()]  # when any channel of this loop last gave a value

    def gentle(read: Callable[..., Any]) -> Callable[..., Any]:
        def read_gently(timeout: float | None = None) -> Any:
            now = time.monotonic()
            if now - last[0] < idle_s:
                value = read(timeout)
            else:
                deadline = None if timeout is None or timeout < 0 else now + timeout
                while True:
                    try:
                        value = read(0)
                        break
                    except timeout_error:
                        now = time.monotonic()
                        if deadline is not None and now >= deadline:
                            raise
                        time.sleep(poll_s if now - last[0] < slow_after_s else 5 * poll_s)
            last[0] = time.monotonic()
            return value

        return read_gently

    for task in tasks:
        for channel in getattr(getattr(task, "input_reader", None), "_input_channels", ()):
            if callable(getattr(channel, "read", None)):
                channel.read = gentle(channel.read)


def cancel_compiled_loop(actor: Any, tasks: Any) -> None:
    """Stop the compiled loop running ``tasks`` on ``actor`` (``do_cancel_executable_tasks``; Ray 2.60.0).

    A loop already closed by its owner is nothing to stop: any error is swallowed.
    """
    try:
        from ray.dag import compiled_dag_node as cgraph

        cgraph.do_cancel_executable_tasks(actor, tasks)
    except Exception:
        pass


# -- actors and jobs (ray.actor.ActorHandle._actor_id, ray._private.state; Ray 2.40-2.60) ------------------


def actor_id_hex(actor: Any) -> str:
    """An actor handle's id in hex (``ActorHandle._actor_id``, the same since Ray 1.x; checked on 2.60.0).

    Ray has no public accessor on a handle (``get_runtime_context().get_actor_id()`` works only inside
    the actor). Where it is missing: the handle's repr, unique per actor, so lanes still tell replicas apart.
    """
    actor_id = getattr(actor, "_actor_id", None)
    return actor_id.hex() if actor_id is not None else repr(actor)


def dead_job_ids() -> set[str] | None:
    """Hex ids of the cluster's finished jobs (``global_worker.gcs_client.get_all_job_info``; Ray 2.60.0).

    None when this Ray lacks it or the GCS does not answer: the controller then skips this pass of
    noticing gone lane owners (an owner that exits normally still releases its lanes itself).
    """
    try:
        import ray._private.worker

        jobs = ray._private.worker.global_worker.gcs_client.get_all_job_info()  # type: ignore[attr-defined]  # set on connect
        return {job_id.hex() for job_id, info in jobs.items() if info.is_dead}
    except Exception:
        return None


def actor_is_dead(actor_id: str) -> bool:
    """Whether the GCS says the actor ``actor_id`` (hex) is DEAD (``ray._private.state.actors``; Ray 2.60.0).

    False when this Ray lacks it or the GCS does not answer (the owner is then kept until a later pass).
    """
    try:
        import ray._private.state

        return bool(ray._private.state.actors(actor_id).get("State") == "DEAD")
    except Exception:
        return False


# -- the GCS key-value store (ray.experimental.internal_kv; Ray 1.x-2.60, checked on 2.60.0) -----------------
#
# The controller keeps its checkpoint there, as Ray Serve's controller does. Where the module is missing
# the checkpoint is neither written nor found: a controller that restarts starts empty, nothing crashes.


def _internal_kv() -> Any:
    try:
        from ray.experimental import internal_kv
    except ImportError:
        return None
    return internal_kv


def kv_put(key: bytes, value: bytes, namespace: str) -> None:
    """Store ``value`` under ``key`` in the GCS (overwriting); nothing where Ray lacks internal_kv."""
    kv = _internal_kv()
    if kv is not None:
        kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: bytes, namespace: str) -> bytes | None:
    """The value stored under ``key``, or None (also where Ray lacks internal_kv)."""
    kv = _internal_kv()
    return kv._internal_kv_get(key, namespace=namespace) if kv is not None else None


def kv_del(key: bytes, namespace: str) -> None:
    """Delete ``key`` from the GCS; nothing where Ray lacks internal_kv."""
    kv = _internal_kv()
    if kv is not None:
        kv._internal_kv_del(key, namespace=namespace)


# -- Ray Serve's DeploymentResponse (ray.serve.handle; Ray 2.60.0) ---------------------------------------------


async def serve_response_ref(response: Any) -> Any:
    """The ObjectRef behind a Ray Serve ``DeploymentResponse`` (its private ``_to_object_ref``; Ray 2.60.0).

    Used by the Ray Serve backend to pass one stage's result to the next unawaited, as servegraph's own
    runtime does. Where Ray Serve lacks it, the response is awaited and its value put in the object
    store: still an ObjectRef, at the cost of one hop through this replica.
    """
    to_ref = getattr(response, "_to_object_ref", None)
    if to_ref is None:
        import ray

        return ray.put(await response)
    return await to_ref()


# -- Shipping an application's local code to replicas (ray._private.runtime_env; checked on Ray 2.60) --------


def upload_local_code(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """``runtime_env`` with a local ``working_dir`` / ``py_modules`` uploaded to the cluster and replaced by
    their ``gcs://`` URIs, as ``ray.init(runtime_env=...)`` does for a job: an actor's runtime_env takes
    URIs only. Needs a connected driver.

    Raises:
        RuntimeError: this Ray lacks the upload helpers (then give remote URIs instead of directories).
    """
    if not (runtime_env.get("working_dir") or runtime_env.get("py_modules")):
        return runtime_env
    try:
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
    except ImportError as exc:  # a Ray that moved them: say so rather than start replicas without the code
        raise RuntimeError(
            f"this Ray ({_ray_version()}) cannot ship a local working_dir or py_modules from servegraph; "
            "give them as remote URIs (s3://, https://...zip)"
        ) from exc
    node = _node()
    scratch = node.get_runtime_env_dir_path() if node is not None else None
    env = dict(runtime_env)
    env = upload_py_modules_if_needed(env, include_gitignore=True, scratch_dir=scratch)
    env = upload_working_dir_if_needed(env, include_gitignore=True, scratch_dir=scratch)
    env.pop("excludes", None)  # applied by the upload; not a field an actor's runtime_env takes
    return env



# -- Actor calls without ActorMethod's per-call work (ray.actor, ray._raylet.CoreWorker; Ray 2.60.0) ----------
#
# ``actor.method.remote(*args)`` goes through five Python layers before Ray's core worker sends the task:
# an ``ActorMethod`` made for every attribute read, ``ray.init``'s auto-init check, the tracing hook, the
# options merge of ``ActorMethod._remote`` and ``ActorHandle._actor_method_call``, which checks the
# arguments against the method's signature with ``inspect.Signature.bind`` on every call. That is about a
# quarter of the caller's CPU for a call (measured in a driver: 80 -> 62 us). Routers send every request
# through :func:`actor_caller`, which does the same work once per (actor, method) and then hands each
# call's arguments straight to ``CoreWorker.submit_actor_task``, with the options the ActorMethod would
# have given it. Where anything it reads is missing, on a Ray not listed here, with Ray's tracing on, or
# for a method with options the fast path does not carry (a decorator, a tensor transport, a generator,
# several returns), it returns the plain ``actor.method.remote``.

#: Ray versions (major.minor) the fast actor calls (and :func:`ref_future`) were checked on.
ACTOR_CALLS_CHECKED = ("2.60",)
#: Set to 0 to send every call and await every ref through Ray's public path (a Ray patch release that
#: changed what these read, or to compare the two).
FAST_PATHS_ENV = "SERVEGRAPH_RAY_FAST_PATHS"


def _fast_paths_allowed() -> bool:
    return ".".join(_ray_version().split(".")[:2]) in ACTOR_CALLS_CHECKED and os.environ.get(FAST_PATHS_ENV, "1") != "0"


def _tracing_check() -> Callable[[], bool]:
    """Ray's own "is tracing on" (``tracing_helper._is_tracing_enabled``); a function saying False without it."""
    try:
        from ray.util.tracing.tracing_helper import _is_tracing_enabled
    except ImportError:
        return lambda: False
    return _is_tracing_enabled


#: ``CoreWorker.submit_actor_task``'s parameters as Ray 2.60.0 declares them: the fast path passes them by
#: position, so a Ray whose method differs (a patch release that added one) gets the plain call instead.
_SUBMIT_PARAMETERS = (
    "self", "language", "actor_id", "function_descriptor", "args", "name", "num_returns", "max_retries",
    "retry_exceptions", "retry_exception_allowlist", "num_method_cpus", "concurrency_group_name",
    "generator_backpressure_num_objects", "num_objects_per_yield", "enable_task_events", "tensor_transport", "labels",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _submit_matches() -> bool:
    """Whether this Ray's ``submit_actor_task`` takes the parameters the fast path passes (read once)."""
    try:
        import inspect

        from ray._raylet import CoreWorker  # type: ignore[attr-defined]  # compiled; no stubs

        return tuple(inspect.signature(CoreWorker.submit_actor_task).parameters) == _SUBMIT_PARAMETERS
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def actor_caller(actor: Any, method: str) -> Callable[..., Any]:
    """A function sending ``actor.<method>.remote(*args)`` (positional arguments only) and returning its
    ObjectRef: Ray's core worker called directly on a checked Ray, else the plain ``.remote``."""
    bound = getattr(actor, method)  # Ray's ActorMethod: its options are read once, here
    plain = bound.remote
    tracing_on = _tracing_check()
    if not _fast_paths_allowed() or tracing_on() or not _submit_matches():
        return plain
    try:
        import ray
        import ray._private.worker
        from ray._common.signature import DUMMY_TYPE

        if (
            actor._ray_is_cross_language
            or bound._decorator is not None
            or bound._tensor_transport is not None
            or bound._is_generator
            or bound._num_returns not in (None, 1)
        ):
            return plain
        worker = ray._private.worker.global_worker
        submit = worker.core_worker.submit_actor_task  # type: ignore[attr-defined]  # set on connect
        rdt = worker.rdt_manager
        language, actor_id, cpus = actor._ray_actor_language, actor._ray_actor_id, actor._ray_actor_method_cpus
        descriptor = actor._ray_function_descriptor[method]
        retries = bound._max_task_retries or 0
        retry_exceptions = bound._retry_exceptions
        allowlist = None
        if isinstance(retry_exceptions, (list, tuple)):
            allowlist, retry_exceptions = tuple(retry_exceptions), True
        retry_exceptions = bool(retry_exceptions)
        per_yield = 1 if bound._num_objects_per_yield is None else bound._num_objects_per_yield
        events = bound._enable_task_events
        object_ref = ray.ObjectRef
    except Exception:  # a Ray whose insides moved: the plain call
        return plain

    def call(*args: Any) -> Any:
        if tracing_on():  # turned on since: Ray's own path carries the trace
            return plain(*args)
        flat: list = []
        refs_given = False
        for arg in args:
            flat += (DUMMY_TYPE, arg)
            if isinstance(arg, object_ref):
                refs_given = True
        if refs_given:  # as ActorMethod does: a ref to tensors another actor holds starts their transfer
            rdt.queue_or_trigger_out_of_band_tensor_transfer(actor, args)
        refs = submit(language, actor_id, descriptor, flat, "", 1, retries, retry_exceptions, allowlist, cpus, b"", -1, per_yield, events, None, None)
        return refs[0]

    return call


# -- Awaiting an ObjectRef (ray._raylet: ObjectRef._on_completed, _set_future_helper; Ray 2.60.0) ------------
#
# ``await ref`` in Ray wraps a ``concurrent.futures.Future`` (a Condition and its lock, taken again to set it)
# in an asyncio future (``asyncio.wrap_future``: two more callbacks chained across threads). :func:`ref_future`
# registers one callback with Ray's core worker that settles an asyncio future on its loop, as Ray's own
# ``_set_future_helper`` settles one (the user's error as its own type, a dead actor's RayActorError as is).
# On a Ray not listed in ACTOR_CALLS_CHECKED, or for a ref whose value another actor holds as tensors (Ray
# Direct Transport), it is Ray's own future.


class _Settle:
    """The callback Ray's core worker calls (on its own thread) with a ref's value, or the error it holds.

    It keeps the ref alive until then, as Ray's own future does (a ref dropped while awaited could be freed).
    """

    __slots__ = ("future", "ref", "helper")

    def __init__(self, future: Any, ref: Any, helper: Callable[..., None]):
        self.future, self.ref, self.helper = future, ref, helper

    def __call__(self, result: Any) -> None:
        try:
            self.future.get_loop().call_soon_threadsafe(self._set, result)
        except RuntimeError:  # the loop closed meanwhile: nobody awaits it any more
            pass
        self.ref = None

    def _set(self, result: Any) -> None:
        if not self.future.done():  # not cancelled meanwhile
            self.helper(result, py_future=self.future)


@functools.lru_cache(maxsize=1)
def _settle_helper() -> Callable[..., None] | None:
    """Ray's ``_set_future_helper`` where the fast await can use it on this Ray, else None."""
    if not _fast_paths_allowed():
        return None
    try:
        import ray
        from ray._raylet import _set_future_helper
    except ImportError:
        return None
    if not hasattr(ray.ObjectRef, "_on_completed"):
        return None
    return _set_future_helper


def ref_future(ref: Any) -> Any:
    """An asyncio future of ``ref``'s value on the running loop: what ``await ref`` gives, at less cost."""
    helper = _settle_helper()
    if helper is None or ref.tensor_transport() is not None:
        return ref.as_future(_internal=True)
    import asyncio

    future = asyncio.get_running_loop().create_future()
    ref._on_completed(_Settle(future, ref, helper))
    return future
