"""Ray's private and experimental parts live in ``runtime/ray_compat.py`` alone, and the compiled path
says why it is off when they are missing. No Ray cluster here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import servegraph as serve
from servegraph import InputNode
from servegraph.runtime import ray_compat

PACKAGE = Path(serve.__file__).resolve().parent
COMPAT = PACKAGE / "runtime" / "ray_compat.py"

#: Names of Ray's private or experimental parts that servegraph reaches through objects (so no import
#: shows them): each may appear only in ray_compat.
PRIVATE_NAMES = re.compile(
    r"\b(ray\._\w+|ray\.experimental\b|experimental_compile|compiled_dag_node|compiled_dag_ref|CompiledDAGRef"
    r"|_compiled_dags|_max_inflight_executions|_ray_get_called|_global_node|global_worker|gcs_client"
    r"|do_exec_tasks|do_cancel_executable_tasks|state\.actors|_internal_kv\w*)\b"
    # Private attributes of Ray's objects (servegraph's own classes may define a method of the same name):
    r"|\.(_actor_id|_to_object_ref)\b"
)


def _code_without_docs(source: str) -> str:
    """The source with docstrings and comments blanked, so prose may name what code may not use."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for i in range(body[0].lineno - 1, body[0].end_lineno or body[0].lineno):
                    lines[i] = ""
    return "\n".join(line.split("#", 1)[0] for line in lines)


def _private_ray_imports(tree: ast.AST) -> list[str]:
    """Imports of a Ray module or name that is private (a part starting with ``_``) or experimental."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            names = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] != "ray":
                continue
            if any(p.startswith("_") or p in ("experimental", "compiled_dag_node") for p in parts + names):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_ray_use_outside_ray_compat() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == COMPAT:
            continue
        source = path.read_text()
        rel = path.relative_to(PACKAGE.parent)
        offenders += [f"{rel} {hit}" for hit in _private_ray_imports(ast.parse(source))]
        for lineno, line in enumerate(_code_without_docs(source).splitlines(), 1):
            for match in PRIVATE_NAMES.finditer(line):
                offenders.append(f"{rel} line {lineno}: {match.group(0)}")
    assert not offenders, "move these into servegraph/runtime/ray_compat.py:\n" + "\n".join(offenders)


def test_the_check_sees_a_private_use() -> None:
    """The check above would catch what it looks for (so its silence means something)."""
    source = "import ray._private.state\nfrom ray.dag import compiled_dag_node\nx = actor._actor_id.hex()\n"
    assert len(_private_ray_imports(ast.parse(source))) == 2
    assert [m.group(0) for m in PRIVATE_NAMES.finditer(_code_without_docs(source))] == [
        "ray._private",
        "compiled_dag_node",
        "._actor_id",
    ]
    assert not PRIVATE_NAMES.search(_code_without_docs('"""ray._private in prose."""\nx = 1  # _actor_id\n'))


def test_every_compat_function_says_its_ray_versions() -> None:
    tree = ast.parse(COMPAT.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            section = COMPAT.read_text().splitlines()[: node.lineno]
            headings = [line for line in section if line.startswith("# --")]
            assert doc, f"ray_compat.{node.name} has no docstring"
            assert re.search(r"Ray \d", doc + (headings[-1] if headings else "")), (
                f"ray_compat.{node.name}: say which Ray versions it was checked on"
            )


@pytest.fixture
def fresh_probe():
    ray_compat.compiled_graphs_problem.cache_clear()
    yield
    ray_compat.compiled_graphs_problem.cache_clear()


def test_this_ray_runs_compiled_lanes(fresh_probe) -> None:
    assert ray_compat.compiled_graphs_problem() is None


def test_another_ray_version_turns_the_compiled_path_off(fresh_probe, monkeypatch) -> None:
    monkeypatch.setattr(ray_compat, "_ray_version", lambda: "2.61.0")
    assert ray_compat.compiled_graphs_problem() == (
        "the compiled path is checked on Ray 2.60 only; this is Ray 2.61.0"
    )


def test_a_missing_private_piece_turns_the_compiled_path_off(fresh_probe, monkeypatch) -> None:
    from ray.dag import compiled_dag_node as cgraph

    monkeypatch.delattr(cgraph, "do_cancel_executable_tasks")
    monkeypatch.delattr(cgraph, "_compiled_dags")
    problem = ray_compat.compiled_graphs_problem()
    assert problem is not None
    assert problem.endswith("lacks what compiled lanes use: do_cancel_executable_tasks, _compiled_dags")

    calls = []
    ray_compat.wrap_compiled_loop(lambda original: calls.append(original) or original)
    assert calls == []  # nothing patched in a Ray that lacks the rest


@serve.deployment
class _Double:
    def __call__(self, x: int) -> int:
        return 2 * x


def test_the_compiled_path_reports_why_it_fell_back(monkeypatch) -> None:
    """With the probe saying the private API is missing, the controller gives the graph no lanes and says why."""
    from servegraph.runtime.control.applications import lane_reason

    with InputNode() as inp:
        graph = _Double.bind().__call__.bind(inp)
    app = serve.compile(graph).ir
    assert lane_reason(app, compiled=True) == ""  # eligible, on this Ray

    reason = "this Ray (2.99.0) lacks what compiled lanes use: do_exec_tasks"
    monkeypatch.setattr(ray_compat, "compiled_graphs_problem", lambda: reason)
    assert lane_reason(app, compiled=True) == reason
    assert lane_reason(app, compiled=False) == "turned off (compiled=False)"
