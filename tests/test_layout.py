"""The runtime's folders are its planes, and imports go one way between them.

Read from the source (every import, at the top of a module or inside a function), so a function-local
import cannot hide a circle: the whole graph of runtime modules must have none, and no module may
import from a plane above its own. The order, lowest first:

    ray_compat   every private or experimental Ray API
    common/      engine-neutral pieces: plan, codecs, records that cross actor boundaries, telemetry
    data/        the data plane in every caller: membership client, router, handles, lanes
    actors/      what the controller starts: replica, proxy
    control/     only inside the controller: the loop and its managers
    client/      the API a driver calls, and clusters

Nothing in the DSL or the compiler imports the runtime (the compiler imports no Ray).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "servegraph"
RUNTIME = PACKAGE / "runtime"
PLANES = ("ray_compat", "common", "data", "actors", "control", "client")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module or name, line, at the top) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # "from . import x" names modules; "from .m import f" names m
            names = [f"{module}.{alias.name}" for alias in node.names] if not node.module else [module]
            found += [(name, node.lineno, id(node) in top) for name in names]
    return found


def _runtime_modules() -> dict[str, Path]:
    return {_module(p): p for p in RUNTIME.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The runtime module ``name`` is, or is inside ("...replica.STREAM" -> "...replica"); None if outside."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _plane(module: str) -> int:
    part = module.split(".")[2] if module.count(".") >= 2 else "ray_compat"
    return PLANES.index(part)


def test_every_runtime_module_is_in_a_plane_folder():
    loose = [m for m in _runtime_modules() if m.count(".") == 2 and m.split(".")[2] not in PLANES]
    assert not loose, f"put these in one of {PLANES[1:]}: {loose}"


def test_no_runtime_module_imports_from_a_plane_above_its_own():
    modules = _runtime_modules()
    upward = []
    for module, path in modules.items():
        if module == "servegraph.runtime":
            continue
        for name, line, _ in _imports(path):
            target = _resolve(name, modules)
            if target and target != "servegraph.runtime" and _plane(target) > _plane(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not upward, "a lower plane reaches up (hand the function in instead):\n" + "\n".join(upward)


def test_runtime_imports_have_no_circle_even_through_function_local_imports():
    modules = _runtime_modules()
    graph = nx.DiGraph()
    for module, path in modules.items():
        for name, _, _ in _imports(path):
            target = _resolve(name, modules)
            if target and target != module and target != "servegraph.runtime" and not module.endswith(".runtime"):
                graph.add_edge(module, target)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles)


@pytest.mark.parametrize("layer", ["dsl", "compiler", "grammar"])
def test_the_front_ends_and_the_compiler_never_import_the_runtime(layer):
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name, line, _ in _imports(path)
        if name.startswith("servegraph.runtime")
    ]
    assert not offenders, "\n".join(offenders)


def test_the_compiler_imports_no_ray():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in (PACKAGE / "compiler").rglob("*.py")
        for name, line, _ in _imports(path)
        if name == "ray" or name.startswith("ray.")
    ]
    assert not offenders, "\n".join(offenders)


def test_the_checks_catch_an_upward_import(tmp_path):
    """The readers above see what they must: a data-plane module importing the control plane inside a function."""
    source = tmp_path / "servegraph" / "runtime" / "data" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..control.controller import Controller\n")
    names = [name for name, _, top in _imports_at(source, tmp_path / "servegraph")]
    assert names == ["servegraph.runtime.control.controller"]


def _imports_at(path: Path, package: Path) -> list[tuple[str, int, bool]]:
    global PACKAGE
    saved, PACKAGE = PACKAGE, package
    try:
        return _imports(path)
    finally:
        PACKAGE = saved
