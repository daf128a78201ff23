"""gRPC ingress: a grpc.aio server inside each HTTP proxy actor, routing as Ray Serve's gRPC proxy does.

The ``application`` metadata key names the application (absent, the only one running); the gRPC
method's name is the ingress deployment's method called with the request protobuf, and what it
returns (a protobuf message) is the response. A method the generated code declares server-streaming
calls a generator method through the streaming path (``StreamMethod``) and sends each item as it comes.
Errors are status codes with Ray Serve's words: NOT_FOUND for an unknown application, INTERNAL with
the user's message, RESOURCE_EXHAUSTED for back-pressure, DEADLINE_EXCEEDED past ``request_timeout_s``.

grpcio is optional: this module is imported only when grpc_options name servicer functions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

try:
    import grpc
except ImportError as exc:  # an optional dependency: say how to get it
    raise ImportError(
        "gRPC ingress (grpc_options.grpc_servicer_functions) needs grpcio where the cluster runs: "
        "pip install 'servegraph[grpc]'"
    ) from exc

import ray

from ...errors import BackPressureError, DeploymentError
from ..common import telemetry
from ..common.context import RequestContext, new_request_id, set_request
from ..common.records import ModelCall, StreamMethod
from ..data.responses import resend_delay

logger = logging.getLogger("servegraph.proxy")

#: Ray Serve's built-in service: health and the list of applications.
API_SERVICE = "ray.serve.RayServeAPIService"
#: Longest status details sent (they travel in HTTP/2 trailers), as Ray Serve's limit.
MAX_DETAILS = 4096
_LIST_HINT = "Ping /ray.serve.RayServeAPIService/ListApplications for available applications."


@dataclasses.dataclass(frozen=True)
class RpcMethod:
    """One method of a generated service, as its add-function registers it."""

    service: str
    name: str
    request_deserializer: Callable[[bytes], Any] | None
    request_streaming: bool
    response_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


class _AnyServicer:
    """Stands in for the user's servicer: the add-function only reads its methods, which the proxy answers."""

    def __call__(self, *args: Any) -> None:
        raise AssertionError("never called: the proxy answers every method")

    def __getattr__(self, name: str) -> Callable[..., None]:
        return self.__call__


class _CapturingServer:
    """What an add-function registers, read instead of served: each method's (de)serializers and streaming kind."""

    def __init__(self) -> None:
        self.methods: dict[str, RpcMethod] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            # grpcio's public API cannot list a generic handler's methods; the generated code's handler
            # (grpc.method_handlers_generic_handler) keeps them in ``_method_handlers``, keyed "/service/method".
            table = getattr(handler, "_method_handlers", None)
            if table is None:
                raise TypeError(f"{type(handler).__name__} is not a generated service's handler")
            for path, method in table.items():
                _, service, name = path.split("/")
                self._add(service, name, method)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, method in handlers.items():
            self._add(service, name, method)

    def _add(self, service: str, name: str, method: Any) -> None:
        self.methods[f"/{service}/{name}"] = RpcMethod(
            service, name, method.request_deserializer, bool(method.request_streaming), bool(method.response_streaming)
        )


def servicer_methods(add_function: Callable[[Any, Any], None]) -> dict[str, RpcMethod]:
    """The methods a generated ``add_XServicer_to_server`` function registers, by "/service/method"."""
    server = _CapturingServer()
    add_function(_AnyServicer(), server)
    return server.methods


def import_servicer_function(path: str) -> Callable[[Any, Any], None]:
    """The function at ``module.name``; ImportError or TypeError with what to fix."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"grpc_servicer_functions: {path!r} cannot be imported ({exc}); the generated module must be importable "
            "where the proxy runs: deploy from its directory or install it"
        ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise TypeError(f"grpc_servicer_functions: {module_name} has no function {name!r} (generated add_XServicer_to_server functions are)")
    return function


class _Status(Exception):
    """A request's end with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details[: MAX_DETAILS - 15] + "... [truncated]" if len(details) > MAX_DETAILS else details


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


def error_status(exc: BaseException, request_timeout_s: float | None) -> _Status:
    """The status a failed request ends with, as Ray Serve's gRPC proxy gives it."""
    if isinstance(exc, _Status):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return _Status(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"Request timed out after {request_timeout_s}s." if request_timeout_s is not None else "Request timed out.",
        )
    if isinstance(exc, BackPressureError):
        return _Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, ray.exceptions.RayActorError):
        return _Status(grpc.StatusCode.UNAVAILABLE, "a replica died while handling the request; retry")
    if isinstance(exc, DeploymentError) and not isinstance(exc, ray.exceptions.RayTaskError):
        # The router's own (the deployment was deleted, the controller cannot be reached), not the user's:
        # Ray Serve's DeploymentUnavailableError.
        return _Status(grpc.StatusCode.UNAVAILABLE, str(exc))
    cause = _cause(exc)
    return _Status(grpc.StatusCode.INTERNAL, f"{type(cause).__name__}: {cause}")


def serialized(value: Any, method: RpcMethod) -> bytes:
    """A deployment's answer as the bytes the client's stub reads."""
    if isinstance(value, bytes):
        return value
    to_bytes = getattr(value, "SerializeToString", None)
    if to_bytes is None:
        raise _Status(
            grpc.StatusCode.INTERNAL,
            f"{method.path}: the deployment returned {type(value).__name__}, not a protobuf message; return the "
            "response message the service declares",
        )
    return to_bytes()


def _metadata(context: Any) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class GRPCIngress:
    """The gRPC server of one proxy. ``routes`` gives the proxy's routes (prefix -> (kind, app, target, adapter));
    ``populated``, whether a route ever arrived (see HTTPProxy.populated)."""

    def __init__(
        self, routes: Callable[[], dict[str, tuple]], host: str, options: dict[str, Any], populated: Callable[[], bool]
    ):
        self._routes = routes
        self._populated = populated
        self._host = host
        self._options = options
        self.request_timeout_s: float | None = options["request_timeout_s"]
        self._server: Any = None
        #: gRPC requests being answered now (Ray Serve's serve_num_ongoing_grpc_requests).
        self.ongoing = 0
        if telemetry.ENABLED:
            node = telemetry.node_tags()
            telemetry.add_gauge_source(lambda: [("serve_num_ongoing_grpc_requests", node, self.ongoing)])

    async def start(self) -> str | None:
        """Import the servicer functions and serve on host:port; an error message instead if it cannot."""
        port = self._options["port"]
        try:
            methods: dict[str, RpcMethod] = {}
            for path in self._options["grpc_servicer_functions"]:
                methods.update(servicer_methods(import_servicer_function(path)))
            reflection: Any = None
            if self._options["enable_reflection"]:
                try:
                    reflection = importlib.import_module("grpc_reflection.v1alpha.reflection")
                except ImportError:
                    return (
                        "gRPC server reflection (grpc_options.enable_reflection, on by default as in Ray Serve) needs "
                        "grpcio-reflection where the cluster runs: pip install 'servegraph[grpc]', or set enable_reflection to false"
                    )
        except (ImportError, TypeError) as exc:
            return str(exc)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])  # every node's proxy shares the port, as for HTTP
        by_service: dict[str, dict[str, Any]] = {}
        for method in methods.values():
            by_service.setdefault(method.service, {})[method.name] = self._handler(method)
        by_service[API_SERVICE] = self._api_handlers()
        for service, handlers in sorted(by_service.items()):
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        if reflection is not None:
            names = sorted(s for s in by_service if s != API_SERVICE) + [reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, server)
        host = f"[{self._host}]" if ":" in self._host else self._host
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            bound = 0
        if not bound:
            return f"cannot serve gRPC on {self._host}:{port}: the address is in use or not available"
        await server.start()
        self._server = server
        return None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    # Routing --------------------------------------------------------------------------------
    def _route(self, metadata: dict[str, str]) -> tuple[str, Any]:
        """The application the request names: its name and ingress's DeploymentInfo."""
        apps = {route[1]: route for route in self._routes().values()}
        name = metadata.get("application", "")
        route = apps.get(name) if name else next(iter(apps.values())) if len(apps) == 1 else None
        if route is None:
            said = f"Application '{name}' not found." if name else "Application metadata not set."
            running = ", ".join(sorted(apps)) or "none"
            raise _Status(grpc.StatusCode.NOT_FOUND, f"{said} {_LIST_HINT} (servegraph: applications are {running})")
        kind, app, target, _ = route
        if kind != "deployment":
            raise _Status(
                grpc.StatusCode.UNIMPLEMENTED,
                f"application {app!r} is an InputNode graph or a DAGDriver; gRPC calls the methods of an ingress "
                "deployment: deploy one as the application's ingress, or call this one over HTTP",
            )
        return app, target

    # Handlers -------------------------------------------------------------------------------
    def _handler(self, method: RpcMethod) -> Any:
        if method.request_streaming:  # client or bidirectional streaming: answered, never served half

            async def refuse(request_iterator: Any, context: Any) -> None:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{method.path}: servegraph's gRPC ingress serves unary and server-streaming methods; "
                    "client-streaming and bidirectional methods are not supported yet",
                )

            make = grpc.stream_stream_rpc_method_handler if method.response_streaming else grpc.stream_unary_rpc_method_handler
            return make(refuse, request_deserializer=method.request_deserializer)
        if method.response_streaming:

            async def stream(request: Any, context: Any) -> AsyncIterator[bytes]:
                async for chunk in self._stream(method, request, context):
                    yield chunk

            return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=method.request_deserializer)

        async def unary(request: Any, context: Any) -> bytes:
            return await self._unary(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=method.request_deserializer)

    async def _unary(self, method: RpcMethod, request: Any, context: Any) -> bytes:
        metadata = _metadata(context)
        seen = _Seen(self, _send_request_id(context, metadata), metadata)
        try:
            app, target = self._route(metadata)
            seen.found(app, target)
            model_id = metadata.get("multiplexed_model_id", "")
            call = ModelCall(method.name, model_id) if model_id else method.name
            value = await asyncio.wait_for(self._call_retrying(app, target, call, request), self.request_timeout_s)
            seen.done(method.path, "OK")
            return serialized(value, method)
        except Exception as exc:
            status = error_status(exc, self.request_timeout_s)
        seen.done(method.path, status.code.name)
        await context.abort(status.code, status.details)
        raise AssertionError("unreachable: abort raises")

    async def _call_retrying(self, app: str, target: Any, call: str, request: Any) -> Any:
        resends = 0
        while True:
            try:
                return await _call(target, call, request)
            except ray.exceptions.RayActorError as exc:
                # A replica died under this request; the routers here no longer use it. Send it again, as over HTTP.
                delay = resend_delay(exc, resends)
                if delay is None:
                    raise
                logger.warning("application %r: a replica died while handling a gRPC request; sending it again", app)
            resends += 1
            await asyncio.sleep(delay)

    async def _stream(self, method: RpcMethod, request: Any, context: Any) -> AsyncIterator[bytes]:
        metadata = _metadata(context)
        seen = _Seen(self, _send_request_id(context, metadata), metadata)
        loop = asyncio.get_running_loop()
        deadline = None if self.request_timeout_s is None else loop.time() + self.request_timeout_s
        generator: Any = None
        status: _Status | None = None
        try:
            app, target = self._route(metadata)
            seen.found(app, target)
            if metadata.get("multiplexed_model_id"):
                raise _Status(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{method.path}: servegraph cannot yet stream a multiplexed request; leave out multiplexed_model_id",
                )
            generator = await asyncio.wait_for(
                target.router().submit_async(StreamMethod(method.name), (request,), {}), self.request_timeout_s
            )
            items = _values(generator)
            while True:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    value = await asyncio.wait_for(items.__anext__(), remaining)
                except StopAsyncIteration:
                    break
                yield serialized(value, method)
            generator = None  # finished: nothing to cancel
        except Exception as exc:
            status = error_status(exc, self.request_timeout_s)
        finally:
            if generator is not None:  # timed out, failed, or the client left: stop the generator on the replica
                _cancel(generator)
                if status is None:
                    status = _Status(grpc.StatusCode.CANCELLED, "the client went away")
            seen.done(method.path, status.code.name if status is not None else "OK")
        if status is not None:
            await context.abort(status.code, status.details)

    # Ray Serve's API service -------------------------------------------------------------------
    def _api_handlers(self) -> dict[str, Any]:
        # Generated code, typed as Any: its message classes are made at import time.
        serve_pb2: Any = importlib.import_module("ray.serve.generated.serve_pb2")

        async def healthz(request: Any, context: Any) -> bytes:
            if not self._populated():  # Ray Serve's words, as the HTTP proxy's /-/healthz
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Route table is not populated yet.")
            return serve_pb2.HealthzResponse(message="success").SerializeToString()

        async def list_applications(request: Any, context: Any) -> bytes:
            names = sorted({route[1] for route in self._routes().values()})
            return serve_pb2.ListApplicationsResponse(application_names=names).SerializeToString()

        return {
            "Healthz": grpc.unary_unary_rpc_method_handler(healthz, request_deserializer=serve_pb2.HealthzRequest.FromString),
            "ListApplications": grpc.unary_unary_rpc_method_handler(
                list_applications, request_deserializer=serve_pb2.ListApplicationsRequest.FromString
            ),
        }


async def _call(target: Any, call: str, request: Any) -> Any:
    """Send one request to the ingress and await its answer; cancelled, it cancels the request on its replica."""
    ref = await target.router().submit_async(call, (request,), {})
    try:
        return await ref
    except asyncio.CancelledError:
        _cancel(ref)
        raise


def _cancel(call: Any) -> None:
    """Cancel a request on its replica (which cancels the calls it made, see replica.py)."""
    if isinstance(call, (ray.ObjectRef, ray.ObjectRefGenerator)):
        ray.cancel(call)


async def _values(generator: Any) -> AsyncIterator[Any]:
    async for ref in generator:
        yield await ref


def _send_request_id(context: Any, metadata: dict[str, str]) -> str:
    """The client's ``request_id`` (else a new one) back in the trailing metadata, as Ray Serve sends it."""
    request_id = metadata.get("request_id") or new_request_id()
    context.set_trailing_metadata((("request_id", request_id),))
    return request_id


class _Seen:
    """One gRPC request: its context for the calls it makes, and its metrics when it ends (see telemetry.py)."""

    __slots__ = ("ingress", "request_id", "trace", "app", "deployment", "started")

    def __init__(self, ingress: GRPCIngress, request_id: str, metadata: dict[str, str]):
        self.ingress = ingress
        ingress.ongoing += 1
        self.request_id = request_id
        self.trace = metadata.get("traceparent", "")
        self.app = self.deployment = ""
        self.started = time.perf_counter()
        set_request(RequestContext(request_id, "", "", self.trace))

    def found(self, app: str, target: Any) -> None:
        """The request's application: its calls carry it (as route too, as Ray Serve tags gRPC requests)."""
        self.app = app
        self.deployment = getattr(target, "name", "") or ""
        set_request(RequestContext(self.request_id, app, app, self.trace))

    def done(self, method: str, code: str) -> None:
        self.ingress.ongoing -= 1
        if telemetry.ENABLED:
            ms = (time.perf_counter() - self.started) * 1000.0
            telemetry.record(("grpc", self.app, method, self.app, code, self.deployment), ms)

