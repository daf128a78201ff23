"""Handle options that pick replicas, as in Ray Serve 2.60: ``session_id`` (and the HTTP ``x-session-id``
header) keeps a session's requests on one replica while it has room; ``_prefer_local_routing`` is taken and
honoured. On the session's Ray cluster, over real HTTP."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
import ray

import servegraph as serve

pytestmark = pytest.mark.ray


@serve.deployment(num_replicas=3, max_ongoing_requests=2)
class Who:
    async def __call__(self, hold_s=0.0) -> str:  # over HTTP, the request
        await asyncio.sleep(hold_s if isinstance(hold_s, float) else 0.0)
        return serve.get_replica_context().replica_tag


@serve.deployment
class Front:
    def __init__(self, who):
        self.who = who

    async def __call__(self, session: str) -> list[str]:
        # A replica's own handle, in the seed's era (two awaits), with the option.
        handle = self.who.options(session_id=session)
        return [await (await handle.remote()) for _ in range(5)]


@pytest.fixture(scope="module")
def who(deploy):
    handle = deploy(Who.bind(), name="routing-who", route_prefix="/who")
    return handle.options(use_new_handle_api=True)


def test_a_session_stays_on_one_replica_and_sessions_spread(who):
    for session in ("alpha", "beta"):
        seen = {who.options(session_id=session).remote().result(timeout_s=60) for _ in range(12)}
        assert len(seen) == 1, (session, seen)
    # Sessions spread like requests do: twelve sessions on three replicas all landing on one would be 3**-11.
    firsts = {who.options(session_id=f"s{i}").remote().result(timeout_s=60) for i in range(12)}
    assert len(firsts) > 1
    # Without a session, requests spread.
    assert len({who.remote().result(timeout_s=60) for _ in range(30)}) > 1


def test_a_full_session_replica_sends_the_next_request_elsewhere(who):
    sticky = who.options(session_id="busy")
    home = sticky.remote().result(timeout_s=60)
    held = [sticky.remote(3.0) for _ in range(2)]  # the session's replica is full now (max_ongoing_requests=2)
    assert sticky.remote().result(timeout_s=60) != home  # the next replica in the session's order takes it
    assert [r.result(timeout_s=60) for r in held] == [home, home]
    assert sticky.remote().result(timeout_s=60) == home  # room again: back home


def test_the_session_header_keeps_an_http_client_on_one_replica(who, http_port):
    url = f"http://127.0.0.1:{http_port}/who"
    with httpx.Client(timeout=60) as client:
        for session in ("one", "two"):
            seen = {client.post(url, headers={"x-session-id": session}).text for _ in range(10)}
            assert len(seen) == 1, (session, seen)
        # Ray Serve matches the header without case and with '-' and '_' alike.
        same = {client.post(url, headers={"X_Session_Id": "one"}).text for _ in range(3)}
        assert same == {client.post(url, headers={"x-session-id": "one"}).text}


def test_a_replicas_handle_takes_the_session_option(deploy):
    front = deploy(Front.bind(Who.options(name="Who2").bind()), name="routing-front")
    tags = ray.get(front.remote("gamma"), timeout=60)
    assert len(set(tags)) == 1


def test_prefer_local_routing_is_taken(who):
    # On one node every replica is local: the option changes nothing here but must be accepted and kept.
    local = who.options(_prefer_local_routing=True, session_id="x")
    assert {local.remote().result(timeout_s=60) for _ in range(5)} == {who.options(session_id="x").remote().result(timeout_s=60)}
    assert who.options(_prefer_local_routing=False).remote().result(timeout_s=60)


def test_options_that_pick_a_replica_are_refused_on_a_graph_handle(deploy):
    with serve.InputNode() as inp:
        graph = Who.options(name="Who3", num_replicas=1).bind().__call__.bind(inp)
    handle = deploy(graph, name="routing-graph")
    with pytest.raises(TypeError, match="session_id and _prefer_local_routing pick a replica of one deployment"):
        handle.options(session_id="s")
    with pytest.raises(TypeError, match="session_id must be a str"):
        serve.get_app_handle("routing-who").options(session_id=3)


def test_a_read_answer_frees_its_replica_slot_without_asking_ray(who, monkeypatch):
    """``ray.wait`` on a pending ref takes ~80 us of the caller's thread: a router learns of answers its caller
    read from the caller, and asks Ray only about refs nobody read."""
    from servegraph.runtime.data.long_poll import runtime_client

    router = runtime_client().router("routing-who", "Who")
    asked: list[int] = []
    wait = ray.wait
    caller = threading.get_ident()

    def counted(refs, **kw):  # the caller's own calls (the metrics thread reads the router's load once a second)
        if threading.get_ident() == caller:
            asked.append(len(refs))
        return wait(refs, **kw)

    monkeypatch.setattr(ray, "wait", counted)
    for _ in range(3):
        assert who.remote().result(timeout_s=60)
    assert sum(len(refs) for refs in router._in_flight) == 0 and asked == []
    unread = who.remote()  # sent, never read: counted until Ray says it is done
    assert sum(len(refs) for refs in router._in_flight) == 1
    ray.wait([unread], timeout=60)
    assert router.load() == 0
