"""The .sg language: the examples compile like their Python twins, and the API and CLI around it."""

from __future__ import annotations

import dataclasses
import importlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from servegraph import compile
from servegraph.cli import main
from servegraph.compiler import ir
from servegraph.dsl import DeploymentNode, FunctionNode, MultiOutputNode
from servegraph.dsl.callsite import UNKNOWN
from servegraph.errors import GraphError, ImportPathError
from servegraph.grammar import (
    export,
    format_source,
    load_file,
    load_graph,
    parse,
    parse_file,
    route_prefix_of,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTS = Path(__file__).resolve().parent

#: Each .sg example and the Python graph it describes.
TWINS = [
    ("hello.sg", None, "hello", "language_classifier"),
    ("pipeline.sg", None, "pipeline", "app"),
]


def without_call_sites(value: Any) -> Any:
    """``value`` (an AppIR, or anything inside one) with every call site replaced by UNKNOWN.

    A .sg graph and its Python twin are bound at different places; everything else must match.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: UNKNOWN if f.name == "call_site" else without_call_sites(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, (tuple, list)):
        return type(value)(without_call_sites(v) for v in value)
    if isinstance(value, dict):
        return {k: without_call_sites(v) for k, v in value.items()}
    return value


def same_ir(a: ir.AppIR, b: ir.AppIR) -> bool:
    return without_call_sites(a) == without_call_sites(b)


def snippet(text: str, name: str = "snippet.sg") -> Any:
    """Parse a snippet as if it were a file in tests/ (so ``from sg_models import ...`` resolves)."""
    return parse(textwrap.dedent(text), filename=str(TESTS / name))


@pytest.mark.parametrize("sg, graph, module, attr", TWINS)
def test_example_compiles_to_the_same_ir_as_its_python_twin(sg, graph, module, attr):
    python_graph = getattr(importlib.import_module(module), attr)
    from_text = compile(load_file(EXAMPLES / sg, graph)).ir
    assert same_ir(from_text, compile(python_graph).ir)


@pytest.mark.parametrize("sg", ["hello.sg", "pipeline.sg"])
def test_examples_are_formatted(sg):
    text = (EXAMPLES / sg).read_text()
    assert format_source(text) == text


@pytest.mark.parametrize("sg, graph, module, attr", TWINS)
def test_exporting_the_twin_gives_text_that_compiles_to_the_same_ir(sg, graph, module, attr):
    python_graph = getattr(importlib.import_module(module), attr)
    text = export(python_graph, "app")
    again = parse(text, filename=str(EXAMPLES / "exported.sg")).graph("app").node
    assert same_ir(compile(again).ir, compile(python_graph).ir)


def test_nodes_carry_the_token_location_as_their_call_site():
    path = EXAMPLES / "pipeline.sg"
    node = load_file(path)
    assert isinstance(node, FunctionNode)
    lines = path.read_text().split("\n")
    line = next(i for i, row in enumerate(lines, 1) if row.strip().startswith("output"))
    assert (node._call_site.file, node._call_site.line, node._call_site.col) == (str(path), line, lines[line - 1].index("combine") + 1)


def test_route_prefix_is_read_from_the_graph_header():
    assert route_prefix_of(EXAMPLES / "hello.sg") == "/"
    assert route_prefix_of(EXAMPLES / "pipeline.sg") is None
    assert load_graph(EXAMPLES / "hello.sg").route_prefix == "/"


def test_several_graphs_in_one_file():
    sg = snippet(
        """
        from sg_models import Model, combine

        graph first at "/first" {
            output Model()
        }

        graph second {
            input request
            output combine(request), Model().predict(request)
        }
        """
    )
    assert sg.names == ["first", "second"]
    assert isinstance(sg.graph("first").node, DeploymentNode)
    assert isinstance(sg.graph("second").node, MultiOutputNode)
    assert sg.graph("first").route_prefix == "/first"
    with pytest.raises(ImportPathError, match=r"defines 2 graphs \(first, second\); say which one"):
        sg.graph()
    with pytest.raises(ImportPathError, match=r"has no graph 'frist'; did you mean 'first'\?"):
        sg.graph("frist")


def test_load_file_names_a_missing_file(tmp_path):
    with pytest.raises(ImportPathError, match="no such .sg file"):
        load_file(tmp_path / "missing.sg")


def test_a_file_without_graphs_says_so(tmp_path):
    path = tmp_path / "empty.sg"
    path.write_text("# nothing yet\n")
    with pytest.raises(ImportPathError, match="defines no graph"):
        load_file(path)
    assert parse_file(path).names == []


def test_plain_classes_are_wrapped_and_deployments_keep_their_options():
    sg = snippet(
        """
        from sg_models import Plain, Scaled

        deployment Scaled {
            max_ongoing_requests: 7
        }

        graph app {
            output Scaled(Plain(0.5))
        }
        """
    )
    options = compile(sg.graph().node).deployments["Scaled"].options
    assert (options.num_replicas, options.max_ongoing_requests) == (2, 7)
    assert compile(sg.graph().node).deployments["Plain"].init_args == (0.5,)


def test_a_deployment_block_with_a_new_name_is_a_copy_with_other_options():
    sg = snippet(
        """
        from sg_models import Model

        deployment Big = Model {
            name: "BigModel"
            num_replicas: 3
            ray_actor_options: {num_cpus: 1, resources: {"accelerator": 1}}
            autoscaling_config: null
            user_config: {threshold: 0.5, labels: ["a", "b"], "odd key": null}
        }

        graph app {
            input request
            output Model().predict(request), Big().predict(request)
        }
        """
    )
    deployments = compile(sg.graph().node).deployments
    assert deployments["Model"].num_replicas == 1
    big = deployments["BigModel"]
    assert big.num_replicas == 3
    assert big.actor_options == {"num_cpus": 1.0, "resources": {"accelerator": 1.0}}
    assert big.options.user_config == {"threshold": 0.5, "labels": ["a", "b"], "odd key": None}


def test_input_parts_method_calls_and_the_driver():
    sg = snippet(
        """
        from sg_models import Model, combine, adapter

        graph app {
            input request
            model = Model(k="v")
            first = model.predict(request[0], request["key"], request.attr.inner)
            second = model(first, [first, {nested: first}], flag=true, missing=null, n=-1.5e3)
            output DAGDriver(MultiOutputNode([first, second]), http_adapter="sg_models:adapter")
        }
        """
    )
    compiled = compile(sg.graph().node)
    steps = compiled.plan.steps
    assert [s.access[1:] for s in steps if s.kind == ir.INPUT_ATTR] == [("item", 0), ("item", "key"), ("attr", "attr"), ("attr", "inner")]
    assert [s.method for s in steps if s.kind == "call"] == ["predict", "__call__"]
    call = [s for s in steps if s.method == "__call__"][0]
    assert dict(call.kwargs) == {"flag": True, "missing": None, "n": -1500.0}
    assert compiled.ir.http_adapter is importlib.import_module("sg_models").adapter


def test_strings_and_numbers_read_as_in_python():
    sg = snippet(
        r"""
        from sg_models import Model

        graph app {
            output Model("tab\there", 'single "quoted"', "\u00e9\x41\U0001F600", 10, 2.5, -3, 1e3, "\\")
        }
        """
    )
    args = compile(sg.graph().node).deployments["Model"].init_args
    assert args == ("tab\there", 'single "quoted"', "\u00e9A\U0001f600", 10, 2.5, -3, 1000.0, "\\")
    assert [type(a) for a in args[3:7]] == [int, float, int, float]


def test_format_source_canonical_form_keeps_comments():
    text = textwrap.dedent(
        """\
        # a header

        from sg_models import Model,combine   # what we serve
        deployment Model {num_replicas : 2 , user_config: {'a': [1,2]}}
        graph app at '/x' {   # the app
            input request


            # preprocess first
            x = combine( request ["text"],
                k = 1 )   # inline
            output Model( ).predict(x) }
        # the end
        """
    )
    expected = textwrap.dedent(
        """\
        # a header

        from sg_models import Model, combine  # what we serve

        deployment Model {
            num_replicas: 2
            user_config: {a: [1, 2]}
        }

        graph app at "/x" {  # the app
            input request

            # preprocess first
            x = combine(request["text"], k=1)  # inline
            output Model().predict(x)
        }
        # the end
        """
    )
    assert format_source(text) == expected
    assert format_source(expected) == expected


def test_export_writes_options_that_differ_from_the_import():
    models = importlib.import_module("sg_models")
    fast = models.Scaled.options(num_replicas=4)
    app = models.combine.bind(fast.bind().run.bind(1), models.Scaled.bind().run.bind(2))
    text = export(app, "app", route_prefix="/combine")
    assert 'graph app at "/combine" {' in text
    assert "deployment Scaled_2 = Scaled {\n    num_replicas: 4\n}" in text
    again = parse(text, filename=str(TESTS / "exported.sg")).graph().node
    assert same_ir(compile(again).ir, compile(app).ir)


# -- the command line --------------------------------------------------------------------


def test_cli_check_accepts_a_graph_file(monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    result = CliRunner().invoke(main, ["check", "hello.sg"])
    assert result.exit_code == 0, result.output
    assert "hello.sg: ok, no problems found" in result.output


def test_cli_check_prints_every_error_with_a_caret(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.sg").write_text("from hello import SpanishResponder\ngraph g {\n    output Spanish()\n}\n")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    result = CliRunner().invoke(main, ["check", "bad.sg"])
    assert result.exit_code == 1
    assert "bad.sg:3:12: error: unknown name 'Spanish'" in result.output
    assert "    output Spanish()\n" in result.output and "           ^^^^^^^\n" in result.output
    assert "Traceback" not in result.output


def test_cli_fmt_prints_checks_and_writes(tmp_path):
    path = tmp_path / "g.sg"
    path.write_text("graph g {output   f( 1 )}  # keep\n")
    runner = CliRunner()
    printed = runner.invoke(main, ["fmt", str(path)])
    assert printed.exit_code == 0
    assert printed.output == "graph g {\n    output f(1)\n}  # keep\n"
    check = runner.invoke(main, ["fmt", "--check", str(path)])
    assert check.exit_code == 1
    assert "not formatted" in check.output
    assert runner.invoke(main, ["fmt", "--write", str(path)]).exit_code == 0
    assert path.read_text() == printed.output
    assert runner.invoke(main, ["fmt", "--check", str(path)]).exit_code == 0


def test_cli_fmt_reports_syntax_errors_and_exits_1(tmp_path):
    path = tmp_path / "bad.sg"
    path.write_text("graph g {\n    output f(\n}\n")
    result = CliRunner().invoke(main, ["fmt", str(path)])
    assert result.exit_code == 1
    assert "bad.sg:3:1: error: '}' does not match the '(' at line 2, col 13" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["fmt", str(tmp_path / "missing.sg")])
    assert missing.exit_code == 1 and "cannot read the file" in missing.output


def test_cli_export_prints_sg_text(monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    result = CliRunner().invoke(main, ["export", "hello:language_classifier", "--name", "hello"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("from hello import FrenchResponder, LanguageClassifier, SpanishResponder\n")
    assert 'graph hello at "/" {' in result.output  # the route is kept (issue 10)


def test_cli_export_of_something_unexportable_exits_1(monkeypatch):
    monkeypatch.chdir(TESTS)
    result = CliRunner().invoke(main, ["export", "sg_models:NOT_A_DEPLOYMENT"])
    assert result.exit_code == 1
    assert "not a graph" in result.output


def test_graph_errors_are_graph_errors():
    with pytest.raises(GraphError):
        snippet("graph g {")
