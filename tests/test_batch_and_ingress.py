"""@serve.batch and @serve.ingress(FastAPI) on the session's cluster, over real HTTP; runs both examples."""

from __future__ import annotations

import asyncio

import batching
import fastapi_ingress
import httpx
import pytest
import ray
from fastapi import FastAPI

import servegraph as serve
from servegraph.exceptions import RayServeException


@pytest.fixture(scope="module")
def apps(deploy, http_port) -> dict:
    return {
        "batching": deploy(batching.app, name="ex-batching"),
        "ingress": deploy(fastapi_ingress.app, name="ex-fastapi", route_prefix="/api"),
        "url": f"http://127.0.0.1:{http_port}/api",
    }


# @serve.batch -----------------------------------------------------------------------------


def test_batching_example_groups_concurrent_requests(apps):
    assert ray.get(apps["batching"].remote(16), timeout=60) == [2 * i for i in range(16)]
    sizes = serve.get_deployment_handle("BatchedModel", "ex-batching").seen_batch_sizes.remote().result(timeout_s=60)
    assert sum(sizes) == 16
    assert max(sizes) > 1 and max(sizes) <= 8


@serve.deployment(max_ongoing_requests=8)
class Textgen:
    """Ray Serve's streaming-batch test: each HTTP request streams its own prompt's tokens from one batch."""

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=30)
    async def tokens(self, prompts: list):
        for _ in range(3):
            yield prompts

    async def __call__(self, request):
        from starlette.responses import StreamingResponse

        return StreamingResponse(self.tokens(request.query_params["prompt"]))


def test_a_batched_generator_streams_over_http(deploy, http_port):
    deploy(Textgen.bind(), name="batch-stream", route_prefix="/textgen")

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.get(f"http://127.0.0.1:{http_port}/textgen", params={"prompt": f"p{i}"}) for i in range(4)])

    answers = asyncio.run(main())  # the batch waits for all four (30 s timeout), so they share one batch
    assert [(a.status_code, a.text) for a in answers] == [(200, f"p{i}" * 3) for i in range(4)]


@serve.batch(max_batch_size=4)
async def double_all(items: list) -> list:
    return [x * 2 for x in items]


@serve.batch(max_batch_size=3, batch_wait_timeout_s=10)
async def fail_all(items: list) -> list:
    raise ValueError(f"batch of {len(items)} failed")


@serve.batch(max_batch_size=2, batch_wait_timeout_s=10)
async def wrong_length(items: list) -> list:
    return [1]


def test_batch_semantics_in_process():
    async def main():
        doubled = await asyncio.gather(*[double_all(i) for i in range(10)])
        failures = await asyncio.gather(*[fail_all(i) for i in range(3)], return_exceptions=True)
        wrong = await asyncio.gather(*[wrong_length(i) for i in range(2)], return_exceptions=True)
        return doubled, failures, wrong

    doubled, failures, wrong = asyncio.run(main())
    assert doubled == [2 * i for i in range(10)]
    assert [str(e) for e in failures] == ["batch of 3 failed"] * 3  # one error reaches every request of the batch
    assert all(isinstance(e, TypeError) and "one result per request (2)" in str(e) for e in wrong)


def test_batch_refuses_sync_functions_and_bad_sizes():
    with pytest.raises(TypeError, match="must be 'async def'"):

        @serve.batch
        def not_async(items):
            return items

    with pytest.raises(ValueError, match="max_batch_size"):
        serve.batch(max_batch_size=0)
    # Ray Serve's types: a wrong type is a TypeError, a wrong value a ValueError; 4.0 is 4.
    for bad, kind in [({"max_batch_size": 1.5}, TypeError), ({"batch_wait_timeout_s": "a"}, TypeError),
                      ({"batch_wait_timeout_s": -1}, ValueError), ({"max_concurrent_batches": 0}, TypeError),
                      ({"batch_size_fn": 3}, TypeError)]:  # fmt: skip
        with pytest.raises(kind):
            serve.batch(**bad)
    assert serve.batch(max_batch_size=4.0)(double_all.__wrapped__)._get_max_batch_size() == 4


def test_a_batched_generator_streams_each_caller_its_own_items():
    @serve.batch(max_batch_size=3, batch_wait_timeout_s=10)
    async def tokens(prompts: list, counts: list):
        seen.append(len(prompts))
        for step in range(max(counts)):
            # A request whose count is reached ends its stream early (Ray Serve's sentinel).
            yield [f"{p}{step}" if step < n else StopIteration for p, n in zip(prompts, counts, strict=True)]

    seen: list[int] = []

    async def main():
        streams = [tokens("a", 1), tokens("b", 3), tokens(prompts="c", counts=2)]  # queued when called
        read = []
        for stream in streams:  # read one after another
            read.append([item async for item in stream])
        return read

    assert asyncio.run(main()) == [["a0"], ["b0", "b1", "b2"], ["c0", "c1"]]
    assert seen == [3]


def test_a_batched_generator_that_fails_or_yields_the_wrong_length_ends_every_stream_with_the_error():
    @serve.batch(max_batch_size=2, batch_wait_timeout_s=10)
    async def broken(xs: list):
        yield xs
        yield xs * 2

    async def main():
        streams = [broken(1), broken(2)]
        firsts = [await stream.__anext__() for stream in streams]
        errors = []
        for stream in streams:
            with pytest.raises(RayServeException, match="doesn't preserve batch size") as caught:
                await stream.__anext__()
            errors.append(caught.value)
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
        return firsts, errors

    firsts, errors = asyncio.run(main())
    assert firsts == [1, 2] and all(isinstance(e, TypeError) for e in errors)


def test_batch_options_change_and_hold_batches_apart():
    class Model:
        def __init__(self):
            self.sizes = []

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=10, batch_size_fn=lambda items: sum(len(i) for i in items))
        async def by_tokens(self, texts: list) -> list:
            self.sizes.append([len(t) for t in texts])
            return [t.upper() for t in texts]

        @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.5)
        async def by_model(self, xs: list) -> list:
            return [(serve.get_multiplexed_model_id(), len(xs))] * len(xs)

    from servegraph.runtime.common.context import set_multiplexed_model_id

    async def for_model(model: Model, model_id: str, x: int):
        set_multiplexed_model_id(model_id)  # in this task's context only
        return await model.by_model(x)

    async def main():
        model = Model()
        upper = await asyncio.gather(*[model.by_tokens(t) for t in ["aaaa", "bbbb", "cc", "dd", "eeeeeeee"]])
        by_model = await asyncio.gather(for_model(model, "m1", 1), for_model(model, "m2", 2))
        model.by_model.set_max_batch_size(1)  # on the bound method, as Ray Serve's users write it
        model.by_model.set_batch_wait_timeout_s(0)
        alone = await asyncio.gather(for_model(model, "m1", 1), for_model(model, "m1", 2))
        return model.sizes, upper, by_model, alone, model.by_model._get_batch_wait_timeout_s()

    sizes, upper, by_model, alone, wait_s = asyncio.run(main())
    assert upper == ["AAAA", "BBBB", "CC", "DD", "EEEEEEEE"]
    assert sizes == [[4, 4], [2, 2], [8]]  # at most 8 characters a batch, by the size function
    assert by_model == [("m1", 1), ("m2", 1)]  # one batch per model, each seeing its own id
    assert alone == [("m1", 1), ("m1", 1)] and wait_s == 0.0


def test_at_most_max_concurrent_batches_run_at_once():
    running, most = [0], [0]

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0, max_concurrent_batches=2)
    async def slow(xs: list) -> list:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.05)
        running[0] -= 1
        return xs

    async def main():
        return await asyncio.gather(*[slow(i) for i in range(6)])

    assert asyncio.run(main()) == list(range(6)) and most[0] == 2


# @serve.ingress ---------------------------------------------------------------------------


def test_fastapi_route_with_path_and_query_parameters(apps):
    reply = httpx.get(f"{apps['url']}/hello/Ana", params={"greeting": "Hola"}, timeout=60)
    assert reply.status_code == 200
    assert reply.json() == "Hola Ana"


def test_fastapi_body_validation_and_instance_state(apps):
    first = httpx.post(f"{apps['url']}/orders", json={"item": "tea", "quantity": 2}, timeout=60)
    second = httpx.post(f"{apps['url']}/orders", json={"item": "tea", "quantity": 3}, timeout=60)
    assert first.json()["item"] == "tea"
    assert second.json()["orders_so_far"] == first.json()["orders_so_far"] + 1
    bad = httpx.post(f"{apps['url']}/orders", json={"item": "tea", "quantity": "many"}, timeout=60)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "quantity"]


def test_fastapi_route_calls_another_deployment(apps):
    assert httpx.get(f"{apps['url']}/translate/hello", timeout=60).json() == {"word": "hello", "translation": "hola"}


def test_fastapi_docs_and_openapi(apps):
    docs = httpx.get(f"{apps['url']}/docs", timeout=60)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{apps['url']}/openapi.json", timeout=60).json()
    assert set(schema["paths"]) == {"/hello/{name}", "/orders", "/translate/{word}"}
    assert [p["name"] for p in schema["paths"]["/hello/{name}"]["get"]["parameters"]] == ["name", "greeting"]


def test_fastapi_unknown_route_is_fastapis_404(apps):
    assert httpx.get(f"{apps['url']}/nowhere", timeout=60).status_code == 404


def test_ingress_only_decorates_classes():
    with pytest.raises(ValueError, match="must be used with a class"):
        serve.ingress(FastAPI())(lambda request: None)
