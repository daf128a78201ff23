"""Graph-aware autoscaling: downstream stages sized from their callers' load, in the same step.

The rule is tested without Ray; the controller's use of it on a real cluster, by outcome: which
replicas run, what status says decided each target, and that no request failed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest
from test_control_plane import Load, deployment_status, wait_for

import servegraph as serve
from servegraph import InputNode, compile
from servegraph.runtime.control.graph_autoscaling import Stage, graph_order, measured_fanout, static_fanout, wishes

# The rule, without Ray --------------------------------------------------------------------------


@serve.deployment
class Step:
    def __call__(self, x: int) -> int:
        return x


def test_a_plans_fan_out_is_counted_per_request():
    with InputNode() as inp:
        a = Step.options(name="A").bind().__call__.bind(inp)
        b = Step.options(name="B").bind()
        out = Step.options(name="C").bind().__call__.bind([b.__call__.bind(a), b.__call__.bind(a)])
    fanout = static_fanout(compile(out).ir)
    assert fanout == {("A", "B"): 2.0, ("B", "C"): 0.5}  # C once per request: once per two calls of B
    assert graph_order(["C", "B", "A"], fanout) == ["A", "B", "C"]


def _stage(ongoing=None, latency_s=None, rate=0.0, target=None, current=1) -> Stage:
    return Stage(ongoing=ongoing, latency_s=latency_s, rate=rate, target_ongoing=target, current=current)


def test_each_stage_gets_its_callers_load_times_the_fan_out():
    # A: 24 requests queued or running, 0.15 s each -> 160 req/s, and room for them at its target of 6;
    # B gets 160/s, C twice that.
    stages = {
        "A": _stage(ongoing=24, latency_s=0.15, target=4, current=6),
        "B": _stage(ongoing=4, latency_s=0.10, target=4, current=4),
        "C": _stage(ongoing=2, latency_s=0.05, target=4, current=1),
    }
    out = wishes(["A", "B", "C"], stages, {("A", "B"): 1.0, ("B", "C"): 2.0})
    assert "A" not in out  # the first stage: its own queue decides
    assert out["B"].replicas == 4 and out["B"].arrival_per_s == pytest.approx(160)
    assert out["C"].replicas == 4 and out["C"].arrival_per_s == pytest.approx(320)
    assert out["C"].reason.startswith("upstream load 320.0 req/s (B 320.0/s)")


def test_a_callee_grows_when_its_callers_target_does_not_before():
    # A has 24 waiting but is still at 1 replica (its upscale delay runs): B is sized for what A serves now.
    stages = {"A": _stage(ongoing=24, latency_s=0.2, target=2, current=1), "B": _stage(ongoing=2, latency_s=0.1, target=2, current=1)}
    assert wishes(["A", "B"], stages, {("A", "B"): 1.0})["B"].replicas == 1
    # A's target became 8: in that same step B is sized for what A will pass on, 80 req/s.
    stages["A"] = _stage(ongoing=24, latency_s=0.2, target=2, current=8)
    assert wishes(["A", "B"], stages, {("A", "B"): 1.0})["B"].replicas == 4


def test_a_stage_at_zero_starts_with_its_callers():
    stages = {"A": _stage(ongoing=1, target=1, current=1), "B": _stage(target=1, current=0), "C": _stage(target=1, current=0)}
    out = wishes(["A", "B", "C"], stages, {("A", "B"): 1.0, ("B", "C"): 1.0})
    assert out["B"].replicas == 1 and out["C"].replicas == 1


def test_no_load_no_floor_and_fixed_deployments_are_left_alone():
    idle = {"A": _stage(ongoing=0, latency_s=0.1, target=1), "B": _stage(ongoing=0, target=1)}
    assert wishes(["A", "B"], idle, {("A", "B"): 1.0}) == {}
    fixed = {"A": _stage(ongoing=8, latency_s=0.1, target=1), "B": _stage()}  # B has num_replicas
    assert wishes(["A", "B"], fixed, {("A", "B"): 1.0}) == {}


def test_measured_fan_out_replaces_the_graphs_guess_once_the_caller_served():
    static = {("A", "B"): 1.0}
    assert measured_fanout(static, {"A": 10.0}, {("A", "B"): 30.0, ("<input>", "A"): 10.0}) == {("A", "B"): 3.0}
    assert measured_fanout(static, {"A": 0.0}, {("A", "B"): 0.0}) == static


def test_a_cycle_of_handles_still_orders_every_deployment():
    assert sorted(graph_order(["A", "B", "C"], {("A", "B"): 1.0, ("B", "A"): 1.0, ("B", "C"): 1.0})) == ["A", "B", "C"]


# On a cluster ---------------------------------------------------------------------------------

SCALING = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 2,
    "metrics_interval_s": 0.2,
    "look_back_period_s": 1.0,
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 3.0,
}


@serve.deployment(autoscaling_config=SCALING, max_ongoing_requests=4)
class Leaf:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        return x


@serve.deployment(autoscaling_config=SCALING, max_ongoing_requests=4)
class Middle:
    def __init__(self, leaf):
        self.leaf = leaf

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        first = await self.leaf.remote(x)  # fan-out 2: the leaf is called twice per request
        return await self.leaf.remote(first)


@serve.deployment(autoscaling_config=SCALING, max_ongoing_requests=4)
class Front:
    def __init__(self, middle):
        self.middle = middle

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        return await self.middle.remote(x)


def _pipeline(config: dict):
    return Front.options(autoscaling_config=config).bind(
        Middle.options(autoscaling_config=config).bind(Leaf.options(autoscaling_config=config).bind())
    )


def _reasons_while_loaded(handle, app: str, seconds: float) -> tuple[dict[str, list[str]], Load]:
    """Load the pipeline with 12 callers; each deployment's autoscaling reasons seen meanwhile."""
    seen: dict[str, list[str]] = {"Front": [], "Middle": [], "Leaf": []}
    with Load(lambda: handle.remote(1).result(timeout_s=120), threads=12) as load:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name in seen:
                scaling = deployment_status(app, name).autoscaling
                if scaling and (not seen[name] or seen[name][-1] != scaling["reason"]):
                    seen[name].append(scaling["reason"])
            time.sleep(0.1)
    return seen, load


def test_downstream_stages_scale_with_their_callers_not_after_them(serve_app):
    handle = serve_app.run(_pipeline(SCALING), name="graph-scale", route_prefix=None).options(use_new_handle_api=True)
    seen, load = _reasons_while_loaded(handle, "graph-scale", 12)
    assert load.failed == []
    assert load.served > 0
    # The middle and leaf stages were sized from the load arriving at their callers (status says so).
    assert any(r.startswith("upstream load") for r in seen["Middle"]), seen["Middle"]
    assert any(r.startswith("upstream load") and "Middle" in r for r in seen["Leaf"]), seen["Leaf"]
    for name in ("Front", "Middle", "Leaf"):
        assert deployment_status("graph-scale", name).autoscaling["target"] > 1, name
    # Load gone: back to one replica each, as the deployments' own policy says.
    assert wait_for(lambda: all(deployment_status("graph-scale", n).autoscaling["target"] == 1 for n in seen), 60)


def test_turned_off_each_stage_scales_on_its_own_queue(serve_app):
    handle = serve_app.run(_pipeline(SCALING), name="graph-scale-off", route_prefix=None, graph_autoscaling=False)
    seen, load = _reasons_while_loaded(handle.options(use_new_handle_api=True), "graph-scale-off", 6)
    assert load.failed == []
    for name, reasons in seen.items():
        assert reasons and not any(r.startswith("upstream") for r in reasons), (name, reasons)
        assert deployment_status("graph-scale-off", name).autoscaling["graph_aware"] is False


def test_a_graph_at_zero_serves_its_first_request_and_starts_every_stage_at_once(serve_app):
    config = {**SCALING, "min_replicas": 0, "initial_replicas": 0, "downscale_delay_s": 1.0}
    handle = serve_app.run(_pipeline(config), name="graph-zero", route_prefix=None).options(use_new_handle_api=True)
    names = ("Front", "Middle", "Leaf")
    assert wait_for(lambda: all(deployment_status("graph-zero", n).replica_states == {} for n in names), 60)
    seen: dict[str, list[str]] = {n: [] for n in names}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: handle.remote(7).result(timeout_s=120))
        while not first.done():
            for name in names:
                reason = deployment_status("graph-zero", name).autoscaling["reason"]
                if not seen[name] or seen[name][-1] != reason:
                    seen[name].append(reason)
            time.sleep(0.05)
        assert first.result() == 7
    # The downstream stages were started because their caller had a request, not when it reached them.
    for name in ("Middle", "Leaf"):
        assert any(r.startswith("upstream load") for r in seen[name]), (name, seen[name])
    # Idle again: every stage back at zero; the next request is served too.
    assert wait_for(lambda: all(deployment_status("graph-zero", n).replica_states == {} for n in names), 60), seen
    assert handle.remote(8).result(timeout_s=120) == 8


def test_a_config_can_turn_it_off_per_application_and_says_so_for_a_wrong_value():
    from servegraph.compiler.config.loading import validate_config
    from servegraph.errors import GraphError

    config = validate_config({"applications": [{"name": "a", "import_path": "hello:app", "graph_autoscaling": False}, {"name": "b", "import_path": "hello:app", "route_prefix": "/b"}]})
    assert [app.graph_autoscaling for app in config.applications] == [False, True]
    with pytest.raises((GraphError, ValueError), match="graph_autoscaling"):
        validate_config({"applications": [{"name": "a", "import_path": "hello:app", "graph_autoscaling": "sometimes"}]})
