"""The compiled path: eligible InputNode graphs run on Ray compiled graphs (lanes), on a real cluster.

Every test compares outcomes: the same answers and errors as the plan path,
lanes formed and re-formed as replicas come and go, no request lost.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import ray
from support import cpu_seconds
from test_control_plane import Load, replica_actors, wait_for

import servegraph as serve
from servegraph import InputNode
from servegraph.compiler import compile
from servegraph.compiler.fast_path import compiled_path_problem
from servegraph.runtime.actors.replica import LANE_IDLE_S
from servegraph.runtime.control.lane_table import LaneTable, Owner
from servegraph.runtime.data.graph_ref import GraphRef
from servegraph.runtime.data.lanes import lanes_for

ROOT = Path(__file__).resolve().parent.parent


@serve.deployment
class Add:
    def __init__(self, k: int):
        self.k = k

    def __call__(self, x):
        if x == "boom":
            raise ValueError(f"stage {self.k} refuses {x!r}")
        return x + self.k

    def size(self, blob: bytes) -> int:
        return len(blob)


@serve.deployment
class AsyncAdd:
    def __init__(self, k: int):
        self.k = k

    async def __call__(self, x):
        return x + self.k


@serve.deployment
class Pair:
    def both(self, a, b, *, scale=1):
        return (a + b) * scale


@serve.deployment
class Gen:
    def __call__(self, x):
        yield x


def chain(n: int, cls=Add, **options):
    with InputNode() as inp:
        node = inp
        for i in range(n):
            node = cls.options(name=f"S{i}", **options).bind(i + 1).__call__.bind(node)
    return node


def path(app: str) -> dict:
    return serve.status().applications[app].path


def wait_for_lanes(app: str, count: int = 1, timeout_s: float = 60.0) -> None:
    """Until this process owns ``count`` compiled lanes for ``app`` (requests before then run as a plan)."""
    lanes = lanes_for(app)
    assert wait_for(lambda: lanes.active() >= count, timeout_s, 0.05), (lanes.reason, path(app))


# The rule and the bookkeeping, without Ray -------------------------------------------------


def test_eligibility_says_why_a_graph_is_not_compiled():
    assert compiled_path_problem(compile(chain(3)).ir) is None
    assert "entry point is a deployment" in compiled_path_problem(compile(Add.bind(1)).ir)
    with InputNode() as inp:
        streaming = Gen.bind().__call__.bind(inp)
    # compile() refuses a generator as a graph node (checks/options.py); the rule still says why.
    assert "generator" in compiled_path_problem(compile(streaming, strict=False).ir)


def test_lanes_take_one_replica_of_each_deployment_and_never_share_one():
    table = LaneTable(("A", "B"))
    table.claim(Owner("driver", "01", node_id="n1"))
    table.claim(Owner("proxy", "02", "actor", node_id="n1"))
    running = {
        "A": [("a1", "A1", "n1"), ("a2", "A2", "n1"), ("a3", "A3", "n1")],
        "B": [("b1", "B1", "n1"), ("b2", "B2", "n1")],
    }
    assert table.reconcile(running, now=0.0)
    lanes = list(table.lanes.values())
    assert len(lanes) == 2  # as many as the scarcer deployment allows
    assert {lane.owner_id for lane in lanes} == {"driver", "proxy"}  # spread over owners
    members = [rid for lane in lanes for _, rid, _ in lane.members]
    assert len(members) == len(set(members))
    # b1 stops running: its lane dissolves; its partner is free only once released after the grace period.
    running["B"] = [("b2", "B2", "n1")]
    assert table.reconcile(running, now=1.0)
    assert len(table.lanes) == 1
    partner = next(rid for rid in table.releasing)
    running["B"].append(("b3", "B3", "n1"))
    table.reconcile(running, now=1.1)
    assert len(table.lanes) == 2  # a3 (never in a lane) and b3 form one at once
    assert [rid for rid, _ in table.due_releases(now=5.0)] == [partner]
    table.released(partner)
    table.drop_owner("proxy")
    table.reconcile(running, now=5.1)
    assert {lane.owner_id for lane in table.lanes.values()} == {"driver"}


def test_a_replica_not_running_for_a_while_is_still_released_before_it_joins_a_lane():
    table = LaneTable(("A",))
    table.claim(Owner("driver", "01", node_id="n1"))
    # A restarted controller found a1, which may still run its old lane's loop: released first.
    table.releasing["a1"] = (0.0, "A1")
    table.reconcile({"A": []}, now=0.0, present={"a1"})  # a1 is RECOVERING: not running, still there
    assert "a1" in table.releasing
    table.reconcile({"A": [("a1", "A1", "n1")]}, now=0.1, present={"a1"})
    assert not table.lanes  # not until its loop was stopped
    assert [rid for rid, _ in table.due_releases(now=0.2)] == ["a1"]
    table.released("a1")
    table.reconcile({"A": [("a1", "A1", "n1")]}, now=0.3, present={"a1"})
    assert len(table.lanes) == 1


def test_a_lane_never_crosses_a_node():
    table = LaneTable(("A", "B"))
    table.claim(Owner("head-driver", "01", node_id="head"))
    table.claim(Owner("worker-proxy", "02", "actor", node_id="w1"))
    table.claim(Owner("lost", "03"))  # no node known: it gets no lane
    # A and B both on w1 twice; the head has an A only; w2 has a B only (and no owner).
    running = {
        "A": [("a1", "A1", "head"), ("a2", "A2", "w1"), ("a3", "A3", "w1")],
        "B": [("b1", "B1", "w2"), ("b2", "B2", "w1"), ("b3", "B3", "w1")],
    }
    table.reconcile(running, now=0.0)
    lanes = list(table.lanes.values())
    assert len(lanes) == 2
    for lane in lanes:
        assert lane.owner_id == "worker-proxy" and lane.node_id == "w1"
        assert {rid for _, rid, _ in lane.members} <= {"a2", "a3", "b2", "b3"}
    # A B starts on the head: the head's driver gets a lane of head replicas.
    running["B"].append(("b4", "B4", "head"))
    table.reconcile(running, now=0.1)
    head = [lane for lane in table.lanes.values() if lane.owner_id == "head-driver"]
    assert len(head) == 1 and {rid for _, rid, _ in head[0].members} == {"a1", "b4"}


# On the cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain5(deploy):
    compiled = deploy(chain(5), name="cg-chain")
    plan = deploy(chain(5), name="cg-chain-plan", compiled=False)
    wait_for_lanes("cg-chain")
    return compiled, plan


def on_lanes(app: str):
    """A context that checks every request inside it ran on this process's lanes."""
    import contextlib

    @contextlib.contextmanager
    def counted(expected: int):
        lanes = lanes_for(app)
        before = lanes.served
        yield
        assert lanes.served - before == expected, (lanes.served - before, lanes.reason)

    return counted


def test_a_five_stage_chain_gives_the_plan_paths_answers(chain5):
    compiled, plan = chain5
    with on_lanes("cg-chain")(20):
        refs = [compiled.remote(i) for i in range(20)]
    assert all(isinstance(r, ray.ObjectRef) for r in refs)  # the seed's sync handle still gives ObjectRefs
    done, _ = ray.wait(refs, num_returns=20, timeout=60)
    assert len(done) == 20
    assert ray.get(refs) == ray.get([plan.remote(i) for i in range(20)]) == [i + 15 for i in range(20)]
    # A DeploymentHandle reads the lane's answer without the object store.
    response = compiled.options(use_new_handle_api=True).remote(5)
    assert response.result() == 20 and isinstance(response._ref, GraphRef)
    assert path("cg-chain")["kind"] == "compiled" and path("cg-chain")["lanes"] == 1
    assert path("cg-chain-plan") == {"kind": "plan", "reason": "turned off (compiled=False)", "lanes": 0}


def test_a_users_error_surfaces_as_on_the_plan_path(chain5):
    compiled, plan = chain5
    errors = []
    for handle in (compiled, plan):
        with pytest.raises(ValueError) as info:
            ray.get(handle.remote("boom"))
        errors.append(info.value)
        with pytest.raises(ValueError, match="stage 1 refuses 'boom'"):
            handle.options(use_new_handle_api=True).remote("boom").result()
    assert [type(e).__mro__[1:] for e in errors][0] == [type(e).__mro__[1:] for e in errors][1]
    assert all("stage 1 refuses 'boom'" in str(e) for e in errors)
    assert ray.get(compiled.remote(1)) == 16  # the lane still serves


def test_results_pass_on_to_other_handles_and_await(chain5):
    compiled, plan = chain5
    assert ray.get(plan.remote(compiled.remote(0))) == 30

    async def main():
        response = compiled.options(use_new_handle_api=True).remote(2)
        return await response, await compiled.remote(3)

    import asyncio

    assert asyncio.run(main()) == (17, 18)


def test_an_idle_lane_stops_spinning_and_answers_the_next_request_on_the_lane(chain5):
    compiled, _ = chain5
    assert ray.get(compiled.remote(0)) == 15
    pids = [ray.get(a.ready.remote())["pid"] for i in range(5) for a in replica_actors("cg-chain", f"S{i}")]
    time.sleep(LANE_IDLE_S + 0.5)  # quiet: every stage now looks for its next value now and then
    before = [cpu_seconds(pid) for pid in pids]
    time.sleep(2.0)
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    # A stage spinning in Ray's wait burns a third of a core or more; one polling gently, a few per cent.
    assert max(used) < 0.4, used
    with on_lanes("cg-chain")(5):
        assert [ray.get(compiled.remote(i)) for i in range(5)] == [i + 15 for i in range(5)]


def test_the_pipeline_example_and_a_multi_output_graph_match_the_plan_path(deploy):
    import pipeline

    with InputNode() as inp:
        first = Add.options(name="M0").bind(1).__call__.bind(inp[0])
        second = AsyncAdd.options(name="M1").bind(10).__call__.bind(inp[1])
        summed = Pair.options(name="M2").bind().both.bind(first, second, scale=inp[2])
        multi = serve.MultiOutputNode([summed, first, inp[1]])
    compiled = deploy(pipeline.app, name="cg-pipeline")
    plan = deploy(pipeline.app, name="cg-pipeline-plan", compiled=False)
    multi_c = deploy(multi, name="cg-multi")
    multi_p = deploy(multi, name="cg-multi-plan", compiled=False)
    wait_for_lanes("cg-pipeline")
    wait_for_lanes("cg-multi")
    texts = [{"text": f"  Hello World {i} "} for i in range(10)]
    with on_lanes("cg-pipeline")(10):
        answers = [ray.get(compiled.remote(t)) for t in texts]
    assert answers == [ray.get(plan.remote(t)) for t in texts]
    with on_lanes("cg-multi")(1):
        multi = ray.get(multi_c.remote(1, 2, 3))
    assert multi == ray.get(multi_p.remote(1, 2, 3)) == [(2 + 12) * 3, 2, 2]
    # A request whose input lacks what the graph reads fails the same way on both paths.
    for handle in (compiled, plan):
        with pytest.raises(LookupError, match="text"):
            ray.get(handle.remote({"txt": "no"}))


def test_values_larger_than_a_channel_buffer_pass(deploy):
    with InputNode() as inp:
        sized = Add.options(name="Big").bind(0).size.bind(inp)
    handle = deploy(sized, name="cg-big")
    wait_for_lanes("cg-big")
    blob = b"x" * (20 * 1024 * 1024)
    with on_lanes("cg-big")(1):
        assert ray.get(handle.remote(blob)) == len(blob)
    assert ray.get(handle.remote(b"small")) == 5


def test_an_ineligible_graph_says_why_and_runs_as_a_plan(deploy):
    with InputNode() as inp:  # a deployment passed per request (a generator node no longer compiles)
        handed = Pair.options(name="G").bind().both.bind(inp, Add.options(name="H").bind(1))
    deploy(handed, name="cg-handed")
    assert path("cg-handed")["kind"] == "plan"
    assert "passed a deployment handle per request" in path("cg-handed")["reason"]
    result = subprocess.run(
        [sys.executable, "-m", "servegraph", "check", "pipeline:app"],
        cwd=ROOT / "examples",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "requests run on the compiled path" in result.stdout


def test_scaling_up_adds_lanes_and_scaling_down_removes_them(deploy):
    handle = deploy(chain(2), name="cg-scale")
    wait_for_lanes("cg-scale", 1)
    handle = deploy(chain(2, num_replicas=2), name="cg-scale")
    wait_for_lanes("cg-scale", 2)
    assert path("cg-scale")["lanes"] == 2
    assert ray.get([handle.remote(i) for i in range(10)]) == [i + 3 for i in range(10)]
    handle = deploy(chain(2, num_replicas=1), name="cg-scale")
    assert wait_for(lambda: path("cg-scale")["lanes"] == 1 and lanes_for("cg-scale").active() == 1, 60)
    assert ray.get(handle.remote(1)) == 4


def test_a_replica_killed_under_load_on_a_lane_loses_no_request(deploy):
    handle = deploy(chain(3, num_replicas=2), name="cg-kill")
    wait_for_lanes("cg-kill", 2)
    with Load(lambda: ray.get(handle.remote(1), timeout=60) == 7 or 1 / 0, threads=4) as load:
        assert load.wait_served(50)
        victim = replica_actors("cg-kill", "S1")[0]
        ray.kill(victim)
        assert load.wait_served(200)
    assert load.failed == []
    # The lane that lost a replica is re-formed over its successor.
    assert wait_for(lambda: lanes_for("cg-kill").active() == 2, 60), path("cg-kill")


def test_http_requests_use_the_compiled_path(deploy, http_port):
    import pipeline

    deploy(pipeline.app, name="cg-http", route_prefix="/cg-http")
    for _ in range(3):
        reply = httpx.post(f"http://127.0.0.1:{http_port}/cg-http", json={"text": "Hello World"}, timeout=60)
        assert reply.status_code == 200 and reply.json()["length"] == 11.0
    # Only the proxy sent this app requests, so it is the one process holding its lane.
    assert wait_for(lambda: path("cg-http")["lanes"] == 1 and path("cg-http").get("owners") == 1, 60), path("cg-http")
    for _ in range(5):
        reply = httpx.post(f"http://127.0.0.1:{http_port}/cg-http", json={"text": "Hello World"}, timeout=60)
        assert reply.json() == {"length": 11.0, "vowels": 3, "score": 14.0}


def test_a_driver_that_exits_leaves_no_replica_stuck_in_its_lane(deploy, ray_cluster):
    deploy(chain(2), name="cg-owner")
    address = ray.get_runtime_context().gcs_address
    script = textwrap.dedent(
        f"""
        import os, time, ray, servegraph as serve
        from servegraph.runtime.data.lanes import lanes_for
        ray.init(address={address!r}, namespace="servegraph", log_to_driver=False)
        handle = serve.get_app_handle("cg-owner").options(use_new_handle_api=False)
        lanes = lanes_for("cg-owner")
        deadline = time.monotonic() + 60
        while lanes.active() == 0 and time.monotonic() < deadline:
            handle.remote(1)
            time.sleep(0.05)
        print("owned", lanes.active(), ray.get(handle.remote(1)), flush=True)
        os._exit(0)  # no teardown: the controller must notice and release the replicas
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT / "tests")
    assert "owned 1 4" in result.stdout, result.stdout + result.stderr[-2000:]
    # This process claims the app's lanes now; it gets one once the dead driver's lane was released.
    handle = serve.get_app_handle("cg-owner").options(use_new_handle_api=False)
    assert ray.get(handle.remote(1)) == 4
    wait_for_lanes("cg-owner", 1, timeout_s=90)
    with on_lanes("cg-owner")(1):
        assert ray.get(handle.remote(2)) == 5


@serve.deployment
class Sleepy:
    def __call__(self, seconds: float) -> float:
        import time

        time.sleep(seconds)
        return seconds


def test_result_timeout_bounds_the_whole_call_on_a_lane(deploy):
    with InputNode() as inp:
        graph = Sleepy.bind().__call__.bind(inp)
    deploy(graph, name="cg-timeout")
    handle = serve.get_app_handle("cg-timeout")
    wait_for_lanes("cg-timeout")
    lanes = lanes_for("cg-timeout")
    served = lanes.served
    response = handle.remote(3.0)  # sent on the lane; remote() does not wait for the answer
    assert response._ref._pending is not None
    with pytest.raises(TimeoutError):
        response.result(timeout_s=0.2)
    assert response.result(timeout_s=60) == 3.0  # asked again: the same request's answer
    assert lanes.served == served + 1
    # An answer nobody reads does not keep its lane's room: the lane still takes requests afterwards.
    for _ in range(3):
        handle.remote(0.5)
    assert [handle.remote(0.0).result(timeout_s=60) for _ in range(10)] == [0.0] * 10


def test_a_config_turns_the_compiled_path_off_and_build_never_writes_the_field():
    from servegraph.compiler.config.loading import validate_config

    config = validate_config({"applications": [{"import_path": "pipeline:app", "compiled": False}]})
    assert config.applications[0].compiled is False
    assert validate_config({"applications": [{"import_path": "pipeline:app"}]}).applications[0].compiled is True
    result = subprocess.run(
        [sys.executable, "-m", "servegraph", "build", "pipeline:app"],
        cwd=ROOT / "examples",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "import_path" in result.stdout and "compiled" not in result.stdout


@serve.deployment(max_ongoing_requests=1)
class OneAtATime:
    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __call__(self, x):
        import time

        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return x

    def peak_concurrency(self) -> int:
        return self.peak


def test_max_ongoing_requests_holds_across_the_lane_and_the_plan(deploy):
    with InputNode() as inp:
        graph = OneAtATime.options(name="Once").bind().__call__.bind(inp)
    handle = deploy(graph, name="cg-once")
    wait_for_lanes("cg-once")
    # Four callers: one at a time fits the lane, the others overflow to the plan path, same replica.
    with Load(lambda: ray.get(handle.remote(1), timeout=60) == 1 or 1 / 0, threads=4) as load:
        assert load.wait_served(40)
    assert load.failed == []
    probe = serve.get_deployment_handle("Once", app_name="cg-once")
    assert probe.peak_concurrency.remote().result() == 1


def test_the_controller_killed_under_load_loses_no_request_and_lanes_come_back(deploy):
    from servegraph.runtime.common.records import CONTROLLER_NAME, NAMESPACE

    handle = deploy(chain(2, num_replicas=2), name="cg-controller").options(use_new_handle_api=True)
    wait_for_lanes("cg-controller", 2)
    with Load(lambda: handle.remote(1).result(timeout_s=60) == 4 or 1 / 0, threads=4) as load:
        assert load.wait_served(50)
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=False)
        assert load.wait_served(300)
    assert load.failed == []
    # The restarted controller stops the loops it did not know of and forms lanes again.
    assert wait_for(lambda: path("cg-controller")["lanes"] == 2 and lanes_for("cg-controller").active() == 2, 90), (
        path("cg-controller"),
        lanes_for("cg-controller").reason,
    )
    with on_lanes("cg-controller")(5):
        assert [handle.remote(i).result() for i in range(5)] == [i + 3 for i in range(5)]


def test_a_rolling_update_under_load_on_a_compiled_graph_fails_no_request(deploy):
    handle = deploy(chain(2, num_replicas=2, version="1"), name="cg-roll").options(use_new_handle_api=True)
    wait_for_lanes("cg-roll", 2)
    with Load(lambda: handle.remote(1).result(timeout_s=60) == 4 or 1 / 0, threads=4) as load:
        assert load.wait_served(50)
        deploy(chain(2, num_replicas=2, version="2"), name="cg-roll")
        assert load.wait_served(100)
    assert load.failed == []
    assert wait_for(lambda: lanes_for("cg-roll").active() == 2, 90), path("cg-roll")


def test_a_rollout_ends_old_replicas_only_after_their_owner_is_done_with_their_lanes(deploy, monkeypatch, capfd):
    """A rollout's old replicas were ended while their lane's owner could still be compiling a lane over them (or
    tearing one down): Ray's monitor thread in the owner then failed (CI saw it once). With slow owners, the
    rollout waits for them, fails no request, and nothing fails in the owner's threads."""
    import threading

    import servegraph.runtime.data.lanes as lanes_module

    failed_threads: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failed_threads.append(f"{args.thread}: {args.exc_value!r}"))

    build, teardown = lanes_module._build, lanes_module.Lane.teardown
    slow = []

    def slow_build(*args, **kwargs):
        if slow:
            time.sleep(1.5)  # a compile the rollout's stops arrive in
        return build(*args, **kwargs)

    def slow_teardown(self, wait_s=5.0):
        if slow:
            time.sleep(1.5)  # an owner busy finishing the lane's requests
        teardown(self, wait_s)

    monkeypatch.setattr(lanes_module, "_build", slow_build)
    monkeypatch.setattr(lanes_module.Lane, "teardown", slow_teardown)
    handle = deploy(chain(2, version="1"), name="cg-slow-owner").options(use_new_handle_api=True)
    wait_for_lanes("cg-slow-owner", 1)
    slow.append(True)
    with Load(lambda: handle.remote(1).result(timeout_s=60) == 4 or 1 / 0, threads=2) as load:
        assert load.wait_served(10)
        deploy(chain(2, version="2"), name="cg-slow-owner")
        assert load.wait_served(30)
    assert load.failed == []
    assert wait_for(lambda: lanes_for("cg-slow-owner").active() == 1, 90), path("cg-slow-owner")
    time.sleep(1.0)  # Ray's monitor thread notices a dead actor within a second
    assert failed_threads == []
    assert "Traceback" not in capfd.readouterr().err


def test_deleting_an_application_whose_lane_is_compiling_waits_for_the_compile(deploy, monkeypatch, capfd):
    """The lane is torn down when its compile ends, before the controller kills its replicas: compiled over
    replicas killed meanwhile, Ray failed mid-compile and the caller's stderr got its traceback."""
    import threading

    import servegraph.runtime.data.lanes as lanes_module

    started, ends = threading.Event(), []
    build = lanes_module._build

    def slow_build(*args, **kwargs):
        started.set()
        time.sleep(1.0)  # the delete below arrives while this lane compiles
        try:
            return build(*args, **kwargs)
        finally:
            ends.append(time.monotonic())

    monkeypatch.setattr(lanes_module, "_build", slow_build)
    handle = deploy(chain(2), name="compiling-delete")
    assert ray.get(handle.remote(1), timeout=60) == 4  # on the plan; the lane starts compiling
    assert started.wait(60)
    serve.delete("compiling-delete")
    deleted = time.monotonic()
    assert ends and ends[0] <= deleted  # the compile ended before delete returned
    assert "Traceback" not in capfd.readouterr().err
