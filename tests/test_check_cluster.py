"""`servegraph check` without --resources: the connected cluster's resources, or a note that the check was skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import EXAMPLES, ROOT, TESTS, free_port

from servegraph.runtime.client.cluster_record import write_record

GREEDY = textwrap.dedent(
    """\
    import servegraph as serve


    @serve.deployment(num_replicas=40, ray_actor_options={"num_cpus": 1})
    class Greedy:
        def __call__(self):
            return 1


    app = Greedy.bind()
    """
)

MISTYPED = textwrap.dedent(
    """\
    import servegraph as serve
    from servegraph import InputNode


    @serve.deployment
    class Model:
        def text(self, x) -> int | None:
            return int(x) if x else None

        def double(self, v: int) -> int:
            return 2 * v


    with InputNode() as inp:
        model = Model.bind()
        app = model.double.bind(model.text.bind(inp))
    """
)


@pytest.fixture(autouse=True)
def cluster_file(tmp_path, monkeypatch):
    """Each test gets its own cluster record, never the user's."""
    path = tmp_path / "cluster.json"
    monkeypatch.setenv("SERVEGRAPH_CLUSTER_FILE", str(path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return path


def check(*args: str, cwd: os.PathLike[str] | str = EXAMPLES) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLES), str(TESTS), str(cwd)])}
    return subprocess.run(
        [sys.executable, "-m", "servegraph", "check", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def test_with_no_cluster_named_the_resource_check_is_skipped_and_said_so():
    result = check("hello:language_classifier")
    assert result.returncode == 0, result.stderr
    assert "resource check skipped: no Ray cluster is named" in result.stderr
    assert "pass --resources CPU=N" in result.stderr


def test_a_cluster_that_does_not_answer_is_skipped_without_starting_one():
    port = free_port()
    result = check("hello:language_classifier", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert f"resource check skipped: the Ray cluster at 127.0.0.1:{port} (--address) does not answer" in result.stderr


def test_strict_makes_warnings_errors(tmp_path):
    # int | None into int: it fits unless None comes, a doubtful case that only --strict refuses.
    (tmp_path / "mistyped.py").write_text(MISTYPED)
    relaxed = check("mistyped:app", cwd=tmp_path)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "mistyped.py:16: warning: Model.double.bind(): v is annotated int (mistyped.py:10)" in relaxed.stdout
    strict = check("mistyped:app", "--strict", cwd=tmp_path)
    assert strict.returncode == 1
    assert "mistyped.py:16: error: Model.double.bind(): v is annotated int" in strict.stderr


def test_an_annotation_that_never_fits_is_an_error_without_strict(tmp_path):
    (tmp_path / "mistyped.py").write_text(MISTYPED.replace("-> int | None:", "-> str:"))
    result = check("mistyped:app", cwd=tmp_path)
    assert result.returncode == 1
    assert "mistyped.py:16: error: Model.double.bind(): v is annotated int (mistyped.py:10)" in result.stderr
    assert "which returns str (mistyped.py:7); str never fits int" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.ray
def test_the_recorded_cluster_is_measured_and_named(ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    write_record(address, "servegraph run", pid=os.getpid())
    (tmp_path / "greedy.py").write_text(GREEDY)
    result = check("greedy:app", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        f"resources: checking against the Ray cluster at {address} (started by servegraph run, pid {os.getpid()}): "
        in result.stderr
    )
    assert "CPU=16" in result.stderr
    assert "greedy.py:10: error: the graph asks for more CPU than the cluster has" in result.stderr
