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
