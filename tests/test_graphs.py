"""Graphs on the session's Ray cluster: the examples, InputNode graphs, DAGDriver, function deployments,
user_config, and deploys that must fail cleanly.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import textwrap
import time

import httpx
import pytest
import ray
from conftest import TEST_CLUSTER_CPUS
from starlette.requests import Request
from support import EXAMPLE_CASES, assert_located, here

import servegraph as serve
from servegraph import DAGDriver, DeploymentError, InputNode, MultiOutputNode, ResourceError
from servegraph.http_adapters import json_request

# The examples ------------------------------------------------------------------------------

#: Examples also served over HTTP, at these route prefixes.
HTTP_EXAMPLES = {"hello": "/hello", "pipeline": "/pipeline"}


@pytest.fixture(scope="module")
def example_handles(deploy) -> dict:
    return {
        case.module: deploy(case.app, name=f"example-{case.module}", route_prefix=HTTP_EXAMPLES.get(case.module))
        for case in EXAMPLE_CASES
    }


@pytest.mark.parametrize("case", EXAMPLE_CASES, ids=lambda case: case.module)
def test_example_on_ray(example_handles, case):
    refs = case.send(example_handles[case.module])
    assert all(isinstance(ref, ray.ObjectRef) for ref in refs)
    assert ray.get(refs, timeout=60) == case.expected


def test_hello_over_http(example_handles, http_port):
    url = f"http://127.0.0.1:{http_port}/hello"
    assert httpx.post(url, json={"language": "spanish", "name": "Dora"}, timeout=60).text == "Hola Dora"
    assert httpx.post(url, json={"language": "french", "name": "Dora"}, timeout=60).text == "Bonjour Dora"


def test_pipeline_over_http(example_handles, http_port):
    reply = httpx.post(f"http://127.0.0.1:{http_port}/pipeline", json={"text": "Hello World"}, timeout=60)
    assert reply.status_code == 200
    assert reply.json() == {"length": 11.0, "vowels": 3, "score": 14.0}


# InputNode graphs -------------------------------------------------------------------------


@serve.deployment
class Tally:
    """Doubles its input and counts its calls, so a node used twice can be seen to run once."""

    def __init__(self):
        self.calls = 0

    def double(self, x: float) -> float:
        self.calls += 1
        return 2 * x

    def count(self) -> int:
        return self.calls


@serve.deployment
def add(a: float, b: float) -> float:
    return a + b


with InputNode() as inp:
    doubled = Tally.bind().double.bind(inp[0])
    two_sums = MultiOutputNode([add.bind(doubled, inp[1]), add.bind(doubled, inp["bonus"])])


@dataclasses.dataclass
class Point:
    x: float
    y: float


with InputNode() as point:
    # json_request: Ray Serve's default adapter would hand the graph the Request itself.
    driven = DAGDriver.bind(add.bind(point.x, point.y), http_adapter=json_request)


@serve.deployment
def greet(request: Request) -> str:
    return f"hello {request.query_params['name']}"


@pytest.fixture(scope="module")
def graphs(deploy) -> dict:
    return {
        "two_sums": deploy(two_sums, name="two-sums"),
        "driver": deploy(driven, name="driver", route_prefix="/driver"),
        "greet": deploy(greet.bind(), name="greet", route_prefix="/greet"),
    }


def test_positional_and_keyword_inputs_and_multi_output(graphs):
    assert ray.get(graphs["two_sums"].remote(5, 1, bonus=100), timeout=60) == [11, 110]


def test_a_node_used_twice_runs_once_per_request(graphs):
    tally = serve.get_deployment_handle("Tally", "two-sums").options(use_new_handle_api=False)
    before = ray.get(tally.count.remote(), timeout=60)
    ray.get([graphs["two_sums"].remote(i, 0, bonus=0) for i in range(3)], timeout=60)
    assert ray.get(tally.count.remote(), timeout=60) == before + 3


def test_repeated_function_deployment_gets_numbered_names(graphs):
    deployments = serve.status().applications["two-sums"].deployments
    assert sorted(deployments) == ["Tally", "add", "add_1"]


def test_dag_driver_through_a_handle_method(graphs):
    assert ray.get(graphs["driver"].predict.remote(Point(1.5, 2.0)), timeout=60) == 3.5


def test_dag_driver_with_json_request_reads_attributes_of_the_json_body(graphs, http_port):
    reply = httpx.post(f"http://127.0.0.1:{http_port}/driver", json={"x": 1, "y": 2}, timeout=60)
    assert reply.status_code == 200
    assert reply.json() == 3


def test_function_deployment_as_ingress(graphs, http_port):
    reply = httpx.get(f"http://127.0.0.1:{http_port}/greet", params={"name": "Ana"}, timeout=60)
    assert reply.text == "hello Ana"


# user_config, status, delete ---------------------------------------------------------------


@serve.deployment(user_config={"greeting": "hi"})
class Greeter:
    def __init__(self):
        self.greeting = None

    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]

    def __call__(self, name: str) -> tuple:
        return f"{self.greeting} {name}", os.getpid()


def test_user_config_reaches_reconfigure_and_updates_in_place(serve_app, http_port):
    handle = serve_app.run(Greeter.bind(), name="greeter", route_prefix=None, port=http_port)
    text, pid = ray.get(handle.remote("Ana"), timeout=60)
    assert text == "hi Ana"

    handle = serve_app.run(
        Greeter.options(user_config={"greeting": "hola"}).bind(), name="greeter", route_prefix=None, port=http_port
    )
    assert ray.get(handle.remote("Ana"), timeout=60) == ("hola Ana", pid)  # same replica, reconfigured

    assert serve_app.status().applications["greeter"].deployments["Greeter"].replica_states == {"RUNNING": 1}
    serve_app.delete("greeter")
    assert "greeter" not in serve_app.status().applications
    with pytest.raises(DeploymentError, match="deployment 'Greeter' of application 'greeter' does not exist"):
        handle.remote("Ana")


# Deploys that fail ------------------------------------------------------------------------


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Helper:
    def __call__(self) -> str:
        return "helping"


@serve.deployment(ray_actor_options={"num_cpus": 1})
class NeedsWeights:
    def __init__(self, helper, path: str):
        raise FileNotFoundError(f"no weights at {path}")


def free_cpus() -> float:
    return ray.available_resources().get("CPU", 0.0)


def test_constructor_error_fails_the_deploy_and_leaves_the_cluster_clean(serve_app, http_port):
    cpus = free_cpus()
    app, line = NeedsWeights.bind(Helper.bind(), "/nope/model.pt"), here()
    with pytest.raises(DeploymentError, match=r"deployment 'NeedsWeights' .* failed: .*FileNotFoundError: no weights at /nope/model\.pt") as err:
        serve_app.run(app, name="broken", route_prefix=None, port=http_port)
    assert_located(err.value, line)
    # As in Ray Serve, the application stays, DEPLOY_FAILED with the one-line reason, until it is deleted.
    broken = serve_app.status().applications["broken"]
    assert broken.status == "DEPLOY_FAILED"
    assert broken.deployments["NeedsWeights"].status == "DEPLOY_FAILED"
    assert "no weights at /nope/model.pt" in broken.deployments["NeedsWeights"].message
    assert broken.deployments["NeedsWeights"].replica_states == {}
    serve_app.delete("broken")
    assert "broken" not in serve_app.status().applications
    deadline = time.monotonic() + 30
    while free_cpus() < cpus and time.monotonic() < deadline:  # Helper's replica was started, then killed
        time.sleep(0.2)
    assert free_cpus() >= cpus  # >=: a replica an earlier test deleted may be released meanwhile


def test_run_refuses_more_cpus_than_the_cluster_has(serve_app, http_port):
    greedy = Helper.options(ray_actor_options={"num_cpus": TEST_CLUSTER_CPUS + 1})
    app, line = greedy.bind(), here()
    with pytest.raises(ResourceError, match=r"the graph asks for more CPU than the cluster has") as err:
        serve_app.run(app, name="greedy", route_prefix=None, port=http_port)
    assert f"{TEST_CLUSTER_CPUS + 1:g}" in str(err.value)
    assert_located(err.value, line)
    assert "greedy" not in serve_app.status().applications


DRIVER_ONLY_MODULE = textwrap.dedent(
    """\
    import servegraph as serve
    from servegraph import DAGDriver, InputNode


    def plus_one(x):
        return x + 1


    async def take_x(request):
        return (await request.json())["x"]


    @serve.deployment
    class UsesHelper:
        def __call__(self, x):
            return plus_one(x)


    app = UsesHelper.bind()

    with InputNode() as inp:
        graph = DAGDriver.bind(UsesHelper.bind().__call__.bind(inp), http_adapter=take_x)
    """
)


def test_deployment_from_a_module_only_the_driver_can_import(serve_app, http_port, tmp_path, monkeypatch):
    (tmp_path / "driver_only_models.py").write_text(DRIVER_ONLY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("driver_only_models")
    # The controller and the replicas load the module through the driver's import paths...
    handle = serve_app.run(module.app, name="driver-only", route_prefix=None, port=http_port)
    assert ray.get(handle.remote(1), timeout=60) == 2
    # ... and so does the HTTP proxy, which runs the graph with the module's http_adapter.
    serve_app.run(module.graph, name="driver-only-graph", route_prefix="/driver-only", port=http_port)
    reply = httpx.post(f"http://127.0.0.1:{http_port}/driver-only", json={"x": 41}, timeout=60)
    assert (reply.status_code, reply.text) == (200, "42")
