"""Diagrams: golden DOT and Mermaid per example, real Graphviz for SVG, `servegraph render` with and without `dot`.

Regenerate the golden files after an intended change (see tests/goldens.py)::

    UPDATE_GOLDEN=1 pytest tests/test_config.py tests/test_render.py
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from goldens import CASE_IDS, CASES, check_golden, fresh_examples

import servegraph as serve
from servegraph import DAGDriver, InputNode, MultiOutputNode
from servegraph.cli import main
from servegraph.cli.load import load_app
from servegraph.compiler.emit import render as render_module
from servegraph.errors import RenderError

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


@pytest.fixture
def examples(monkeypatch):
    fresh_examples(monkeypatch)


@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    """A PATH with no `dot` on it, as on a machine without Graphviz."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert render_module.find_dot() is None


def build(target: str):
    return serve.compile(load_app(target))


def svg_text(svg: str) -> str:
    root = ET.fromstring(svg)
    return " ".join(el.text or "" for el in root.iter() if el.tag.endswith("text"))


# -- golden outputs -----------------------------------------------------------
@pytest.mark.parametrize("stem,target", CASES, ids=CASE_IDS)
def test_dot_matches_golden(examples, stem, target):
    check_golden(f"{stem}.dot", build(target).to_dot())


@pytest.mark.parametrize("stem,target", CASES, ids=CASE_IDS)
def test_mermaid_matches_golden(examples, stem, target):
    check_golden(f"{stem}.mmd", build(target).to_mermaid())


@pytest.mark.parametrize("stem,target", CASES, ids=CASE_IDS)
def test_render_command_writes_the_golden_files(examples, tmp_path, stem, target):
    for ext in ("dot", "mmd"):
        out = tmp_path / f"graph.{ext}"
        result = CliRunner().invoke(main, ["render", target, "-o", str(out)])
        assert result.exit_code == 0, result.output
        check_golden(f"{stem}.{ext}", out.read_text())


# -- what a diagram shows -----------------------------------------------------
def test_hello_shows_deployments_handles_and_ingress(examples):
    dot = build("hello:language_classifier").to_dot()
    assert 'label="SpanishResponder\\nclass SpanishResponder\\nreplicas: 1\\nper replica: CPU 0.1"' in dot
    assert "ingress, route /" in dot
    assert 'http [label="HTTP /"' in dot
    assert 'n1 -> n0 [label="arg 0", style=dashed];' in dot  # a handle through the constructor
    assert 'n2 -> n0 [label="arg 1", style=dashed];' in dot


def test_pipeline_shows_input_calls_and_output(examples):
    mmd = build("pipeline:app").to_mermaid()
    assert 'n5[/"InputNode"/]' in mmd
    assert "n4[/\"InputNode['text']\"/]" in mmd
    assert '  subgraph cluster_n2 ["LengthModel"]\n    n1(["LengthModel.predict()"])' in mmd
    assert "replicas: 2" in mmd  # VowelModel
    assert "http ==> n5" in mmd and "n0 ==> response" in mmd
    assert "n6 -->|arg 1| n0" in mmd


def test_keywords_outputs_resources_and_autoscaling():
    @serve.deployment(ray_actor_options={"num_cpus": 2, "num_gpus": 1, "resources": {"TPU": 4}})
    class Model:
        def predict(self, text, temperature=1.0):
            return text

    @serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 5})
    def clean(text):
        return text

    with InputNode() as inp:
        cleaned = clean.bind(inp.text)
        scored = Model.bind().predict.bind(cleaned, temperature=inp.temperature)
        graph = DAGDriver.bind(MultiOutputNode([cleaned, scored]))
    compiled = serve.compile(graph).with_app(import_path="m:graph", route_prefix="/v1")
    dot = compiled.to_dot(rankdir="TB")
    assert "rankdir=TB" in dot
    assert "per replica: CPU 2, GPU 1, TPU 4" in dot
    assert "replicas: 1..5 (autoscaling)" in dot
    assert 'label="temperature="' in dot
    assert 'label="output 0"' in dot and 'label="output 1"' in dot
    assert 'label="DAGDriver\\ningress, route /v1"' in dot
    assert "0x" not in dot
    mmd = compiled.to_mermaid(rankdir="TB")
    assert mmd.splitlines()[2] == "flowchart TB"
    assert "|temperature=|" in mmd


def test_unknown_rankdir():
    with pytest.raises(ValueError, match="rankdir must be one of LR, TB, got 'RL'"):
        serve.compile(DAGDriver.bind(serve.deployment(lambda: 1).bind())).to_dot(rankdir="RL")


def test_labels_are_escaped():
    @serve.deployment
    def echo(text):
        return text

    with InputNode() as inp:
        node = echo.bind(inp['say "hi" <b>'])
    compiled = serve.compile(node).with_app(import_path="m:g")
    assert "InputNode['say #quot;hi#quot; #lt;b#gt;']" in compiled.to_mermaid()
    assert 'label="InputNode[\'say \\"hi\\" <b>\']"' in compiled.to_dot()


# -- Graphviz -----------------------------------------------------------------
@needs_dot
@pytest.mark.parametrize("stem,target", CASES, ids=CASE_IDS)
def test_svg_parses_and_names_every_deployment(examples, tmp_path, stem, target):
    compiled = build(target)
    out = tmp_path / f"{stem}.svg"
    result = CliRunner().invoke(main, ["render", target, "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = svg_text(out.read_text())
    for name in compiled.deployments:
        assert name in text
    assert "HTTP /" in text


@needs_dot
@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_binary_formats(examples, tmp_path, ext, magic):
    out = tmp_path / f"graph.{ext}"
    assert build("hello:language_classifier").render(out) == str(out)
    assert out.read_bytes().startswith(magic)


@needs_dot
def test_jupyter_shows_svg(examples):
    bundle = build("hello:language_classifier")._repr_mimebundle_()
    assert "LanguageClassifier" in svg_text(bundle["image/svg+xml"])
    assert bundle["text/plain"].startswith("<CompiledGraph")


def test_jupyter_without_dot_shows_mermaid(examples, no_dot):
    bundle = build("hello:language_classifier")._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert bundle["text/markdown"].startswith("```mermaid\n%% Generated by servegraph")


def test_without_dot_text_formats_still_work(examples, no_dot, tmp_path):
    for ext in ("dot", "mmd"):
        result = CliRunner().invoke(main, ["render", "hello:language_classifier", "-o", str(tmp_path / f"g.{ext}")])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("ext", ["svg", "png", "pdf"])
def test_without_dot_drawn_formats_fail_in_one_line(examples, no_dot, tmp_path, ext):
    out = tmp_path / f"g.{ext}"
    result = CliRunner().invoke(main, ["render", "hello:language_classifier", "-o", str(out)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: drawing .{ext} needs Graphviz's `dot` program, which is not installed: apt-get install graphviz "
        "(macOS: brew install graphviz), or write a .dot or .mmd file instead\n"
    )
    assert not out.exists()


def test_without_dot_python_api_raises(examples, no_dot, tmp_path):
    with pytest.raises(RenderError, match=r"apt-get install graphviz"):
        build("hello:language_classifier").render(tmp_path / "g.svg")


def test_unknown_extension(examples, tmp_path):
    result = CliRunner().invoke(main, ["render", "hello:language_classifier", "-o", str(tmp_path / "g.txt")])
    assert result.exit_code == 1
    assert "cannot tell the diagram format from '.txt'; use one of .dot, .mmd, .svg, .png, .pdf" in result.output
    assert "Traceback" not in result.output


def test_render_bad_target_is_one_line(examples, tmp_path):
    result = CliRunner().invoke(main, ["render", "nosuch:app", "-o", str(tmp_path / "g.dot")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot import 'nosuch'")
    assert "Traceback" not in result.output
