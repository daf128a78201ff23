"""The compiler without Ray: every whole-graph check's message, naming, and determinism."""

from __future__ import annotations

import re
import threading

import pytest
from support import assert_located, here

import servegraph as serve
from servegraph import (
    BindError,
    ConfigError,
    CycleError,
    DAGDriver,
    GraphError,
    InputNode,
    InputNodeError,
    MultiOutputNode,
    ResourceError,
    SerializationError,
    UnreachableNodeError,
)
from servegraph.compiler import ir


@serve.deployment
class Model:
    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def predict(self, x: float) -> float:
        return x * self.weight

    def gather(self, items: list) -> list:
        return items


@serve.deployment
class Ensemble:
    def __init__(self, first, second):
        self.first = first
        self.second = second

    async def __call__(self, x: float) -> float:
        return await (await self.first.predict.remote(x)) + await (await self.second.predict.remote(x))


@serve.deployment
def combine(a: float, b: float) -> float:
    return a + b


# Checks ---------------------------------------------------------------------------------


def test_cycle_from_a_list_mutated_after_bind():
    items: list = []
    first, first_line = Model.bind().gather.bind(items), here()
    second, second_line = Model.bind().gather.bind([first]), here()
    items.append(second)  # first now depends on second, which depends on first
    with pytest.raises(CycleError, match=r"the graph has a cycle: Model\.gather .* -> Model\.gather") as err:
        serve.compile(second)
    assert "a bound argument list was probably changed after .bind()" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert_located(err.value, first_line)
    assert_located(err.value, second_line)


def test_more_than_one_input_node():
    with InputNode() as a:
        left = Model.bind().predict.bind(a)
    with InputNode() as b:
        right = Model.bind().predict.bind(b)
    first_line, second_line = here() - 4, here() - 2
    with pytest.raises(InputNodeError, match=r"the graph uses 2 InputNodes \(made at .*\); a graph has one input") as err:
        serve.compile(combine.bind(left, right))
    assert_located(err.value, first_line)
    assert_located(err.value, second_line)


def test_node_that_never_reaches_the_output():
    with InputNode() as inp:
        used = Model.bind().predict.bind(inp)
        unused, line = Model.bind(2.0).predict.bind(inp), here()
    with pytest.raises(
        UnreachableNodeError, match=r"Model\.predict is computed from the InputNode but never reaches the output"
    ) as err:
        serve.compile(used)
    assert_located(err.value, line)
    assert unused is not None


def test_constructor_given_a_per_request_node():
    with InputNode() as inp:
        model, line = Model.bind(inp), here()
        app = model.predict.bind(1.0)
    with pytest.raises(BindError, match=r"Model\.bind\(\) got InputNode \(bound at .*\) as a constructor argument, but it only has a value per request") as err:
        serve.compile(app)
    assert_located(err.value, line)


def test_constructor_given_a_method_result():
    with InputNode() as inp:
        result = Model.bind().predict.bind(inp)
        app, line = Ensemble.bind(result, Model.bind()), here()
    with pytest.raises(BindError, match=r"Ensemble\.bind\(\) got Model\.predict .* pass Model\.predict to a method instead") as err:
        serve.compile(app)
    assert_located(err.value, line)


def test_unserializable_bound_argument():
    app, line = Model.bind(threading.Lock()), here()
    with pytest.raises(SerializationError, match=r"Model\.bind\(\): argument 0 \(lock\) cannot be serialized to send to a replica: TypeError: cannot pickle '_thread.lock'") as err:
        serve.compile(app)
    assert isinstance(err.value, TypeError)
    assert_located(err.value, line)


def test_resources_over_the_cluster_show_a_table():
    big = Model.options(num_replicas=3, ray_actor_options={"num_cpus": 1})
    app, line = Ensemble.bind(big.bind(), Model.bind()), here()
    with pytest.raises(ResourceError, match=r"the graph asks for more CPU than the cluster has") as err:
        serve.compile(app, cluster_resources={"CPU": 2.0})
    message = str(err.value)
    assert "total asked" in message and "cluster has" in message
    assert message.splitlines()[-3].split()[-1] == "3.2"  # 3 x 1 + 2 x the 0.1 default
    assert_located(err.value, line)  # the deployment asking for the most
    serve.compile(app, cluster_resources={"CPU": 4.0})  # fits
    serve.compile(app)  # no cluster given: no resource check


def test_a_resource_error_names_deployments_by_final_name_and_points_at_the_hungry_one():
    # Two deployments of class Model: the 0.1-CPU one is bound first, the 4-CPU one second.
    small, small_line = Model.bind(), here()
    big, big_line = Model.options(ray_actor_options={"num_cpus": 4}).bind(), here()
    app = Ensemble.bind(small, big)
    with pytest.raises(ResourceError) as err:
        serve.compile(app, cluster_resources={"CPU": 2.0})
    (diagnostic,) = err.value.diagnostics
    assert diagnostic.line == big_line and diagnostic.line != small_line
    lines = str(err.value).splitlines()
    assert lines[1].startswith("deployment")
    assert [line.split()[0] for line in lines[2:5]] == ["Ensemble", "Model", "Model_1"]  # capture order


def test_a_cyclic_graph_compiled_leniently_still_shows_itself():
    items: list = []
    first = Model.bind().gather.bind(items)
    second = Model.bind().gather.bind([first])
    items.append(second)
    compiled = serve.compile(second, strict=False)
    assert [d.code for d in compiled.diagnostics] == ["cycle"]
    assert repr(compiled) == "<CompiledGraph deployments=['Model', 'Model_1'] plan of 0 steps errors=1>"
    assert compiled._repr_mimebundle_() == {"text/plain": repr(compiled)}
    assert set(compiled.graph.nodes) == {"n0", "n1", "n2", "n3"}


def test_passes_after_capture_read_only_the_ir():
    # The IR holds what later passes need: targets, options and final names on the deployment nodes.
    compiled = serve.compile(Ensemble.bind(Model.bind(), Model.bind()))
    nodes = {n.key: n for n in compiled.ir.nodes if n.is_deployment}
    assert {n.name for n in nodes.values()} == {"Ensemble", "Model", "Model_1"}
    assert all(n.target is not None and n.options is not None for n in nodes.values())
    assert {(e.source, e.target, e.kind) for e in compiled.ir.edges} == {("n1", "n0", "handle"), ("n2", "n0", "handle")}


def test_every_problem_is_reported_at_once():
    with InputNode() as inp:
        used = Model.bind(threading.Lock()).predict.bind(inp)
        Model.bind().predict.bind(inp)
    with pytest.raises(UnreachableNodeError) as err:
        serve.compile(used)
    assert str(err.value).startswith("2 errors in the graph:")
    assert [d.code for d in err.value.diagnostics] == ["unreachable", "serialization"]
    compiled = serve.compile(used, strict=False)
    assert not compiled.ok and len(compiled.diagnostics) == 2


def test_compile_takes_a_graph_node():
    with pytest.raises(TypeError, match=r"expected a graph node built with \.bind\(\), got Deployment"):
        serve.compile(Model)


def test_errors_share_one_root():
    for cls in (BindError, CycleError, InputNodeError, UnreachableNodeError, ResourceError, SerializationError):
        assert issubclass(cls, GraphError)


# Naming -------------------------------------------------------------------------------


def test_repeated_deployments_get_numbered_names():
    with InputNode() as inp:
        app = combine.bind(Model.bind(1.0).predict.bind(inp), Model.bind(2.0).predict.bind(inp))
    compiled = serve.compile(app)
    assert sorted(compiled.deployments) == ["Model", "Model_1", "combine"]
    weights = {name: dep.init_args for name, dep in compiled.deployments.items()}
    assert weights["Model"] == (1.0,) and weights["Model_1"] == (2.0,)  # numbered in argument order


def test_name_option_wins_and_still_gets_numbered():
    app = Ensemble.bind(Model.options(name="Scorer").bind(), Model.options(name="Scorer").bind())
    assert list(serve.compile(app).deployments) == ["Scorer", "Scorer_1", "Ensemble"]  # dependencies first


def test_constructor_handles_and_ingress():
    compiled = serve.compile(Ensemble.bind(Model.bind(), Model.bind(3.0)))
    assert compiled.ingress == "Ensemble" and compiled.plan is None
    ensemble = compiled.deployments["Ensemble"]
    assert ensemble.handles == ("Model", "Model_1")
    assert ensemble.init_args == (ir.HandleRef("Model"), ir.HandleRef("Model_1"))


def test_input_graph_lowers_to_a_plan_running_each_node_once():
    with InputNode() as inp:
        shared = Model.bind().predict.bind(inp[0])
        app = MultiOutputNode([combine.bind(shared, inp["bonus"]), shared])
    compiled = serve.compile(app)
    assert compiled.ingress is None
    calls = [step for step in compiled.plan.steps if step.kind == "call"]
    assert [(s.deployment, s.method) for s in calls] == [("Model", "predict"), ("combine", "__call__")]
    assert compiled.plan.steps[-1].kind == ir.OUTPUT


def test_dag_driver_of_a_deployment_is_that_deployment():
    assert serve.compile(DAGDriver.bind(Model.bind())).ingress == "Model"
    with InputNode() as inp:
        driven = DAGDriver.bind(Model.bind().predict.bind(inp))
    assert serve.compile(driven).plan is not None


# Determinism ---------------------------------------------------------------------------


def build_graph():
    """The same graph every call: bound on the same lines, with the same values."""
    with InputNode() as inp:
        first = Model.bind(1.0).predict.bind(inp["x"])
        second = Model.options(num_replicas=2).bind(2.0).predict.bind(inp["x"])
        return MultiOutputNode([combine.bind(first, second), Ensemble.bind(Model.bind(), Model.bind()).__call__.bind(inp["x"])])


def test_compiling_twice_gives_equal_ir():
    graph = build_graph()
    one, two = serve.compile(graph), serve.compile(graph)
    assert one.ir == two.ir
    assert one.names == two.names


def test_a_rebuilt_identical_graph_gives_equal_ir_and_names():
    one, two = serve.compile(build_graph()), serve.compile(build_graph())
    assert one.ir == two.ir
    assert list(one.deployments) == list(two.deployments)
    assert sorted(one.deployments) == ["Ensemble", "Model", "Model_1", "Model_2", "Model_3", "combine"]
    assert [n.key for n in one.ir.nodes] == [f"n{i}" for i in range(len(one.ir.nodes))]


def test_a_different_graph_gives_different_ir():
    with InputNode() as inp:
        other = Model.bind(5.0).predict.bind(inp)
    assert serve.compile(other).ir != serve.compile(build_graph()).ir


@pytest.mark.parametrize("prefix", ["/api/", "/{x}", "api"])
def test_a_route_the_config_validator_refuses_is_refused_by_every_deploy(prefix):
    # One rule (_validation.route_prefix_problem): serve.run and deploy_compiled refuse what a config
    # built from them would fail on, before anything reaches a cluster.
    from servegraph.runtime.client.api import deploy_compiled

    app = Model.bind()
    with pytest.raises(ValueError, match=rf"Invalid route_prefix '{re.escape(prefix)}', m"):  # Ray Serve's words
        serve.run(app, route_prefix=prefix)
    with pytest.raises(ValueError, match=rf"Invalid route_prefix '{re.escape(prefix)}', m"):
        deploy_compiled(serve.compile(app), route_prefix=prefix)
    with pytest.raises(ConfigError, match=rf"application 'default': route_prefix {re.escape(repr(prefix))} m"):
        serve.compile(app).with_app(route_prefix=prefix)  # so `servegraph build` cannot write it either
