"""A deployment's code version comes from the code that runs (see servegraph/compiler/version.py)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import servegraph as serve
from servegraph.compiler.version import code_version


def version(target) -> str:
    return code_version(target, None)


def test_a_class_defined_twice_under_one_name_gets_the_second_ones_version():
    class Model:
        def __call__(self, x):
            return x

    first = version(Model)

    class Model:  # noqa: F811  the point of the test
        def __call__(self, x, y):
            return x + y

    assert version(Model) != first


def test_same_code_same_version_and_line_moves_change_nothing():
    source = "class Model:\n    def __call__(self, x):\n        return [x, 1]\n"
    a, b = {}, {}
    exec(compile(source, "<cell-1>", "exec"), a)
    exec(compile("\n\n# a comment\n" + source, "<cell-2>", "exec"), b)  # a notebook cell run again, moved
    assert version(a["Model"]) == version(b["Model"])
    c = {}
    exec(compile(source.replace("[x, 1]", "[x, 2]"), "<cell-3>", "exec"), c)
    assert version(c["Model"]) != version(a["Model"])


def test_a_base_class_or_a_nested_function_changes_the_version():
    source = (
        "class Base:\n"
        "    def helper(self):\n"
        "        return [lambda: 'A' for _ in range(1)]\n"
        "class Model(Base):\n"
        "    def __call__(self):\n"
        "        return 1\n"
    )

    def model(text: str) -> type:
        namespace: dict = {"__name__": "cells"}
        exec(compile(text, "<cell>", "exec"), namespace)
        return namespace["Model"]

    assert version(model(source)) == version(model(source))
    assert version(model(source.replace("'A'", "'B'"))) != version(model(source))  # in a lambda in a base's method


def test_an_edited_module_keeps_the_version_of_the_code_that_was_imported(tmp_path, monkeypatch):
    module = tmp_path / "edited_model.py"
    module.write_text("class Model:\n    def __call__(self):\n        return 'old'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = importlib.import_module("edited_model")
    try:
        before = version(loaded.Model)
        module.write_text("class Model:\n    def __call__(self):\n        return 'new'\n")
        assert version(loaded.Model) == before  # the file changed; the code that runs did not
        reloaded = importlib.reload(loaded)
        assert version(reloaded.Model) != before
    finally:
        sys.modules.pop("edited_model", None)


def test_functions_too():
    def f(x, scale=2):
        return x * scale

    def g(x, scale=3):
        return x * scale

    assert version(f) != version(g)
    assert version(f) == code_version(f, None)
    assert code_version(f, "v1") == "user:v1"


@pytest.mark.ray
def test_a_redefined_class_replaces_the_running_replicas(serve_app):
    namespace: dict = {"serve": serve}
    exec(textwrap.dedent("""
        @serve.deployment
        class Model:
            def __call__(self, x):
                return f"old {x}"
    """), namespace)
    handle = serve.run(namespace["Model"].bind(), name="redefined", route_prefix=None)
    assert handle.remote(1).result(timeout_s=60) == "old 1"
    exec(textwrap.dedent("""
        @serve.deployment
        class Model:
            def __call__(self, x, y):
                return f"new {x} {y}"
    """), namespace)
    handle = serve.run(namespace["Model"].bind(), name="redefined", route_prefix=None)
    assert handle.remote(1, 2).result(timeout_s=60) == "new 1 2"
