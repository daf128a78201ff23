"""Local testing mode (``serve.run(..., _local_testing_mode=True)``): the same graphs, in this process, without Ray.

The examples must answer exactly as they do on Ray (tests/test_graphs.py runs the same table there).
"""

from __future__ import annotations

import asyncio

import pytest
from support import EXAMPLE_CASES

import servegraph as serve
from servegraph import InputNode, MultiOutputNode
from servegraph.handle import DeploymentResponse, RayServeDeploymentHandle, RayServeSyncHandle
from servegraph.runtime.client.local import LocalRef, PlanInputError


def run_local(app):
    return serve.run(app, _local_testing_mode=True)


@pytest.mark.parametrize("case", EXAMPLE_CASES, ids=lambda case: case.module)
def test_example_in_local_mode_answers_as_on_ray(case):
    refs = case.send(run_local(case.app))
    assert all(isinstance(ref, LocalRef) for ref in refs)
    assert [ref.result(timeout=30) for ref in refs] == case.expected


@serve.deployment
class Echo:
    def __call__(self, value):
        return value


@serve.deployment(user_config={"suffix": "!"})
class Prober:
    def __init__(self, echo):
        self.echo = echo
        self.suffix = None

    def reconfigure(self, config: dict) -> None:
        self.suffix = config["suffix"]

    async def __call__(self, value) -> dict:
        task = self.echo.remote(value)
        ref = await task
        chained = await (await self.echo.remote(self.echo.remote(value)))
        return {
            "handle": type(self.echo).__name__,
            "is_deployment_handle": isinstance(self.echo, RayServeDeploymentHandle),
            "is_task": isinstance(task, asyncio.Task),
            "value": str(await ref) + self.suffix,
            "chained": chained,
        }


def test_handles_keep_their_types_and_semantics():
    handle = run_local(Prober.bind(Echo.bind()))
    assert isinstance(handle, RayServeSyncHandle)
    out = handle.remote("x").result(timeout=30)
    assert out == {"handle": "RayServeDeploymentHandle", "is_deployment_handle": True, "is_task": True, "value": "x!", "chained": "x"}


def test_await_and_new_handle_api():
    handle = run_local(Echo.bind())

    async def main():
        return await handle.remote("awaited")

    assert asyncio.run(main()) == "awaited"
    response = handle.options(use_new_handle_api=True).remote("new")
    assert isinstance(response, DeploymentResponse)
    assert response.result(timeout_s=30) == "new"


@serve.deployment
class Tally:
    calls = 0  # a class attribute: local mode runs in this process, so the test can read it

    def double(self, x: float) -> float:
        type(self).calls += 1
        return 2 * x


@serve.deployment
def add(a: float, b: float) -> float:
    return a + b


def test_input_graph_runs_each_node_once_per_request():
    with InputNode() as inp:
        doubled = Tally.bind().double.bind(inp[0])
        app = MultiOutputNode([add.bind(doubled, inp[1]), add.bind(doubled, inp["bonus"])])
    handle = run_local(app)
    before = Tally.func_or_class.calls
    assert handle.remote(5, 1, bonus=100).result(timeout=30) == [11, 110]
    assert Tally.func_or_class.calls == before + 1


def test_missing_input_key_names_the_key():
    with InputNode() as inp:
        app = add.bind(inp["a"], inp["b"])
    handle = run_local(app)
    assert handle.remote({"a": 1, "b": 2}).result(timeout=30) == 3
    with pytest.raises(PlanInputError, match=r"the graph reads input\['b'\] but the request's input \(dict\) has none"):
        handle.remote({"a": 1})


def test_local_mode_checks_the_graph_like_compile():
    with InputNode() as inp:
        used = add.bind(inp[0], 1)
        add.bind(inp[0], 2)  # never reaches the output
    with pytest.raises(serve.UnreachableNodeError):
        run_local(used)


@serve.deployment
def doubled(x):
    return 2 * x


def test_a_function_deployment_answers_the_same_method_names_as_on_ray():
    # One rule (dsl.signature.FUNCTION_METHODS) for local mode and replicas on Ray: __call__ and predict.
    handle = run_local(doubled.bind())
    assert handle.remote(2).result(timeout=30) == 4
    assert handle.predict.remote(3).result(timeout=30) == 6
    with pytest.raises(AttributeError, match=r"function deployment 'doubled' has only __call__ and predict, not 'predcit'; did you mean 'predict'\?"):
        handle.predcit.remote(1).result(timeout=30)


@pytest.mark.ray
def test_a_function_deployment_refuses_other_method_names_on_ray_as_locally(serve_app, http_port):
    import ray

    handle = serve_app.run(doubled.bind(), name="fn-methods", route_prefix=None, port=http_port)
    assert ray.get(handle.predict.remote(3), timeout=60) == 6
    with pytest.raises(Exception, match=r"function deployment 'doubled' has only __call__ and predict, not 'predcit'"):
        ray.get(handle.predcit.remote(1), timeout=60)
