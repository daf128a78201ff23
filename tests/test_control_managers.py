"""The controller's managers, driven without Ray: every replica call goes to an in-memory fake.

``replicas.py`` is the one seam through which the managers reach replica actors; :class:`FakeActors` and
:class:`FakeReplica` stand in for ``ReplicaActors`` and ``ActorReplica``, record every call, and play a
replica's phases (constructed, initializing, ready, draining, stopped). The loop's clock is handed in,
so backoff, health periods and lane grace periods pass in a step. No Ray cluster is started: these
tests are not marked ``ray``, and each runs in milliseconds.
"""

from __future__ import annotations

import ast
import asyncio
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import servegraph as sg
from servegraph.runtime.common import telemetry
from servegraph.runtime.common.records import CONSTRUCTED, DRAINING, INITIALIZING, READY, STOPPED
from servegraph.runtime.control import checkpoint, replica_lifecycle
from servegraph.runtime.control.applications import App, ApplicationManager
from servegraph.runtime.control.deployments import (
    DEPLOY_FAILED,
    HEALTHY,
    MAX_START_FAILURES_PER_REPLICA,
    UNHEALTHY,
    Deployment,
    DeploymentManager,
)
from servegraph.runtime.control.lane_table import RELEASE_GRACE_S, LaneTable, Owner
from servegraph.runtime.control.lanes import LaneManager
from servegraph.runtime.control.membership import MembershipHost
from servegraph.runtime.control.replica_lifecycle import RUNNING, STOPPING, ReplicaLifecycle
from servegraph.runtime.control.replicas import ReplicaDied, replica_actor_name
from servegraph.runtime.control.signals import Signals
from servegraph.runtime.control.version import replica_version

NODE = "node-1"
CONTROL = Path(checkpoint.__file__).parent


# The graph the tests deploy -------------------------------------------------------------------------
@sg.deployment(num_replicas=2, health_check_period_s=1, graceful_shutdown_timeout_s=1)
class Model:
    def __call__(self, x):
        return x


@sg.deployment
class Pre:
    def __init__(self, model):
        self.model = model

    async def __call__(self, x):
        return await self.model.remote(x)


def graph_ir(num_replicas: int = 2, version: str | None = None) -> Any:
    options: dict[str, Any] = {"num_replicas": num_replicas}
    if version is not None:
        options["version"] = version
    return sg.compile(Pre.bind(Model.options(**options).bind())).ir


#: What a checkpoint's ``app_bytes`` name (the real controller pickles the IR with cloudpickle).
SAVED_IRS: dict[bytes, Any] = {}


# The fake seam -------------------------------------------------------------------------------
class FakeReplica:
    """One replica actor in memory: ``replicas.ActorReplica``'s methods, each recorded in ``calls``."""

    def __init__(self, cluster: FakeActors, name: str, resources: dict[str, float], constructor_error: str | None):
        self.cluster, self.name, self.resources = cluster, name, resources
        #: Where it runs: the node it was asked for (pinned or preferred), else the first.
        self.node = NODE
        self.handle = f"handle:{name}"
        self.group = None
        self.calls: list[str] = []
        self.phase_now = CONSTRUCTED
        self.constructor_error = constructor_error
        self.health_error: Exception | None = None
        self.user_config: Any = None
        self.logging: Any = None
        self.alive = True
        self._ended = asyncio.get_event_loop().create_future()

    def _answer(self, value: Any) -> asyncio.Future:
        done = asyncio.get_event_loop().create_future()
        if self.alive:
            done.set_result(value)
        else:
            done.set_exception(ReplicaDied(self.name))
        return done

    def initialize(self, user_config: Any, max_ongoing: int, logging_config: Any) -> asyncio.Future:
        self.calls.append("initialize")
        if self.phase_now in (CONSTRUCTED, INITIALIZING):
            self.user_config, self.logging = user_config, logging_config
            self.phase_now = "failed" if self.constructor_error else READY
        return self._answer(self.constructor_error)

    def phase(self) -> asyncio.Future:
        self.calls.append("phase")
        report = {"phase": self.phase_now, "node_id": self.node, "pid": 4242, "error": self.constructor_error}
        return self._answer({**report, "user_config": self.user_config, "logging_config": self.logging})

    def reconfigure(self, user_config: Any) -> asyncio.Future:
        self.calls.append("reconfigure")
        self.user_config = user_config
        return self._answer(None)

    def configure_logging(self, logging_config: Any) -> asyncio.Future:
        self.calls.append("configure_logging")
        self.logging = logging_config
        return self._answer(None)

    async def watch(self) -> bool:
        self.calls.append("watch")
        await asyncio.shield(self._ended)
        return True

    async def check_health(self, timeout_s: float) -> None:
        self.calls.append("check_health")
        if not self.alive:
            raise ReplicaDied(self.name)
        if self.health_error is not None:
            raise self.health_error

    def prepare_for_shutdown(self, wait_loop_s: float, timeout_s: float) -> asyncio.Future:
        self.calls.append("prepare_for_shutdown")
        self.phase_now = STOPPED
        return self._answer(None)

    def release_lane(self) -> asyncio.Future:
        self.calls.append("release_lane")
        return self._answer(None)

    def kill(self) -> None:
        self.calls.append("kill")
        self.die()

    def die(self) -> None:
        """The actor ends (a kill, a crash, its node lost): its ``watch`` returns."""
        self.alive = False
        self.cluster.live.pop(self.name, None)
        if not self._ended.done():
            self._ended.set_result(None)

    async def wait_placed(self, report: Any) -> None:
        report("")

    def remove_group(self) -> None:
        self.calls.append("remove_group")
        self.group = None


class FakeActors:
    """``replicas.ReplicaActors`` in memory: a cluster of ``capacity`` whose replica actors live in ``live``."""

    def __init__(self, capacity: float = 100.0) -> None:
        self.capacity = capacity
        self.live: dict[str, FakeReplica] = {}
        self.created: list[FakeReplica] = []
        #: Constructor errors the next replicas created raise, in order.
        self.constructor_errors: list[str] = []
        self.lane_releases: list[str] = []
        self.nodes = [NODE]

    def create(self, app: str, deployment: str, replica_id: str, spec: Any, node: Any, code_paths: list[str]) -> FakeReplica:
        error = self.constructor_errors.pop(0) if self.constructor_errors else None
        name = replica_actor_name(app, deployment, replica_id)
        replica = FakeReplica(self, name, spec.options.replica_resources(), error)
        replica.node = str(node) if node is not None else self.nodes[0]
        self.live[name] = replica
        self.created.append(replica)
        return replica

    def attach(self, name: str) -> FakeReplica | None:
        return self.live.get(name)

    def live_names(self) -> list[str]:
        return sorted(self.live)

    def live_groups(self) -> dict[str, Any]:
        return {}

    def find_group(self, name: str, groups: Any) -> Any:
        return None

    def remove_group(self, group: Any) -> None:
        pass

    def release_lane(self, handle: str) -> asyncio.Future:
        self.lane_releases.append(handle)
        done = asyncio.get_event_loop().create_future()
        done.set_result(None)
        return done

    def free_resources(self) -> dict[str, float]:
        used = sum(r.resources.get("CPU", 0.0) for r in self.live.values())
        return {"CPU": self.capacity - used}

    def alive_nodes(self) -> list[str]:
        return list(self.nodes)

    def home_node(self) -> str:
        return self.nodes[0]


class Controller:
    """The managers wired as controller.py wires them, over a fake cluster and a clock the test moves."""

    def __init__(self, cluster: FakeActors) -> None:
        self.cluster = cluster
        self.signals = Signals()
        self.host = MembershipHost()
        self.lifecycle = ReplicaLifecycle(
            cluster,  # type: ignore[arg-type]
            self.signals,
            own_path=[],
            lane_exit=lambda app, replica_id: self.apps.lane_exit(app, replica_id),
        )
        self.deployments = DeploymentManager(self.lifecycle, self.host, self.signals)
        self.lanes = LaneManager(self.host, cluster, self.signals, dead_jobs=set)  # type: ignore[arg-type]
        self.apps = ApplicationManager(self.deployments, self.lanes, self.host, self.signals)
        self.now = 1000.0

    async def step(self, seconds: float = 0.1) -> None:
        """One pass of the loop, then let the replicas' tasks run; the clock moves by ``seconds``."""
        self.apps.reconcile(self.now)
        for _ in range(5):
            await asyncio.sleep(0)
        self.now += seconds

    async def until(self, done: Any, passes: int = 200, seconds: float = 0.1) -> int:
        for n in range(passes):
            if done():
                return n
            await self.step(seconds)
        raise AssertionError(f"not reached in {passes} passes: {self.status()}")

    def deploy(self, ir: Any, name: str = "app", compiled: bool = False) -> dict[str, str]:
        SAVED_IRS[str(id(ir)).encode()] = ir
        return self.apps.set_target(name, ir, str(id(ir)).encode(), (), "/", compiled=compiled, graph_autoscaling=False)

    def dep(self, name: str = "Model", app: str = "app") -> Deployment:
        return self.apps.apps[app].deployments[name]

    def status(self) -> dict[str, Any]:
        return {
            n: (d.status, d.message, sorted(r.state for r in d.replicas.values()))
            for app in self.apps.apps.values()
            for n, d in app.deployments.items()
        }


#: A stopped replica's last calls: drained (its ``__del__`` run), then ended and its placement group removed.
DRAINED = ["prepare_for_shutdown", "kill", "remove_group"]


def running(dep: Deployment) -> list[str]:
    return sorted(r.replica_id for r in dep.replicas.values() if r.state == RUNNING)


def _ray_started() -> bool:
    ray = sys.modules.get("ray")  # the managers' modules import Ray's package; none of them may start it
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def no_ray_metrics_nor_drain_wait(monkeypatch):
    """Ray's metrics need a Ray worker; a stop's wait for routers to hear is real time, irrelevant here.
    And no test here starts Ray."""
    monkeypatch.setattr(telemetry, "ENABLED", False)
    monkeypatch.setattr(replica_lifecycle, "MEMBERSHIP_PROPAGATION_S", 0.0)
    before = _ray_started()
    yield
    assert before or not _ray_started(), "a test of the managers started Ray"


# Starting ------------------------------------------------------------------------------------
def test_a_failing_constructor_is_retried_with_backoff_then_the_deployment_fails():
    async def scenario():
        cluster = FakeActors()
        cluster.constructor_errors = ["ValueError: bad model file (model.py:3 in __init__)"] * 100
        ctl = Controller(cluster)
        ctl.deploy(graph_ir(num_replicas=1))
        model = ctl.dep("Model")
        starts_at: list[float] = []
        for _ in range(200):
            before = len(cluster.created)
            await ctl.step(0.05)
            starts_at += [ctl.now] * sum(1 for r in cluster.created[before:] if r.name.split("#")[1] == "Model")
            if model.status == DEPLOY_FAILED:
                break
        return ctl, cluster, model, starts_at

    ctl, cluster, model, starts_at = asyncio.run(scenario())
    assert model.status == DEPLOY_FAILED
    assert model.message == "a replica failed to start: ValueError: bad model file (model.py:3 in __init__)"
    assert ctl.apps.apps["app"].status == DEPLOY_FAILED
    assert ctl.apps.apps["app"].message.endswith("failed: " + model.message)
    # Bounded: three tries per replica of the target, and none after it failed.
    assert len(starts_at) == MAX_START_FAILURES_PER_REPLICA * 1
    gaps = [round(b - a, 2) for a, b in zip(starts_at, starts_at[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, f"backoff doubles: {gaps}"
    # Every failed replica was ended, and asked to run its constructor once.
    failed = [r for r in cluster.created if "#Model#" in r.name]
    assert all(r.calls[:1] == ["initialize"] and "kill" in r.calls for r in failed)
    assert not model.replicas


def test_a_constructor_that_fails_once_is_replaced_and_the_deployment_becomes_healthy():
    async def scenario():
        cluster = FakeActors()
        cluster.constructor_errors = ["RuntimeError: warming up"]
        ctl = Controller(cluster)
        ctl.deploy(graph_ir(num_replicas=2))
        await ctl.until(lambda: ctl.dep("Model").status == HEALTHY and ctl.dep("Pre").status == HEALTHY)
        return ctl, cluster

    ctl, cluster = asyncio.run(scenario())
    model = ctl.dep("Model")
    assert len(running(model)) == 2 and model.failures == 0 and model.message == ""
    assert len(cluster.created) == 4  # 2 Model + 1 Pre, and the one whose constructor failed
    assert ctl.apps.apps["app"].status == "RUNNING"


# Rolling updates -----------------------------------------------------------------------------
async def _roll(capacity: float) -> tuple[Controller, list[tuple[int, int, int]]]:
    """Deploy 4 replicas of Model, then a new version; per pass (live actors, not stopping, serving)."""
    cluster = FakeActors(capacity)
    ctl = Controller(cluster)
    ctl.deploy(graph_ir(num_replicas=4, version="1"))
    await ctl.until(lambda: ctl.dep("Model").status == HEALTHY)
    ctl.deploy(graph_ir(num_replicas=4, version="2"))
    model = ctl.dep("Model")
    trace = []

    def done() -> bool:
        trace.append(
            (
                sum(1 for r in cluster.live.values() if "#Model#" in r.name),
                sum(1 for r in model.replicas.values() if r.state != STOPPING),
                sum(1 for r in model.replicas.values() if r.state in replica_lifecycle.SERVING),
            )
        )
        return model.status == HEALTHY

    await ctl.until(done)
    return ctl, trace


def test_a_rolling_update_with_room_starts_new_replicas_before_stopping_old_ones():
    ctl, trace = asyncio.run(_roll(capacity=100.0))
    model = ctl.dep("Model")
    assert {r.version for r in model.replicas.values()} == {model.version} and len(running(model)) == 4
    surge = 1  # max(1, ceil(0.25 * 4))
    assert max(not_stopping for _, not_stopping, _ in trace) == 4 + surge, trace
    assert min(serving for _, _, serving in trace) >= 4, "never fewer serving than the target while old ones remain"
    old = [r for r in ctl.cluster.created if "#Model#" in r.name][:4]
    assert all(r.calls[-3:] == DRAINED for r in old), "old replicas drained, then ended"


def test_a_rolling_update_without_room_stops_an_old_replica_first():
    # Room for exactly 4 Model replicas and the 1 Pre (each replica reserves what its options say).
    per_replica = graph_ir().deployments[0].options.replica_resources()["CPU"]
    ctl, trace = asyncio.run(_roll(capacity=5 * per_replica + 1e-6))
    model = ctl.dep("Model")
    assert {r.version for r in model.replicas.values()} == {model.version} and len(running(model)) == 4
    assert max(live for live, _, _ in trace) <= 4, f"never more actors than the cluster holds: {trace}"
    assert trace[1][2] == 3, f"one old replica stopped before any new one started: {trace[:3]}"
    # As the controller does today, a pass starts new replicas only if all it wants (up to the surge) fit at once,
    # else it stops one more old one; with room for none beside the old, serving drops until the old are gone.
    assert len(ctl.cluster.created) == 1 + 4 + 4


# Health ----------------------------------------------------------------------------------------
def test_a_replica_failing_its_health_check_is_drained_and_replaced():
    async def scenario():
        cluster = FakeActors()
        ctl = Controller(cluster)
        ctl.deploy(graph_ir(num_replicas=2))
        await ctl.until(lambda: ctl.dep("Model").status == HEALTHY and ctl.dep("Pre").status == HEALTHY)
        model = ctl.dep("Model")
        sick_id = running(model)[0]
        sick = model.replicas[sick_id].actor
        sick.health_error = RuntimeError("database connection lost")
        await ctl.until(lambda: model.status == UNHEALTHY, seconds=0.5)
        message = model.message
        await ctl.until(lambda: model.status == HEALTHY, seconds=0.5)
        return ctl, model, sick_id, sick, message

    ctl, model, sick_id, sick, message = asyncio.run(scenario())
    assert message == f"replica {sick_id} failed its health check: database connection lost; replacing it"
    assert "check_health" in sick.calls and sick.calls[-3:] == DRAINED
    assert sick_id not in model.replicas and len(running(model)) == 2
    assert ctl.apps.apps["app"].status == "RUNNING"


def test_a_replica_that_dies_is_replaced_and_routers_hear_of_it():
    async def scenario():
        ctl = Controller(FakeActors())
        ctl.deploy(graph_ir(num_replicas=2))
        await ctl.until(lambda: ctl.dep("Model").status == HEALTHY)
        model = ctl.dep("Model")
        victim = running(model)[0]
        model.replicas[victim].actor.die()
        await ctl.until(lambda: victim not in model.replicas)
        published_without = ctl.host.published(("app", "Model"))
        await ctl.until(lambda: model.status == HEALTHY and len(running(model)) == 2)
        return ctl, model, victim, published_without

    ctl, model, victim, published_without = asyncio.run(scenario())
    survivor = published_without[1].replicas
    assert len(survivor) == 1 and survivor[0][0] != victim, "routers stop using a dead replica at once"
    assert sorted(rid for rid, _ in ctl.host.published(("app", "Model"))[1].replicas) == running(model)
    assert model.message == "" and victim not in running(model)


# Recovery --------------------------------------------------------------------------------------
def test_a_restarted_controller_recovers_replicas_in_every_phase():
    async def scenario():
        cluster = FakeActors()
        old = Controller(cluster)
        old.deploy(graph_ir(num_replicas=4))
        await old.until(lambda: old.dep("Model").status == HEALTHY)
        proxies = types.SimpleNamespace(http=None, options={}, grpc={}, logging_config=None, location="EveryNode")
        model = old.dep("Model")
        ids = sorted(model.replicas)
        # The old controller dies here; its replicas are in each phase it may leave them in.
        for rid, phase in zip(ids, (CONSTRUCTED, INITIALIZING, READY, DRAINING), strict=True):
            model.replicas[rid].actor.phase_now = phase
        data = pickle.loads(pickle.dumps(checkpoint.snapshot(old.apps.apps, proxies, [])))  # type: ignore[arg-type]
        for r in cluster.live.values():
            r.calls.clear()
        orphan = FakeReplica(cluster, replica_actor_name("app", "Model", "orphan00"), {"CPU": 0.0}, None)
        cluster.live[orphan.name] = orphan

        new = Controller(cluster)
        checkpoint.recover(data, new.apps, new.lifecycle, {}, lambda raw, paths: SAVED_IRS[raw])
        checkpoint.stop_orphans(new.apps, new.lifecycle, {})
        held_back = new.host.published(("app", "Model"))
        recovered = new.dep("Model")
        await new.until(lambda: recovered.status == HEALTHY and len(running(recovered)) == 4)
        return ids, cluster, recovered, held_back, orphan

    ids, cluster, recovered, held_back, orphan = asyncio.run(scenario())
    constructed, initializing, ready, draining = (next(r for r in cluster.created if r.name.endswith(rid)) for rid in ids)
    assert held_back is None, "routers keep what they had until every recovered replica proved ready"
    # Constructed and initializing: initialized (again), then ready; ready: only asked its phase.
    assert constructed.calls[:2] == ["phase", "initialize"] and initializing.calls[:2] == ["phase", "initialize"]
    assert "initialize" not in ready.calls and ready.calls[0] == "phase"
    assert {ids[0], ids[1], ids[2]} <= set(running(recovered))
    # Draining: its drain is finished, not recovered; a new replica takes its place.
    assert ids[3] not in recovered.replicas and draining.calls[-3:] == DRAINED
    assert len(running(recovered)) == 4
    assert orphan.calls == ["kill"], "a replica no checkpoint holds is ended"


# Lanes -----------------------------------------------------------------------------------------
def test_lanes_form_over_running_replicas_and_dissolve_when_one_stops():
    def lanes(ctl: Controller) -> Any:
        return ctl.host.published(LaneManager.key("app"))[1].assignment

    async def scenario():
        cluster = FakeActors()
        ctl = Controller(cluster)
        ir = graph_ir(num_replicas=1)
        ctl.deploy(ir)
        app: App = ctl.apps.apps["app"]
        app.lanes, app.lane_reason = LaneTable(("Model", "Pre"), ir.plan), ""  # what set_target gives an eligible graph
        await ctl.until(lambda: ctl.dep("Model").status == HEALTHY and ctl.dep("Pre").status == HEALTHY)
        assert lanes(ctl).lanes == () and ctl.lanes.claim(app, Owner("proxy", "job-1", None, NODE)) == ""
        await ctl.step()
        formed = lanes(ctl).lanes
        pre = ctl.dep("Pre")
        (pre_id,) = running(pre)
        pre.replicas[pre_id].actor.die()
        await ctl.until(lambda: not lanes(ctl).lanes)
        await ctl.until(lambda: bool(lanes(ctl).lanes), seconds=RELEASE_GRACE_S / 4)
        return ctl, cluster, formed, pre_id, lanes(ctl).lanes

    ctl, cluster, formed, pre_id, reformed = asyncio.run(scenario())
    (lane,) = formed
    model_id = running(ctl.dep("Model"))[0]
    assert lane.owner_id == "proxy" and lane.node_id == NODE
    assert {rid for _, rid, _ in lane.members} == {model_id, pre_id}
    # The surviving Model replica's compiled loop was stopped before it joined the new lane.
    assert cluster.lane_releases == [f"handle:{replica_actor_name('app', 'Model', model_id)}"]
    (new_lane,) = reformed
    assert new_lane.lane_id != lane.lane_id and pre_id not in {rid for _, rid, _ in new_lane.members}
    assert model_id in {rid for _, rid, _ in new_lane.members}


class _Laned:
    """A controller running the graph with one lane, owned by ``proxy``, and the Pre replica in it."""

    def __init__(self, ctl: Controller, app: App) -> None:
        self.ctl, self.app = ctl, app
        (self.lane,) = app.lanes.lanes.values()  # type: ignore[union-attr]
        self.replica_ids = tuple(rid for _, rid, _ in self.lane.members)
        self.pre = ctl.dep("Pre")
        (pre_id,) = running(self.pre)
        self.record = self.pre.replicas[pre_id]
        self.replica = self.record.actor

    def stop_pre(self) -> None:
        self.ctl.lifecycle.stop(self.pre, self.record, graceful=True)


async def _laned(cluster: FakeActors) -> _Laned:
    ctl = Controller(cluster)
    ir = graph_ir(num_replicas=1)
    ctl.deploy(ir)
    app: App = ctl.apps.apps["app"]
    app.lanes, app.lane_reason = LaneTable(("Model", "Pre"), ir.plan), ""
    await ctl.until(lambda: ctl.dep("Model").status == HEALTHY and ctl.dep("Pre").status == HEALTHY)
    ctl.lanes.claim(app, Owner("proxy", "job-1", None, NODE))
    await ctl.until(lambda: bool(app.lanes.lanes))  # type: ignore[union-attr]
    return _Laned(ctl, app)


def test_a_replica_in_a_lane_is_ended_only_after_its_owner_tore_the_lane_down():
    """Ended under a compiled graph its owner is still compiling or tearing down, a replica fails that graph there
    (Ray's monitor thread then prints a traceback in the owner)."""

    async def scenario():
        cluster = FakeActors()
        laned = await _laned(cluster)
        ctl, app = laned.ctl, laned.app
        laned.stop_pre()
        await ctl.until(lambda: not app.lanes.lanes, seconds=0.0)
        for _ in range(10):  # well past the grace: the loops are stopped, the replica is not ended
            await ctl.step(RELEASE_GRACE_S / 2)
        held = list(laned.replica.calls)
        ctl.lanes.retired(app, laned.lane.lane_id, laned.replica_ids)
        await ctl.until(lambda: "kill" in laned.replica.calls, seconds=0.0)
        return cluster, laned.replica, held

    cluster, replica, held = asyncio.run(scenario())
    assert replica.handle in cluster.lane_releases  # its loop was stopped after the grace
    assert "prepare_for_shutdown" not in held and "kill" not in held
    assert replica.calls[-3:] == DRAINED


def test_an_owner_that_leaves_frees_its_lanes_replicas_at_once():
    async def scenario():
        cluster = FakeActors()
        laned = await _laned(cluster)
        laned.ctl.lanes.release(laned.app, "proxy")  # it tore its lanes down and leaves
        laned.stop_pre()
        await laned.ctl.until(lambda: "kill" in laned.replica.calls, seconds=0.0)
        return cluster, laned.replica

    cluster, replica = asyncio.run(scenario())
    assert replica.handle in cluster.lane_releases and replica.calls[-3:] == DRAINED


def test_an_owner_that_tore_its_lane_down_frees_its_replicas_without_the_grace():
    async def scenario():
        cluster = FakeActors()
        laned = await _laned(cluster)
        ctl, app, lane, replica_ids = laned.ctl, laned.app, laned.lane, laned.replica_ids
        laned.stop_pre()
        await ctl.until(lambda: not app.lanes.lanes, seconds=0.0)
        ctl.lanes.retired(app, lane.lane_id + 1, replica_ids)  # another lane's id: nothing moves
        ctl.lanes.retired(app, lane.lane_id, replica_ids[:1])  # not that lane's replicas: nothing moves
        for _ in range(5):
            await ctl.step(0.0)
        early = list(cluster.lane_releases)
        ctl.lanes.retired(app, lane.lane_id, replica_ids)  # the owner reports the teardown
        await ctl.until(lambda: "kill" in laned.replica.calls, seconds=0.0)  # the clock stands still: no grace passes
        return cluster, laned.replica, early

    cluster, replica, early = asyncio.run(scenario())
    assert early == []
    assert replica.handle in cluster.lane_releases and replica.calls[-3:] == DRAINED


def test_a_compiled_graphs_replicas_form_full_sets_on_nodes_of_a_cluster():
    """Lanes never cross nodes: spread as Ray spreads them, a graph's replicas rarely leave a node a full set."""

    async def scenario(laned: bool) -> dict[str, list[str]]:
        cluster = FakeActors()
        cluster.nodes = ["node-a", "node-b", "node-c"]
        ctl = Controller(cluster)
        ir = sg.compile(Pre.options(num_replicas=2).bind(Model.options(num_replicas=2).bind())).ir
        ctl.deploy(ir)
        app: App = ctl.apps.apps["app"]
        if laned:
            app.lanes, app.lane_reason = LaneTable(("Model", "Pre"), ir.plan), ""
        await ctl.until(lambda: ctl.dep("Model").status == HEALTHY and ctl.dep("Pre").status == HEALTHY)
        return {name: sorted(str(r.node_id) for r in ctl.dep(name).replicas.values()) for name in ("Model", "Pre")}

    placed = asyncio.run(scenario(laned=True))
    assert placed["Model"] == placed["Pre"]  # two full sets
    assert len(set(placed["Model"])) == 2  # on two nodes: each deployment's replicas still spread
    assert "node-a" in placed["Model"]  # one on the controller's node, where drivers (lane owners) usually run
    # A graph on the plan path only is placed as Ray places it (SPREAD: no node asked for).
    assert asyncio.run(scenario(laned=False)) == {"Model": ["node-a", "node-a"], "Pre": ["node-a", "node-a"]}


def test_every_actor_call_on_a_replica_goes_through_the_seam():
    """In control/, actor methods are called (``x.method.remote(...)``) only by replicas.py and by proxy_state.py
    (on proxies), and ``ray.kill`` only by replicas.py and the controller (its proxies' kill)."""
    calls: dict[str, set[str]] = {}
    for path in sorted(CONTROL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                func = node.func
                if func.attr == "remote" and isinstance(func.value, ast.Attribute):
                    calls.setdefault("actor method", set()).add(path.name)
                if func.attr == "kill" and isinstance(func.value, ast.Name) and func.value.id == "ray":
                    calls.setdefault("ray.kill", set()).add(path.name)
    assert calls == {"actor method": {"replicas.py", "proxy_state.py"}, "ray.kill": {"replicas.py", "controller.py"}}


def test_the_fakes_match_the_seam():
    """Every public method of the Ray-side seam has its fake, so the tests drive what runs."""
    from servegraph.runtime.control import replicas

    for real, fake in ((replicas.ActorReplica, FakeReplica), (replicas.ReplicaActors, FakeActors)):
        missing = {m for m in vars(real) if not m.startswith("_")} - set(dir(fake))
        assert not missing, f"{fake.__name__} lacks {missing}"


def test_versions_differ_between_the_two_deploys():
    assert replica_version(graph_ir(version="1").deployments[0]) != replica_version(graph_ir(version="2").deployments[0])
