"""The configs `servegraph build` writes, run on stock Ray Serve: its own `serve run` CLI and deploy path.

Ray Serve runs in the session's Ray cluster next to servegraph's runtime; this
module starts it once (HTTP on a free 127.0.0.1 port) and shuts it down at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT, TESTS, free_port
from support import EXAMPLE_CASES

from servegraph.cli import main
from servegraph.compiler.config.app import RAY_SERVE_BUILDER

pytestmark = [
    pytest.mark.ray,
    # Ray Serve's own schema modules use a pydantic v1 idiom; not ours to fix.
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`"),
]

HELLO = {"language": "spanish", "name": "Dora"}


@pytest.fixture(scope="module")
def rayserve(ray_cluster):
    """Ray Serve started in the session's cluster, HTTP on a free loopback port; shut down after the module."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture
def served(rayserve):
    """Deletes the Ray Serve applications a test deployed."""
    from ray import serve

    yield rayserve
    names = list(serve.status().applications)
    for name in names:  # all at once: each waits out its replicas' graceful shutdown
        serve.delete(name, _blocking=False)
    deadline = time.monotonic() + 120
    while set(names) & set(serve.status().applications) and time.monotonic() < deadline:
        time.sleep(0.2)


def build(tmp_path, target: str, *args: str, port: int) -> dict:
    out = tmp_path / "out.yaml"
    result = CliRunner().invoke(main, ["build", target, "--port", str(port), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(out.read_text())


def deploy_config(config: dict) -> None:
    """What `serve deploy` (the dashboard's REST PUT) and `serve run FILE` do with a config: ServeDeploySchema -> deploy_apps."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    serve_start().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)


def wait_running(name: str) -> None:
    """Until Ray Serve reports the application RUNNING; fail with its message if it cannot deploy."""
    from ray import serve

    while True:
        app = serve.status().applications.get(name)
        status = app.status if app is not None else None
        if status == "RUNNING":
            return
        assert status not in ("DEPLOY_FAILED", "UNHEALTHY"), app.message
        time.sleep(0.2)


def post(port: int, path: str, body: object) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=60)


def test_the_built_config_names_servegraphs_application_builder(tmp_path):
    config = build(tmp_path, "hello:language_classifier", port=8000)
    (app,) = config["applications"]
    assert app["import_path"] == RAY_SERVE_BUILDER
    assert app["args"] == {"graph": "hello:language_classifier"}


def test_serve_run_cli_runs_the_built_config(tmp_path, served, ray_cluster, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    config = build(tmp_path, "hello:language_classifier", "--name", "hello-cli", port=served)
    path = tmp_path / "hello.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(ROOT), str(TESTS)])}
    address = ray_cluster.get_runtime_context().gcs_address
    result = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "run", str(path), "--non-blocking", "--address", address],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_running("hello-cli")
    reply = post(served, "/", HELLO)
    assert reply.status_code == 200 and reply.text == "Hola Dora"


def test_the_manifests_serve_config_v2_runs_on_ray_serve(tmp_path, served):
    out = tmp_path / "hello-k8s.yaml"
    result = CliRunner().invoke(
        main,
        ["build", "hello:language_classifier", "--format", "kubernetes", "--port", str(served), "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(out.read_text())
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    # The manifest binds 0.0.0.0 for its pod; this machine serves loopback only.
    config["http_options"]["host"] = "127.0.0.1"
    deploy_config(config)
    wait_running("default")
    reply = post(served, "/", HELLO)
    assert reply.status_code == 200 and reply.text == "Hola Dora"
    assert post(served, "/", {"language": "french", "name": "Dora"}).text == "Bonjour Dora"


def test_the_inputnode_pipeline_runs_as_its_plan_on_ray_serve(tmp_path, served):
    config = build(tmp_path, "pipeline:app", "--name", "pipeline", "--route-prefix", "/pipeline", port=served)
    deploy_config(config)
    wait_running("pipeline")
    reply = post(served, "/pipeline", {"text": "  Hello World "})
    assert reply.status_code == 200
    assert reply.json() == {"length": 11.0, "vowels": 3, "score": 14.0}
    missing = post(served, "/pipeline", {"txt": "typo"})
    assert missing.status_code == 400 and "input['text']" in missing.text
    from ray import serve

    deployments = serve.status().applications["pipeline"].deployments
    assert set(deployments) == {"DAGDriver", "preprocess", "LengthModel", "VowelModel", "combine"}
    assert deployments["VowelModel"].replica_states == {"RUNNING": 2}


def test_config_values_override_the_code_on_ray_serve(tmp_path, served):
    config = build(tmp_path, "deploy_models:app", "--name", "overrides", "--route-prefix", "/overrides", port=served)
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] == "Greeter":
            dep["num_replicas"] = 2
            dep["user_config"] = {"greeting": "Salut"}
    deploy_config(config)
    wait_running("overrides")
    from ray import serve

    deployments = serve.status().applications["overrides"].deployments
    assert deployments["Greeter"].replica_states == {"RUNNING": 2}
    handle = serve.get_app_handle("overrides")
    pids = set()
    for _ in range(30):
        reply = handle.remote("Dora").result(timeout_s=60)
        assert reply["text"] == "Salut Dora"
        pids.add(reply["pid"])
    assert len(pids) == 2  # both replicas answered, so both got the config's user_config
    # Only user_config changes: Ray Serve reconfigures the live replicas, as servegraph deploy does.
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] == "Greeter":
            dep["user_config"] = {"greeting": "Ciao"}
    deploy_config(config)
    while handle.remote("Dora").result(timeout_s=60)["text"] != "Ciao Dora":
        time.sleep(0.2)
    assert {handle.remote("Dora").result(timeout_s=60)["pid"] for _ in range(20)} <= pids


@pytest.fixture(scope="module")
def examples_on_rayserve(rayserve):
    """Every example, an application each, deployed on Ray Serve at once (their replicas start side by side) and
    kept for the tests that call them; the next test's ``served`` teardown deletes them."""
    from ray import serve
    from ray.serve.api import _run

    from servegraph.backends.rayserve import build_app

    for case in EXAMPLE_CASES:
        _run(build_app({"graph": f"{case.module}:{case.attr}"}), _blocking=False, name=case.module, route_prefix=None)
    for case in EXAMPLE_CASES:
        wait_running(case.module)
    return {case.module: serve.get_app_handle(case.module) for case in EXAMPLE_CASES}


@pytest.mark.parametrize("case", EXAMPLE_CASES, ids=lambda c: c.module)
def test_every_example_answers_the_same_on_ray_serve(case, examples_on_rayserve):
    """The seed's handle semantics (two awaits, unawaited results passed on) hold on Ray Serve's runtime."""
    handle = examples_on_rayserve[case.module]
    assert [response.result(timeout_s=60) for response in case.send(handle)] == case.expected


def test_builder_args_are_checked(ray_cluster):
    from servegraph.backends.rayserve import build_app
    from servegraph.errors import ConfigError

    with pytest.raises(ConfigError, match=r"args\.graph: must be MODULE:ATTR"):
        build_app({"graph": "hello"})
    with pytest.raises(ConfigError, match=r"args\.extra"):
        build_app({"graph": "hello:language_classifier", "extra": 1})


def test_servegraph_deploy_refuses_args_for_another_builder(tmp_path):
    config = build(tmp_path, "hello:language_classifier", port=8000)
    config["applications"][0]["import_path"] = "hello:builder"
    path = tmp_path / "other.yaml"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["deploy", str(path)])
    assert result.exit_code == 1
    assert "servegraph runs only its own" in result.output


def test_switch_and_split_run_on_ray_serve_and_a_weights_edit_reconfigures_the_driver(tmp_path, served):
    """Only the chosen branch is called on Ray Serve too, and the weights are the driver's user_config:
    Ray Serve applies an edit to the live driver, and no replica restarts (their call counts live on)."""
    from ray import serve

    config = build(tmp_path, "routing_models:switch_app", "--name", "switch-rs", "--route-prefix", "/switch-rs", port=served)
    deploy_config(config)
    wait_running("switch-rs")
    assert {post(served, "/switch-rs", {"lang": "spanish", "text": "hola"}).json()["branch"] for _ in range(5)} == {"spanish"}
    unknown = post(served, "/switch-rs", {"lang": "german", "text": "hallo"})
    assert unknown.status_code == 400 and "'german' matches no branch" in unknown.text

    def count(app: str, deployment: str) -> int:
        return serve.get_deployment_handle(deployment, app).count.remote().result(timeout_s=60)

    assert (count("switch-rs", "Branch"), count("switch-rs", "Branch_1")) == (5, 0)

    config = build(tmp_path, "routing_models:split_app", "--name", "split-rs", "--route-prefix", "/split-rs", port=served)
    (driver,) = [d for d in config["applications"][0]["deployments"] if d["name"] == "DAGDriver"]
    driver["user_config"]["splits"]["rollout"] = {"stable": 100, "canary": 0}
    deploy_config(config)
    wait_running("split-rs")
    replies = [post(served, "/split-rs", f"a{i}").json() for i in range(10)]
    assert {r["branch"] for r in replies} == {"stable"}
    driver["user_config"]["splits"]["rollout"] = {"stable": 0, "canary": 100}
    deploy_config(config)
    while replies[-1]["branch"] != "canary":  # until Ray Serve has reconfigured the driver
        replies.append(post(served, "/split-rs", "b").json())
        time.sleep(0.1)
    replies += [post(served, "/split-rs", f"c{i}").json() for i in range(10)]
    assert {r["branch"] for r in replies[-10:]} == {"canary"}
    stable = sum(r["branch"] == "stable" for r in replies)
    canary = len(replies) - stable
    # Every call each replica ever got is in its count: neither branch was restarted by the edit.
    assert (count("split-rs", "Branch"), count("split-rs", "Branch_1")) == (stable, canary)
    assert serve.status().applications["split-rs"].deployments["DAGDriver"].replica_states == {"RUNNING": 1}
