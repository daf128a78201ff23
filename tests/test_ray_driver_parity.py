"""DAGDriver as in Ray Serve: http_adapters, pydantic and typed adapters, the Request as the default input.

Includes Ray's doc example branching_input.py and cases of Ray's test_deployment_graph.py,
with only the imports changed.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import ray
import starlette.requests
from pydantic import BaseModel

import servegraph as serve
from servegraph import DAGDriver, InputNode
from servegraph.http_adapters import json_request, json_to_ndarray

# Ray's doc example branching_input.py ------------------------------------------------------


@serve.deployment
class Model:
    def __init__(self, weight: int):
        self.weight = weight

    def forward(self, input: int) -> int:
        return input + self.weight


@serve.deployment
def combine(value_refs):
    return sum(ray.get(value_refs))


model1 = Model.bind(0)
model2 = Model.bind(1)

with InputNode() as user_input:
    output1 = model1.forward.bind(user_input)
    output2 = model2.forward.bind(user_input)
    combine_output = combine.bind([output1, output2])

branching = DAGDriver.bind(combine_output, http_adapter=json_request)

# Ray's test_deployment_graph.py ---------------------------------------------------------------


async def json_resolver(request: starlette.requests.Request):
    return await request.json()


@serve.deployment
def combine3(m1_output, m2_output, kwargs_output=0):
    return m1_output + m2_output + kwargs_output


@serve.deployment
class WeightedModel:
    def __init__(self, weight: int, ratio: float = None):
        self.weight = weight
        self.ratio = ratio or 1

    def forward(self, input: int):
        return self.ratio * self.weight * input


@serve.deployment
class Combine:
    def __init__(self, m1, m2=None):
        self.m1 = m1
        self.m2 = m2

    def __call__(self, req):
        r1_ref = self.m1.forward.remote(req)
        r2_ref = self.m2.forward.remote(req)
        return sum(ray.get([r1_ref, r2_ref]))


with InputNode() as dag_input:
    single_func = DAGDriver.bind(combine3.bind(dag_input[0], dag_input[1], kwargs_output=1), input_schema=json_resolver)

with InputNode() as dag_input:
    m1 = WeightedModel.bind(1)
    m2 = WeightedModel.bind(2)
    func_class = DAGDriver.bind(
        combine3.bind(m1.forward.bind(dag_input[0]), m2.forward.bind(dag_input[1]), kwargs_output=dag_input[2]),
        input_schema=json_resolver,
    )

with InputNode() as dag_input:
    in_init = DAGDriver.bind(
        Combine.bind(WeightedModel.bind(2), m2=WeightedModel.bind(3)).__call__.bind(dag_input), input_schema=json_resolver
    )

# Adapters of every kind ------------------------------------------------------------------------


class ModelInputData(BaseModel):
    model_input1: int
    model_input2: str


@serve.deployment
class PydanticModel:
    def forward(self, input: ModelInputData):
        return input.model_input1 + len(input.model_input2)


def add_query(x: int, y: int = 10) -> int:
    return x + y


@serve.deployment
def identity(value):
    return value


@serve.deployment
async def read_request(request: starlette.requests.Request) -> dict:
    return {"path": request.url.path, "body": await request.json(), "q": request.query_params.get("q")}


@serve.deployment
def array_stats(arr: np.ndarray) -> dict:
    return {"shape": list(arr.shape), "sum": arr.sum(), "dtype": str(arr.dtype)}


with InputNode() as inp:
    pydantic_graph = DAGDriver.bind(PydanticModel.bind().forward.bind(inp), http_adapter=ModelInputData)
with InputNode() as inp:
    typed_graph = DAGDriver.bind(identity.bind(inp), http_adapter=add_query)
with InputNode() as inp:
    default_graph = DAGDriver.bind(read_request.bind(inp))
with InputNode() as inp:
    ndarray_graph = DAGDriver.bind(array_stats.bind(inp), http_adapter=json_to_ndarray)


@pytest.fixture(scope="module")
def apps(deploy, http_port) -> dict:
    routes = {
        "branching": branching,
        "single-func": single_func,
        "func-class": func_class,
        "in-init": in_init,
        "pydantic": pydantic_graph,
        "typed": typed_graph,
        "default": default_graph,
        "ndarray": ndarray_graph,
    }
    handles = {name: deploy(graph, name=f"driver-{name}", route_prefix=f"/{name}") for name, graph in routes.items()}
    handles["url"] = f"http://127.0.0.1:{http_port}"
    return handles


def post(apps, name: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{apps['url']}/{name}", timeout=60, **kwargs)


def test_branching_input_doc_example(apps):
    assert ray.get(apps["branching"].predict.remote(1), timeout=60) == 3
    assert post(apps, "branching", json=1).json() == 3


def test_single_func_deployment_dag(apps):
    assert ray.get(apps["single-func"].predict.remote([1, 2]), timeout=60) == 4
    assert post(apps, "single-func", json=[1, 2]).json() == 4


def test_func_class_with_class_method(apps):
    assert ray.get(apps["func-class"].predict.remote([1, 2, 3]), timeout=60) == 8
    assert post(apps, "func-class", json=[1, 2, 3]).json() == 8


def test_multi_instantiation_class_deployment_in_init_args(apps):
    assert ray.get(apps["in-init"].predict.remote(1), timeout=60) == 5
    assert post(apps, "in-init", json=1).json() == 5


def test_pydantic_model_adapter_validates_the_body(apps):
    assert ray.get(apps["pydantic"].predict.remote(ModelInputData(model_input1=1, model_input2="test")), timeout=60) == 5
    assert post(apps, "pydantic", json={"model_input1": 1, "model_input2": "test"}).json() == 5
    bad = post(apps, "pydantic", json={"model_input1": "one"})
    assert bad.status_code == 422
    assert {e["loc"][-1] for e in bad.json()["detail"]} == {"model_input1", "model_input2"}


def test_typed_adapter_reads_query_parameters(apps):
    assert httpx.get(f"{apps['url']}/typed", params={"x": 1, "y": 2}, timeout=60).json() == 3
    assert httpx.get(f"{apps['url']}/typed", params={"x": 5}, timeout=60).json() == 15
    assert httpx.get(f"{apps['url']}/typed", params={"x": "five"}, timeout=60).status_code == 422


def test_default_adapter_hands_the_graph_the_request(apps):
    reply = post(apps, "default/sub", params={"q": "yes"}, json={"a": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"path": "/default/sub", "body": {"a": 1}, "q": "yes"}


def test_json_to_ndarray_with_shape_and_dtype(apps):
    reply = post(apps, "ndarray", json={"array": [1, 2, 3, 4], "shape": [2, 2], "dtype": "float32"})
    assert reply.json() == {"shape": [2, 2], "sum": 10.0, "dtype": "float32"}


def test_adapter_that_is_neither_function_nor_model_is_refused():
    with pytest.raises(serve.BindError, match="http_adapter must be a function or a pydantic model class"):
        DAGDriver.bind(identity.bind(), http_adapter=42)


# DAGDriver.bind({"/route": graph}) and DAGDriver.bind(deployment) -------------------------------


@serve.deployment
class Echo:
    def __call__(self, value):
        return {"echo": value}

    def shout(self, value: str) -> str:
        return value.upper()


with InputNode() as inp:
    plus_one = Model.bind(1).forward.bind(inp)
with InputNode() as inp:
    plus_two = Model.bind(2).forward.bind(inp)
multi = DAGDriver.bind({"/one": plus_one, "/two": plus_two, "/echo": Echo.bind()}, http_adapter=json_request)
driven_deployment = DAGDriver.bind(Echo.bind(), http_adapter=json_request)


@pytest.fixture(scope="module")
def more(deploy, http_port) -> dict:
    return {
        "multi": deploy(multi, name="driver-multi", route_prefix="/multi"),
        "driven": deploy(driven_deployment, name="driver-deployment", route_prefix="/driven"),
        "url": f"http://127.0.0.1:{http_port}",
    }


def test_multi_route_driver_through_predict_with_route(more):
    handle = more["multi"]
    assert ray.get(handle.predict_with_route.remote("/one", 1), timeout=60) == 2
    assert ray.get(handle.predict_with_route.remote("/two", 1), timeout=60) == 3
    assert ray.get(handle.predict_with_route.remote("/echo", "x"), timeout=60) == {"echo": "x"}
    with pytest.raises(KeyError, match="/three does not exist in dags routes"):
        handle.predict_with_route.remote("/three", 1)


def test_multi_route_driver_over_http(more):
    assert httpx.post(f"{more['url']}/multi/one", json=10, timeout=60).json() == 11
    assert httpx.post(f"{more['url']}/multi/two", json=10, timeout=60).json() == 12
    assert httpx.post(f"{more['url']}/multi/three", json=10, timeout=60).status_code == 404


def test_multi_route_driver_in_local_testing_mode():
    handle = serve.run(multi, _local_testing_mode=True)
    assert handle.predict_with_route.remote("/two", 5).result() == 7


def test_driver_of_a_deployment_keeps_its_methods_and_predict_calls_it(more):
    handle = more["driven"]
    assert ray.get(handle.predict.remote("a"), timeout=60) == {"echo": "a"}
    assert ray.get(handle.shout.remote("a"), timeout=60) == "A"
    assert httpx.post(f"{more['url']}/driven", json="b", timeout=60).json() == {"echo": "b"}


def test_multi_route_keys_must_be_route_prefixes():
    with pytest.raises(serve.BindError, match=r"route 'one' must start with a forward slash \('/'\)"):
        DAGDriver.bind({"one": plus_one})


# serve.run's route prefix, when none is given, comes from the ingress (Ray's doc example) ---------


class ModelInputData2(BaseModel):
    model_input1: int
    model_input2: str


@serve.deployment
class DocModel:
    def __init__(self, weight):
        self.weight = weight

    def forward(self, input: ModelInputData2):
        return input.model_input1 + len(input.model_input2) + self.weight


with InputNode() as user_input:
    doc_model1 = DocModel.bind(0)
    doc_model2 = DocModel.bind(1)
    doc_dag = combine.bind([doc_model1.forward.bind(user_input), doc_model2.forward.bind(user_input)])
    doc_serve_dag = DAGDriver.options(route_prefix="/my-dag").bind(doc_dag, http_adapter=ModelInputData2)


def test_dag_driver_options_route_prefix_doc_example(serve_app, http_port):
    dag_handle = serve_app.run(doc_serve_dag, name="driver-my-dag", port=http_port)
    assert ray.get(dag_handle.predict.remote(ModelInputData2(model_input1=1, model_input2="test")), timeout=60) == 11
    reply = httpx.post(
        f"http://127.0.0.1:{http_port}/my-dag", json={"model_input1": 1, "model_input2": "test"}, timeout=60
    )
    assert reply.json() == 11
    assert serve_app.status().applications["driver-my-dag"].route_prefix == "/my-dag"


def test_ingress_route_prefix_option(serve_app, http_port):
    app = serve.deployment(route_prefix="/api-prefix")(Echo.func_or_class).bind()
    serve_app.run(app, name="driver-ingress-prefix", port=http_port)
    assert serve_app.status().applications["driver-ingress-prefix"].route_prefix == "/api-prefix"


# Ray's doc example model_composition/arithmetic.py, imports changed ------------------------------


@serve.deployment
class AddCls:
    def __init__(self, addend: float):
        self.addend = addend

    def add(self, number: float) -> float:
        return number + self.addend

    async def unpack_request(self, http_request: starlette.requests.Request) -> float:
        return await http_request.json()


@serve.deployment
def subtract_one_fn(number: float) -> float:
    return number - 1


@serve.deployment
async def unpack_request(http_request: starlette.requests.Request) -> float:
    return await http_request.json()


add_2 = AddCls.bind(2)
add_3 = AddCls.bind(3)

with InputNode() as http_request:
    request_number = unpack_request.bind(http_request)
    add_2_output = add_2.add.bind(request_number)
    subtract_1_output = subtract_one_fn.bind(add_2_output)
    add_3_output = add_3.add.bind(subtract_1_output)

arithmetic_graph = DAGDriver.bind(add_3_output)

with InputNode() as request_number:
    adapter_output = AddCls.bind(3).add.bind(subtract_one_fn.bind(AddCls.bind(2).add.bind(request_number)))

arithmetic_adapter_graph = DAGDriver.bind(adapter_output, http_adapter=json_request)


def test_arithmetic_doc_example(serve_app, http_port):
    serve_app.run(arithmetic_graph, name="driver-arithmetic", route_prefix="/arithmetic", port=http_port)
    assert httpx.post(f"http://127.0.0.1:{http_port}/arithmetic", json=5, timeout=60).json() == 9
    handle = serve_app.run(
        arithmetic_adapter_graph, name="driver-arithmetic-adapter", route_prefix="/arithmetic2", port=http_port
    )
    assert httpx.post(f"http://127.0.0.1:{http_port}/arithmetic2", json=5, timeout=60).json() == 9
    assert ray.get(handle.predict.remote(5), timeout=60) == 9


def test_an_adapter_fastapi_cannot_serve_fails_the_deploy_not_the_proxy(serve_app, http_port):
    pytest.importorskip("numpy")
    try:
        import python_multipart  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("python-multipart is installed, so image_to_ndarray can be served")
    from servegraph.http_adapters import image_to_ndarray

    with InputNode() as inp:
        graph = DAGDriver.bind(identity.bind(inp), http_adapter=image_to_ndarray)
    with pytest.raises(serve.DeploymentError, match="'image_to_ndarray' cannot be served: .*python-multipart"):
        serve_app.run(graph, name="driver-image", route_prefix="/image", port=http_port)
    assert "driver-image" not in serve_app.status().applications
