"""Model multiplexing, as in Ray Serve: per-replica LRU caches of models, requests routed to where their
model is loaded (by the caller's own router at once, by every other router once the replica's report
reaches it through the controller), and the model id readable in the replica's code."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
import ray

import servegraph as serve

# Without Ray: the decorator's checks and the cache's policy ------------------------------------------------


def test_the_decorator_refuses_what_ray_serve_refuses():
    with pytest.raises(TypeError, match="async functions or methods"):
        serve.multiplexed(lambda model_id: model_id)
    with pytest.raises(TypeError, match="'model_id: str' argument"):

        @serve.multiplexed
        async def no_arguments():
            return None

    with pytest.raises(ValueError, match="must be positive"):
        serve.multiplexed(max_num_models_per_replica=0)
    with pytest.raises(TypeError, match="must be an integer"):
        serve.multiplexed(max_num_models_per_replica="2")


class Model:
    unloaded: list[str] = []

    def __init__(self, model_id: str):
        self.model_id = model_id

    def __del__(self):
        Model.unloaded.append(self.model_id)


class Holder:
    def __init__(self):
        self.loads: list[str] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.loads.append(model_id)
        await asyncio.sleep(0)
        return Model(model_id)


def test_models_load_once_and_the_least_recently_used_is_unloaded():
    Model.unloaded.clear()
    holder = Holder()

    async def main():
        same = await asyncio.gather(*[holder.get_model("a") for _ in range(5)])  # one load, shared
        assert len({id(m) for m in same}) == 1
        await holder.get_model("b")
        await holder.get_model("a")  # a is now the most recently used
        await holder.get_model("c")  # evicts b
        return [m.model_id for m in same]

    assert asyncio.run(main()) == ["a"] * 5
    assert holder.loads == ["a", "b", "c"]
    assert Model.unloaded[0] == "b"
    assert serve.get_multiplexed_model_id() == ""  # outside a request: no model


# On Ray --------------------------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class Unloads:
    def __init__(self):
        self.ids: list[str] = []

    def add(self, model_id: str) -> None:
        self.ids.append(model_id)

    def get(self) -> list[str]:
        return self.ids


class Tracked:
    def __init__(self, model_id: str, unloads):
        self.model_id = model_id
        self.unloads = unloads

    def __del__(self):
        ray.get(self.unloads.add.remote(self.model_id))


@serve.deployment(num_replicas=2)
class Multiplexed:
    def __init__(self, unloads):
        self.unloads = unloads

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Tracked:
        return Tracked(model_id, self.unloads)

    async def __call__(self, request=None) -> dict:
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        return {"model": model.model_id, "pid": os.getpid()}


@pytest.fixture(scope="module")
def app(deploy):
    unloads = Unloads.remote()
    handle = deploy(Multiplexed.bind(unloads), name="multiplex", route_prefix="/multiplex")
    return handle, unloads


def test_a_models_requests_follow_it_and_the_id_reaches_the_code(app):
    handle, _ = app
    for model_id in ("a", "b"):
        replies = [handle.options(multiplexed_model_id=model_id).remote().result(timeout_s=60) for _ in range(8)]
        assert {r["model"] for r in replies} == {model_id}
        assert len({r["pid"] for r in replies}) == 1  # one replica holds it and gets them all


def test_other_routers_learn_where_a_model_is_through_the_controller(app, http_port):
    handle, _ = app
    home = handle.options(multiplexed_model_id="http-model").remote().result(timeout_s=60)["pid"]
    url = f"http://127.0.0.1:{http_port}/multiplex"
    headers = {"serve_multiplexed_model_id": "http-model"}
    # The proxy's router learns it once the replica's report has gone through the controller: bounded wait.
    for _ in range(300):
        if httpx.get(url, headers=headers, timeout=60).json()["pid"] == home:
            break
    replies = [httpx.get(url, headers=headers, timeout=60).json() for _ in range(10)]
    assert replies == [{"model": "http-model", "pid": home}] * 10
    # Proxies such as nginx rewrite the header's underscores: Ray Serve reads it either way, and so does the proxy.
    rewritten = httpx.get(url, headers={"Serve-Multiplexed-Model-Id": "http-model"}, timeout=60).json()
    assert rewritten == {"model": "http-model", "pid": home}


@serve.deployment
class OneReplica(Multiplexed.func_or_class):
    """The same code on one replica: every model lands in its cache."""


def test_a_replica_keeps_at_most_its_limit_and_unloads_the_least_recently_used(deploy):
    unloads = Unloads.remote()
    handle = deploy(OneReplica.bind(unloads), name="multiplex-lru")

    def ask(model_id: str) -> str:
        return handle.options(multiplexed_model_id=model_id).remote().result(timeout_s=60)["model"]

    assert [ask(m) for m in ("m1", "m2", "m1", "m3")] == ["m1", "m2", "m1", "m3"]  # m3 evicts m2, not m1
    assert ask("m4") == "m4"  # evicts m1
    assert ray.get(unloads.get.remote()) == ["m2", "m1"]  # each unloaded model's __del__ ran once, in order


def test_the_multiplexing_example(deploy, http_port):
    import sys

    from conftest import EXAMPLES

    sys.path.insert(0, str(EXAMPLES))
    import multiplexing

    handle = deploy(multiplexing.app, name="multiplex-example", route_prefix="/greeters")
    spanish = [handle.options(multiplexed_model_id="spanish").greet.remote("Dora").result(timeout_s=60) for _ in range(4)]
    assert {r["text"] for r in spanish} == {"Hola Dora"} and len({r["replica_pid"] for r in spanish}) == 1
    reply = httpx.get(f"http://127.0.0.1:{http_port}/greeters?name=Dora", headers={"serve_multiplexed_model_id": "french"}, timeout=60)
    assert reply.text == "Bonjour Dora"
