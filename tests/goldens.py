"""Golden files for compiled outputs: ``tests/golden/<case>.{yaml,dot,mmd,json}``, compared byte for byte.

When an output changes on purpose, regenerate the files and review the diff::

    UPDATE_GOLDEN=1 pytest tests/test_config.py tests/test_render.py
    git diff tests/golden/

A new example joins every golden test by adding a line to ``CASES``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"

#: (golden file stem, the graph's MODULE:ATTR in examples/).
CASES = [
    ("hello", "hello:language_classifier"),
    ("pipeline", "pipeline:app"),
    ("async_handle", "async_handle:app"),
    ("async_handle_chain", "async_handle_chain:app"),
    ("handle_method", "handle_method:app"),
    ("sync_handle", "sync_handle:app"),
    ("canary", "canary:app"),
]
CASE_IDS = [stem for stem, _ in CASES]


def check_golden(name: str, text: str) -> None:
    """Assert ``text`` is the golden file ``name`` byte for byte (or rewrite it with UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        return
    assert path.exists(), f"{path} is missing; create it with UPDATE_GOLDEN=1 pytest tests/test_config.py tests/test_render.py"
    assert text.encode("utf-8") == path.read_bytes(), (
        f"{name} differs from the golden file; if the change is intended, run "
        "UPDATE_GOLDEN=1 pytest tests/test_config.py tests/test_render.py and review git diff tests/golden/"
    )


def fresh_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import examples anew from examples/ as the working directory, as `servegraph build` run there does.

    Call sites are recorded relative to the working directory when a module is
    imported, so a fresh import keeps them (and the JSON goldens) independent
    of where pytest runs and of which test imported the example first. The
    modules and sys.path are restored when the test ends.
    """
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(EXAMPLES)
    for _, target in CASES:
        monkeypatch.delitem(sys.modules, target.partition(":")[0], raising=False)
