"""HTTP as Ray Serve does it: entry points that take no request, and user errors without internal frames."""

from __future__ import annotations

import httpx
import pytest

import servegraph as serve
from servegraph.exceptions import RayServeException


@serve.deployment
class NoRequest:
    def __call__(self) -> str:
        return "called without a request"


@serve.deployment
class AsyncNoRequest:
    async def __call__(self):
        return {"async": True}


@serve.deployment
def no_argument_function():
    return "function without arguments"


@serve.deployment
class Model:
    def predict(self, x: int) -> int:
        return x + 1


@serve.deployment
class Misspeller:
    def __init__(self, model):
        self.model = model

    async def __call__(self) -> int:
        # Looked up by name: the compiler refuses `self.model.predcit.remote(1)` written out
        # (tests/test_check_code.py), and this tests what the runtime says when it gets through.
        method = "predcit"
        return await (await getattr(self.model, method).remote(1))


@pytest.fixture(scope="module")
def base(deploy, http_port) -> str:
    deploy(NoRequest.bind(), name="parity-noreq", route_prefix="/noreq")
    deploy(AsyncNoRequest.bind(), name="parity-async-noreq", route_prefix="/async-noreq")
    deploy(no_argument_function.bind(), name="parity-fn", route_prefix="/fn")
    deploy(Misspeller.bind(Model.bind()), name="parity-misspell", route_prefix="/misspell")
    return f"http://127.0.0.1:{http_port}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/noreq", "called without a request"),
        ("/async-noreq", '{"async": true}'),
        ("/fn", "function without arguments"),
    ],
)
def test_http_into_an_entry_point_without_parameters_calls_it_with_none(base, path, expected):
    reply = httpx.get(base + path, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.text == expected


def test_missing_method_over_http_names_the_closest_one_without_internal_frames(base):
    reply = httpx.get(base + "/misspell", timeout=60)
    # Over HTTP the body is generic (a public endpoint leaks nothing); the message is in the replica's log.
    assert reply.status_code == 500
    assert reply.text == f"Internal Server Error (request id {reply.headers['x-request-id']})"
    # Through a handle the caller gets the user's exception, with no internal frames.
    with pytest.raises(AttributeError) as err:
        serve.get_app_handle("parity-misspell").remote().result(timeout_s=60)
    assert str(err.value).startswith("deployment 'Model' has no method 'predcit'; did you mean 'predict'? ")
    assert isinstance(err.value, RayServeException)  # as Ray Serve raises it, in its words too
    assert "Tried to call a method 'predcit' that does not exist. Available methods: ['predict']." in str(err.value)


def test_proxy_health_and_routes_endpoints(base):
    health = httpx.get(f"{base}/-/healthz", timeout=60)
    assert (health.status_code, health.text) == (200, "success")
    routes = httpx.get(f"{base}/-/routes", timeout=60).json()
    assert routes["/noreq"] == "parity-noreq" and routes["/misspell"] == "parity-misspell"


def test_missing_method_through_a_deployment_handle_is_the_users_error(base):
    handle = serve.get_deployment_handle("Model", "parity-misspell")
    with pytest.raises(RayServeException) as err:
        handle.predcit.remote(1).result(timeout_s=60)
    assert str(err.value).startswith("deployment 'Model' has no method 'predcit'; did you mean 'predict'? ")


def test_ray_get_error_names_the_replica_by_its_deployment(base):
    import ray

    handle = serve.get_deployment_handle("Model", "parity-misspell").options(use_new_handle_api=False)
    with pytest.raises(AttributeError) as err:
        ray.get(handle.predcit.remote(1), timeout=60)
    text = str(err.value)
    assert "repr=replica of deployment 'Model'" in text and "SyncReplica object at" not in text
    assert "NoSuchMethodError: deployment 'Model' has no method 'predcit'; did you mean 'predict'?" in text
