"""Switch and split graphs on the session's Ray cluster: which branches run, traffic shares, weights
shifted by a config edit with no replica restarted. Judged by outcome: the replicas' own call counts."""

from __future__ import annotations

import math

import httpx
import pytest
import yaml
from click.testing import CliRunner

import servegraph as serve
from servegraph.cli import main

pytestmark = pytest.mark.ray


def _count(app: str, deployment: str) -> int:
    return serve.get_deployment_handle(deployment, app).count.remote().result(timeout_s=60)


def test_only_the_chosen_branch_of_a_switch_is_called(deploy, http_port):
    import routing_models

    deploy(routing_models.switch_app, name="switch", route_prefix="/switch")
    handle = serve.get_app_handle("switch")
    names = {d.name for d in serve.compile(routing_models.switch_app).ir.deployments}
    assert names == {"Branch", "Branch_1"}  # spanish, french
    answers = [handle.remote({"lang": "spanish", "text": f"hola {i}"}) for i in range(30)]
    assert {a.result(timeout_s=60)["branch"] for a in answers} == {"spanish"}
    assert (_count("switch", "Branch"), _count("switch", "Branch_1")) == (30, 0)
    assert handle.remote({"lang": "french", "text": "salut"}).result(timeout_s=60)["branch"] == "french"
    assert (_count("switch", "Branch"), _count("switch", "Branch_1")) == (30, 1)

    # A value no branch takes, over HTTP: 400 with the value got and the keys known; no branch called.
    reply = httpx.post(f"http://127.0.0.1:{http_port}/switch", json={"lang": "german", "text": "hallo"}, timeout=60)
    assert reply.status_code == 400
    assert "'german' matches no branch" in reply.text and "one of 'spanish', 'french'" in reply.text
    assert "routing_models.py:" in reply.text  # where the switch was made
    with pytest.raises(serve.NoRouteError, match="'german' matches no branch"):
        handle.remote({"lang": "german", "text": "hallo"}).result(timeout_s=60)
    assert (_count("switch", "Branch"), _count("switch", "Branch_1")) == (30, 1)


def test_a_switch_on_a_node_output_waits_for_it_and_calls_one_branch(deploy):
    import routing_models

    deploy(routing_models.detected_app, name="detected")
    handle = serve.get_app_handle("detected")
    assert handle.remote("hola amigo").result(timeout_s=60)["branch"] == "es"
    assert [handle.remote("bonjour").result(timeout_s=60)["branch"] for _ in range(3)] == ["fr"] * 3
    assert (_count("detected", "Branch"), _count("detected", "Branch_1")) == (1, 3)


def test_a_split_of_80_20_over_1000_requests_lands_within_binomial_tolerance(deploy):
    import routing_models

    deploy(routing_models.split_app, name="split")
    handle = serve.get_app_handle("split")
    n, p = 1000, 0.2
    answers = [handle.remote(f"r{i}") for i in range(n)]
    branches = [a.result(timeout_s=120)["branch"] for a in answers]
    canary = branches.count("canary")
    sigma = math.sqrt(n * p * (1 - p))  # 12.6 requests
    assert abs(canary - n * p) <= 5 * sigma, canary  # wrong by chance about once in 1.7 million runs
    # The replicas saw exactly those calls: nothing was sent to the branch a request did not take.
    assert (_count("split", "Branch"), _count("split", "Branch_1")) == (n - canary, canary)


APP = "canary-test"


def _deploy(path) -> str:
    result = CliRunner().invoke(main, ["deploy", str(path)])
    assert result.exit_code == 0, result.output
    return result.output


def _replicas() -> dict[str, set[str]]:
    """Replica ids by deployment, as the controller reports them."""
    import ray

    from servegraph.runtime.client.api import _controller

    deployments = ray.get(_controller().status.remote()).applications[APP].deployments
    return {name: {r.replica_id for r in dep.replicas} for name, dep in deployments.items()}


def test_a_config_edit_shifts_a_split_with_no_replica_restarted(ray_cluster, http_port, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    built = CliRunner().invoke(
        main,
        ["build", "routing_models:split_app", "--name", APP, "--route-prefix", "/canary", "--port", str(http_port), "-o", str(path)],
    )
    assert built.exit_code == 0, built.output
    data = yaml.safe_load(path.read_text())
    splits = data["applications"][0]["deployments"][-1]["user_config"]["splits"]
    assert splits == {"rollout": {"stable": 80, "canary": 20}}
    try:
        splits["rollout"] = {"stable": 100, "canary": 0}
        path.write_text(yaml.safe_dump(data))
        _deploy(path)
        url = f"http://127.0.0.1:{http_port}/canary"
        before = [httpx.post(url, json=f"a{i}", timeout=60).json() for i in range(20)]
        assert {b["branch"] for b in before} == {"stable"}
        replicas, pids = _replicas(), {b["pid"] for b in before}

        splits["rollout"] = {"stable": 0, "canary": 100}
        path.write_text(yaml.safe_dump(data))
        out = _deploy(path)
        assert "  Branch: unchanged\n  Branch_1: unchanged" in out
        after = [httpx.post(url, json=f"b{i}", timeout=60).json() for i in range(20)]
        assert {a["branch"] for a in after} == {"canary"}  # the proxy runs the new weights
        assert serve.get_app_handle(APP).remote("c").result(timeout_s=60)["branch"] == "canary"  # and handles
        assert _replicas() == replicas  # no replica restarted
        assert _count(APP, "Branch") == 20 and _count(APP, "Branch_1") == 21  # their counts lived on
        assert pids.isdisjoint({a["pid"] for a in after})  # canary's replica is another process than stable's

        splits["rollout"] = {"stable": 90, "canary": 20}
        path.write_text(yaml.safe_dump(data))
        bad = CliRunner().invoke(main, ["deploy", str(path)])
        assert bad.exit_code == 1
        assert "split 'rollout': weights must sum to 100, got 110 (stable 90, canary 20)" in bad.output
        assert "Traceback" not in bad.output
    finally:
        serve.delete(APP)
