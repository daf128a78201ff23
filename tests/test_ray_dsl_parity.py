"""The DSL as Ray Serve has it: positional names, async constructors, class factories, bind/remote misuse,
route prefixes, serve.start / status().proxies, and get_*_handle returning DeploymentHandles.

Deployed once for the module on the session's cluster; HTTP over 127.0.0.1.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import ray

import servegraph as serve
from servegraph.handle import DeploymentHandle, RayServeSyncHandle


@serve.deployment("renamed", num_replicas=1)
class Positional:
    def __call__(self) -> str:
        return "named positionally"


@serve.deployment
class AsyncInit:
    async def __init__(self, greeting: str):
        await asyncio.sleep(0.01)
        self.greeting = greeting

    async def __call__(self, name: str = "you") -> str:
        return f"{self.greeting} {name}"


def class_factory():
    class MyInlineClass:
        def __init__(self, val):
            self.val = val

        def get(self):
            return self.val

    return MyInlineClass


@serve.deployment
class NoargDriver:
    def __init__(self, dag):
        self.dag = dag

    async def __call__(self):
        return await self.dag.remote()


@pytest.fixture(scope="module")
def base(deploy, http_port) -> str:
    return f"http://127.0.0.1:{http_port}"


def test_positional_name_names_the_deployment(deploy, base):
    handle = deploy(Positional.bind(), name="dsl-positional", route_prefix="/positional")
    assert handle.deployment_name == "renamed"
    assert httpx.get(f"{base}/positional", timeout=60).text == "named positionally"


def test_async_constructor_is_awaited_before_requests(deploy, base):
    handle = deploy(AsyncInit.bind("Hola"), name="dsl-async-init", route_prefix="/async-init")
    assert ray.get(handle.remote("Ana"), timeout=60) == "Hola Ana"


def test_async_constructor_in_local_testing_mode():
    handle = serve.run(AsyncInit.bind("Salut"), _local_testing_mode=True)
    assert handle.remote("Léa").result() == "Salut Léa"


def test_class_factory_method_node_passed_to_a_constructor_becomes_a_handle_to_that_method(deploy, base):
    # Ray's test_deployment_graph.py::test_class_factory, imports changed.
    instance = serve.deployment(class_factory()).bind(3)
    output = instance.get.bind()
    serve_dag = NoargDriver.bind(output)
    handle = deploy(serve_dag, name="dsl-factory", route_prefix="/factory")
    assert ray.get(handle.remote(), timeout=60) == 3
    assert httpx.get(f"{base}/factory", timeout=60).text == "3"


def test_method_node_with_arguments_in_a_constructor_says_why():
    with pytest.raises(serve.BindError, match="only when bound with no arguments"):
        serve.compile(NoargDriver.bind(Takes.bind().get.bind(1)))


@serve.deployment
class Takes:
    def get(self, x):
        return x


def test_unsupported_bind():
    # Ray's test_deployment_graph.py::test_unsupported_bind, imports changed.
    @serve.deployment
    class Actor:
        def ping(self):
            return "hello"

    with pytest.raises(AttributeError, match=r"\.bind\(\) cannot be used again on"):
        _ = Actor.bind().bind()

    with pytest.raises(AttributeError, match=r"\.bind\(\) cannot be used again on"):
        _ = Actor.bind().ping.bind().bind()

    with pytest.raises(AttributeError, match=r"\.remote\(\) cannot be used on ClassMethodNodes"):
        actor = Actor.bind()
        _ = actor.ping.remote()


def test_unsupported_remote():
    # Ray's test_deployment_graph.py::test_unsupported_remote, imports changed.
    @serve.deployment
    class Actor:
        def ping(self):
            return "hello"

    with pytest.raises(AttributeError, match=r"\'Actor\' has no attribute \'remote\'"):
        _ = Actor.bind().remote()

    @serve.deployment
    def func():
        return 1

    with pytest.raises(AttributeError, match=r"\.remote\(\) cannot be used on"):
        _ = func.bind().remote()


def test_unsupported_remote_in_ray_2x_words():
    # Ray 2.60's test_model_composition.py::test_unsupported_remote, imports changed.
    @serve.deployment
    class Actor:
        def ping(self):
            return "hello"

    with pytest.raises(AttributeError, match=r"\'Application\' object has no attribute \'remote\'"):
        _ = Actor.bind().remote()

    @serve.deployment
    def func():
        return 1

    with pytest.raises(AttributeError, match=r"\'Application\' object has no attribute \'remote\'"):
        _ = func.bind().remote()


def test_a_class_with_its_own_bind_method_keeps_it():
    @serve.deployment
    class Binder:
        def bind(self, x):
            return x

    assert Binder.bind().bind.bind(1) is not None


@pytest.mark.parametrize("prefix", ["/hello/", "/{hello}", "hello"])
def test_route_prefixes_ray_rejects_are_refused(ray_cluster, prefix):
    with pytest.raises(ValueError, match="route_prefix"):
        serve.run(Positional.bind(), name="never", route_prefix=prefix)
    with pytest.raises(serve.OptionValueError, match="route_prefix"):
        Positional.options(route_prefix=prefix)


def test_route_prefix_rule_is_shared_with_the_config_validator():
    from servegraph._validation import route_prefix_problem
    from servegraph.compiler.config.schema import ApplicationConfig

    for prefix in ["/hello/", "/{hello}", "hello"]:
        with pytest.raises(ValueError, match=route_prefix_problem(prefix).replace("(", r"\(").replace(")", r"\)")):
            ApplicationConfig(import_path="hello:app", route_prefix=prefix)


def test_run_accepts_rays_blocking_argument(deploy):
    handle = deploy(Positional.bind(), name="dsl-blocking", _blocking=True)
    assert ray.get(handle.remote(), timeout=60) == "named positionally"


def test_start_starts_the_proxy_and_status_lists_it(ray_cluster, http_port):
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    assert httpx.get(f"http://127.0.0.1:{http_port}/-/healthz", timeout=60).text == "success"
    proxies = serve.status().proxies
    assert list(proxies.values()) == ["HEALTHY"]
    assert list(proxies) == [ray.get_runtime_context().get_node_id()]


def test_get_app_and_deployment_handles_are_deployment_handles(deploy):
    deploy(AsyncInit.bind("Hej"), name="dsl-handles")
    app = serve.get_app_handle("dsl-handles")
    assert isinstance(app, DeploymentHandle)
    assert app.remote("Bo").result(timeout_s=60) == "Hej Bo"
    one = serve.get_deployment_handle("AsyncInit", "dsl-handles")
    assert isinstance(one, DeploymentHandle)
    old = one.options(use_new_handle_api=False)
    assert isinstance(old, RayServeSyncHandle)
    assert ray.get(old.remote("Al"), timeout=60) == "Hej Al"


class Children:
    """A user object holding bound nodes (Ray Serve replaces them with handles)."""

    def __init__(self, first, second, label: str):
        self.first = first
        self.second = second
        self.label = label


@serve.deployment
class Echo:
    def __init__(self, s: str):
        self._s = s

    def __call__(self, *args):
        return self._s


@serve.deployment
class Parent:
    def __init__(self, children: Children):
        self.children = children

    async def __call__(self, which: str) -> str:
        child = self.children.first if which == "first" else self.children.second
        return f"{self.children.label}: {await (await child.remote())}"


def test_bound_nodes_inside_a_user_object_become_handles(deploy):
    handle = deploy(Parent.bind(Children(Echo.bind("ed"), Echo.bind("simon"), "kids")), name="dsl-object")
    assert ray.get([handle.remote("first"), handle.remote("second")], timeout=60) == ["kids: ed", "kids: simon"]


def test_passing_handle_in_obj(deploy):
    # Ray's test_deployment_graph.py::test_passing_handle_in_obj, imports changed.
    @serve.deployment
    class Parent:
        def __init__(self, d):
            self._d = d

        async def __call__(self, key):
            return await self._d[key].remote()

    child1 = Echo.bind("ed")
    child2 = Echo.bind("simon")
    parent = Parent.bind({"child1": child1, "child2": child2})

    handle = deploy(parent, name="dsl-handle-in-obj")
    assert ray.get(handle.remote("child1"), timeout=60) == "ed"
    assert ray.get(handle.remote("child2"), timeout=60) == "simon"
