"""gRPC ingress without a cluster: grpc_options checked and refused where they cannot be honoured, and the proxy's
gRPC server (routing, streaming, status codes) served to a real grpcio client over routers that call Python objects."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from conftest import free_port

import servegraph as serve
from servegraph.errors import BackPressureError, ConfigError
from servegraph.runtime.common.grpc_options import GRPC_OPTION_DEFAULTS, grpc_options_dict

grpc = pytest.importorskip("grpc")
serve_pb2 = pytest.importorskip("ray.serve.generated.serve_pb2")
serve_pb2_grpc = pytest.importorskip("ray.serve.generated.serve_pb2_grpc")

ADD_USER_SERVICE = "ray.serve.generated.serve_pb2_grpc.add_UserDefinedServiceServicer_to_server"


# Options ------------------------------------------------------------------------------------------
def test_no_servicer_function_means_no_grpc_as_in_ray_serve():
    assert grpc_options_dict(None) == {}
    assert grpc_options_dict({"port": 9001}) == {}


def test_options_are_filled_in_from_a_dict_or_rays_grpc_options():
    from ray.serve.config import gRPCOptions

    expected = {**GRPC_OPTION_DEFAULTS, "port": 9100, "grpc_servicer_functions": [ADD_USER_SERVICE]}
    assert grpc_options_dict({"port": 9100, "grpc_servicer_functions": [ADD_USER_SERVICE]}) == expected
    assert grpc_options_dict(gRPCOptions(port=9100, grpc_servicer_functions=[ADD_USER_SERVICE])) == expected


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"grpc_servicer_functions": [ADD_USER_SERVICE], "host": "0.0.0.0"}, TypeError, "grpc_options got host"),
        ({"grpc_servicer_functions": ADD_USER_SERVICE}, TypeError, "must be a list of import paths"),
        ({"grpc_servicer_functions": ["add_fn"]}, ValueError, "'add_fn' is not an import path"),
        ({"grpc_servicer_functions": [ADD_USER_SERVICE], "port": 70000}, ValueError, "between 1 and 65535"),
        ({"grpc_servicer_functions": [ADD_USER_SERVICE], "port": "9000"}, TypeError, "port must be an int"),
        ({"grpc_servicer_functions": [ADD_USER_SERVICE], "request_timeout_s": 0}, ValueError, "positive number"),
        (object(), TypeError, "must be a dict or a gRPCOptions"),
    ],
)
def test_bad_options_are_refused_with_what_to_fix(options, error, message):
    with pytest.raises(error, match=message):
        grpc_options_dict(options)


def test_serve_start_checks_grpc_options_before_connecting():
    with pytest.raises(TypeError, match="grpc_options got hostname"):
        serve.start(grpc_options={"hostname": "x", "grpc_servicer_functions": [ADD_USER_SERVICE]})


def test_a_deploy_config_with_servicer_functions_is_accepted(tmp_path):
    from servegraph.cli.ops import _refuse_unapplied_http_options
    from servegraph.compiler.config.loading import load_config

    path = tmp_path / "app.yaml"
    path.write_text(
        "grpc_options:\n  port: 9100\n  grpc_servicer_functions: ['" + ADD_USER_SERVICE + "']\n"
        "applications:\n- name: app\n  import_path: m:app\n  route_prefix: /\n"
    )
    config = load_config(str(path))
    _refuse_unapplied_http_options(config, str(path))  # no longer refused
    assert grpc_options_dict(config.grpc_options.model_dump())["port"] == 9100


def test_a_deploy_config_still_refuses_root_path(tmp_path):
    from servegraph.cli.ops import _refuse_unapplied_http_options
    from servegraph.compiler.config.loading import load_config

    path = tmp_path / "app.yaml"
    path.write_text("http_options:\n  root_path: /x\napplications:\n- name: app\n  import_path: m:app\n  route_prefix: /\n")
    with pytest.raises(ConfigError, match="http_options.root_path"):
        _refuse_unapplied_http_options(load_config(str(path)), str(path))


def test_the_methods_and_their_streaming_kind_come_from_the_generated_add_function():
    from servegraph.runtime.actors.grpc_proxy import import_servicer_function, servicer_methods

    methods = servicer_methods(import_servicer_function(ADD_USER_SERVICE))
    kinds = {m.name: (m.request_streaming, m.response_streaming) for m in methods.values()}
    assert kinds == {
        "__call__": (False, False),
        "Method1": (False, False),
        "Method2": (False, False),
        "Streaming": (False, True),
        "ClientStreaming": (True, False),
        "BidiStreaming": (True, True),
    }


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_pb2_grpc.add_XServicer_to_server", "cannot be imported"),
        ("ray.serve.generated.serve_pb2_grpc.add_NothingServicer_to_server", "has no function"),
    ],
)
def test_a_servicer_function_that_does_not_import_says_so(path, message):
    from servegraph.runtime.actors.grpc_proxy import import_servicer_function

    with pytest.raises((ImportError, TypeError), match=message):
        import_servicer_function(path)


# The proxy's gRPC server, over routers that call Python objects ---------------------------------------
class Greeter:
    def __call__(self, request):
        return serve_pb2.UserDefinedResponse(greeting=f"Hello {request.name}", num_x2=request.num * 2)

    def Method1(self, request):
        return serve_pb2.UserDefinedResponse(greeting=f"Method1 {request.name}")

    def Method2(self, request):
        return "not a protobuf message"

    def Streaming(self, request):
        for i in range(request.num):
            yield serve_pb2.UserDefinedResponse(greeting=f"{request.name} {i}", num_x2=i)


class Failing:
    def __call__(self, request):
        raise ValueError(f"bad name {request.name!r}")

    def Method1(self, request):
        raise BackPressureError("Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1).")

    async def Method2(self, request):
        await asyncio.sleep(30)

    def Streaming(self, request):
        yield serve_pb2.UserDefinedResponse(greeting="first")
        raise RuntimeError("broke after one")


class _Router:
    """A router whose replica is ``obj`` itself: the method named is called in this process."""

    def __init__(self, obj: Any):
        self.obj = obj
        self.sent: list[str] = []

    async def submit_async(self, method: str, args: tuple, kwargs: dict) -> Any:
        from servegraph.runtime.common.records import StreamMethod

        self.sent.append(method)

        fn = getattr(self.obj, str(method))
        if type(method) is StreamMethod:
            return _refs(fn(*args))
        if isinstance(self.obj, Failing) and str(method) == "Method1":
            fn(*args)  # back-pressure is raised when sending, as the real router does

        async def answer() -> Any:
            value = fn(*args)
            return await value if asyncio.iscoroutine(value) else value

        return asyncio.ensure_future(answer())


async def _refs(gen: Any) -> Any:
    for value in gen:
        future = asyncio.get_running_loop().create_future()
        future.set_result(value)
        yield future


class _Info:
    def __init__(self, obj: Any):
        self._router = _Router(obj)

    def router(self) -> _Router:
        return self._router


@pytest.fixture
def grpc_server():
    """The proxy's gRPC server for two applications, on its own event loop in a thread."""
    from servegraph.runtime.actors.grpc_proxy import GRPCIngress

    routes = {"/": ("deployment", "greeter", _Info(Greeter()), None), "/f": ("deployment", "failing", _Info(Failing()), None)}
    port = free_port()
    options = {**GRPC_OPTION_DEFAULTS, "port": port, "grpc_servicer_functions": [ADD_USER_SERVICE], "request_timeout_s": 2}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ingress = GRPCIngress(lambda: routes, "127.0.0.1", options, lambda: bool(routes))
    assert asyncio.run_coroutine_threadsafe(ingress.start(), loop).result(30) is None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield serve_pb2_grpc.UserDefinedServiceStub(channel), routes, channel
    channel.close()
    asyncio.run_coroutine_threadsafe(ingress.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _app(name: str) -> tuple:
    return (("application", name),)


def test_unary_call_reaches_the_named_application(grpc_server):
    stub, _, _ = grpc_server
    response = stub.__call__(serve_pb2.UserDefinedMessage(name="Ada", num=21), metadata=_app("greeter"))
    assert (response.greeting, response.num_x2) == ("Hello Ada", 42)


def test_the_method_name_calls_the_deployment_method_of_that_name(grpc_server):
    stub, _, _ = grpc_server
    assert stub.Method1(serve_pb2.UserDefinedMessage(name="x"), metadata=_app("greeter")).greeting == "Method1 x"


def test_server_streaming_yields_every_item(grpc_server):
    stub, _, _ = grpc_server
    items = list(stub.Streaming(serve_pb2.UserDefinedMessage(name="n", num=4), metadata=_app("greeter")))
    assert [(r.greeting, r.num_x2) for r in items] == [(f"n {i}", i) for i in range(4)]


def test_unknown_application_is_not_found_with_the_running_ones(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.__call__(serve_pb2.UserDefinedMessage(name="x"), metadata=_app("nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Application 'nope' not found" in info.value.details()
    assert "failing, greeter" in info.value.details()


def test_no_application_metadata_with_two_running_is_not_found(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.__call__(serve_pb2.UserDefinedMessage(name="x"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Application metadata not set" in info.value.details()


def test_no_application_metadata_with_one_running_reaches_it(grpc_server):
    stub, routes, _ = grpc_server
    del routes["/f"]
    assert stub.__call__(serve_pb2.UserDefinedMessage(name="Bo")).greeting == "Hello Bo"


def test_user_exception_is_internal_with_its_message(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.__call__(serve_pb2.UserDefinedMessage(name="x"), metadata=_app("failing"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "ValueError: bad name 'x'" in info.value.details()


def test_back_pressure_is_resource_exhausted_as_in_ray_serve(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.Method1(serve_pb2.UserDefinedMessage(name="x"), metadata=_app("failing"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "backpressure" in info.value.details()


def test_request_timeout_is_deadline_exceeded(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.Method2(serve_pb2.UserDefinedMessage2(), metadata=_app("failing"))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out after 2s" in info.value.details()


def test_a_stream_that_fails_sends_what_it_made_then_internal(grpc_server):
    stub, _, _ = grpc_server
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for item in stub.Streaming(serve_pb2.UserDefinedMessage(name="x"), metadata=_app("failing")):
            got.append(item.greeting)
    assert got == ["first"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError: broke after one" in info.value.details()


def test_an_answer_that_is_not_a_protobuf_message_says_so(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.Method2(serve_pb2.UserDefinedMessage2(), metadata=_app("greeter"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "returned str, not a protobuf message" in info.value.details()


def test_client_streaming_methods_are_refused_not_half_served(grpc_server):
    stub, _, _ = grpc_server
    with pytest.raises(grpc.RpcError) as info:
        stub.ClientStreaming(iter([serve_pb2.UserDefinedMessage(name="x")]), metadata=_app("greeter"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_healthz_and_list_applications_as_ray_serve(grpc_server):
    _, _, channel = grpc_server
    api = serve_pb2_grpc.RayServeAPIServiceStub(channel)
    assert api.Healthz(serve_pb2.HealthzRequest()).message == "success"
    assert list(api.ListApplications(serve_pb2.ListApplicationsRequest()).application_names) == ["failing", "greeter"]


def test_a_port_in_use_is_an_error_message():
    import socket

    from servegraph.runtime.actors.grpc_proxy import GRPCIngress

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = {**GRPC_OPTION_DEFAULTS, "port": port, "grpc_servicer_functions": [ADD_USER_SERVICE]}
        error = asyncio.run(GRPCIngress(dict, "127.0.0.1", options, lambda: False).start())
    assert error is not None and f"cannot serve gRPC on 127.0.0.1:{port}" in error


def test_server_reflection_lists_the_user_services(grpc_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    _, _, channel = grpc_server
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "ray.serve.UserDefinedService" in services


def test_the_runtime_imports_grpcio_only_when_grpc_is_asked_for():
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    probe = (
        "import json, sys; import servegraph, servegraph.runtime.actors.proxy, servegraph.runtime.control.controller, "
        "servegraph.runtime.client.api, servegraph.cli.ops; print(json.dumps('grpc' in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


def test_multiplexed_model_id_and_request_id_metadata_as_over_http(grpc_server):
    from servegraph.runtime.common.records import ModelCall

    stub, routes, _ = grpc_server
    metadata = (("application", "greeter"), ("multiplexed_model_id", "m1"), ("request_id", "abc"))
    response, call = stub.Method1.with_call(serve_pb2.UserDefinedMessage(name="x"), metadata=metadata)
    assert response.greeting == "Method1 x"
    sent = routes["/"][2].router().sent[-1]
    assert type(sent) is ModelCall and (str(sent), sent.model_id) == ("Method1", "m1")
    assert ("request_id", "abc") in tuple(call.trailing_metadata())


def _proxy_start(grpc_options: dict) -> str | None:
    """Start an HTTP proxy in this process with ``grpc_options``; its start's error (None: it served both)."""
    from servegraph.runtime.actors.proxy import HTTPProxy

    async def go():
        proxy = HTTPProxy("127.0.0.1", free_port(), {}, grpc_options)
        error = await proxy.start(["/nonexistent"])
        if proxy._grpc is not None:
            await proxy._grpc.stop()
        if proxy._server is not None:
            proxy._server.should_exit = True
            await asyncio.sleep(0.1)
        return error

    return asyncio.run(go())


def test_the_http_proxy_serves_grpc_when_options_name_a_servicer_function():
    options = grpc_options_dict({"port": free_port(), "grpc_servicer_functions": [ADD_USER_SERVICE]})
    assert _proxy_start(options) is None


def test_a_proxy_whose_servicer_function_does_not_import_says_why():
    options = grpc_options_dict({"port": free_port(), "grpc_servicer_functions": ["nowhere_pb2_grpc.add_XServicer_to_server"]})
    error = _proxy_start(options)
    assert error is not None and "'nowhere_pb2_grpc.add_XServicer_to_server' cannot be imported" in error


def test_the_proxy_refuses_grpc_options_it_does_not_know():
    from servegraph.runtime.actors.proxy import HTTPProxy

    with pytest.raises(ValueError, match="cannot apply grpc_options"):
        HTTPProxy("127.0.0.1", 1, {}, {"grpc_host": "x"})


def test_without_grpcio_the_proxy_says_how_to_install_it():
    import os
    import subprocess
    import sys

    from conftest import ROOT

    probe = (
        "import asyncio, sys; sys.modules['grpc'] = None  # as if grpcio were not installed\n"
        "from servegraph.runtime.actors.proxy import HTTPProxy\n"
        "from conftest import free_port\n"
        "options = {'port': free_port(), 'grpc_servicer_functions': ['m.add_f'], 'request_timeout_s': None, 'enable_reflection': True}\n"
        "proxy = HTTPProxy('127.0.0.1', free_port(), {}, options)\n"
        "print(asyncio.run(proxy.start()))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env, check=True)
    assert "pip install 'servegraph[grpc]'" in out.stdout


def test_status_codes_for_what_is_not_the_users_code():
    from servegraph.errors import DeploymentError
    from servegraph.runtime.actors.grpc_proxy import error_status

    gone = error_status(DeploymentError("deployment 'A' of application 'x' does not exist"), None)
    assert (gone.code, gone.details) == (grpc.StatusCode.UNAVAILABLE, "deployment 'A' of application 'x' does not exist")
    assert error_status(asyncio.TimeoutError(), None).details == "Request timed out."
    long = error_status(ValueError("x" * 10_000), None)
    assert long.code == grpc.StatusCode.INTERNAL and len(long.details) == 4096 and long.details.endswith("[truncated]")
