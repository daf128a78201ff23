"""Cancellation reaches the calls a request made, as in Ray Serve: ``DeploymentResponse.cancel()`` and an HTTP
client that leaves both stop the work downstream. Proven by outcome: the downstream call sees its cancellation."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import ray

import servegraph as serve
from servegraph.exceptions import RequestCancelledError


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self):
        self.started = 0
        self.cancelled = 0

    def start(self):
        self.started += 1

    def cancel(self):
        self.cancelled += 1

    def counts(self) -> tuple[int, int]:
        return self.started, self.cancelled


@serve.deployment
class Inner:
    def __init__(self, tally):
        self.tally = tally

    async def __call__(self) -> str:
        try:
            # Counted inside the try: a cancellation that arrives while the start's reply is on its way back
            # (the tally has counted it) must be counted too.
            await self.tally.start.remote()
            await asyncio.Event().wait()  # never set: only cancellation ends it
        except asyncio.CancelledError:
            await self.tally.cancel.remote()
            raise
        return "unreachable"


@serve.deployment
class Outer:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, request=None) -> str:
        return await self.inner.remote()


def wait_for(tally, started: int, cancelled: int, timeout_s: float = 60.0) -> tuple[int, int]:
    """The tally's counts once they reach (started, cancelled), or as they are after ``timeout_s``.

    Bounded by time, not by a number of looks: on a loaded machine a few thousand round trips to the tally
    can pass before the request even reaches the inner replica."""
    deadline = time.monotonic() + timeout_s
    counts = ray.get(tally.counts.remote())
    while (counts[0] < started or counts[1] < cancelled) and time.monotonic() < deadline:
        time.sleep(0.01)
        counts = ray.get(tally.counts.remote())
    return counts


@pytest.fixture(scope="module")
def chain(deploy):
    tally = Tally.remote()
    handle = deploy(Outer.bind(Inner.bind(tally)), name="cancel-chain", route_prefix="/cancel")
    return handle, tally


def test_cancelling_a_response_cancels_the_call_it_made(chain):
    handle, tally = chain
    before = ray.get(tally.counts.remote())
    response = handle.remote()
    assert wait_for(tally, before[0] + 1, 0)[0] == before[0] + 1
    response.cancel()
    assert wait_for(tally, before[0] + 1, before[1] + 1)[1] == before[1] + 1  # the inner call was cancelled
    with pytest.raises(RequestCancelledError, match="was cancelled"):  # Ray Serve's error (a TaskCancelledError)
        response.result(timeout_s=60)


@serve.deployment
class CancelsItsCall:
    """Cancels its own call to the inner deployment once the call is running there (Ray Serve's pattern)."""

    def __init__(self, inner, tally):
        self.inner = inner
        self.tally = tally

    async def __call__(self, started: int) -> str:
        response = self.inner.remote()
        while (await self.tally.counts.remote())[0] < started:  # the call reached the inner replica
            await asyncio.sleep(0.01)
        response.cancel()
        try:
            await response
        except RequestCancelledError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "not cancelled"


def test_a_response_cancelled_in_async_code_after_it_was_sent_stops_the_call(deploy):
    tally = Tally.remote()
    handle = deploy(CancelsItsCall.bind(Inner.bind(tally), tally), name="cancel-async")
    assert handle.remote(1).result(timeout_s=60) == "RequestCancelledError: Request was cancelled."
    assert wait_for(tally, 1, 1) == (1, 1)  # the inner call saw its cancellation


def test_a_client_that_leaves_cancels_its_request_downstream(chain, http_port):
    _, tally = chain
    before = ray.get(tally.counts.remote())
    # A raw connection, so the client leaves exactly when the request has reached the inner replica (a read
    # timeout would leave after a fixed time, which on a loaded machine can come before the request arrives).
    with socket.create_connection(("127.0.0.1", http_port), timeout=60) as client:
        client.sendall(b"GET /cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert wait_for(tally, before[0] + 1, 0)[0] == before[0] + 1
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(1)  # no answer came: the request is still running when the client leaves
    assert wait_for(tally, before[0] + 1, before[1] + 1) == (before[0] + 1, before[1] + 1)
