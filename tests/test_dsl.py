"""What fails at ``@serve.deployment``, ``.options()`` and ``.bind()`` time: option and bind errors, located."""

from __future__ import annotations

import pytest
from support import assert_located, here

import servegraph as serve
from servegraph import (
    BindError,
    DAGDriver,
    GraphError,
    InputNode,
    MultiOutputNode,
    OptionError,
    OptionValueError,
)


@serve.deployment
class Model:
    def __init__(self, weight: float, *, bias: float = 0.0):
        self.weight = weight
        self.bias = bias

    def predict(self, x: float) -> float:
        return x * self.weight + self.bias

    def combine(self, a: float, b: float) -> float:
        return a + b


@serve.deployment
def double(x: float) -> float:
    return 2 * x


@serve.deployment
def add(a: float, b: float) -> float:
    return a + b


# Options ------------------------------------------------------------------------------


def test_unknown_option_names_the_closest_one():
    with pytest.raises(OptionError, match=r"unknown deployment option 'num_replica'; did you mean 'num_replicas'\?") as err:
        line = here() + 2

        @serve.deployment(num_replica=2)
        class Typo:
            pass

    assert isinstance(err.value, TypeError)
    assert_located(err.value, line)


def test_unknown_option_in_options_call():
    with pytest.raises(OptionError, match=r"'max_ongoing_request'; did you mean 'max_ongoing_requests'\?") as err:
        line = here() + 1
        Model.options(max_ongoing_request=3)
    assert_located(err.value, line)


def test_zero_replicas_names_option_and_range():
    with pytest.raises(OptionValueError, match=r"num_replicas: must be >= 1, got 0") as err:
        line = here() + 1
        serve.deployment(num_replicas=0)(Model.func_or_class)
    assert isinstance(err.value, ValueError)
    assert_located(err.value, line)


def test_negative_num_cpus_names_option_and_range():
    with pytest.raises(OptionValueError, match=r"ray_actor_options\.num_cpus: must be >= 0(\.0)?, got -1") as err:
        line = here() + 1
        Model.options(ray_actor_options={"num_cpus": -1})
    assert_located(err.value, line)


def test_unknown_ray_actor_option_names_the_accepted_keys():
    with pytest.raises(OptionValueError, match=r"ray_actor_options: unknown key 'num_cpu'; did you mean 'num_cpus'\?") as err:
        line = here() + 1
        Model.options(ray_actor_options={"num_cpu": 1})
    assert "Accepted keys: accelerator_type, memory, num_cpus" in str(err.value)
    assert_located(err.value, line)


def test_bound_node_options_are_checked_at_their_line():
    node = Model.bind(1.0)
    with pytest.raises(OptionValueError, match=r"max_ongoing_requests: must be >= 1, got 0") as err:
        line = here() + 1
        node.options(max_ongoing_requests=0)
    assert_located(err.value, line)


def test_options_override_and_keep_the_rest():
    base = Model.options(num_replicas=3, ray_actor_options={"num_cpus": 0.5})
    changed = base.options(user_config={"threshold": 0.2})
    assert (changed.num_replicas, changed.user_config) == (3, {"threshold": 0.2})
    assert changed.ray_actor_options == {"num_cpus": 0.5}
    assert Model.num_replicas == 1 and Model.user_config is None  # the original is untouched
    assert Model.options(max_concurrent_queries=7).max_ongoing_requests == 7  # Ray Serve's older name


# .bind() -------------------------------------------------------------------------------


def test_missing_constructor_argument():
    with pytest.raises(BindError, match=r"Model\.bind\(\): missing a required argument: 'weight'") as err:
        line = here() + 1
        Model.bind()
    assert "Expected Model.__init__(self, weight" in str(err.value)
    assert isinstance(err.value, TypeError) and isinstance(err.value, GraphError)
    assert_located(err.value, line)


def test_too_many_constructor_arguments():
    with pytest.raises(BindError, match=r"Model\.bind\(\): too many positional arguments") as err:
        line = here() + 1
        Model.bind(1.0, 2.0)
    assert_located(err.value, line)


def test_unexpected_keyword_argument():
    with pytest.raises(BindError, match=r"Model\.bind\(\): got an unexpected keyword argument 'wieght'; did you mean 'weight'\?") as err:
        line = here() + 1
        Model.bind(wieght=1.0)
    assert_located(err.value, line)


def test_method_arguments_are_checked():
    model = Model.bind(1.0)
    with pytest.raises(BindError, match=r"Model\.combine\.bind\(\): missing a required argument: 'b'") as err:
        line = here() + 1
        model.combine.bind(1.0)
    assert_located(err.value, line)


def test_function_arguments_are_checked():
    with InputNode() as inp:
        with pytest.raises(BindError, match=r"add\.bind\(\): missing a required argument: 'b'") as err:
            line = here() + 1
            add.bind(inp)
    assert_located(err.value, line)


def test_function_bound_with_nothing_is_an_ingress():
    # As in Ray Serve: the function is then called with each request (or handle call's arguments).
    assert serve.compile(double.bind()).ingress == "double"


def test_unknown_method_suggests_the_closest():
    model = Model.bind(1.0)
    with pytest.raises(BindError, match=r"Model has no method 'predcit'; did you mean 'predict'\?") as err:
        line = here() + 1
        model.predcit.bind(1.0)
    assert "Methods of Model: combine, predict." in str(err.value)
    assert_located(err.value, line)


def test_dag_driver_takes_a_graph_node():
    with pytest.raises(BindError, match=r"DAGDriver\.bind\(\) takes a graph node built with \.bind\(\), got Deployment") as err:
        line = here() + 1
        DAGDriver.bind(Model)
    assert_located(err.value, line)


def test_multi_output_node_takes_graph_nodes():
    with InputNode() as inp:
        out = double.bind(inp)
    with pytest.raises(BindError, match=r"MultiOutputNode\(\) got int 3; every output must be a graph node") as err:
        line = here() + 1
        MultiOutputNode([out, 3])
    assert_located(err.value, line)
    with pytest.raises(BindError, match=r"takes a non-empty list"):
        MultiOutputNode([])


# Using a graph node as if it were a value ------------------------------------------------


def test_calling_a_deployment_directly_says_to_bind():
    with pytest.raises(TypeError, match=r"Deployment 'Model' cannot be called directly: use Model\.bind"):
        Model(1.0)


def test_remote_on_a_graph_node_says_to_run_first():
    # An AttributeError, as Ray Serve raises.
    with pytest.raises(AttributeError, match=r"\.remote\(\) cannot be used on ClassMethodNodes such as Model\.predict"):
        Model.bind(1.0).predict.remote(2.0)


def test_a_node_has_no_truth_value_and_cannot_be_unpacked():
    with InputNode() as inp:
        node = double.bind(inp)
        with pytest.raises(TypeError, match=r"cannot be used in 'if'"):
            bool(node)
        with pytest.raises(TypeError, match=r"is a graph node, not a value"):
            a, b = inp


def test_async_constructor_is_accepted_as_in_ray_serve():
    @serve.deployment
    class AsyncInit:
        async def __init__(self):
            pass

    assert AsyncInit.bind() is not None  # awaited on the replica (tests/test_ray_dsl_parity.py)


def test_name_may_be_given_positionally():
    @serve.deployment("named", num_replicas=2)
    class Positional:
        pass

    assert (Positional.name, Positional.num_replicas) == ("named", 2)


def test_deployment_attributes_read_like_ray_serve():
    big = Model.options(name="Big", num_replicas=2, user_config={"k": 1}, max_ongoing_requests=3)
    assert (big.name, big.num_replicas, big.user_config, big.max_ongoing_requests) == ("Big", 2, {"k": 1}, 3)
    assert big.func_or_class is Model.func_or_class
    assert not big.is_function and double.is_function
    assert big.ray_actor_options == {"num_cpus": 0.1}  # the default reservation


def test_dagdriver_options_other_than_route_prefix_are_refused_not_ignored():
    from servegraph import DAGDriver

    assert DAGDriver.options(route_prefix="/x").route_prefix == "/x"
    with pytest.raises(serve.OptionError, match=r"DAGDriver.options\(\) got num_replicas, ray_actor_options: servegraph runs"):
        DAGDriver.options(num_replicas=2, ray_actor_options={"num_cpus": 1})
