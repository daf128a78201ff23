"""Replica logs on the session's cluster: one HTTP request found by its id in every deployment's log, and each
logging_config field (encoding, log_level, logs_dir, enable_access_log) honoured from code, serve.run and configs."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import httpx
import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT

import servegraph as serve
from servegraph.cli import main
from servegraph.runtime import ray_compat

GRAPH = "logging_models:language_classifier"
DEPLOYMENTS = ("LanguageClassifier", "SpanishResponder", "FrenchResponder")


def hello_graph():
    import logging_models

    return logging_models.language_classifier


def post(http_port: int, prefix: str, request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = httpx.post(f"http://127.0.0.1:{http_port}{prefix}", json={"name": "Dora"}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.text == "Hola Dora / Bonjour Dora"
    return response


def request_logs(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["logs", *args])
    return result.exit_code, result.output


def log_files(directory: str, app: str, deployment: str) -> list[str]:
    return glob.glob(os.path.join(directory, f"replica_{app}_{deployment}_*.log"))


def read_lines(directory: str, app: str, deployment: str) -> list[str]:
    [path] = log_files(directory, app, deployment)
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def read_lines_ending(directory: str, app: str, deployment: str, last: str, timeout_s: float = 5.0) -> list[str]:
    """A replica's log lines once its last line has ``last`` in it: access lines reach the file a moment after
    the request's answer (the replica flushes them shortly after, not once per line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = read_lines(directory, app, deployment)
        if (lines and last in lines[-1]) or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def replica_ids(app: str) -> dict[str, set[str]]:
    import ray

    raw = ray.get(serve.runtime.client.api._controller().status.remote())
    return {d: {r.replica_id for r in info.replicas} for d, info in raw.applications[app].deployments.items()}


@pytest.fixture(scope="module")
def hello(deploy, http_port) -> str:
    """The logging hello graph with default logging, at /hello-logs."""
    deploy(hello_graph(), name="hello-logs", route_prefix="/hello-logs")
    return "/hello-logs"


def test_a_request_is_found_by_its_client_id_in_all_three_deployments(hello, http_port):
    request_id = f"client-{uuid.uuid4().hex[:8]}"
    response = post(http_port, hello, request_id)
    assert response.headers["x-request-id"] == request_id
    code, out = request_logs("--request-id", request_id)
    assert code == 0, out
    ids = replica_ids("hello-logs")
    lines = out.splitlines()
    for deployment in DEPLOYMENTS:
        [replica] = ids[deployment]
        assert any(line.startswith(f"[{deployment}#{replica}] ") and f" {request_id} -- " in line for line in lines), out
    assert any("classifier got Dora" in line for line in lines)
    assert any("spanish greets Dora" in line for line in lines) and any("french greets Dora" in line for line in lines)
    # The access lines, as Ray Serve writes them: the HTTP one at the ingress, a CALL at each handle call.
    assert any(f" {request_id} -- POST /hello-logs 200 " in line for line in lines), out
    assert any(f" {request_id} -- CALL say_hello OK " in line for line in lines), out
    # The proxy's access line too, as Ray Serve's proxy_<node ip>.log has it.
    assert any(line.startswith("[proxy#") and f" {request_id} -- POST /hello-logs 200 " in line for line in lines), out
    # In time order: the classifier's line before the responders', their access lines before the ingress's.
    text = "\n".join(lines)
    assert text.index("classifier got Dora") < text.index("spanish greets Dora") < text.index("french greets Dora")
    assert text.index("french greets Dora") < text.index("POST /hello-logs 200")


def test_a_generated_request_id_from_the_response_finds_the_request(hello, http_port):
    request_id = post(http_port, hello).headers["x-request-id"]
    code, out = request_logs("--request-id", request_id)
    assert code == 0, out
    assert "classifier got Dora" in out and f"{request_id} -- POST /hello-logs 200" in out
    assert all(request_id in line for line in out.splitlines() if line.startswith("[LanguageClassifier#"))
    code, narrowed = request_logs("hello-logs", "LanguageClassifier", "--request-id", request_id)
    assert code == 0 and "classifier got Dora" in narrowed and "greets" not in narrowed


def test_a_failed_request_shows_its_error_with_the_traceback(hello, http_port):
    request_id = f"fail-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"http://127.0.0.1:{http_port}{hello}", json={"nom": "Dora"}, headers={"X-Request-ID": request_id}, timeout=60)
    assert response.status_code == 500 and request_id in response.text
    code, out = request_logs("--request-id", request_id)
    assert code == 0, out
    assert f"{request_id} -- Request failed." in out and f"{request_id} -- POST /hello-logs 500 " in out
    # The traceback's lines follow the record they belong to, each prefixed by its replica too.
    assert any(line.startswith("[LanguageClassifier#") and line.endswith("KeyError: 'name'") for line in out.splitlines()), out


def test_a_request_id_that_matches_nothing_says_so_and_exits_1(hello):
    code, out = request_logs("--request-id", "no-such-request")
    assert code == 1
    assert out.strip() == "no replica log has a line of request 'no-such-request'"


def test_default_logs_go_to_the_sessions_serve_directory_in_text(hello, http_port):
    request_id = f"text-{uuid.uuid4().hex[:8]}"
    post(http_port, hello, request_id)
    serve_dir = os.path.join(ray_compat.logs_dir(), "serve")
    ids = replica_ids("hello-logs")
    for deployment in DEPLOYMENTS:
        [replica] = ids[deployment]
        assert log_files(serve_dir, "hello-logs", deployment) == [
            os.path.join(serve_dir, f"replica_hello-logs_{deployment}_{replica}.log")
        ]
    [replica] = ids["LanguageClassifier"]
    [line] = [ln for ln in read_lines(serve_dir, "hello-logs", "LanguageClassifier") if "classifier got" in ln and request_id in ln]
    level, _date, _time, component, replica_field, request_field, dashes, *message = line.split(" ")
    assert (level, component, replica_field, request_field, dashes) == ("INFO", "hello-logs_LanguageClassifier", replica, request_id, "--")
    assert " ".join(message) == "classifier got Dora"
    assert any(ln.endswith(" -- spanish greets Dora") for ln in read_lines(serve_dir, "hello-logs", "SpanishResponder"))


def test_json_encoding_log_level_logs_dir_and_access_log_from_code_and_serve_run(serve_app, http_port, tmp_path):
    import logging_models

    quiet = str(tmp_path / "quiet")
    graph = logging_models.LanguageClassifier.bind(
        logging_models.SpanishResponder.options(
            logging_config={"log_level": "WARNING", "logs_dir": quiet, "enable_access_log": False}
        ).bind(),
        logging_models.FrenchResponder.bind(),
    )
    app_dir = str(tmp_path / "app")
    serve.run(graph, name="json-logs", route_prefix="/json-logs", port=http_port,
              logging_config={"encoding": "JSON", "logs_dir": app_dir})
    request_id = f"json-{uuid.uuid4().hex[:8]}"
    post(http_port, "/json-logs", request_id)

    # The application's logging_config: JSON lines in its logs_dir, with Ray Serve's fields.
    ids = replica_ids("json-logs")
    ingress = [json.loads(line) for line in read_lines(app_dir, "json-logs", "LanguageClassifier")]
    [got] = [r for r in ingress if r["message"] == "classifier got Dora"]
    assert {k: got[k] for k in ("request_id", "route", "application", "deployment", "replica", "levelname")} == {
        "request_id": request_id, "route": "/json-logs", "application": "json-logs", "deployment": "LanguageClassifier",
        "replica": next(iter(ids["LanguageClassifier"])), "levelname": "INFO",
    }
    assert {"asctime", "timestamp_ns", "filename", "lineno", "process"} <= set(got)
    [access] = [r for r in ingress if r["message"].startswith("POST ") and r["request_id"] == request_id]
    assert access["message"].startswith("POST /json-logs 200 ") and access["route"] == "/json-logs"
    records = [json.loads(line) for line in read_lines(app_dir, "json-logs", "FrenchResponder")]
    [greeting] = [r for r in records if r["message"] == "french greets Dora"]
    assert (greeting["request_id"], greeting["route"], greeting["deployment"], greeting["replica"], greeting["levelname"]) == (
        request_id, "/json-logs", "FrenchResponder", next(iter(ids["FrenchResponder"])), "WARNING"
    )
    assert any(r["message"].startswith("CALL say_hello OK ") and r["request_id"] == request_id for r in records)

    # The deployment's own wins whole: TEXT, WARNING (its INFO line and access line are not written), its logs_dir.
    assert not log_files(app_dir, "json-logs", "SpanishResponder")
    assert read_lines(quiet, "json-logs", "SpanishResponder") == []

    code, out = request_logs("--request-id", request_id)  # logs_dir directories are searched too
    assert code == 0 and "classifier got Dora" in out and "french greets Dora" in out, out


@pytest.fixture
def default_proxy_logs():
    """Puts the session's proxies back on the default logging_config after a test that changed it."""
    yield
    serve.start(logging_config={})


def test_a_config_files_logging_config_is_applied_and_a_change_restarts_nothing(
    serve_app, http_port, tmp_path, monkeypatch, default_proxy_logs
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    built = CliRunner().invoke(
        main, ["build", GRAPH, "--name", "config-logs", "--route-prefix", "/config-logs", "--port", str(http_port), "-o", str(path)]
    )
    assert built.exit_code == 0, built.output
    data = yaml.safe_load(path.read_text())
    logs_dir = str(tmp_path / "logs")
    data["logging_config"] = {"encoding": "JSON", "logs_dir": logs_dir}  # top level: for applications without one
    app = data["applications"][0]
    for dep in app["deployments"]:
        if dep["name"] == "FrenchResponder":
            dep["logging_config"] = {"logs_dir": logs_dir, "enable_access_log": False}
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["deploy", str(path)])
    assert result.exit_code == 0, result.output
    first = post(http_port, "/config-logs").headers["x-request-id"]
    ingress = [json.loads(line) for line in read_lines(logs_dir, "config-logs", "LanguageClassifier")]
    assert any(r["message"] == "classifier got Dora" and r["request_id"] == first for r in ingress)
    spanish = [json.loads(line) for line in read_lines(logs_dir, "config-logs", "SpanishResponder")]
    assert any(r["message"] == "spanish greets Dora" and r["request_id"] == first for r in spanish)
    assert any(r["message"].startswith("CALL say_hello OK ") and r["request_id"] == first for r in spanish)
    french = read_lines(logs_dir, "config-logs", "FrenchResponder")  # its own: TEXT, no access lines
    assert any(line.endswith(f"{first} -- french greets Dora") for line in french)
    assert not any(" -- CALL " in line for line in french)

    # The application's own logging_config wins over the top level; a change reconfigures, nothing restarts.
    before = replica_ids("config-logs")
    app["logging_config"] = {"encoding": "TEXT", "logs_dir": logs_dir}
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["deploy", str(path)])
    assert result.exit_code == 0, result.output
    assert "SpanishResponder: reconfigured: the running replicas took the new logging_config; none restarted" in result.output
    assert replica_ids("config-logs") == before
    second = post(http_port, "/config-logs").headers["x-request-id"]
    last = read_lines_ending(logs_dir, "config-logs", "LanguageClassifier", f"{second} -- POST /config-logs 200 ")
    assert last[-2].endswith(f"{second} -- classifier got Dora")
    assert any(line.endswith(f"{second} -- spanish greets Dora") for line in read_lines(logs_dir, "config-logs", "SpanishResponder"))


MULTINODE_SCRIPT = textwrap.dedent(
    """
    import json, os
    import httpx, ray
    from ports import free_port
    from click.testing import CliRunner
    from ray.cluster_utils import Cluster
    import servegraph as serve
    from servegraph.cli import main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2, resources={"worker": 10})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="servegraph", log_to_driver=False, logging_level="ERROR")
    out = {"worker": worker.node_id}
    try:
        import logging_models as m

        on_worker = {"num_cpus": 0.1, "resources": {"worker": 0.01}}
        graph = m.LanguageClassifier.options(ray_actor_options=on_worker).bind(
            m.SpanishResponder.options(ray_actor_options=on_worker).bind(), m.FrenchResponder.bind()
        )
        port = free_port()
        serve.run(graph, name="spread", route_prefix="/spread", port=port)
        replicas = ray.get(serve.runtime.client.api._controller().status.remote()).applications["spread"].deployments
        out["nodes"] = {d: [r.node_id for r in info.replicas] for d, info in replicas.items()}
        reply = httpx.post(f"http://127.0.0.1:{port}/spread", json={"name": "Dora"}, headers={"X-Request-ID": "spread-1"}, timeout=60)
        out["status"] = reply.status_code
        result = CliRunner().invoke(main, ["logs", "--request-id", "spread-1"])
        out["code"], out["logs"] = result.exit_code, result.output
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out))
    """
)


@pytest.mark.ray  # a two-node cluster of its own, in a child process
def test_a_request_is_found_on_every_node_each_line_once():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", MULTINODE_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["nodes"]["LanguageClassifier"] == out["nodes"]["SpanishResponder"] == [out["worker"]]
    assert out["status"] == 200
    assert out["code"] == 0, out["logs"]
    lines = out["logs"].splitlines()
    assert any(line.startswith("[LanguageClassifier#") and "spread-1 -- classifier got Dora" in line for line in lines), out["logs"]
    assert any(line.startswith("[LanguageClassifier#") and "spread-1 -- POST /spread 200 " in line for line in lines)
    assert any(line.startswith("[SpanishResponder#") and "spread-1 -- spanish greets Dora" in line for line in lines)
    assert any(line.startswith("[FrenchResponder#") and "spread-1 -- french greets Dora" in line for line in lines)
    assert len(lines) == len(set(lines))  # nodes of one machine share a log directory: each line still once


def test_serve_start_logging_config_sets_the_proxies_logs(hello, http_port, tmp_path, default_proxy_logs):
    proxy_dir = str(tmp_path / "proxy")
    serve.start(logging_config={"encoding": "JSON", "logs_dir": proxy_dir})
    request_id = f"proxy-{uuid.uuid4().hex[:8]}"
    post(http_port, hello, request_id)

    def written() -> list[dict]:  # the proxy writes its access line once the answer is sent: just after
        records = []
        for path in glob.glob(os.path.join(proxy_dir, "proxy_*.log")):
            with open(path, encoding="utf-8") as f:
                records += [json.loads(line) for line in f.read().splitlines()]
        return [r for r in records if r.get("request_id") == request_id]

    deadline = time.monotonic() + 30
    while not written() and time.monotonic() < deadline:
        time.sleep(0.1)
    [access] = written()
    assert access["message"].startswith("POST /hello-logs 200 ") and access["component_name"] == "proxy"
    code, out = request_logs("--request-id", request_id)  # the proxies' logs_dir is read too
    assert code == 0 and any(line.startswith("[proxy#") and '"POST /hello-logs 200' in line for line in out.splitlines()), out


@serve.deployment(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}}})
class Printer:
    def __call__(self) -> str:
        print("printed by the replica")
        return "printed"


def test_with_ray_serves_log_to_stderr_off_prints_carry_the_request(serve_app, http_port):
    serve.run(Printer.bind(), name="printer", route_prefix="/printer", port=http_port)
    request_id = f"print-{uuid.uuid4().hex[:8]}"
    response = httpx.get(f"http://127.0.0.1:{http_port}/printer", headers={"X-Request-ID": request_id}, timeout=60)
    assert response.text == "printed"
    code, out = request_logs("printer", "--request-id", request_id)
    assert code == 0 and f"{request_id} -- printed by the replica" in out, out


def test_a_logs_dir_replicas_cannot_write_fails_the_deploy_with_the_reason(serve_app, tmp_path):
    import logging_models

    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    app = logging_models.SpanishResponder.options(logging_config={"logs_dir": str(blocked / "logs")}).bind()
    with pytest.raises(serve.DeploymentError, match=r"logging_config: cannot write the replica's log: .*a-file/logs"):
        serve.run(app, name="blocked-logs", route_prefix=None, http=False)
