"""build -> deploy -> status on the session's Ray cluster, through the CLI as an operator runs it."""

from __future__ import annotations

import json
import os

import pytest
import ray
import yaml
from click.testing import CliRunner

import servegraph as serve
from servegraph.cli import main

APP = "deploy-test"


@pytest.fixture
def config(tmp_path, http_port, monkeypatch, ray_cluster):
    """A config built from deploy_models:app by `servegraph build`, served on the session's proxy port."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    result = CliRunner().invoke(
        main, ["build", "deploy_models:app", "--name", APP, "--route-prefix", "/deploy", "--port", str(http_port), "-o", str(path)]
    )
    assert result.exit_code == 0, result.output
    yield path
    serve.delete(APP)


def edit(path, **changes_by_deployment) -> None:
    data = yaml.safe_load(path.read_text())
    for dep in data["applications"][0]["deployments"]:
        dep.update(changes_by_deployment.get(dep["name"], {}))
    path.write_text(yaml.safe_dump(data))


def deploy(path) -> str:
    result = CliRunner().invoke(main, ["deploy", str(path)])
    assert result.exit_code == 0, result.output
    return result.output


def call(name: str) -> dict:
    return serve.get_app_handle(APP).remote(name).result(timeout_s=60)


def test_build_deploy_status_shows_the_built_replica_counts(config):
    edit(config, Greeter={"num_replicas": 2})
    out = deploy(config)
    assert f"application '{APP}' at /deploy:\n  Greeter: created with 2 replica(s)\n  Front: created with 1 replica(s)" in out
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    deployments = json.loads(result.output)["applications"][APP]["deployments"]
    assert deployments["Greeter"]["replica_states"] == {"RUNNING": 2}
    assert deployments["Front"]["replica_states"] == {"RUNNING": 1}
    assert call("Dora")["text"] == "Hola Dora"
    table = CliRunner().invoke(main, ["status"])
    assert APP in table.output and "RUNNING 2" in table.output


def test_user_config_only_redeploy_keeps_the_replicas(config):
    deploy(config)
    before = call("Dora")
    edit(config, Greeter={"user_config": {"greeting": "Bonjour"}})
    out = deploy(config)
    assert "  Greeter: reconfigured: the running replicas took the new user_config; none restarted\n  Front: unchanged" in out
    after = call("Dora")
    assert after["text"] == "Bonjour Dora"
    assert (after["pid"], after["front_pid"]) == (before["pid"], before["front_pid"])


def test_a_changed_deployment_restarts_but_its_callers_keep_their_replicas(config):
    deploy(config)
    before = call("Ana")
    edit(config, Greeter={"ray_actor_options": {"num_cpus": 0.2}})
    out = deploy(config)
    assert "  Greeter: restarted: new replicas (new code, constructor arguments, actor options or placement group) replace the old ones" in out
    assert "  Front: unchanged" in out
    after = call("Ana")
    assert after["text"] == "Hola Ana"
    assert after["pid"] != before["pid"]
    assert after["front_pid"] == before["front_pid"]  # Front's handle followed Greeter's new replicas


def test_scaling_a_leaf_keeps_its_callers_and_their_handles(config):
    deploy(config)
    old_handle = serve.get_app_handle(APP)
    before = call("Ana")
    edit(config, Greeter={"num_replicas": 3})
    out = deploy(config)
    assert "  Greeter: scaled to 3 replica(s); none restarted\n  Front: unchanged" in out
    after = old_handle.remote("Ana").result(timeout_s=60)
    assert after["text"] == "Hola Ana" and after["front_pid"] == before["front_pid"]
    greeter = serve.status().applications[APP].deployments["Greeter"]
    assert greeter.replica_states == {"RUNNING": 3}


def test_an_unchanged_redeploy_from_another_process_restarts_nothing(config):
    import subprocess
    import sys

    from conftest import ROOT, TESTS

    deploy(config)
    before = call("Ana")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": f"{TESTS}:{ROOT}"}
    # A new process pickles the classes afresh: versions must come from the code, not from those bytes.
    out = subprocess.run(
        [sys.executable, "-m", "servegraph", "deploy", str(config)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "  Greeter: unchanged\n  Front: unchanged" in out.stdout
    edit(config, Greeter={"user_config": {"greeting": "Hej"}})
    out = subprocess.run(
        [sys.executable, "-m", "servegraph", "deploy", str(config)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "  Greeter: reconfigured" in out.stdout and "  Front: unchanged" in out.stdout
    after = call("Ana")
    assert after["text"] == "Hej Ana"
    assert (after["pid"], after["front_pid"]) == (before["pid"], before["front_pid"])


def test_a_bad_config_changes_nothing_on_the_cluster(config):
    deploy(config)
    before = call("Eva")
    edit(config, Greeter={"num_replicas": 0})
    result = CliRunner().invoke(main, ["deploy", str(config)])
    assert result.exit_code == 1
    assert "config.yaml: applications[0].deployments[0].num_replicas: must be >= 1, got 0" in result.output
    assert "Traceback" not in result.output
    assert call("Eva")["pid"] == before["pid"]


def test_a_deployment_the_graph_lacks_is_named_with_its_place_in_the_file(config):
    data = yaml.safe_load(config.read_text())
    data["applications"][0]["deployments"].append({"name": "Greeterr", "num_replicas": 1})
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["deploy", str(config)])
    assert result.exit_code == 1
    assert "applications[0].deployments[2].name" in result.output
    assert "has no deployment 'Greeterr'; did you mean 'Greeter'?" in result.output
    assert APP not in serve.status().applications


def test_a_config_built_from_a_sg_file_deploys(tmp_path, http_port, monkeypatch, ray_cluster):
    from conftest import EXAMPLES

    monkeypatch.chdir(EXAMPLES)
    path = tmp_path / "sg.yaml"
    args = ["build", "hello.sg", "--name", "sg-hello", "--route-prefix", "/sg-hello", "--port", str(http_port), "-o", str(path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    try:
        out = deploy(path)
        assert "application 'sg-hello' at /sg-hello:\n  SpanishResponder: created with 1 replica(s)" in out
        import httpx

        reply = httpx.post(f"http://127.0.0.1:{http_port}/sg-hello", json={"language": "spanish", "name": "Dora"}, timeout=60)
        assert (reply.status_code, reply.text) == (200, "Hola Dora")
    finally:
        serve.delete("sg-hello")


def test_the_readme_sequence_run_then_build_and_deploy_updates_the_running_application(serve_app, tmp_path, http_port):
    """README: `servegraph run hello:...`, then `servegraph build` + `servegraph deploy`. The config names the
    application as run did ("default", Ray Serve's default name), so deploy updates it rather than clashing on "/"."""
    import hello
    import httpx

    serve_app.run(hello.language_classifier, port=http_port)  # what `servegraph run` does, name and route defaulted
    path = tmp_path / "hello.yaml"
    result = CliRunner().invoke(main, ["build", "hello:language_classifier", "--port", str(http_port), "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(path.read_text())["applications"][0]["name"] == "default"
    out = deploy(path)
    assert "application 'default' at /" in out and "already used" not in out
    # What the code ran with and what the config spells out are the same options: nothing to do.
    assert out.count(": unchanged") == 3, out
    reply = httpx.post(f"http://127.0.0.1:{http_port}/", json={"language": "spanish", "name": "Dora"}, timeout=30)
    assert reply.text == "Hola Dora"


def test_an_applications_runtime_env_reaches_every_replica_and_its_working_dir_holds_the_graph(tmp_path, http_port, ray_cluster):
    code = tmp_path / "code"
    code.mkdir()
    (code / "rt_env_models.py").write_text(
        "import os\n"
        "import servegraph as serve\n\n"
        "@serve.deployment(ray_actor_options={'runtime_env': {'env_vars': {'WHO': 'deployment'}}})\n"
        "class Inner:\n"
        "    def __call__(self):\n"
        "        return [os.environ.get('GREETING'), os.environ.get('WHO')]\n\n"
        "@serve.deployment\n"
        "class Outer:\n"
        "    def __init__(self, inner):\n"
        "        self.inner = inner\n\n"
        "    async def __call__(self):\n"
        "        return [os.environ.get('GREETING'), os.environ.get('WHO'), await self.inner.remote()]\n\n"
        "app = Outer.bind(Inner.bind())\n"
    )
    config = tmp_path / "runtime_env.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{
            "name": "rt-env", "route_prefix": None, "import_path": "rt_env_models:app",
            "runtime_env": {"working_dir": str(code), "env_vars": {"GREETING": "hej", "WHO": "app"}},
        }],
    }))
    try:
        deploy(config)
        # The app's env_vars reach both deployments; a deployment's own runtime_env wins where both set a key.
        assert serve.get_app_handle("rt-env").remote().result(timeout_s=60) == ["hej", "app", ["hej", "deployment"]]
    finally:
        serve.delete("rt-env")


def test_a_remote_working_dir_is_refused_with_what_to_do(tmp_path):
    config = tmp_path / "remote.yaml"
    config.write_text(yaml.safe_dump({"applications": [{
        "name": "remote", "import_path": "deploy_models:app", "runtime_env": {"working_dir": "s3://bucket/code.zip"},
    }]}))
    result = CliRunner().invoke(main, ["deploy", str(config)])
    assert result.exit_code == 1
    assert "applications[0].runtime_env.working_dir: 's3://bucket/code.zip' is not a local directory" in result.output


def test_status_gives_each_applications_last_deployed_time(config):
    """Ray Serve's ApplicationStatus.last_deployed_time_s: set by each deploy (test_deploy_multi_app_update_timestamp)."""
    import time

    before = time.time()
    deploy(config)
    first = serve.status().applications[APP].last_deployed_time_s
    assert before <= first <= time.time()
    edit(config, Greeter={"user_config": {"greeting": "Bonjour"}})
    deploy(config)
    assert serve.status().applications[APP].last_deployed_time_s > first
