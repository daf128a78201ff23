"""``serve.run``, ``serve.status``, ``serve.delete``, ``serve.shutdown``: the driver's side."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import ray

from ..._handle_era import record_handle_era
from ..._validation import route_prefix_problem
from ...compiler import CompiledGraph, compile
from ...compiler.config.app import DEFAULT_APP_NAME
from ...dsl.nodes import DAGNode
from ...dsl.options import as_logging_config
from ...errors import DeploymentError, GraphError
from ..actors.live_graph import LiveGraph
from ..common.driver_http import adapter_problem
from ..common.grpc_options import grpc_options_dict
from ..common.http_codec import HTTP_OPTION_DEFAULTS
from ..control.locate import find_or_revive, start_controller
from ..data.handle import (
    DeploymentHandle,
    DeploymentInfo,
    RayServeSyncHandle,
    deployment_handle,
    plan_handle,
    routes_handle,
)
from ..data.lanes import close_lanes, forget_all_lanes
from ..data.long_poll import close_runtime_client, find_controller, set_controller_locator
from .cluster import cluster_nodes, cluster_resources, ensure_connected

#: How long status-like calls wait for the controller before they say it is unreachable.
CONTROLLER_TIMEOUT_S = 60.0

#: ``serve.run``'s route_prefix when the caller gives none (None means "no HTTP route").
DEFAULT_ROUTE_PREFIX: Any = type("DefaultRoutePrefix", (), {"__repr__": lambda self: "'/'"})()


def _controller(create: bool = True) -> Any:
    """The controller of the connected cluster (connecting first); started if none runs and ``create``."""
    ensure_connected()
    # This process's routers find the controller, or start it again from its checkpoint, the same way.
    set_controller_locator(find_or_revive)
    controller = find_controller()
    if controller is None and create:
        return start_controller()
    return controller


def _ask(call: Any, what: str, timeout_s: float = CONTROLLER_TIMEOUT_S) -> Any:
    """Wait for a controller call, with a clear error instead of nothing when the controller cannot answer."""
    try:
        return ray.get(call, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise DeploymentError(
            f"the servegraph controller did not answer {what} within {timeout_s:g}s; it may be restarting "
            "(retry) or the cluster may be overloaded"
        ) from None
    except ray.exceptions.RayActorError as exc:
        raise DeploymentError(f"the servegraph controller is unreachable ({what}): {exc.error_msg if hasattr(exc, 'error_msg') else exc}") from None


def code_paths() -> tuple[str, ...]:
    """This process's own import directories (not the interpreter's), for replicas to import user code."""
    prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    paths = [os.getcwd()]
    for path in sys.path:
        path = os.path.abspath(path or os.getcwd())
        if os.path.isdir(path) and not path.startswith(prefixes) and "site-packages" not in path:
            paths.append(path)
    return tuple(dict.fromkeys(paths))


def _free_resources(controller: Any, name: str) -> dict[str, float]:
    total = cluster_resources()
    used = _ask(controller.reserved.remote(exclude=name), "which resources are in use")
    return {k: total.get(k, 0.0) - used.get(k, 0.0) for k in set(total) | set(used)}


def _handle_for(name: str, app: Any, infos: dict) -> RayServeSyncHandle:
    if app.ingress is not None:
        return deployment_handle(infos[app.ingress], driven=app.driven)
    if app.routes:
        return routes_handle(name, app.routes, infos)
    return plan_handle(name, app.plan, infos)


#: Ray Serve's proxy_location values (ProxyLocation, and the older DeploymentMode names), by lower-case name.
_PROXY_LOCATIONS = {"everynode": "EveryNode", "headonly": "HeadOnly", "disabled": "Disabled", "noserver": "Disabled"}


def proxy_location_name(value: Any) -> str | None:
    """``EveryNode``, ``HeadOnly`` or ``Disabled`` for Ray Serve's ways of saying it (None stays None).

    Raises:
        ValueError: a value Ray Serve does not know either (``FixedNumber`` is refused: it has no meaning here).
    """
    if value is None:
        return None
    name = _PROXY_LOCATIONS.get(str(getattr(value, "value", value)).lower())
    if name is None:
        raise ValueError(f"proxy_location {value!r} is not one of EveryNode, HeadOnly, Disabled")
    return name


def _require_route_prefix(route_prefix: str | None) -> None:
    problem = None if route_prefix is None else route_prefix_problem(route_prefix)
    if problem is not None:
        raise ValueError(f"Invalid route_prefix '{route_prefix}', {problem}. (servegraph: e.g. use '/hello')")


def deploy_compiled(
    compiled: CompiledGraph,
    *,
    name: str = DEFAULT_APP_NAME,
    route_prefix: str | None = "/",
    host: str | None = "127.0.0.1",
    port: int | None = 8000,
    http: bool = True,
    http_options: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, dict[str, int]]], None] | None = None,
    compiled_path: bool = True,
    proxy_location: Any = None,
    wait: bool = True,
    grpc_options: Any = None,
    graph_autoscaling: bool = True,
) -> tuple[RayServeSyncHandle, dict[str, str]]:
    """Deploy an already compiled graph; returns its handle and what changed per deployment.

    ``on_progress`` is called about twice a second while the deploy runs, with each deployment's
    replica counts by state (``{"Model": {"STARTING": 1, "RUNNING": 1}}``). ``proxy_location``
    (``HeadOnly``, ``EveryNode``; None keeps the cluster's, EveryNode at first) says where HTTP proxies run.
    ``grpc_options`` (Ray Serve's; None keeps the running proxy's) also serve gRPC from every proxy.
    """
    # Every deploy passes here (serve.run, servegraph run and deploy), so no route the config
    # validator would refuse ever reaches the cluster.
    _require_route_prefix(route_prefix)
    grpc = None if grpc_options is None else grpc_options_dict(grpc_options)
    location = proxy_location_name(proxy_location)
    if location == "Disabled":
        http = False
    if http and route_prefix is not None:
        problem = adapter_problem(compiled.ir)
        if problem is not None:
            raise DeploymentError(f"application {name!r} was not deployed: {problem}")
    for deployment in compiled.ir.deployments:
        if deployment.handles:  # the handle API its code expects, decided where the code can be read
            record_handle_era(deployment.target)
    controller = _controller()
    pending = controller.deploy_app.remote(
        # Bytes, so the controller can put our import paths on sys.path before it loads user code.
        name,
        ray.cloudpickle.dumps(compiled.ir),
        route_prefix,
        # None (not given) keeps what the running proxy uses; see Controller._ensure_proxy.
        (host, port, None if http_options is None else dict(http_options)) if http else None,
        code_paths(),
        bool(compiled_path),
        location,
        wait,
        grpc,
        bool(graph_autoscaling),
    )
    while on_progress is not None and not ray.wait([pending], timeout=0.5)[0]:
        try:
            app = ray.get(controller.status.remote(), timeout=5).applications.get(name)
        except Exception:  # progress is best effort; the deploy's own answer is what counts
            continue
        if app is not None:
            on_progress({d: dict(info.replica_states) for d, info in app.deployments.items()})
    reply = ray.get(pending)
    if reply.refusal is not None:
        raise DeploymentError(f"application {name!r} was not deployed: {reply.refusal.message}")
    infos = {spec.name: DeploymentInfo(name, spec.name) for spec in compiled.ir.deployments}
    return _handle_for(name, compiled.ir, infos), reply.changes


def run(
    target: DAGNode,
    blocking: bool = False,
    name: str = DEFAULT_APP_NAME,
    route_prefix: Any = DEFAULT_ROUTE_PREFIX,
    host: str | None = None,
    port: int | None = None,
    _local_testing_mode: bool = False,
    *,
    resource_check: bool = True,
    http: bool = True,
    _blocking: bool = True,
    _on_progress: Callable[[dict[str, dict[str, int]]], None] | None = None,
    logging_config: Any = None,
    compiled: bool = True,
    graph_autoscaling: bool = True,
) -> RayServeSyncHandle:
    """Compile, check and deploy a graph; return a handle to its output.

    Args:
        target: the graph's output node (``Model.bind()``, an InputNode graph, ``DAGDriver.bind(...)``).
        blocking: serve until Ctrl-C before returning.
        name: the application's name; deploying the same name again updates it.
        route_prefix: where HTTP requests reach the app (None: no HTTP route). Not given: the
            ingress's ``route_prefix`` option (or ``DAGDriver.options(route_prefix=)``), else "/".
        host, port: where the HTTP proxy listens; not given, where the running proxy listens (as
            ``serve.start(http_options=...)`` set it), else 127.0.0.1:8000.
        _local_testing_mode: run in this process without Ray (see the README for its limits).
        resource_check: fail at once when the cluster's resources cannot hold every replica.
        http: start the HTTP proxy.
        compiled: run an eligible InputNode graph on Ray compiled graphs (see the README's "compiled
            path"); False keeps every request on the plan of actor calls.
        graph_autoscaling: size autoscaled deployments from their callers' load too, every stage in
            the same step (see the README's "Autoscaling the graph"); False: each on its own queue only,
            as Ray Serve does.
        _blocking: False returns once the application's new state is set, before its replicas are up
            (``serve.status()`` then shows it DEPLOYING, RUNNING or DEPLOY_FAILED with the error), as in
            Ray Serve.
        logging_config: the application's logging_config (a dict or ``LoggingConfig``: encoding, log_level,
            logs_dir, enable_access_log, additional_log_standard_attrs), for every deployment that sets none.

    Raises:
        GraphError: the graph fails a check; DeploymentError: a replica failed to start.
    """
    app_logging = None if logging_config is None else as_logging_config(logging_config)
    if _local_testing_mode:
        from .local import run_local

        return run_local(target, name=name)
    if route_prefix is DEFAULT_ROUTE_PREFIX:
        route_prefix = _default_route_prefix(target)
    _require_route_prefix(route_prefix)  # before connecting: a bad route fails at once
    ensure_connected()
    resources = _free_resources(_controller(), name) if resource_check else None
    graph = compile(
        target,
        cluster_resources=resources,
        logging_config=app_logging,
        cluster_nodes=cluster_nodes() if resource_check else None,
    )
    handle, _ = deploy_compiled(
        graph,
        name=name,
        route_prefix=route_prefix,
        host=host,
        port=port,
        http=http,
        on_progress=_on_progress,
        compiled_path=compiled,
        wait=_blocking,
        graph_autoscaling=graph_autoscaling,
    )
    if blocking:
        _block()
    return handle


def _default_route_prefix(target: DAGNode) -> str:
    """As Ray Serve: the ingress deployment's ``route_prefix`` option, else "/"."""
    prefix = getattr(target, "_route_prefix", None)
    deployment = getattr(target, "_deployment", None)
    if prefix is None and deployment is not None:
        prefix = deployment.deployment_options.route_prefix
    return prefix or "/"


def _block() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def start(
    detached: bool = True,
    http_options: dict[str, Any] | None = None,
    proxy_location: Any = None,
    grpc_options: Any = None,
    logging_config: Any = None,
    **kwargs: Any,
) -> None:
    """Ray Serve's ``serve.start``: connect, and start the controller and the HTTP proxy now.

    ``http_options``: ``host`` (default 127.0.0.1), ``port`` (default 8000), ``request_timeout_s``,
    ``keep_alive_timeout_s``, as Ray Serve names them (a dict, or an object with those attributes). Later
    ``serve.run`` calls that name no host or port serve there. ``grpc_options``: ``port`` (default 9000),
    ``grpc_servicer_functions`` (import paths of generated ``add_XServicer_to_server`` functions; gRPC is
    served when there is one), ``request_timeout_s``, ``enable_reflection`` (a dict or Ray's ``gRPCOptions``);
    later ``serve.run`` calls keep them. ``proxy_location``: ``EveryNode`` (default: a proxy on every node
    that runs replicas), ``HeadOnly``, or ``Disabled`` (no proxy). ``logging_config``: as in Ray Serve, the
    proxies' own logs (``proxy_<node ip>.log``, an access line per HTTP request); replicas take theirs from
    ``serve.run(logging_config=...)`` and their deployments. ``detached`` is accepted for old callers:
    servegraph's controller always outlives the driver, as Ray Serve's does.

    Raises:
        DeploymentError: the proxy cannot listen on host:port (or on the gRPC port, or import a servicer function).
        TypeError: an option servegraph cannot honour (unknown keywords).
        OptionValueError: a logging_config Ray Serve would refuse.
        ValueError: an option's value is out of range.
    """
    proxy_logging = None if logging_config is None else as_logging_config(logging_config)
    refused = sorted(k for k, v in kwargs.items() if v is not None)
    if refused:
        raise TypeError(
            f"serve.start() got {', '.join(refused)}, which servegraph does not support yet; it takes "
            "http_options, grpc_options, proxy_location and logging_config"
        )
    grpc = grpc_options_dict(grpc_options)
    options = _http_options_dict(http_options)
    host, port = options.pop("host", None), options.pop("port", None)
    unknown = sorted(set(options) - set(HTTP_OPTION_DEFAULTS))
    if unknown:
        raise TypeError(
            f"serve.start(http_options=...) got {', '.join(unknown)}, which servegraph's proxy cannot apply; it "
            f"takes host, port, {', '.join(HTTP_OPTION_DEFAULTS)}"
        )
    location = proxy_location_name(proxy_location)
    controller = _controller()
    if proxy_logging is not None:  # as Ray Serve's: the proxies' own logs (replicas take theirs from serve.run)
        refusal = _ask(controller.set_logging_config.remote(proxy_logging), "set_logging_config")
        if refusal is not None:
            raise DeploymentError(refusal.message)
    if location == "Disabled":
        return
    refusal = ray.get(
        controller.start_http.remote(
            host, None if port is None else int(port), location, options, None if grpc_options is None else grpc, code_paths()
        )
    )
    if refusal is not None:
        raise DeploymentError(refusal.message)


def _http_options_dict(http_options: Any) -> dict[str, Any]:
    """Ray Serve's ``http_options``, given as a dict or as an ``HTTPOptions``-like object, as a dict."""
    if http_options is None:
        return {}
    if isinstance(http_options, dict):
        return dict(http_options)
    dump = getattr(http_options, "model_dump", None) or getattr(http_options, "dict", None)
    if dump is None:
        raise TypeError(f"http_options must be a dict or an HTTPOptions, got {type(http_options).__name__}")
    return {k: v for k, v in dump().items() if v is not None}


def delete(name: str, _blocking: bool = True) -> None:
    """Delete an application and its replicas; this process's compiled lanes for it stop too.

    The lanes first, while their replicas live: a compiled graph torn down after its actors were killed leaves
    Ray's monitor thread failing in its own teardown (an AttributeError traceback on this process's stderr).
    """
    close_lanes(name)
    _forget_handles(name)
    controller = _controller(create=False)
    if controller is not None:
        _ask(controller.delete_app.remote(name), f"delete {name!r}", timeout_s=600)


def shutdown() -> None:
    """Delete every application, the HTTP proxy and the controller."""
    if not ray.is_initialized():
        return
    controller = _controller(create=False)
    if controller is None:
        return
    _ask(controller.shutdown.remote(), "shutdown", timeout_s=600)
    ray.kill(controller, no_restart=True)
    # Nothing of servegraph's keeps running in this process: no lane, no thread waiting for a controller.
    forget_all_lanes()
    _forget_handles()
    close_runtime_client()


def execute_graph(node: DAGNode, args: tuple, kwargs: dict) -> Any:
    """``dag.execute(*args)``: deploy the graph as an application of its own with no HTTP route (unchanged on
    later calls: nothing restarts) and send it one request; a deployment at the root gives its handle."""
    import hashlib

    from ...dsl.nodes import DeploymentNode

    site = hashlib.sha256(str(node._call_site).encode()).hexdigest()[:8]
    handle = run(node, name=f"execute-{node._label()}-{site}", route_prefix=None, http=False)
    if isinstance(node, DeploymentNode) and not args and not kwargs:
        return handle  # Ray's ClassNode.execute() gives the actor; here, the deployment's handle
    return handle.remote(*args, **kwargs)


async def shutdown_async() -> None:
    """``serve.shutdown()`` from async code: the same, run off the event loop so the loop keeps serving."""
    import asyncio

    await asyncio.to_thread(shutdown)


def get_app_handle(name: str = DEFAULT_APP_NAME) -> DeploymentHandle:
    """A DeploymentHandle to a running application's ingress (or graph), as in Ray Serve 2.7+.

    ``.options(use_new_handle_api=False)`` gives the older RayServeSyncHandle.
    """
    controller = _controller(create=False)
    info = _ask(controller.get_app.remote(name), "get_app") if controller is not None else None
    if info is None:
        raise GraphError(f"Application '{name}' does not exist. `servegraph status` lists what runs")
    key = (_cluster(), "app", name)
    cached = _HANDLES.get(key)
    if cached is not None and _same_graph(cached[0], info.app):
        return cached[1]  # one handle per running application, as Ray Serve caches them
    # A DeploymentHandle: outside an event loop its results are ObjectRefs too, except a compiled
    # graph's, which are read from its lane when asked for (they skip the object store).
    handle = cast(DeploymentHandle, _handle_for(name, info.app, info.infos).options(use_new_handle_api=True))
    _HANDLES[key] = (info.app, handle)
    return handle


#: The handles get_app_handle and get_deployment_handle gave, with the graph each was made for: asked again,
#: they give the same handle while the application runs the same graph (a deployment's handle follows its
#: replicas across redeploys by itself). Keyed by cluster too; an application's go when this process deletes it
#: (its lanes close), all of them when servegraph shuts down.
_HANDLES: dict[tuple[str, ...], tuple[Any, DeploymentHandle]] = {}


def _cluster() -> str:
    return str(ray.get_runtime_context().gcs_address)


def _forget_handles(app: str | None = None) -> None:
    for key in [k for k in _HANDLES if app is None or k[2] == app]:
        del _HANDLES[key]


def _same_graph(before: Any, now: Any) -> bool:
    try:
        return bool(before == now)
    except Exception:  # a bound argument that cannot compare (an array): make a new handle
        return False


def get_deployment_handle(deployment_name: str, app_name: str | None = None) -> DeploymentHandle:
    """A DeploymentHandle to one deployment of a running application (default: the app named "default")."""
    app_name = app_name or DEFAULT_APP_NAME
    controller = _controller(create=False)
    info = _ask(controller.get_app.remote(app_name), "get_app") if controller is not None else None
    if info is None or deployment_name not in info.infos:
        raise GraphError(f"no deployment {deployment_name!r} in a running application {app_name!r}")
    key = (_cluster(), "deployment", app_name, deployment_name)
    cached = _HANDLES.get(key)
    if cached is None:
        cached = _HANDLES[key] = (None, cast(DeploymentHandle, deployment_handle(info.infos[deployment_name]).options(use_new_handle_api=True)))
    return cached[1]


# Status, shaped like Ray Serve's ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: str
    replica_states: dict[str, int]
    message: str = ""
    #: servegraph's own, for an autoscaled deployment: ``{"target", "desired", "reason", "graph_aware"}``,
    #: the reason naming what decided (its own queue, its callers' load times the fan-out, or a bound).
    autoscaling: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class ApplicationStatus:
    name: str
    status: str
    route_prefix: str | None
    deployments: dict[str, DeploymentStatus]
    message: str = ""
    #: servegraph's own: which path requests take, ``{"kind": "compiled"|"plan", "reason": ..., "lanes": n}``.
    path: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Ray Serve's: when the application was last deployed (seconds since the epoch).
    last_deployed_time_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class ServeStatus:
    applications: dict[str, ApplicationStatus]
    proxy: dict[str, Any] | None = None
    #: Ray Serve's field: proxy state by node id ("HEALTHY"), empty when no proxy runs.
    proxies: dict[str, str] = dataclasses.field(default_factory=dict)


def graph_stats(app_name: str = DEFAULT_APP_NAME, window_s: float = 10.0) -> dict[str, Any]:
    """What an application's graph is doing: per deployment requests/s, errors, p50/p99 over the last
    ``window_s`` seconds and replicas running/target; per edge (caller -> deployment.method) calls/s and p50.

    Raises:
        DeploymentError: no application of that name runs (or no servegraph runs on this cluster).
    """
    controller = _controller(create=False)
    if controller is None:
        raise DeploymentError(f"Application '{app_name}' does not exist. (servegraph: nothing is deployed on this cluster)")
    try:
        return _ask(controller.graph_stats.remote(app_name, window_s), f"the stats of {app_name!r}")
    except KeyError:
        raise DeploymentError(f"Application '{app_name}' does not exist. (servegraph: `servegraph status` lists what runs)") from None


def status() -> ServeStatus:
    """Applications, their deployments, and replica counts by state."""
    controller = _controller(create=False)
    from ..control.replies import StatusReply

    raw = _ask(controller.status.remote(), "status") if controller is not None else StatusReply({})
    apps = {}
    for name, app in raw.applications.items():
        deployments = {
            d: DeploymentStatus(d, info.status, dict(info.replica_states), info.message, info.autoscaling)
            for d, info in app.deployments.items()
        }
        apps[name] = ApplicationStatus(
            name, app.status, app.route_prefix, deployments, app.message, dict(app.path), app.deployed_at
        )
    return ServeStatus(apps, raw.proxy, dict(raw.proxies))


def live_graph(name: str) -> LiveGraph | None:
    """The live graph of the application ``name`` on the connected cluster; None if it does not run."""
    controller = _controller(create=False)
    if controller is None:
        return None
    record = _ask(controller.graph_outline.remote(name), "graph_outline")
    if record is None:
        return None
    return LiveGraph(name, record.app, record.route_prefix, graph_stats(name))
