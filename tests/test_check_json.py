"""`servegraph check --format json`: one object per diagnostic, for editors and CI tools."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from click.testing import CliRunner

from servegraph.cli import main

#: The rendered message, and the fields it is rendered from (got, expected, hint: null when the problem has none).
KEYS = {"severity", "code", "message", "file", "line", "col", "node", "got", "expected", "hint"}

BROKEN = """\
    import threading

    import servegraph as serve
    from servegraph import InputNode


    @serve.deployment
    class Model:
        def __init__(self, x, lock=None):
            self.x = x

        def __call__(self, y):
            return y


    with InputNode() as inp:
        app = Model.bind(inp, lock=threading.Lock())

    good = Model.bind(1)
    """

BAD_BIND = """\
    import servegraph as serve


    @serve.deployment
    class Model:
        def __init__(self, x):
            self.x = x


    app = Model.bind(1, 2)
    """


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Write a module into a temporary directory that `check` runs in; forget it afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


def check_json(target: str) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(main, ["check", target, "--format", "json"])
    return result.exit_code, json.loads(result.stdout)


def test_every_diagnostic_has_severity_code_message_file_line_node(module):
    name = module("check_json_broken", BROKEN)
    code, diagnostics = check_json(f"{name}:app")
    assert code == 1
    assert [set(d) for d in diagnostics] == [KEYS, KEYS]
    constructor, serialization = diagnostics
    assert constructor == {
        "severity": "error",
        "code": "bind-arguments",
        "message": constructor["message"],
        "file": f"{name}.py",
        "line": 17,
        "col": None,
        "node": "Model",
        "got": None,
        "expected": None,
        "hint": constructor["hint"],
    }
    assert constructor["hint"].startswith("A constructor takes plain values and other deployments")
    assert constructor["message"].startswith("Model.bind() got InputNode (bound at check_json_broken.py:16)")
    assert serialization["code"] == "serialization"
    assert (serialization["file"], serialization["line"], serialization["node"]) == (f"{name}.py", 17, "Model")
    assert "cannot be serialized" in serialization["message"]


def test_a_clean_graph_prints_an_empty_list(module):
    name = module("check_json_clean", BROKEN)
    assert check_json(f"{name}:good") == (0, [])


def test_a_bind_error_at_import_keeps_its_location(module):
    name = module("check_json_bind", BAD_BIND)
    code, (diagnostic,) = check_json(f"{name}:app")
    assert code == 1
    assert diagnostic["severity"] == "error"
    assert diagnostic["code"] == "bind-arguments"
    assert (diagnostic["file"], diagnostic["line"]) == (f"{name}.py", 10)
    assert diagnostic["message"].startswith("Model.bind(): ")
    # The fields the message is made of, for editors: the signature expected and how to fix it.
    assert diagnostic["expected"].startswith("Model.__init__(self")
    assert diagnostic["hint"] == "fix the arguments passed to .bind()."


def test_an_import_error_is_a_diagnostic_without_location(module):
    code, (diagnostic,) = check_json("check_json_missing:app")
    assert code == 1
    assert diagnostic["code"] == "import-path"
    assert diagnostic["file"] is None and diagnostic["line"] is None and diagnostic["node"] is None
    assert "cannot import 'check_json_missing'" in diagnostic["message"]
