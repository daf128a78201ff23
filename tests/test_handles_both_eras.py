"""Code written for Ray Serve 2.x's handles runs unchanged beside the seed's, on the session's Ray cluster.

``serve.run`` returns one handle for both eras: a ``RayServeSyncHandle`` whose ``.remote()`` gives a
``ray.ObjectRef`` (the seed's code: ``ray.get``, ``ray.wait``, ``await``) that is also a
``DeploymentResponse`` (2.x code: ``.result(timeout_s=)``, ``._to_object_ref_sync()``, ``.cancel()``),
and ``.remote()`` never waits for a busy replica, as in Ray Serve 2.x.
"""

from __future__ import annotations

import asyncio

import pytest
import ray

import servegraph as serve
from servegraph.exceptions import BackPressureError, RayServeException
from servegraph.handle import DeploymentHandle, DeploymentResponse, RayServeSyncHandle


@ray.remote(num_cpus=0)
class Signal:
    """Holds requests until the test lets them go (Ray Serve's tests use the same pattern)."""

    def __init__(self):
        self.event = asyncio.Event()
        self.waiting = 0

    async def wait(self):
        self.waiting += 1
        try:
            await self.event.wait()
        finally:
            self.waiting -= 1

    def send(self):
        self.event.set()

    def waiters(self) -> int:
        return self.waiting


def wait_for_waiters(signal, n: int) -> None:
    for _ in range(600):
        if ray.get(signal.waiters.remote()) == n:
            return
        ray.get(signal.waiters.remote())  # a round trip between looks: no sleeps to tune
    raise AssertionError(f"never saw {n} waiting requests")


@serve.deployment
class AddOne:
    def __call__(self, x: int) -> int:
        return x + 1


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Held:
    def __init__(self, signal):
        self.signal = signal

    async def __call__(self, msg: str) -> str:
        await self.signal.wait.remote()
        return msg


def test_serve_run_returns_a_handle_of_both_eras(serve_app):
    handle = serve.run(AddOne.bind(), name="eras_basic", route_prefix=None)
    assert isinstance(handle, DeploymentHandle) and isinstance(handle, RayServeSyncHandle)
    response = handle.remote(1)
    assert isinstance(response, DeploymentResponse) and isinstance(response, ray.ObjectRef)
    assert response.result() == 2  # Ray Serve 2.x
    assert ray.get(handle.remote(2)) == 3  # the seed
    assert ray.get(handle.remote(handle.remote(3))) == 5  # chained, unresolved
    assert handle.remote(handle.remote(10)).result(timeout_s=60) == 12
    ref = handle.remote(4)._to_object_ref_sync()
    assert isinstance(ref, ray.ObjectRef) and ray.get(ref) == 5
    assert asyncio.run(handle.remote(5)._to_object_ref()) is not None

    async def in_a_loop():
        return await handle.remote(6), await asyncio.gather(*[handle.remote(i) for i in range(3)])

    assert asyncio.run(in_a_loop()) == (7, [1, 2, 3])
    # Nested in a container, a result travels as the ObjectRef it is.
    assert ray.get(ray.put([handle.remote(7)]))[0].__class__ is ray.ObjectRef


def test_more_requests_than_room_return_at_once_and_all_run(serve_app):
    signal = Signal.remote()

    @serve.deployment(max_ongoing_requests=1)
    class OneAtATime:
        def __init__(self, signal):
            self.signal = signal
            self.running = self.peak = 0

        async def __call__(self, i: int) -> int:
            self.running += 1
            self.peak = max(self.peak, self.running)
            await self.signal.wait.remote()
            self.running -= 1
            return i

        def get_peak(self) -> int:
            return self.peak

    handle = serve.run(OneAtATime.bind(signal), name="eras_room", route_prefix=None)
    responses = [handle.remote(i) for i in range(6)]  # one runs, five wait: none of these calls blocks
    wait_for_waiters(signal, 1)
    ray.get(signal.send.remote())
    assert ray.get(responses, timeout=60) == list(range(6))
    assert handle.get_peak.remote().result(timeout_s=60) == 1


def test_back_pressure_as_in_ray_serve(serve_app):
    signal = Signal.remote()
    handle = serve.run(Held.bind(signal), name="eras_backpressure", route_prefix=None)
    first = handle.remote("hi-1")
    wait_for_waiters(signal, 1)
    second = handle.remote("hi-2")  # queued: returns at once
    for _ in range(10):
        with pytest.raises(BackPressureError):
            handle.remote("hi-err").result()
    ray.get(signal.send.remote())
    assert first.result(timeout_s=60) == "hi-1"
    assert second.result(timeout_s=60) == "hi-2"


def test_result_timeout_and_cancel(serve_app):
    signal = Signal.remote()

    @serve.deployment
    class Waits:
        def __init__(self, signal):
            self.signal = signal

        async def __call__(self) -> str:
            await self.signal.wait.remote()
            return "done"

    handle = serve.run(Waits.bind(signal), name="eras_cancel", route_prefix=None)
    response = handle.remote()
    with pytest.raises(TimeoutError):
        response.result(timeout_s=0.5)
    cancelled = handle.remote()
    wait_for_waiters(signal, 2)
    cancelled.cancel()
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        cancelled.result(timeout_s=60)
    ray.get(signal.send.remote())
    assert response.result(timeout_s=60) == "done"


@serve.deployment
class Echo:
    def __call__(self, x):
        return x


@serve.deployment
class Shout:
    def __call__(self, x):
        return str(x).upper()


def test_handles_by_name_are_cached_while_the_graph_is_the_same(serve_app):
    # Ray Serve's test_handle.py::test_repeated_get_handle_cached: one handle per name.
    serve.run(Echo.bind(), name="eras_cached", route_prefix=None)
    assert len({serve.get_app_handle("eras_cached") for _ in range(20)}) == 1
    assert len({serve.get_deployment_handle("Echo", "eras_cached") for _ in range(20)}) == 1
    before = serve.get_app_handle("eras_cached")
    serve.run(Shout.bind(), name="eras_cached", route_prefix=None)  # another graph: a handle for it
    after = serve.get_app_handle("eras_cached")
    assert after is not before and after.remote("hi").result(timeout_s=60) == "HI"
    serve.delete("eras_cached")
    serve.run(Shout.bind(), name="eras_cached", route_prefix=None)  # deleted here: the handle went with it
    assert serve.get_app_handle("eras_cached") is not after


def test_unknown_application_uses_ray_serves_words(serve_app):
    with pytest.raises(RayServeException, match="Application 'random' does not exist"):
        serve.get_app_handle("random")


@serve.deployment
class BrokenModel:
    def __init__(self):
        raise ValueError("bad model file")


def test_a_non_blocking_run_returns_at_once_and_status_shows_deploy_failed(serve_app):
    serve.run(BrokenModel.bind(), name="eras_broken", route_prefix=None, _blocking=False)  # does not raise
    for _ in range(600):
        app = serve.status().applications.get("eras_broken")
        if app is not None and app.status == "DEPLOY_FAILED":
            break
        ray.get(Signal.remote().waiters.remote())  # a short round trip between looks
    assert app.status == "DEPLOY_FAILED"
    assert "bad model file" in app.deployments["BrokenModel"].message


@serve.deployment
class WhoAmI:
    def __init__(self):
        self.context_in_init = serve.get_replica_context().deployment

    def __call__(self) -> dict:
        context = serve.get_replica_context()
        return {
            "app": context.app_name,
            "deployment": context.deployment,
            "in_init": self.context_in_init,
            "servable_is_self": context.servable_object is self,
            "replica": context.replica_id.unique_id == context.replica_tag,
        }


@serve.deployment
class Counter:
    def __call__(self, n: int):
        yield from range(n)


def test_replica_context_streams_and_set_options(serve_app):
    who = serve.run(WhoAmI.bind(), name="eras_context", route_prefix=None).remote().result(timeout_s=60)
    assert who == {"app": "eras_context", "deployment": "WhoAmI", "in_init": "WhoAmI", "servable_is_self": True, "replica": True}
    with pytest.raises(RayServeException, match="may only be called from within a Ray Serve deployment"):
        serve.get_replica_context()

    stream = serve.run(Counter.bind(), name="eras_stream", route_prefix=None).options(stream=True).remote(3)
    assert next(stream) == 0 and list(stream) == [1, 2]

    Counter.set_options(num_replicas=2)  # Ray 2.x: in place
    assert Counter.num_replicas == 2


@serve.deployment
def yields_one():
    yield 1


@serve.deployment
class BlocksInItsLoop:
    """Ray Serve's own test of it (test_handle_api.py): blocking on a response inside a running loop is refused."""

    def __init__(self, plain: DeploymentHandle, stream: DeploymentHandle):
        self.plain = plain
        self.stream = stream.options(stream=True)

    async def __call__(self) -> list:
        said = []
        response = self.plain.remote(1)
        for block in (response.result, response._to_object_ref_sync, lambda: list(self.stream.remote())):
            try:
                block()
            except RuntimeError as exc:
                said.append(str(exc))
        return [*said, await response]


def test_blocking_on_a_response_inside_an_event_loop_is_refused_in_ray_serves_words(serve_app):
    said = serve.run(BlocksInItsLoop.bind(AddOne.bind(), yields_one.bind()), name="eras_block", route_prefix=None).remote()
    *errors, answer = said.result(timeout_s=60)
    assert answer == 2 and len(errors) == 3
    assert all("should not be called from within an `asyncio` event loop" in e for e in errors), errors

    response = serve.get_app_handle("eras_block").remote()  # made outside a loop, blocked on inside one

    async def block_inside_a_loop() -> str:
        with pytest.raises(RuntimeError, match="should not be called from within an `asyncio` event loop"):
            response.result(timeout_s=60)
        return "refused"

    assert asyncio.run(block_inside_a_loop()) == "refused"
    assert response.result(timeout_s=60)[-1] == 2
