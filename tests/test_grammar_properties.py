"""Properties of the .sg language, checked by hypothesis over generated graphs and mangled text.

- export -> parse -> compile gives the IR the Python graph compiles to (call sites aside);
- formatting is idempotent and changes no meaning;
- no input makes the parser fail with anything but a located servegraph error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import graphs, mutations, respaced
from test_grammar import same_ir

from servegraph import compile
from servegraph.errors import GraphError
from servegraph.grammar import export, format_source, parse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TESTS = Path(__file__).resolve().parent
EXAMPLE_TEXTS = [(EXAMPLES / name).read_text() for name in ("hello.sg", "pipeline.sg")]
#: Parsed as if it were next to the examples, so their imports resolve.
FILE = str(EXAMPLES / "mutated.sg")

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(graphs())
def test_export_then_parse_compiles_to_the_same_ir(app):
    compiled = compile(app)
    text = export(compiled, "app")
    assert format_source(text) == text  # the exporter writes canonical text
    again = parse(text, filename=str(TESTS / "exported.sg")).graph("app").node
    assert same_ir(compile(again).ir, compiled.ir)


@SETTINGS
@given(st.sampled_from(EXAMPLE_TEXTS).flatmap(respaced))
def test_formatting_is_idempotent_and_keeps_the_meaning(text):
    once = format_source(text)
    assert format_source(once) == once
    assert text.count("#") == once.count("#")  # no comment is lost
    before, after = parse(text, filename=FILE), parse(once, filename=FILE)
    for name in before.names:
        assert same_ir(compile(before.graph(name).node).ir, compile(after.graph(name).node).ir)


@SETTINGS
@given(graphs())
def test_formatting_exported_text_with_comments_is_idempotent(app):
    text = export(app, "app").replace("\n", "  # note\n", 3)
    once = format_source(text)
    assert format_source(once) == once


def assert_located(exc: GraphError) -> None:
    assert exc.diagnostics, f"no diagnostics on {exc!r}"
    for d in exc.diagnostics:
        assert d.file == FILE and d.line >= 1 and d.col >= 1, d
    assert str(exc).startswith(f"{FILE}:") or str(exc).split(":\n")[0].endswith(FILE), str(exc)


def parses_or_fails_located(text: str) -> None:
    for run in (lambda: parse(text, filename=FILE), lambda: format_source(text, filename=FILE)):
        try:
            run()
        except GraphError as exc:
            assert_located(exc)


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_never_crashes_the_parser(text):
    parses_or_fails_located(text)


@SETTINGS
@given(st.sampled_from(EXAMPLE_TEXTS).flatmap(mutations))
def test_mangled_examples_never_crash_the_parser(text):
    parses_or_fails_located(text)


@pytest.mark.parametrize("text", EXAMPLE_TEXTS)
def test_every_truncation_of_the_examples_fails_located_or_parses(text):
    for end in range(len(text) + 1):
        parses_or_fails_located(text[:end])
