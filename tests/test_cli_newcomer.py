"""The small things a newcomer tripped on (issue 10's list), each checked where they met it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT

from servegraph.cli import main


@pytest.fixture
def in_examples(monkeypatch):
    monkeypatch.chdir(EXAMPLES)


def test_the_readme_sample_is_examples_hello_py():
    hello = (EXAMPLES / "hello.py").read_text()
    sample = hello.split("# __hello_start__\n", 1)[1].split("# __hello_end__", 1)[0]
    assert f"```python\n{sample}```" in (ROOT / "README.md").read_text()


def test_the_readme_runs_the_client_from_examples():
    readme = (ROOT / "README.md").read_text()
    assert "python examples/hello_client.py" not in readme.split("## What you can do")[0]
    assert "sys.argv[1]" in (EXAMPLES / "hello_client.py").read_text()  # the URL (and port) is an argument


def test_export_names_the_graph_after_its_attribute_and_keeps_its_route(in_examples):
    result = CliRunner().invoke(main, ["export", "hello:language_classifier"])
    assert result.exit_code == 0, result.output
    assert 'graph language_classifier at "/" {' in result.output


def test_render_picks_a_graph_with_graph_as_run_and_check_do(in_examples, tmp_path):
    out = tmp_path / "g.dot"
    result = CliRunner().invoke(main, ["render", "hello.sg", "--graph", "language_classifier", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "\ndigraph " in Path(out).read_text()


def test_build_help_mentions_sg_files():
    result = CliRunner().invoke(main, ["build", "--help"])
    assert "FILE.sg" in result.output and ".sg files" in result.output


def test_every_cluster_command_takes_address_and_connect_timeout():
    for command in ("run", "deploy", "status", "shutdown", "delete"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--address" in result.output and "--connect-timeout" in result.output, command


@pytest.mark.ray
def test_status_shows_each_replicas_node_pid_and_state(ray_cluster, monkeypatch):
    from sync_handle import app

    import servegraph as serve
    from servegraph.cli import ops

    serve.run(app, name="replicas-shown", route_prefix=None)
    try:
        names = list(serve.status().applications["replicas-shown"].deployments)
        fake = {("replicas-shown", names[0]): [{"replica_id": "r1", "state": "RUNNING", "node_id": "abcdef0123456789", "pid": 4242, "actor_name": "x"}]}
        monkeypatch.setattr(ops, "_replica_lists", lambda: fake)  # what the controller will report per deployment
        result = CliRunner().invoke(main, ["status"])
        assert result.exit_code == 0, result.output
        assert "r1: RUNNING on node abcdef012345, pid 4242" in result.output
    finally:
        serve.delete("replicas-shown")
