"""Handle semantics on the session's Ray cluster, as the seed describes them.

One application is deployed for the whole module; each test reaches its
deployments through ``serve.get_deployment_handle``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

import servegraph as serve
from servegraph.handle import DeploymentHandle, DeploymentResponse, RayServeDeploymentHandle, RayServeSyncHandle

APP = "handles"

#: How long the producer in the chaining tests works; the chained call must return before it is done.
PRODUCER_S = 1.5


@serve.deployment
class Echo:
    def __call__(self, value):
        return value

    def method1(self, value):
        return f"method1: {value}"


@serve.deployment
class Slow:
    def __call__(self, value, delay_s: float):
        time.sleep(delay_s)
        return value


@serve.deployment(num_replicas=3)
class Spread:
    def __call__(self):
        time.sleep(0.02)  # long enough that requests overlap and the router has to choose
        return os.getpid()


@serve.deployment(max_ongoing_requests=1)
class OneAtATime:
    """Counts how many calls it runs at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __call__(self, i: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return i

    def peak_concurrency(self) -> int:
        return self.peak


def ready(ref: ray.ObjectRef) -> bool:
    done, _ = ray.wait([ref], timeout=0, fetch_local=False)
    return bool(done)


@serve.deployment
class Prober:
    """Reports, from inside a replica, what its constructor handles are and return."""

    def __init__(self, echo, slow, one):
        self.echo = echo
        self.slow = slow
        self.one = one

    async def types(self) -> dict:
        task = self.echo.remote("first")
        ref = await task
        value = await ref
        response = self.echo.options(use_new_handle_api=True).remote("second")
        return {
            "handle": type(self.echo).__name__,
            "is_deployment_handle": isinstance(self.echo, RayServeDeploymentHandle),
            "remote": type(task).__name__,
            "is_task": isinstance(task, asyncio.Task),
            "awaited_once_is_object_ref": isinstance(ref, ray.ObjectRef),
            "value": value,
            "new_api": type(response).__name__,
            "new_api_value": await response,
        }

    async def chain_task(self, value) -> dict:
        producer = self.slow.remote(value, PRODUCER_S)  # an asyncio.Task, not awaited
        ref = await self.echo.remote(producer)
        producer_ref = await producer  # already resolved: the chained call awaited the submission
        return {"producer_done_when_chained": ready(producer_ref), "value": await ref}

    async def chain_response(self, value) -> dict:
        slow = self.slow.options(use_new_handle_api=True)
        echo = self.echo.options(use_new_handle_api=True)
        producer = slow.remote(value, PRODUCER_S)
        chained = echo.remote(producer)
        assert isinstance(chained, DeploymentResponse)
        value = await chained
        return {"value": value}

    async def burst(self, n: int) -> list:
        tasks = [self.one.remote(i) for i in range(n)]
        refs = await asyncio.gather(*tasks)
        return list(await asyncio.gather(*refs))


@pytest.fixture(scope="module")
def prober(deploy) -> RayServeSyncHandle:
    return deploy(Prober.bind(Echo.bind(), Slow.bind(), OneAtATime.bind()), name=APP)


@pytest.fixture(scope="module")
def spread(deploy) -> RayServeSyncHandle:
    return deploy(Spread.bind(), name="spread")


def handle(name: str) -> RayServeSyncHandle:
    return serve.get_deployment_handle(name, APP).options(use_new_handle_api=False)


# RayServeSyncHandle (what serve.run returns) ----------------------------------------------


def test_serve_run_returns_a_sync_handle_whose_remote_is_an_object_ref(prober):
    assert isinstance(prober, RayServeSyncHandle)
    echo = handle("Echo")
    ref = echo.remote("hi")
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == "hi"


def test_object_refs_work_with_ray_wait_and_await(prober):
    echo = handle("Echo")
    refs = [echo.remote(i) for i in range(3)]
    done, pending = ray.wait(refs, num_returns=3, timeout=60)
    assert len(done) == 3 and not pending

    async def main():
        return await echo.remote("awaited"), await asyncio.wait_for(asyncio.gather(*refs), 60)

    assert asyncio.run(main()) == ("awaited", [0, 1, 2])


def test_method_call_and_plain_remote_calls_call(prober):
    echo = handle("Echo")
    assert ray.get(echo.remote("hi")) == "hi"
    assert ray.get(echo.method1.remote("hi")) == "method1: hi"
    assert ray.get(echo.options(method_name="method1").remote("x")) == "method1: x"
    assert echo.method1.method_name == "method1" and echo.deployment_name == "Echo"


def test_user_exception_reaches_the_caller(prober):
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'delay_s'"):
        ray.get(handle("Slow").remote("no delay"), timeout=60)


# RayServeDeploymentHandle (constructor handles, inside replicas) --------------------------


def test_constructor_handles_are_deployment_handles_awaited_twice(prober):
    seen = ray.get(prober.types.remote(), timeout=60)
    assert seen == {
        "handle": "RayServeDeploymentHandle",
        "is_deployment_handle": True,
        "remote": "Task",
        "is_task": True,
        "awaited_once_is_object_ref": True,  # one that sends the call again if its replica dies
        "value": "first",
        "new_api": "DeploymentResponse",
        "new_api_value": "second",
    }


def test_async_handle_buffers_a_burst_for_a_one_request_replica(prober):
    assert ray.get(prober.burst.remote(6), timeout=60) == list(range(6))


# Passing results along unawaited ------------------------------------------------------------


def test_task_passed_unawaited_travels_as_a_ref(prober):
    out = ray.get(prober.chain_task.remote("payload"), timeout=60)
    assert out == {"producer_done_when_chained": False, "value": "payload"}


def test_deployment_response_passed_unawaited_inside_a_replica(prober):
    assert ray.get(prober.chain_response.remote("payload"), timeout=60) == {"value": "payload"}


def test_object_ref_passed_unawaited_does_not_block_the_caller(prober):
    producer = handle("Slow").remote({"nested": [1, 2]}, PRODUCER_S)
    started = time.monotonic()
    chained = handle("Echo").remote(producer)
    elapsed = time.monotonic() - started
    assert not ready(producer), f"the chained call returned only after the producer finished ({elapsed:.2f}s)"
    assert ray.get(chained, timeout=60) == {"nested": [1, 2]}  # the consumer got the value, not the ref


def test_refs_nested_in_arguments_arrive_as_refs_as_in_ray(prober):
    echo = handle("Echo")
    out = ray.get(echo.remote({"a": echo.remote(1), "b": [echo.remote(2)]}), timeout=60)
    assert isinstance(out["a"], ray.ObjectRef) and isinstance(out["b"][0], ray.ObjectRef)
    assert ray.get([out["a"], out["b"][0]], timeout=60) == [1, 2]


# DeploymentHandle (use_new_handle_api=True) ------------------------------------------------


def test_new_handle_api_returns_deployment_responses(prober):
    echo = handle("Echo").options(use_new_handle_api=True)
    slow = handle("Slow").options(use_new_handle_api=True)
    assert isinstance(echo, DeploymentHandle)
    response = echo.method1.remote("x")
    assert isinstance(response, DeploymentResponse)
    assert response.result(timeout_s=60) == "method1: x"

    producer = slow.remote("chained", PRODUCER_S)
    chained = echo.remote(producer)
    with pytest.raises(ray.exceptions.GetTimeoutError):  # the chained call did not wait for the producer
        producer.result(timeout_s=0)
    assert chained.result(timeout_s=60) == "chained"

    async def main():
        return await echo.remote("one await")

    assert asyncio.run(main()) == "one await"


def test_result_timeout(prober):
    slow = handle("Slow").options(use_new_handle_api=True)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        slow.remote("late", PRODUCER_S).result(timeout_s=0.01)


# Routing --------------------------------------------------------------------------------


def test_every_replica_serves(spread):
    refs = [spread.remote() for _ in range(60)]
    assert len(set(ray.get(refs, timeout=60))) == 3


def test_status_counts_running_replicas(spread, prober):
    app = serve.status().applications["spread"]
    assert app.status == "RUNNING"
    assert app.deployments["Spread"].replica_states == {"RUNNING": 3}
    assert serve.status().applications[APP].deployments["OneAtATime"].replica_states == {"RUNNING": 1}


def test_max_ongoing_requests_holds_back_what_the_replica_cannot_run(prober):
    one = handle("OneAtATime")
    first = one.remote(1)
    second = one.remote(2)  # returns at once, as Ray Serve's handles do; the replica runs it after the first
    assert isinstance(second, ray.ObjectRef)
    assert ray.get([first, second], timeout=60) == [1, 2]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: ray.get(one.remote(i), timeout=60), range(16)))
    assert results == list(range(16))
    assert ray.get(one.peak_concurrency.remote(), timeout=60) == 1
