"""The control plane on the session's Ray cluster: replicas that die or fail health checks are replaced, the
controller survives its own death, autoscaling follows handle load, updates roll without failing requests,
handles apply back-pressure, and stopping a replica drains it and runs ``__del__``.

Every fault is injected into actors the test itself deployed, bounded in count and time; assertions are on
outcomes (served, failed, replica counts), never on timings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray
from starlette.requests import Request

import servegraph as serve
from servegraph.errors import BackPressureError
from servegraph.runtime.common.records import CONTROLLER_NAME, NAMESPACE


def wait_for(predicate, timeout_s: float = 60.0, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def deployment_status(app: str, name: str):
    return serve.status().applications[app].deployments[name]


def running(app: str, name: str) -> int:
    return deployment_status(app, name).replica_states.get("RUNNING", 0)


def replica_actors(app: str, name: str) -> list:
    prefix = f"SERVEGRAPH_REPLICA::{app}#{name}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    return [ray.get_actor(n, namespace=NAMESPACE) for n in names]


class Load:
    """Callers sending requests through a handle until stopped; counts what was served and what failed."""

    def __init__(self, call, threads: int = 4):
        self.call = call
        self.served = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.call()
                with self._lock:
                    self.served += 1
            except Exception as exc:
                with self._lock:
                    self.failed.append(f"{type(exc).__name__}: {exc}"[:200])

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a caller hung"

    def wait_served(self, more: int, timeout_s: float = 60) -> bool:
        target = self.served + more
        return wait_for(lambda: self.served >= target, timeout_s, 0.05)


@serve.deployment(num_replicas=2, health_check_period_s=0.5, health_check_timeout_s=5)
class Echo:
    def __init__(self):
        self.sick = False

    def __call__(self, x):
        return x, os.getpid()

    def make_sick(self) -> int:
        self.sick = True
        return os.getpid()

    def check_health(self) -> None:
        if self.sick:
            raise RuntimeError("this replica was told it is sick")


@serve.deployment
class Front:
    def __init__(self, echo):
        self.echo = echo

    async def __call__(self, x):
        if isinstance(x, Request):  # over HTTP
            x = await x.json()
        value, pid = await (await self.echo.remote(x))
        return value, pid


def test_a_replica_killed_under_load_is_replaced_and_requests_keep_being_served(serve_app, http_port):
    handle = serve_app.run(Echo.bind(), name="kill-replica", route_prefix=None, port=http_port)
    new_api = handle.options(use_new_handle_api=True)
    victim = replica_actors("kill-replica", "Echo")[0]
    with Load(lambda: new_api.remote(1).result(timeout_s=60)) as load:
        assert load.wait_served(100)
        ray.kill(victim)
        assert load.wait_served(300)
    assert load.failed == []  # DeploymentResponse retries once on another replica when its replica died
    assert wait_for(lambda: deployment_status("kill-replica", "Echo").replica_states == {"RUNNING": 2}, 60)
    assert deployment_status("kill-replica", "Echo").status == "HEALTHY"
    # Fresh and old handles alike reach only live replicas.
    assert {ray.get(handle.remote(2), timeout=60)[0] for _ in range(20)} == {2}


def test_a_killed_leaf_under_a_deployment_is_replaced_without_restarting_its_caller(serve_app, http_port):
    handle = serve_app.run(Front.bind(Echo.bind()), name="kill-leaf", route_prefix="/kill-leaf", port=http_port)
    front_pid = ray.get(replica_actors("kill-leaf", "Front")[0].ready.remote())["pid"]
    victim = replica_actors("kill-leaf", "Echo")[0]
    url = f"http://127.0.0.1:{http_port}/kill-leaf"
    with httpx.Client(timeout=60) as client:

        def over_http():
            reply = client.post(url, json=3)
            assert reply.status_code == 200, reply.text

        with Load(over_http, threads=2) as load:
            assert load.wait_served(50)
            ray.kill(victim)
            assert load.wait_served(200)
    # Requests in flight on the dead replica when it died are sent again by Front itself: none fails.
    assert load.failed == [], load.failed[:5]
    assert wait_for(lambda: running("kill-leaf", "Echo") == 2, 60)
    assert ray.get(replica_actors("kill-leaf", "Front")[0].ready.remote())["pid"] == front_pid
    assert ray.get(handle.remote(4), timeout=60)[0] == 4


@serve.deployment(num_replicas=2)
class Holding:
    """Writes its pid to ``marker`` when a call starts, then holds the call for ``hold_s``."""

    def __call__(self, x, marker: str, hold_s: float):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(hold_s)
        return x, os.getpid()


@serve.deployment
class SeedFront:
    """The seed's composition: ``ref = await handle.remote(...)``, then ``await ref``."""

    def __init__(self, leaf):
        self.leaf = leaf

    async def __call__(self, x, marker: str, hold_s: float):
        ref = await self.leaf.remote(x, marker, hold_s)
        first = await ref
        assert await ref == first  # awaited again: the same answer (the resent call's, if it was sent again)
        return first


def test_a_call_awaited_inside_a_replica_is_sent_again_when_its_replica_dies(serve_app, http_port, tmp_path):
    handle = serve_app.run(SeedFront.bind(Holding.bind()), name="resend-inside", route_prefix=None, port=http_port)
    leaves = {ray.get(a.ready.remote())["pid"]: a for a in replica_actors("resend-inside", "Holding")}
    marker = tmp_path / "started"
    ref = handle.remote(5, str(marker), 3.0)  # the seed's driver: a plain ray.get below, which resends nothing
    assert wait_for(lambda: marker.exists() and marker.read_text() != "", 60, 0.02)
    victim_pid = int(marker.read_text())
    ray.kill(leaves[victim_pid])
    value, pid = ray.get(ref, timeout=60)
    assert value == 5 and pid != victim_pid and pid in leaves  # answered by the other replica, not lost


def test_a_replica_whose_check_health_fails_is_replaced(serve_app, http_port):
    handle = serve_app.run(Echo.bind(), name="sick", route_prefix=None, port=http_port)
    sick_pid = ray.get(handle.make_sick.remote(), timeout=60)
    assert wait_for(lambda: sick_pid not in {ray.get(handle.remote(0), timeout=60)[1] for _ in range(10)}, 60)
    assert wait_for(lambda: deployment_status("sick", "Echo").replica_states == {"RUNNING": 2}, 60)
    assert deployment_status("sick", "Echo").status == "HEALTHY"


def test_the_controller_killed_under_load_restarts_and_re_attaches_to_live_replicas(serve_app, http_port):
    app = Front.bind(Echo.bind())
    handle = serve_app.run(app, name="kill-controller", route_prefix="/kill-controller", port=http_port)
    pids_before = {ray.get(a.ready.remote())["pid"] for a in replica_actors("kill-controller", "Echo")}
    with Load(lambda: ray.get(handle.remote(5), timeout=60)) as load:
        assert load.wait_served(100)
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=False)
        assert load.wait_served(300)
    assert load.failed == []
    # The restarted controller found the same replicas (detached, so they outlived it) and the proxy.
    assert wait_for(lambda: deployment_status("kill-controller", "Echo").replica_states == {"RUNNING": 2}, 60)
    pids_after = {ray.get(a.ready.remote())["pid"] for a in replica_actors("kill-controller", "Echo")}
    assert pids_after == pids_before
    reply = httpx.post(f"http://127.0.0.1:{http_port}/kill-controller", json=6, timeout=60)
    assert reply.status_code == 200 and reply.json()[0] == 6
    # And it still heals: a replica killed now is replaced.
    ray.kill(replica_actors("kill-controller", "Echo")[0])
    assert wait_for(lambda: len(replica_actors("kill-controller", "Echo")) == 2 and running("kill-controller", "Echo") == 2)


def test_a_controller_killed_for_good_is_replaced_by_the_next_call_with_its_state(serve_app, http_port):
    handle = serve_app.run(Echo.bind(), name="controller-gone", route_prefix=None, port=http_port)
    ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
    assert ray.get(handle.remote(7), timeout=60)[0] == 7  # routing needs no controller
    # The next API call starts a controller, which recovers the applications from the checkpoint.
    assert wait_for(lambda: "controller-gone" in serve.status().applications, 60)
    assert wait_for(lambda: deployment_status("controller-gone", "Echo").replica_states == {"RUNNING": 2}, 60)
    assert ray.get(handle.remote(8), timeout=60)[0] == 8


@serve.deployment(
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 1,
        "metrics_interval_s": 0.2,
        "look_back_period_s": 1.0,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 2.0,
    },
    max_ongoing_requests=2,
)
class Slow:
    def __call__(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


def test_autoscaling_follows_handle_load_up_and_back_down(serve_app, http_port):
    handle = serve_app.run(Slow.bind(), name="autoscale", route_prefix=None, port=http_port)
    assert running("autoscale", "Slow") == 1
    with Load(lambda: ray.get(handle.remote(0.2), timeout=120), threads=8) as load:
        assert wait_for(lambda: running("autoscale", "Slow") >= 3, 60)
    assert load.failed == []
    assert wait_for(lambda: deployment_status("autoscale", "Slow").replica_states == {"RUNNING": 1}, 60)


def test_scale_to_zero_and_the_first_request_waits_for_a_replica(serve_app, http_port):
    config = {**Slow._options.autoscaling_config.model_dump(), "min_replicas": 0, "initial_replicas": 1}
    handle = serve_app.run(Slow.options(autoscaling_config=config).bind(), name="zero", route_prefix=None, port=http_port)
    assert wait_for(lambda: deployment_status("zero", "Slow").replica_states == {}, 60)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pids = list(pool.map(lambda _: ray.get(handle.remote(0.01), timeout=120), range(4)))
    assert len(pids) == 4 and running("zero", "Slow") >= 1


@serve.deployment(num_replicas=2)
class Versioned:
    def __init__(self, tag: str):
        self.tag = tag

    def __call__(self) -> str:
        time.sleep(0.01)
        return self.tag


def test_a_rolling_update_under_load_fails_no_request(serve_app, http_port):
    handle = serve_app.run(Versioned.bind("v1"), name="rolling", route_prefix=None, port=http_port)
    seen: list[str] = []
    with Load(lambda: seen.append(ray.get(handle.remote(), timeout=60)), threads=3) as load:
        assert load.wait_served(50)
        serve_app.run(Versioned.bind("v2"), name="rolling", route_prefix=None, port=http_port)
        assert load.wait_served(50)
    assert load.failed == []
    assert seen[0] == "v1" and seen[-1] == "v2"
    # Old replicas drain after the new ones serve.
    assert wait_for(lambda: deployment_status("rolling", "Versioned").replica_states == {"RUNNING": 2}, 60)


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Narrow:
    def __call__(self, seconds: float) -> str:
        time.sleep(seconds)
        return "done"


def test_max_queued_requests_rejects_the_excess_with_back_pressure(serve_app, http_port):
    handle = serve_app.run(Narrow.bind(), name="narrow", route_prefix="/narrow", port=http_port)
    first = handle.remote(2.0)  # runs
    results = []

    def queued():
        results.append(ray.get(handle.remote(0.0), timeout=60))

    waiter = threading.Thread(target=queued)
    waiter.start()  # waits in the handle's queue (1 allowed)
    assert wait_for(lambda: handle._target.info.router().load() >= 2, 10, 0.02)
    with pytest.raises(BackPressureError, match="max_queued_requests=1"):
        handle.remote(0.0)
    assert ray.get(first, timeout=60) == "done"
    waiter.join(60)
    assert results == ["done"]


@serve.deployment(max_ongoing_requests=2)
class Counted:
    """Counts the requests it runs and the most it ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.peak = self.calls = 0

    async def __call__(self, request: Request) -> str:
        import asyncio

        seconds = float(request.query_params.get("s", "0.02"))
        with self.lock:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        with self.lock:
            self.running -= 1
        return request.query_params.get("n", "")

    def seen(self) -> tuple[int, int]:
        return self.calls, self.peak


def test_the_proxy_queues_what_replicas_cannot_take_and_drops_a_queued_request_whose_client_left(serve_app, http_port):
    handle = serve_app.run(Counted.bind(), name="counted", route_prefix="/counted", port=http_port)
    url = f"http://127.0.0.1:{http_port}/counted"
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda n: httpx.get(url, params={"n": n}, timeout=60), range(24)))
    assert [(r.status_code, r.text) for r in replies] == [(200, str(n)) for n in range(24)]
    assert handle.seen.remote().result() == (24, 2)  # every request ran once, never more than two at a time

    # Both slots busy; a client that gives up while queued leaves, and its request never runs.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(httpx.get, url, params={"n": "busy", "s": 1.5}, timeout=60) for _ in range(2)]
        assert wait_for(lambda: handle.seen.remote().result()[0] == 26, 30, 0.02)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url, params={"n": "gave up"}, timeout=0.3)
        after = pool.submit(httpx.get, url, params={"n": "after"}, timeout=60)
        assert [f.result().text for f in (*busy, after)] == ["busy", "busy", "after"]
    assert handle.seen.remote().result() == (27, 2)


@serve.deployment(graceful_shutdown_wait_loop_s=0.2, graceful_shutdown_timeout_s=20)
class Tidy:
    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, seconds: float) -> str:
        time.sleep(seconds)
        return "finished"

    def __del__(self):
        Path(self.marker).write_text("cleaned up")


def test_deleting_drains_running_requests_and_calls_del(serve_app, http_port, tmp_path):
    marker = tmp_path / "del.txt"
    handle = serve_app.run(Tidy.bind(str(marker)), name="tidy", route_prefix=None, port=http_port)
    running_request = handle.remote(1.5)
    time.sleep(0.3)  # let it start on the replica
    serve_app.delete("tidy")
    assert ray.get(running_request, timeout=60) == "finished"  # drained, not cut off
    assert marker.read_text() == "cleaned up"


@serve.deployment
class BrokenInit:
    def __init__(self):
        raise ValueError("bad model file")


def test_a_constructor_error_is_deploy_failed_with_one_line_and_bounded_retries(serve_app, http_port):
    with pytest.raises(serve.DeploymentError, match=r"ValueError: bad model file \(test_control_plane.py:\d+ in __init__\)"):
        serve_app.run(BrokenInit.bind(), name="broken-init", route_prefix=None, port=http_port)
    status = deployment_status("broken-init", "BrokenInit")
    assert status.status == "DEPLOY_FAILED"
    assert "bad model file" in status.message
    assert status.replica_states == {}  # retries ended; no replica left behind
    assert replica_actors("broken-init", "BrokenInit") == []


@ray.remote(num_cpus=0)
class _Tally:
    def __init__(self):
        self.marks: list[str] = []

    def mark(self, what: str) -> None:
        self.marks.append(what)

    def read(self) -> list[str]:
        return self.marks


@serve.deployment(graceful_shutdown_timeout_s=0.01)
class HangingStart:
    async def __init__(self, tally):
        self.tally = tally
        await tally.mark.remote("constructing")
        await asyncio.sleep(10000)

    async def __del__(self):
        await self.tally.mark.remote("__del__")


def test_a_replica_deleted_while_its_constructor_runs_still_runs_its_del(serve_app, http_port):
    """Ray Serve's test_delete_while_initializing: ``__del__`` runs once, though the constructor never ended."""
    tally = _Tally.remote()
    serve_app.run(HangingStart.bind(tally), name="hanging-start", route_prefix=None, port=http_port, _blocking=False)
    assert wait_for(lambda: ray.get(tally.read.remote()) == ["constructing"], 60)
    serve.delete("hanging-start")
    assert ray.get(tally.read.remote()) == ["constructing", "__del__"]  # before delete returned
    assert "hanging-start" not in serve.status().applications


def test_requests_to_a_deployment_that_failed_to_deploy_fail_at_once(serve_app, http_port):
    """As Ray Serve: a 503 over HTTP and DeploymentUnavailableError from a handle, not a request that waits for
    a replica that will not come."""
    from servegraph.exceptions import DeploymentUnavailableError, RayServeException

    with pytest.raises(serve.DeploymentError):
        serve_app.run(BrokenInit.bind(), name="failed-app", route_prefix="/failed-app", port=http_port)
    reply = httpx.post(f"http://127.0.0.1:{http_port}/failed-app", timeout=30)
    assert reply.status_code == 503
    assert "Deployment(name='BrokenInit', app='failed-app') is unavailable because it failed to deploy" in reply.text
    handle = serve.get_app_handle("failed-app")
    with pytest.raises(DeploymentUnavailableError, match="is unavailable because it failed to deploy") as err:
        handle.remote().result(timeout_s=30)
    assert isinstance(err.value, RayServeException)


def test_replicas_are_named_and_status_shows_id_state_node_and_pid(serve_app, http_port):
    serve_app.run(Echo.bind(), name="named", route_prefix=None, port=http_port)
    from servegraph.runtime.client.api import _controller

    raw = ray.get(_controller().status.remote()).applications["named"].deployments["Echo"]
    assert len(raw.replicas) == 2
    for replica in raw.replicas:
        assert replica.actor_name == f"SERVEGRAPH_REPLICA::named#Echo#{replica.replica_id}"
        assert replica.state == "RUNNING" and replica.pid > 0 and replica.node_id
        ray.get_actor(replica.actor_name, namespace=NAMESPACE)  # an operator can find it by name


@serve.deployment
class SlowStart:
    def __init__(self):
        time.sleep(1.5)

    def __call__(self) -> str:
        return "up"


def test_deploy_reports_progress_per_deployment_while_it_runs(serve_app, http_port):
    from servegraph.compiler import compile
    from servegraph.runtime.client.api import deploy_compiled

    seen: list[dict] = []
    handle, changes = deploy_compiled(
        compile(SlowStart.bind()), name="progress", route_prefix=None, port=http_port, on_progress=seen.append
    )
    assert changes == {"SlowStart": "created"}
    assert any(snapshot.get("SlowStart") == {"STARTING": 1} for snapshot in seen), seen
    assert ray.get(handle.remote(), timeout=60) == "up"
