"""Streaming, as in Ray Serve: a generator method through ``handle.options(stream=True)`` yields results as
they come (``for`` outside, ``async for`` inside deployments), and a ``StreamingResponse`` over HTTP reaches
the client chunk by chunk. On the session's Ray cluster and real HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import ray
from starlette.responses import StreamingResponse

import servegraph as serve


@serve.deployment
class Counter:
    def count(self, n: int):
        yield from range(n)

    def not_streaming(self) -> int:
        return 1


@serve.deployment
class Summer:
    def __init__(self, counter):
        self.counter = counter

    async def __call__(self, n: int) -> list:
        seen = []
        async for value in self.counter.options(stream=True).count.remote(n):
            seen.append(value)
        return seen


def test_a_generator_method_streams_through_a_handle(deploy):
    handle = deploy(Counter.bind(), name="stream-counter")
    assert list(handle.options(stream=True).count.remote(4)) == [0, 1, 2, 3]
    new_api = handle.options(use_new_handle_api=True, stream=True)
    assert list(new_api.count.remote(3)) == [0, 1, 2]


def test_async_for_over_a_stream_inside_a_deployment(deploy):
    handle = deploy(Summer.bind(Counter.bind()), name="stream-summer")
    assert ray.get(handle.remote(5), timeout=60) == [0, 1, 2, 3, 4]


def test_a_generator_called_without_stream_says_how_to_call_it(deploy):
    handle = deploy(Counter.bind(), name="stream-misuse")
    with pytest.raises(TypeError, match=r"returned a generator; call it through handle.options\(stream=True\)"):
        handle.options(use_new_handle_api=True).count.remote(2).result(timeout_s=60)
    with pytest.raises(TypeError, match="'not_streaming' returned int; make it a generator"):
        list(handle.options(stream=True).not_streaming.remote())


def test_handle_options_it_cannot_honour_are_refused(deploy):
    handle = deploy(Counter.bind(), name="stream-options")
    with pytest.raises(TypeError, match="_by_reference, which servegraph does not support"):
        handle.options(_by_reference=False)
    with pytest.raises(TypeError, match="cannot yet stream a multiplexed request"):
        handle.options(stream=True, multiplexed_model_id="m1")


@serve.deployment
class Talker:
    def __init__(self):
        self.released = False

    def release(self) -> bool:
        self.released = True
        return True

    async def body(self):
        yield "first "
        for _ in range(3000):  # until the client, having read the first chunk, releases the rest
            if self.released:
                break
            await asyncio.sleep(0.01)
        yield "second"

    async def __call__(self, request) -> StreamingResponse:
        return StreamingResponse(self.body(), media_type="text/plain")


def test_a_streaming_response_reaches_the_client_chunk_by_chunk(deploy, http_port):
    handle = deploy(Talker.bind(), name="stream-http", route_prefix="/stream-http")
    with httpx.Client(timeout=60) as client:
        with client.stream("GET", f"http://127.0.0.1:{http_port}/stream-http") as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/plain")
            chunks = reply.iter_text()
            assert next(chunks) == "first "  # arrives while the generator still waits: streamed, not buffered
            assert ray.get(handle.release.remote(), timeout=60) is True
            assert "".join(chunks) == "second"


def test_local_testing_mode_says_it_does_not_stream():
    handle = serve.run(Counter.bind(), _local_testing_mode=True)
    with pytest.raises(NotImplementedError, match="local testing mode does not stream"):
        handle.options(stream=True).count.remote(2)


def test_the_streaming_example_over_http_and_through_a_handle(deploy, http_port):
    from streaming import Words, app

    deploy(app, name="stream-example", route_prefix="/stream-example")
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"http://127.0.0.1:{http_port}/stream-example", json={"words": 4}) as reply:
            assert reply.status_code == 200
            assert "".join(reply.iter_text()) == "word0 word1 word2 word3 "
    words = deploy(Words.bind(), name="stream-words")
    assert list(words.options(stream=True).stream.remote(2)) == ["word0 ", "word1 "]
