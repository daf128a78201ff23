"""The README speaks to users: set-up commands that work as copied, CI running the same test command, no
words from the project's own workshop."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import EXAMPLES, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
MARKER = " # test-command"


def ci_command() -> str:
    """The line .ci/run runs: the first one in the README ending in the marker, as its grep finds it."""
    found = subprocess.run(["grep", "-m1", "-E", "# test-command$", "README.md"], cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0, "README.md has no line ending in '# test-command' for .ci/run"
    return found.stdout.rstrip("\n")


def test_ci_runs_the_test_command_users_copy_and_users_do_not_copy_the_marker():
    command = ci_command()
    assert command.endswith(MARKER)
    # The marker line sits in an HTML comment right above the block users copy, which holds the same command.
    after = README.split(command + "\n", 1)[1]
    assert after.startswith("-->\n```bash\n")
    shown = after.split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert shown == command[: -len(MARKER)]
    blocks = re.findall(r"```(?:bash|console)\n(.*?)```", README, flags=re.S)
    assert not any("test-command" in block for block in blocks)


def test_the_fresh_machine_commands_use_a_virtual_environment_as_debian_12_requires():
    setup = README.split("### Requirements and supported versions", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert all("python3 -m venv" in block for block in blocks)
    for block in blocks:
        activated = False
        for line in block.splitlines():
            # Debian 12 has no `python` and refuses a global `pip install`: both only in an environment.
            assert activated or not re.search(r"(^|&& )(python|pip) ", line), line
            activated = activated or "/bin/activate" in line
    assert "python examples/run_hello.py" in README and ".venv/bin/python -m pytest" in README


#: Words for the project's own history, not for its users: where a thing came from, who asked for it, which
#: commit, and the machine it was built on.
WORKSHOP = [
    (r"\bseed'?s?\b", "the project's origin"),
    (r"\bissue(?:'s)?\b(?! tracker)", "an issue"),
    (r"\bthis (?:2-core|2-vCPU|project's) machine\b", "our machine"),
    (r"\bgoal\b", "a goal we set"),
    (r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", "a commit hash"),
]


@pytest.mark.parametrize(
    "path",
    [
        ROOT / "README.md",
        EXAMPLES / "hello.py",
        EXAMPLES / "hello.sg",
        EXAMPLES / "run_hello.py",
        EXAMPLES / "hello_client.py",
        EXAMPLES / "canary.py",
        EXAMPLES / "canary.sg",
    ],
)
def test_no_workshop_words(path):
    text = path.read_text(encoding="utf-8")
    for pattern, what in WORKSHOP:
        found = re.search(pattern, text, flags=re.I)
        assert found is None, f"{path.name} speaks of {what}: {text[max(0, found.start() - 60) : found.end() + 60]!r}"


def test_the_readme_says_which_ray_is_tested_and_what_needs_ray_serve():
    floor, ceiling = re.search(r'"ray>=([0-9.]+),<([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).groups()
    assert f"accepts Ray {floor} only (`ray>={floor},<{ceiling}`)" in README
    assert "the tests run on **Ray 2.60.0**" in README
    assert "`serve run" in README and "`ray[serve]` extra" in README and 'pip install -e ".[bench]"' in README


def test_the_readme_says_how_to_stop_and_clean_up():
    section = README.split("## Stopping and cleaning up", 1)[1].split("\n## ", 1)[0]
    for needed in (
        "servegraph shutdown",
        "--keep-cluster",
        "pip uninstall servegraph",
        "~/.servegraph/cluster.json",
        "/tmp/ray/session_",
        "ray_current_cluster",
        "~/.ray/auth_token",
    ):
        assert needed in section, needed


def test_each_bench_table_names_the_command_that_produced_it():
    speed = README.split("## Speed", 1)[1].split("\n## Layout", 1)[0]
    for section in speed.split("\n### ")[1:]:
        if "|---" in section:
            assert re.search(r"`(?:PYTHONPATH=\. )?python bench/\w+\.py[^`]*`", section), section.splitlines()[0]
    assert "[docs/cli.md](docs/cli.md)" in README
