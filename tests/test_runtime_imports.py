"""What the runtime loads: replicas, the proxy and handles import the IR, never the compiler's emitters.

Each check runs in a fresh interpreter, so modules other tests loaded do not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Modules a process that only runs graphs must not load: the graph library and every
#: part of the compiler except the IR and the compiled-path rule.
_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
compiler = [m for m in sys.modules if m.startswith("servegraph.compiler.")]
print(json.dumps({
    "networkx": "networkx" in sys.modules,
    "compiler": sorted(m for m in compiler if m.split(".")[2] not in ("ir", "fast_path")),
}))
"""


@pytest.mark.parametrize(
    "module",
    [
        "servegraph.runtime.actors.replica",
        "servegraph.runtime.actors.proxy",
        "servegraph.runtime.data.handle",
        "servegraph.handle",
        "servegraph.runtime.data.lanes",
        "servegraph",
    ],
)
def test_the_runtime_loads_the_ir_alone(module: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"networkx": False, "compiler": []}, f"importing {module} loaded {loaded}"


def test_the_compiler_names_still_import() -> None:
    import servegraph
    from servegraph import compiler

    for name in compiler.__all__:
        assert getattr(compiler, name) is not None
    assert servegraph.compile is compiler.compile
    assert servegraph.CompiledGraph is compiler.CompiledGraph
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        compiler.nope  # noqa: B018  # the attribute read is the test
