"""Routers send each request through ``ray_compat.actor_caller``: on the checked Ray it hands the call straight
to Ray's core worker, and it must behave as ``actor.method.remote`` does (values, refs resolved, errors,
options the method was declared with, a dead actor); elsewhere it is that plain call. On the session's cluster."""

from __future__ import annotations

import pytest
import ray

from servegraph.runtime import ray_compat

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class Echo:
    def call(self, header, *args):
        return [header, *args]

    def fail(self, message):
        raise ValueError(message)

    @ray.method(num_returns=2)
    def pair(self):
        return 1, 2

    def gen(self):
        yield from (1, 2)


def _fast(fn) -> bool:
    """Whether actor_caller gave its own function (not the ActorMethod's bound ``remote``)."""
    return getattr(fn, "__name__", "") == "call" and not hasattr(fn, "__self__")


def test_a_call_through_the_caller_answers_as_remote_does(ray_cluster):
    actor = Echo.remote()
    call = ray_compat.actor_caller(actor, "call")
    assert _fast(call)  # this Ray is the checked one: the core worker is called directly
    header = ["m", "id", "/", "app", "", ["A"], 1.5]
    assert ray.get(call(header, "Dora")) == ray.get(actor.call.remote(header, "Dora")) == [header, "Dora"]
    assert ray.get(call(None)) == [None]
    # A top-level ref is resolved by Ray before the call, one nested in a list arrives as a ref, as with remote.
    value = ray.put({"x": 1})
    got = ray.get(call("h", value, [value]))
    assert got[:2] == ["h", {"x": 1}] and isinstance(got[2][0], ray.ObjectRef)
    assert ray.get(got[2][0]) == {"x": 1}
    # A tuple argument stays a tuple (Ray pickles it), bytes stay bytes.
    assert ray.get(call(("a", 1), b"\x00\xff")) == [("a", 1), b"\x00\xff"]


def test_the_callers_error_and_a_dead_actor_are_raised_as_with_remote(ray_cluster):
    actor = Echo.remote()
    fail = ray_compat.actor_caller(actor, "fail")
    with pytest.raises(ValueError, match="bad input"):
        ray.get(fail("bad input"))
    call = ray_compat.actor_caller(actor, "call")
    assert ray.get(call("alive")) == ["alive"]
    ray.kill(actor, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):  # once Ray says the actor died (a kill is not instant)
        for _ in range(300):
            ray.get(actor.call.remote("before"), timeout=60)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(call("after"), timeout=60)


def test_methods_with_options_the_fast_path_does_not_carry_get_the_plain_remote(ray_cluster):
    actor = Echo.remote()
    pair = ray_compat.actor_caller(actor, "pair")
    assert not _fast(pair)
    assert ray.get(list(pair())) == [1, 2]
    gen = ray_compat.actor_caller(actor, "gen")
    assert not _fast(gen)


def test_another_ray_version_or_the_switch_off_gets_the_plain_remote(ray_cluster, monkeypatch):
    actor = Echo.remote()
    monkeypatch.setattr(ray_compat, "_ray_version", lambda: "9.1.0")
    call = ray_compat.actor_caller(actor, "call")
    assert not _fast(call)
    assert ray.get(call("h", 1)) == ["h", 1]
    monkeypatch.undo()
    monkeypatch.setenv(ray_compat.FAST_PATHS_ENV, "0")
    assert not _fast(ray_compat.actor_caller(actor, "call"))
    monkeypatch.delenv(ray_compat.FAST_PATHS_ENV)
    assert _fast(ray_compat.actor_caller(actor, "call"))
    # A Ray whose submit_actor_task takes other parameters than the ones passed by position: the plain call.
    monkeypatch.setattr(ray_compat, "_SUBMIT_PARAMETERS", (*ray_compat._SUBMIT_PARAMETERS, "added_in_a_patch"))
    ray_compat._submit_matches.cache_clear()
    try:
        call = ray_compat.actor_caller(actor, "call")
        assert not _fast(call) and ray.get(call("p")) == ["p"]
    finally:
        monkeypatch.undo()
        ray_compat._submit_matches.cache_clear()


def test_a_ref_awaited_through_ref_future_gives_what_await_gives(ray_cluster):
    import asyncio

    actor = Echo.remote()

    async def scenario() -> None:
        ready = actor.call.remote("h", 1)
        ray.get(ready)  # done before it is awaited
        assert await ray_compat.ref_future(ready) == await ready == ["h", 1]
        pending = actor.call.remote("h", 2)
        assert await ray_compat.ref_future(pending) == ["h", 2]
        # The user's error as its own type (and Ray's RayTaskError), as `await ref` raises it.
        with pytest.raises(ValueError, match="bad") as caught:
            await ray_compat.ref_future(actor.fail.remote("bad"))
        assert isinstance(caught.value, ray.exceptions.RayTaskError)
        # A wait cancelled before the answer leaves nothing behind when the answer comes.
        waiting = asyncio.ensure_future(ray_compat.ref_future(actor.call.remote("late")))
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await ray_compat.ref_future(actor.call.remote("after")) == ["after"]
        ray.kill(actor, no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):  # once Ray says the actor died
            for _ in range(300):
                await ray_compat.ref_future(actor.call.remote("x"))

    asyncio.run(scenario())
