"""Options and wiring Ray Serve accepts at .bind() but that fail (or do nothing) once replicas run."""

from __future__ import annotations

import pytest
from support import assert_located, here

import servegraph as serve
from servegraph import BindError, GraphError, InputNode, OptionValueError


@serve.deployment
class Model:
    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def predict(self, x):
        return x

    async def tokens(self, x):
        yield x

    def words(self, x):
        yield x

    async def ticks(self, n: int = 3):
        for i in range(n):
            yield i


@serve.deployment
class Tunable:
    def reconfigure(self, config):
        self.config = config

    def __call__(self, x):
        return x


@serve.deployment
class NoConfigArg:
    def reconfigure(self):
        pass


@serve.deployment
class Ensemble:
    def __init__(self, *models):
        self.models = models


@serve.deployment
def echo(x):
    return x


@serve.deployment
class NoArgs:
    def __call__(self):
        return 1


def test_max_queued_requests_of_zero_is_refused():
    line = here() + 1
    app = Model.options(max_queued_requests=0).bind()
    with pytest.raises(OptionValueError, match=r"Model: max_queued_requests is 0, which Ray Serve refuses.*set it to -1 or at least 1") as err:
        serve.compile(app)
    assert_located(err.value, line)


def test_a_route_prefix_off_the_ingress_is_refused_at_its_line():
    """Ray Serve 2.0-2.6: "Route prefix is only configurable on the ingress deployment" (a ValueError)."""
    line = here() + 1
    inner = Model.options(route_prefix="/model").bind()
    with pytest.raises(ValueError, match=r"Model: route_prefix '/model' is set on a deployment that is not the application's ingress \(Route prefix is only configurable on the ingress deployment\)") as err:
        serve.compile(Ensemble.bind(inner))
    assert isinstance(err.value, OptionValueError)
    assert_located(err.value, line)
    with InputNode() as inp:  # an InputNode graph's prefix is the application's (serve.run's, or a DAGDriver's)
        graph = Model.options(route_prefix="/model").bind().predict.bind(inp)
    with pytest.raises(OptionValueError, match="not the application's ingress"):
        serve.compile(graph)


def test_the_ingress_and_a_driver_wrapped_deployment_may_set_the_route_prefix():
    assert serve.compile(Ensemble.options(route_prefix="/e").bind(Model.bind())).ir.ingress == "Ensemble"
    assert serve.compile(serve.DAGDriver.bind(Model.options(route_prefix="/m").bind())).ir.ingress == "Model"


def test_max_ongoing_below_the_autoscaling_target_warns():
    app = Model.options(
        num_replicas=None, max_ongoing_requests=1, autoscaling_config={"target_ongoing_requests": 4, "max_replicas": 3}
    ).bind()
    (diag,) = serve.compile(app).diagnostics
    assert diag.severity == "warning"
    assert "max_ongoing_requests (1) is below autoscaling_config.target_ongoing_requests (4)" in diag.message


def test_user_config_without_reconfigure_fails():
    line = here() + 1
    app = Model.options(user_config={"threshold": 0.5}).bind()
    with pytest.raises(OptionValueError, match=r"user_config is set but Model has no reconfigure method.*def reconfigure\(self, config\)") as err:
        serve.compile(app)
    assert_located(err.value, line)


def test_user_config_with_a_reconfigure_that_takes_no_config_fails():
    with pytest.raises(OptionValueError, match=r"NoConfigArg\.reconfigure is called with the user_config, but too many positional arguments"):
        serve.compile(NoConfigArg.options(user_config={"a": 1}).bind())


def test_user_config_on_a_function_fails():
    with pytest.raises(OptionValueError, match=r"echo: user_config is set on a function deployment"):
        serve.compile(echo.options(user_config={"a": 1}).bind())


def test_user_config_must_be_json():
    with pytest.raises(OptionValueError, match=r"Tunable: user_config is not JSON-serializable .*set"):
        serve.compile(Tunable.options(user_config={"a": {1, 2}}).bind())


def test_user_config_set_by_a_deploy_config_is_checked_too():
    with pytest.raises(OptionValueError, match=r"user_config is set but Model has no reconfigure"):
        serve.compile(Model.bind(), overrides={"Model": {"user_config": {"a": 1}}})


def test_a_user_config_with_reconfigure_compiles():
    assert serve.compile(Tunable.options(user_config={"a": 1}).bind()).diagnostics == ()


def test_a_deployment_passed_unbound_says_to_bind_it():
    line = here() + 1
    app = Ensemble.bind(Model.bind(2.0), Model)
    with pytest.raises(BindError, match=r"Ensemble\.bind\(\): argument 1 is the deployment Model itself, not a bound node.*Model\.bind\(\.\.\.\)") as err:
        serve.compile(app)
    assert_located(err.value, line)


def test_a_generator_method_as_a_graph_node_fails():
    model = Model.bind()
    with InputNode() as inp:
        line = here() + 1
        app = model.tokens.bind(inp)
    with pytest.raises(GraphError, match=r"Model\.tokens is an async generator \(it yields\).*handle\.options\(stream=True\)") as err:
        serve.compile(app)
    assert_located(err.value, line)
    with InputNode() as inp:
        app = echo.bind(model.words.bind(inp))
    with pytest.raises(GraphError, match=r"Model\.words is a generator"):
        serve.compile(app)


def test_a_generator_method_handed_to_a_constructor_is_a_handle_and_fine():
    # Ray's class factory pattern: the constructor gets a handle to the method, and may stream it.
    assert serve.compile(Ensemble.bind(Model.bind().ticks.bind())).diagnostics == ()


def test_a_class_without_init_bound_with_arguments_fails_in_bind():
    line = here() + 2
    with pytest.raises(BindError, match=r"NoArgs\.bind\(\): too many positional arguments\. Expected NoArgs\(\) \(NoArgs defines no __init__\)") as err:
        NoArgs.bind(1, 2)
    assert_located(err.value, line)
    NoArgs.bind()  # and without arguments it binds


def test_a_class_without_init_but_with_new_follows_new():
    @serve.deployment
    class WithNew:
        def __new__(cls, size):
            return super().__new__(cls)

    WithNew.bind(3)
    with pytest.raises(BindError, match=r"missing a required argument: 'size'"):
        WithNew.bind()
