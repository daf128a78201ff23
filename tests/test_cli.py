"""The ``servegraph`` command as users run it: a subprocess, from the examples directory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLES, free_port
from support import running, user_env

#: The installed console script next to this interpreter, else the module.
_SCRIPT = Path(sys.executable).with_name("servegraph")
SERVEGRAPH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "servegraph"]

#: How long `servegraph run` may take to start its own Ray cluster and deploy hello.
RUN_START_TIMEOUT_S = 180


def servegraph(*args: str, cwd: Path = EXAMPLES, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVEGRAPH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_check_passes_the_hello_example():
    result = servegraph("check", "hello:language_classifier")
    assert result.returncode == 0, result.stderr
    assert "hello:language_classifier: ok, no problems found" in result.stdout


BROKEN_GRAPH = textwrap.dedent(
    """\
    import servegraph as serve
    from servegraph import InputNode


    @serve.deployment
    class Model:
        def predict(self, x):
            return x


    with InputNode() as inp:
        used = Model.bind().predict.bind(inp)
        unused = Model.bind().predict.bind(inp)
    app = used
    """
)

BAD_BIND = textwrap.dedent(
    """\
    import servegraph as serve


    @serve.deployment
    class Model:
        def __init__(self, weight):
            self.weight = weight


    app = Model.bind(1, 2)
    """
)


def test_check_reports_a_graph_error_at_its_line(tmp_path):
    (tmp_path / "broken_graph.py").write_text(BROKEN_GRAPH)
    result = servegraph("check", "broken_graph:app", cwd=tmp_path)
    assert result.returncode == 1
    assert "broken_graph.py:13: error: Model.predict is computed from the InputNode but never reaches the output" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_a_bind_error_raised_on_import(tmp_path):
    (tmp_path / "bad_bind.py").write_text(BAD_BIND)
    result = servegraph("check", "bad_bind:app", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad_bind.py:10: error: Model.bind(): too many positional arguments" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_of_a_missing_module_is_one_line_without_traceback():
    result = servegraph("run", "nope:x")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot import 'nope'")
    assert "Traceback" not in result.stderr


@pytest.mark.ray  # starts a cluster of its own
def test_run_serves_hello_over_http_until_interrupted_and_stops_its_cluster(tmp_path):
    """`servegraph run` starts its own Ray cluster, serves the example's request, and on Ctrl-C stops that cluster."""
    port = free_port()
    env = user_env(tmp_path / "home")  # a user's shell: a cluster of its own, not the session's
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SERVEGRAPH, "run", "hello:language_classifier", "--port", str(port)],
            cwd=EXAMPLES,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    record_file = tmp_path / "home" / ".servegraph" / "cluster.json"
    try:
        deadline = time.monotonic() + RUN_START_TIMEOUT_S
        while "Deployed" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Deployed" in log.read_text(), f"servegraph run did not deploy within {RUN_START_TIMEOUT_S}s:\n{log.read_text()}"
        reply = httpx.post(f"http://127.0.0.1:{port}/", json={"language": "spanish", "name": "Dora"}, timeout=30)
        assert reply.status_code == 200 and reply.text == "Hola Dora"
        host = json.loads(record_file.read_text())["pid"]  # the process its cluster lives and ends with

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()
        output = log.read_text()
        assert "Shutting down" in output and "Stopped the Ray cluster at" in output
        assert not record_file.exists() and not running(host)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


SCORED_SG = textwrap.dedent(
    """\
    from hello import FrenchResponder, LanguageClassifier, SpanishResponder

    graph scored at "/scored" {
        output LanguageClassifier(SpanishResponder(), FrenchResponder())
    }
    """
)


def test_a_sg_graphs_route_reaches_build_and_render(tmp_path):
    # `run` honoured `at "/scored"`; build and render load the graph through the same loader now.
    sg = tmp_path / "scored.sg"
    sg.write_text(SCORED_SG)
    (tmp_path / "hello.py").write_text((EXAMPLES / "hello.py").read_text())  # a .sg imports from its own folder
    built = servegraph("build", "scored.sg", "-o", "scored.yaml", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    config = (tmp_path / "scored.yaml").read_text()
    assert "route_prefix: /scored" in config and "graph: scored.sg:scored" in config
    drawn = servegraph("render", "scored.sg", "-o", "scored.dot", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert "HTTP /scored" in (tmp_path / "scored.dot").read_text()


RELOAD_MODELS = textwrap.dedent(
    """\
    import os

    import servegraph as serve


    @serve.deployment
    class Model:
        def __call__(self) -> str:
            return "VERSION"


    @serve.deployment
    class Front:
        def __init__(self, model):
            self.model = model

        async def __call__(self, request) -> dict:
            return {"text": await self.model.remote(), "front_pid": os.getpid()}


    app = Front.bind(Model.bind())
    """
)


@pytest.mark.ray  # starts a cluster of its own
def test_run_reload_redeploys_what_changed_when_the_source_changes(tmp_path):
    (tmp_path / "reloaded.py").write_text(RELOAD_MODELS.replace("VERSION", "one"))
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SERVEGRAPH, "run", "reloaded:app", "--port", str(port), "--reload"],
            cwd=tmp_path, env=user_env(tmp_path / "home"), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + RUN_START_TIMEOUT_S
        while "Watching" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Watching 1 source file(s)" in log.read_text(), log.read_text()
        first = httpx.get(f"http://127.0.0.1:{port}/", timeout=30).json()
        assert first["text"] == "one"
        (tmp_path / "reloaded.py").write_text(RELOAD_MODELS.replace("VERSION", "two"))
        deadline = time.monotonic() + RUN_START_TIMEOUT_S
        def redeployed() -> bool:
            text = log.read_text()
            return "redeploying" in text and "Deployed" in text.split("redeploying", 1)[1]

        while not redeployed() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert redeployed(), log.read_text()
        second = httpx.get(f"http://127.0.0.1:{port}/", timeout=30).json()
        assert second["text"] == "two", log.read_text()
        assert second["front_pid"] == first["front_pid"]  # only the deployment whose code changed restarted
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
