"""The HTTP proxy: an async actor running uvicorn, routing by route prefix.

A deployment ingress gets the request rebuilt as a ``starlette.requests.Request``
on its replica; an InputNode graph gets the JSON body as its input, and the
proxy runs the graph's plan like any caller. A DAGDriver's route is a FastAPI
app (driver_http.py) whose http_adapter makes the graph's input, as in Ray Serve.
With grpc_options, the same actor also serves gRPC (grpc_proxy.py) from the same routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import ray

from ...errors import BackPressureError, DeploymentUnavailableError, NoRouteError
from .. import ray_compat
from ..common import telemetry, tracing
from ..common.codec import loads_with_paths
from ..common.context import RequestContext, current_request, model_id_of, new_request_id, session_id_of, set_request
from ..common.driver_http import MATCH_ALL, driver_app
from ..common.grpc_options import GRPC_OPTION_DEFAULTS
from ..common.http_codec import (
    HTTP_OPTION_DEFAULTS,
    REQUEST_ID_HEADER,
    HTTPResult,
    call_asgi,
    decode_json_body,
    encode_error,
    encode_result,
    not_found,
    portable_scope,
    request_id_of,
    set_request_id,
    text,
)
from ..common.plan import PlanInputError
from ..common.records import HTTP, STREAM, ModelCall
from ..data.handle import DeploymentTarget, PlanTarget
from ..data.long_poll import set_controller_locator
from ..data.responses import resend_delay
from ..data.router import ROUTING, Routing
from . import http_protocol, replica_logging
from .http_protocol import ON_DISCONNECT
from .live_graph import GRAPH_PAGES, graph_page

logger = logging.getLogger("servegraph.proxy")


def _match(routes: dict[str, tuple], path: str) -> tuple[str | None, tuple | None]:
    """Longest route prefix that ``path`` lies under."""
    best = None
    for prefix in routes:
        if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best, routes.get(best) if best is not None else None


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


#: Largest request body the proxy reads, in bytes (413 beyond it); SERVEGRAPH_MAX_REQUEST_BODY_BYTES overrides.
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024


class HTTPProxy:
    def __init__(
        self,
        host: str,
        port: int,
        http_options: dict[str, Any] | None = None,
        grpc_options: dict[str, Any] | None = None,
        locate: Callable[[], Any] | None = None,
    ):
        """``http_options``: Ray Serve's names (:data:`HTTP_OPTION_DEFAULTS`), applied through uvicorn.

        ``grpc_options`` (checked by :func:`grpc_options_dict`; empty: no gRPC) also serve gRPC on the
        same host, see grpc_proxy.py. ``locate`` finds the controller (see control/locate.py).
        """
        if locate is not None:
            set_controller_locator(locate)
        self._host = host
        self._port = port
        self._routes: dict[str, tuple] = {}
        #: Whether a route table with a route in it ever arrived. Ray Serve's proxies answer /-/healthz with
        #: "success" from then on, also after every application is deleted (ProxyRouter._route_table_populated).
        self.populated = False
        self._server: Any = None
        unknown = set(http_options or {}) - set(HTTP_OPTION_DEFAULTS)
        if unknown:
            raise ValueError(f"the HTTP proxy cannot apply http_options {sorted(unknown)}")
        unknown = set(grpc_options or {}) - set(GRPC_OPTION_DEFAULTS)
        if unknown:
            raise ValueError(f"the proxy cannot apply grpc_options {sorted(unknown)}")
        self._grpc_options = dict(grpc_options or {})
        self._grpc: Any = None
        self._options = {**HTTP_OPTION_DEFAULTS, **(http_options or {})}
        self.max_body_bytes = int(os.environ.get("SERVEGRAPH_MAX_REQUEST_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
        self.request_timeout_s: float | None = self._options["request_timeout_s"]
        #: HTTP requests being handled now (Ray Serve's serve_num_ongoing_http_requests).
        self.ongoing = 0
        if tracing.ENABLED:
            tracing.setup(f"proxy_{os.getpid()}")
        error = self.configure_logging(None)  # Ray Serve's proxy_<node ip>.log, until serve.start says otherwise
        if error is not None:
            print(f"servegraph: {error}", file=sys.stderr)
        if telemetry.ENABLED:
            node = telemetry.node_tags()
            telemetry.add_gauge_source(lambda: [("serve_num_ongoing_http_requests", node, self.ongoing)])

    def configure_logging(self, logging_config: Any) -> str | None:
        """``serve.start(logging_config=...)``: this proxy's log (see replica_logging.py); the error as text."""
        try:
            replica_logging.configure_proxy(ray.util.get_node_ip_address(), logging_config)
        except OSError as exc:
            return f"logging_config: the proxy cannot write its log: {exc}"
        return None

    async def start(self, code_paths: list[str] | tuple[str, ...] = ()) -> str | None:
        """Start serving; returns an error message instead if the port cannot be bound.

        ``code_paths``: the deploying drivers' import directories, where gRPC servicer functions are found.
        """
        error = await self._start_http()
        if error is None and self._grpc_options.get("grpc_servicer_functions"):
            for path in code_paths:
                if path not in sys.path:
                    sys.path.append(path)
            try:
                from .grpc_proxy import GRPCIngress  # grpcio only when gRPC is asked for
            except ImportError as exc:
                return str(exc)
            self._grpc = GRPCIngress(lambda: self._routes, self._host, self._grpc_options, lambda: self.populated)
            error = await self._grpc.start()
        return error

    async def _start_http(self) -> str | None:
        import uvicorn

        async def asgi(scope: dict, receive: Any, send: Any) -> None:
            # A closure, not a bound method: Ray wraps an actor's methods.
            await _serve_http(self, scope, receive, send)

        options = self._options
        config = uvicorn.Config(
            asgi,
            host=self._host,
            port=self._port,
            interface="asgi3",
            http=http_protocol.protocol(),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=options["keep_alive_timeout_s"],
            ssl_keyfile=options["ssl_keyfile"],
            ssl_certfile=options["ssl_certfile"],
            ssl_keyfile_password=options["ssl_keyfile_password"],
            ssl_ca_certs=options["ssl_ca_certs"],
        )
        try:
            sock = _listening_socket(self._host, self._port)
        except OSError as err:
            return f"cannot serve HTTP on {self._host}:{self._port}: the address is in use or not available ({err.strerror or err})"
        self._server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if task.done():
                exc = task.exception() if not task.cancelled() else None
                return f"cannot serve HTTP on {self._host}:{self._port}: " + (
                    "the address is in use or not available" if isinstance(exc, SystemExit) or exc is None else str(exc)
                )
            await asyncio.sleep(0.02)
        return None

    async def set_routes(self, routes: dict[str, tuple], code_paths: list[str]) -> None:
        """Install routes; a graph's plan and http_adapter arrive pickled, loaded with the drivers' import paths."""
        installed: dict[str, tuple] = {}
        for prefix, (kind, app, target, extra) in routes.items():
            driven: dict[str, Any] = {}
            if kind == "plan":
                plan, adapter = loads_with_paths(extra, code_paths)
                if isinstance(plan, dict):  # DAGDriver.bind({route: graph}): FastAPI routes, as in Ray Serve
                    driven = {route: PlanTarget(app, p, target) for route, p in plan.items()}
                else:
                    target = PlanTarget(app, plan, target)
            else:
                adapter = loads_with_paths(extra, code_paths) if extra is not None else None
                target = DeploymentTarget(target) if adapter is not None else target
            if adapter is not None:  # a DAGDriver: its adapter runs as a FastAPI dependency, as in Ray Serve
                try:
                    kind, adapter = "driver", driver_app(driven or {MATCH_ALL: target}, adapter)
                except Exception as exc:  # one bad route must not take the others down
                    logger.error("application %r: its http_adapter cannot be served: %s", app, exc)
                    kind, adapter = "broken", f"application {app!r}: its http_adapter cannot be served: {exc}"
            installed[prefix] = (kind, app, target, adapter)
        self._routes = installed
        self.populated = self.populated or bool(installed)

    async def ready(self) -> bool:
        return True

    async def watch(self) -> None:
        """Never returns: the controller learns of the proxy's death by this call failing."""
        await asyncio.Event().wait()

    async def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    async def _handle(self, scope: dict, body: bytes, seen: _Seen | None = None) -> HTTPResult | HTTPStream:
        """Answer one request; ``seen`` learns its route, application and ingress deployment (for metrics)."""
        if scope["path"] == "/-/healthz":  # Ray Serve's proxy endpoints, with its words
            return text(200, "success") if self.populated else text(503, "Route table is not populated yet.")
        if scope["path"] == "/-/routes":
            apps = {prefix: route[1] for prefix, route in sorted(self._routes.items())}
            return 200, [("content-type", "application/json")], json.dumps(apps).encode()
        if scope["path"] == GRAPH_PAGES or scope["path"].startswith(GRAPH_PAGES + "/"):
            return await graph_page(scope["path"])  # the live graph of the applications
        prefix, route = _match(self._routes, scope["path"])
        if route is None:
            return not_found(scope["path"], "-/routes", "routes", sorted(self._routes))
        kind, app, target, adapter = route
        assert prefix is not None
        request = current_request()
        if request is not None:  # the calls this request makes carry its route and application
            set_request(RequestContext(request.request_id, prefix, app, request.trace))
        if seen is not None:
            seen.route, seen.app = prefix, app
            info = getattr(target, "info", target)  # a deployment ingress's DeploymentInfo; a graph has none
            seen.deployment = getattr(info, "name", "") if isinstance(getattr(info, "name", None), str) else ""
        if kind == "broken":
            return text(500, adapter)
        resends = 0
        while True:
            try:
                return await self._forward(prefix, kind, target, adapter, scope, body)
            except ray.exceptions.RayActorError as exc:
                # A replica died under this request; the routers here no longer use it. Send it again.
                delay = resend_delay(exc, resends)
                if delay is None:
                    logger.error("application %r: a replica died: %s", app, exc)
                    return text(503, f"application {app!r}: a replica died while handling the request; retry")
                logger.warning("application %r: a replica died while handling a request; sending it again", app)
            resends += 1
            await asyncio.sleep(delay)

    async def _forward(
        self, prefix: str, kind: str, target: Any, adapter: Any, scope: dict, body: bytes
    ) -> HTTPResult | HTTPStream:
        try:
            if kind == "driver":
                portable = portable_scope(scope)
                portable["root_path"] = "" if prefix == "/" else prefix.rstrip("/")
                return await call_asgi(adapter, portable, body)
            if kind == "deployment":
                portable = portable_scope(scope)
                portable["root_path"] = "" if prefix == "/" else prefix.rstrip("/")
                model_id = model_id_of(scope)  # a multiplexed model's requests go where it is loaded
                method = ModelCall(HTTP, model_id) if model_id else HTTP
                router = target.router()
                session = session_id_of(scope)  # a session's requests stay on one replica, as with Ray Serve's header
                token = ROUTING.set(Routing(session)) if session else None
                try:
                    ref = await router.submit_async(method, (portable, body), {}, releases=True)
                finally:
                    if token is not None:
                        ROUTING.reset(token)
                try:
                    result = await _cancelling(ref)
                except asyncio.CancelledError:
                    router.release(ref, answered=False)
                    raise
                except BaseException:
                    router.release(ref)
                    raise
                if result[0] == STREAM:  # a StreamingResponse: its chunks are pulled from the replica
                    _, replica, stream_id, status, headers = result
                    # It counts against its replica until it ends, not only until it opened (as in Ray Serve):
                    # streams then spread over replicas, and max_ongoing_requests bounds them too.
                    return HTTPStream(replica, stream_id, status, headers, on_end=lambda: router.release(ref))
                router.release(ref)
                return result
            try:
                value = decode_json_body(body)
            except ValueError as exc:
                return text(400, f"request body is not valid JSON: {exc}")
            # A graph's answer needs no ObjectRef here: on the compiled path it skips the object store.
            extra = {"object_ref": False} if isinstance(target, PlanTarget) else {}
            ref = await target.submit_async("__call__", (value,), {}, **extra)
            return encode_result(await _cancelling(ref))
        except (PlanInputError, NoRouteError) as exc:  # what the request lacks, or a value no branch takes
            return text(400, str(exc))
        except (BackPressureError, DeploymentUnavailableError) as exc:  # full, or failed to deploy: Ray Serve's 503s
            return text(503, str(exc))
        except ray.exceptions.RayActorError:
            raise
        except Exception as exc:  # the user's error: 500 with its type and message
            return encode_error(_cause(exc))


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other proxies may bind too (SO_REUSEPORT), as Ray Serve's proxies do.

    With ``proxy_location: EveryNode`` every node runs a proxy on the same port; on one machine (a
    ``ray.cluster_utils.Cluster``, or several raylets on one host) they share it and the kernel spreads
    connections over them. A program that binds the port without SO_REUSEPORT still makes this fail.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class HTTPStream:
    """A response whose body the replica that made it (a StreamingResponse) hands over chunk by chunk."""

    def __init__(
        self, replica: Any, stream_id: int, status: int, headers: list[tuple[str, str]], on_end: Callable[[], None] | None = None
    ):
        self.replica = replica
        self.stream_id = stream_id
        self.status = status
        self.headers = headers
        #: Called once the stream is over (sent, cut off, or left by its client): its slot on the replica is free.
        self.on_end = on_end

    async def send(self, send: Any, receive: Any, extra_headers: list[tuple[str, str]]) -> None:
        """Send the response as the replica hands over its chunks.

        A client that goes away ends the stream on the replica (its generator is closed); a body that
        fails mid-way raises here, after the headers went out, so the client sees the response cut off.
        """
        try:
            await self._send(send, receive, extra_headers)
        finally:
            if self.on_end is not None:
                self.on_end()

    async def _send(self, send: Any, receive: Any, extra_headers: list[tuple[str, str]]) -> None:
        headers = [*self.headers, *extra_headers]
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                pull = asyncio.ensure_future(_awaited(self.replica.stream_next.remote(self.stream_id)))
                await asyncio.wait({pull, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not pull.done():  # the client left: stop the body where it is made
                    pull.cancel()
                    self.replica.stream_close.remote(self.stream_id)
                    return
                chunk = pull.result()
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()


async def _awaited(value: Any) -> Any:
    return await value


async def _cancelling(ref: Any) -> Any:
    """Await a request's result; if this wait is cancelled (the request timed out, or its client left),
    cancel the request on its replica too, which cancels the calls it made (see replica.py)."""
    try:
        return await (ray_compat.ref_future(ref) if isinstance(ref, ray.ObjectRef) else ref)
    except asyncio.CancelledError:
        if isinstance(ref, ray.ObjectRef):
            ray.cancel(ref)
        raise


async def _disconnected(receive: Any) -> None:
    """Returns when the client disconnects (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Seen:
    """What the proxy learnt of a request while answering it: its route prefix, application and ingress."""

    __slots__ = ("route", "app", "deployment")

    def __init__(self) -> None:
        self.route = self.app = self.deployment = ""


async def _serve_http(proxy: HTTPProxy, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    started = time.perf_counter()
    seen = _Seen()
    status = 499  # the client left before an answer (nginx's code; Ray Serve counts these too)
    proxy.ongoing += 1
    try:
        status = await _answer_http(proxy, scope, receive, send, seen)
    finally:
        proxy.ongoing -= 1
        ms = (time.perf_counter() - started) * 1000.0
        replica_logging.proxy_access_log(scope, seen.route, status, ms)
        if not proxy.ongoing:  # nothing left to answer: the access lines go to the file now
            replica_logging.flush_pending()
        if telemetry.ENABLED:
            telemetry.record(("http", seen.route, scope.get("method", ""), seen.app, status, seen.deployment), ms)


async def _answer_http(proxy: HTTPProxy, scope: dict, receive: Any, send: Any, seen: _Seen) -> int:
    """Answer one HTTP request; returns the status sent."""
    # The client's id if it sent one, else a new one; the replica sees it in the request's headers.
    request_id = request_id_of(scope)
    if request_id is None:
        request_id = new_request_id()
        scope = {**scope, "headers": [*scope.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]}
    span = None
    if tracing._tracer is not None:  # the request's first span: the client's traceparent (if any) is its parent
        span, trace = tracing.start(
            f"proxy {scope.get('method', '')} {scope.get('path', '')}",
            _header(scope, b"traceparent"),
            {"http.method": scope.get("method", ""), "http.target": scope.get("path", ""), "servegraph.request_id": request_id},
        )
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"traceparent"]
        scope = {**scope, "headers": [*headers, (b"traceparent", trace.encode())]}  # the ingress's parent
        set_request(RequestContext(request_id, "", "", trace))
    else:
        set_request_id(request_id)
    try:
        status = await _answer_after_id(proxy, scope, receive, send, seen, request_id)
    except BaseException as exc:
        tracing.end(span, exc)
        raise
    tracing.end(span, None, {"http.status_code": status, "http.route": seen.route})
    return status


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def _answer_after_id(proxy: HTTPProxy, scope: dict, receive: Any, send: Any, seen: _Seen, request_id: str) -> int:
    body = await _read_body(scope, receive, proxy.max_body_bytes)
    if body is None:
        status, headers, payload = text(413, f"request body larger than {proxy.max_body_bytes} bytes")
    else:
        # The client may leave before the answer: then the request is cancelled, down to the replicas. The
        # request runs in this task; a watcher of the connection cancels it if the client goes first.
        on_disconnect = scope.get(ON_DISCONNECT)
        watch = _ClientWatch(receive) if on_disconnect is None else _DisconnectWatch(on_disconnect)
        try:
            if proxy.request_timeout_s is None:
                result = await proxy._handle(scope, body, seen)
            else:
                result = await asyncio.wait_for(proxy._handle(scope, body, seen), proxy.request_timeout_s)
        except asyncio.TimeoutError:
            result = text(408, f"request timed out after {proxy.request_timeout_s} s (http_options.request_timeout_s)")
        except asyncio.CancelledError:
            if not watch.left:
                raise
            watch.uncancel()
            return 499
        finally:
            watch.stop()
        if isinstance(result, HTTPStream):
            await result.send(send, receive, [(REQUEST_ID_HEADER, request_id)])
            return result.status
        status, headers, payload = result
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            + [(_REQUEST_ID_HEADER_BYTES, request_id.encode("latin-1"))],
        }
    )
    await send({"type": "http.response.body", "body": payload})
    return status


_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode("latin-1")


class _ClientWatch:
    """Cancels the task that made it when the client disconnects, until :meth:`stop`; ``left`` says whether it did."""

    __slots__ = ("task", "watcher", "left")

    def __init__(self, receive: Any):
        self.task = asyncio.current_task()
        self.left = False
        self.watcher = asyncio.get_running_loop().create_task(_disconnected(receive))
        self.watcher.add_done_callback(self._gone)

    def _gone(self, watcher: asyncio.Task) -> None:
        if not watcher.cancelled() and watcher.exception() is None and self.task is not None:
            self.left = True
            self.task.cancel()

    def stop(self) -> None:
        self.task = None  # a disconnect noticed from now on cancels nothing
        self.watcher.remove_done_callback(self._gone)
        self.watcher.cancel()

    def uncancel(self) -> None:
        _uncancel(self.task)


def _uncancel(task: asyncio.Task | None) -> None:
    """The cancellation was the watcher's, and is handled: the task goes on (to record the request)."""
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+; before, a task keeps no count to undo
    if uncancel is not None:
        uncancel()


class _DisconnectWatch:
    """:class:`_ClientWatch` without a task: the connection (see http_protocol.py) calls :meth:`_gone` when the
    client leaves."""

    __slots__ = ("task", "departure", "left")

    def __init__(self, departure: http_protocol.Departure):
        self.task = asyncio.current_task()
        self.left = False
        self.departure = departure
        if departure.left:  # gone before the request got here: cancelled where it first waits
            asyncio.get_running_loop().call_soon(self._gone)
        else:
            departure.callbacks.add(self._gone)

    def _gone(self) -> None:
        if self.task is not None:
            self.left = True
            self.task.cancel()

    def stop(self) -> None:
        self.task = None
        self.departure.callbacks.discard(self._gone)

    def uncancel(self) -> None:
        _uncancel(self.task)


@telemetry.expander("http")
@telemetry.expander("grpc")
def _ingress_metrics(key: tuple, values: list, deployments: dict, edges: dict) -> None:
    """Ray Serve's request metrics of a proxy, for HTTP (status a number) or gRPC (status a code's name)."""
    protocol, route, method, app, status, deployment = key
    code = str(status)
    failed = status >= 400 if protocol == "http" else status != "OK"
    tags = {"route": route, "method": method, "application": app, "status_code": code}
    telemetry.inc(f"serve_num_{protocol}_requests", tags, len(values))
    for ms in values:
        telemetry.observe(f"serve_{protocol}_request_latency_ms", tags, ms)
    if failed:
        error_tags = {"route": route, "error_code": code, "method": method, "application": app}
        telemetry.inc(f"serve_num_{protocol}_error_requests", error_tags, len(values))
        telemetry.inc(f"serve_num_deployment_{protocol}_error_requests", {**error_tags, "deployment": deployment}, len(values))


async def _read_body(scope: dict, receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes; chunks joined once, not copied per chunk."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if chunk:
            chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
