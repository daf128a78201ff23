"""HTTP streaming as Ray Serve streams, on the session's Ray cluster and real HTTP: a StreamingResponse from a
function deployment or a FastAPI route reaches the client chunk by chunk; a body that fails mid-way cuts the
response off; a client that leaves ends the generator on the replica."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import ray
from fastapi import FastAPI
from starlette.responses import StreamingResponse

import servegraph as serve
from servegraph import DAGDriver


@ray.remote(num_cpus=0)
class Gate:
    """Holds a generator between chunks until the test opens it, and records that a generator was closed."""

    def __init__(self):
        self.event = asyncio.Event()
        self.closed = False

    async def wait(self):
        await self.event.wait()

    def open(self):
        self.event.set()

    def shut(self):
        self.event = asyncio.Event()

    def mark_closed(self):
        self.closed = True

    def was_closed(self) -> bool:
        return self.closed

    def mark_cancelled(self):
        self.cancelled = True

    def was_cancelled(self) -> bool:
        return getattr(self, "cancelled", False)


@serve.deployment
def teapot(request):
    async def body():
        for i in range(1, 4):
            yield str(i)
            await asyncio.sleep(0.01)

    return StreamingResponse(body(), status_code=418, media_type="text/plain")


fastapi_app = FastAPI()


@serve.deployment
@serve.ingress(fastapi_app)
class Streamer:
    def __init__(self, gate):
        self.gate = gate

    @fastapi_app.get("/gated")
    def gated(self):
        gate = self.gate

        def body():
            yield "first\n"
            ray.get(gate.wait.remote())  # the client has the first chunk before this returns
            yield "second\n"

        return StreamingResponse(body(), media_type="text/plain")

    @fastapi_app.get("/broken")
    def broken(self):
        def body():
            yield "partial\n"
            raise RuntimeError("the model crashed mid-stream")

        return StreamingResponse(body(), media_type="text/plain")

    @fastapi_app.get("/endless")
    async def endless(self):
        gate = self.gate

        async def body():
            try:
                while True:
                    yield "tick\n"
                    await asyncio.sleep(0.05)
            finally:
                await gate.mark_closed.remote()

        return StreamingResponse(body(), media_type="text/plain")


@serve.deployment
class Waiter:
    """Ray Serve's test_http_disconnect: a body waiting when its client leaves sees CancelledError."""

    def __init__(self, gate):
        self.gate = gate

    def __call__(self, request):
        gate = self.gate

        async def body():
            try:
                yield "hi"
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                await gate.mark_cancelled.remote()
                raise

        return StreamingResponse(body())


@serve.deployment
def counting(n: int):
    for i in range(n):
        yield str(i)


@serve.deployment
class Relay:
    """Returns a handle's stream as its HTTP body (Ray Serve's test_proxy_from_streaming_handle)."""

    def __init__(self, counter):
        self.counter = counter.options(stream=True)

    def __call__(self, request):
        return StreamingResponse(self.counter.remote(int(request.query_params["n"])))


@serve.deployment(num_replicas=2)
class HeldStream:
    """Streams its pid, then waits at the gate: a stream counts against its replica until it ends."""

    def __init__(self, gate):
        self.gate = gate

    def __call__(self, request):
        import os

        gate = self.gate

        async def body():
            yield f"{os.getpid()}\n"
            await gate.wait.remote()
            yield "done\n"

        return StreamingResponse(body())


@serve.deployment
class NoArgs:
    def __call__(self):
        return "no args"


@pytest.fixture(scope="module")
def gate(deploy):
    gate = Gate.remote()
    deploy(teapot.bind(), name="stream-teapot", route_prefix="/teapot")
    deploy(Streamer.bind(gate), name="stream-fastapi", route_prefix="/fa")
    deploy(DAGDriver.bind({"/none": NoArgs.bind(), "/also": NoArgs.bind()}), name="stream-routes", route_prefix="/routes")
    deploy(Waiter.bind(gate), name="stream-waiter", route_prefix="/waiter")
    deploy(Relay.bind(counting.bind()), name="stream-relay", route_prefix="/relay")
    return gate


def test_a_function_deployments_streaming_response_sends_every_chunk(gate, http_port):
    response = httpx.get(f"http://127.0.0.1:{http_port}/teapot", timeout=60)
    assert (response.status_code, response.text) == (418, "123")


def test_a_fastapi_streaming_response_streams_chunk_by_chunk(gate, http_port):
    with httpx.stream("GET", f"http://127.0.0.1:{http_port}/fa/gated", timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines) == "first"  # arrived while the generator still waits at the gate
        ray.get(gate.open.remote())
        assert list(lines) == ["second"]


def test_a_body_that_fails_mid_stream_cuts_the_response_off(gate, http_port):
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("GET", f"http://127.0.0.1:{http_port}/fa/broken", timeout=60) as response:
            assert response.status_code == 200
            list(response.iter_lines())


def test_a_client_that_leaves_ends_the_generator(gate, http_port):
    with httpx.stream("GET", f"http://127.0.0.1:{http_port}/fa/endless", timeout=60) as response:
        assert next(response.iter_lines()) == "tick"
    ray.get(gate.open.remote(), timeout=60)  # so gate.wait below is a round trip, whichever test ran first
    for _ in range(2000):  # bounded: the replica closes the body once the proxy sees the client gone
        if ray.get(gate.was_closed.remote(), timeout=60):
            break
        ray.get(gate.wait.remote(), timeout=60)  # a round trip, no sleep to tune
    assert ray.get(gate.was_closed.remote(), timeout=60)


def test_a_client_that_leaves_cancels_the_body_where_it_waits(gate, http_port):
    with httpx.stream("GET", f"http://127.0.0.1:{http_port}/waiter", timeout=60) as response:
        assert next(response.iter_text()) == "hi"
    deadline = time.monotonic() + 60  # bounded by time: on a loaded machine the proxy may see the client go late
    while not ray.get(gate.was_cancelled.remote(), timeout=60) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(gate.was_cancelled.remote(), timeout=60)  # its `except CancelledError` ran


def test_a_handles_stream_returned_as_the_body_reaches_the_client(gate, http_port):
    response = httpx.get(f"http://127.0.0.1:{http_port}/relay", params={"n": 5}, timeout=60)
    assert (response.status_code, response.text) == (200, "01234")


def test_open_streams_count_against_their_replicas(deploy, http_port):
    # Ray Serve's test_responses_actually_streamed with two replicas: two streams open at once go to both.
    gate = Gate.remote()
    deploy(HeldStream.bind(gate), name="stream-held", route_prefix="/held")
    for _ in range(3):  # each round, a stream that had freed its slot early would go to either replica
        ray.get(gate.shut.remote(), timeout=60)
        with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
            with a.stream("GET", f"http://127.0.0.1:{http_port}/held") as first:
                first_lines = first.iter_lines()
                first_pid = next(first_lines)
                with b.stream("GET", f"http://127.0.0.1:{http_port}/held") as second:
                    second_lines = second.iter_lines()
                    assert next(second_lines) != first_pid  # the first stream, still open, kept its replica busy
                    ray.get(gate.open.remote(), timeout=60)
                    assert list(second_lines) == ["done"]
                assert list(first_lines) == ["done"]


def test_a_dagdriver_route_to_a_call_without_arguments(gate, http_port):
    for route in ("/routes/none", "/routes/also"):
        response = httpx.get(f"http://127.0.0.1:{http_port}{route}", timeout=60)
        assert (response.status_code, response.json()) == (200, "no args")
