"""The live graph view without Ray: the diagram annotated with statistics made up here, drawn by the real `dot`.

What the running cluster shows (the proxy's page in a real browser, ``status --graph``, ``render --live``)
is in test_live_graph_cluster.py.
"""

from __future__ import annotations

import doctest
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import servegraph as serve
from servegraph.compiler.emit import diagram, dot, live
from servegraph.compiler.outline import outline
from servegraph.errors import RenderError
from servegraph.runtime.actors import live_graph
from servegraph.runtime.common import http_codec

ROOT = Path(__file__).resolve().parents[1]


def _ir(module: str, attr: str):
    """The compiled IR of an example graph, as the controller holds it (after a deploy from its module)."""
    import importlib

    return serve.compile(getattr(importlib.import_module(module), attr)).ir


def hello_stats() -> dict:
    return {
        "app": "default",
        "window_s": 10.0,
        "deployments": {
            "LanguageClassifier": {
                "requests_per_s": 1.2,
                "errors_per_s": 0.1,
                "error_rate": 0.0833,
                "p50_ms": 3.14,
                "p99_ms": 9.0,
                "requests_total": 12,
                "errors_total": 1,
                "replicas_running": 1,
                "replicas_target": 1,
            },
            "SpanishResponder": {
                "requests_per_s": 0.7,
                "errors_per_s": 0.0,
                "error_rate": 0.0,
                "p50_ms": 1.5,
                "p99_ms": 2.5,
                "requests_total": 7,
                "errors_total": 0,
                "replicas_running": 1,
                "replicas_target": 2,
            },
            # FrenchResponder: no request yet, so the controller may leave it out.
        },
        "edges": [
            {"source": "<input>", "target": "LanguageClassifier", "method": "__call__", "calls_per_s": 1.2,
             "errors_per_s": 0.1, "p50_ms": 3.1, "calls_total": 12, "errors_total": 1},
            {"source": "LanguageClassifier", "target": "SpanishResponder", "method": "say_hello", "calls_per_s": 0.7,
             "errors_per_s": 0.0, "p50_ms": 2.0, "calls_total": 7, "errors_total": 0},
        ],
    }  # fmt: skip


def pipeline_stats() -> dict:
    def calls(source: str, target: str, method: str, total: int) -> dict:
        return {"source": source, "target": target, "method": method, "calls_per_s": total / 10, "errors_per_s": 0.0,
                "p50_ms": 1.25, "calls_total": total, "errors_total": 0}  # fmt: skip

    return {
        "app": "pipe",
        "window_s": 10.0,
        "deployments": {
            name: {
                "requests_per_s": 0.5,
                "errors_per_s": 0.0,
                "error_rate": 0.0,
                "p50_ms": 2.0,
                "p99_ms": 4.0,
                "requests_total": 5,
                "errors_total": 0,
                "replicas_running": 1,
                "replicas_target": 1,
            }  # fmt: skip
            for name in ("preprocess", "LengthModel", "VowelModel", "combine")
        },
        "edges": [
            calls("<input>", "preprocess", "__call__", 5),
            calls("preprocess", "LengthModel", "predict", 5),
            calls("preprocess", "VowelModel", "predict", 5),
            calls("LengthModel", "combine", "__call__", 5),
            calls("VowelModel", "combine", "__call__", 5),
            calls("combine", "LengthModel", "explain", 3),  # a call the graph does not show
            calls("Elsewhere", "combine", "__call__", 1),  # a deployment of another application
        ],
    }


# -- the outline: what crosses to the proxy and the CLI ----------------------------
@pytest.mark.parametrize(("module", "attr"), [("hello", "language_classifier"), ("pipeline", "app"), ("canary", "app")])
def test_the_outline_unpickles_where_the_graphs_code_does_not_import(module: str, attr: str, tmp_path: Path) -> None:
    app = _ir(module, attr)
    data = tmp_path / "outline.pickle"
    data.write_bytes(pickle.dumps(outline(app)))
    probe = (
        "import pickle, sys\n"
        f"app = pickle.loads(open({str(data)!r}, 'rb').read())\n"
        "print(sorted(d.name for d in app.deployments), sorted(m for m in sys.modules if m in ('hello', 'pipeline', 'canary')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # servegraph, and not examples/
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{sorted(d.name for d in app.deployments)} []"


@pytest.mark.parametrize(("module", "attr"), [("hello", "language_classifier"), ("pipeline", "app"), ("canary", "app")])
def test_the_outline_draws_the_same_diagram(module: str, attr: str) -> None:
    from servegraph.compiler import CompiledGraph

    app = _ir(module, attr)
    assert CompiledGraph(ir=outline(app)).to_dot() == CompiledGraph(ir=app).to_dot()


# -- the annotated diagram -----------------------------------------------------------
def test_each_deployment_box_carries_its_figures_and_a_failing_one_is_red() -> None:
    text = live.to_live_dot(
        outline(_ir("hello", "language_classifier")), hello_stats(), name="default", route_prefix="/"
    )
    assert "live: last 10 s" in text
    classifier = next(line for line in text.splitlines() if line.strip().startswith("n0 ["))
    assert "replicas: 1 of 1 running" in classifier
    assert "requests: 12 (1.2/s)" in classifier and "p50 3.1 ms, p99 9.0 ms" in classifier
    assert "errors: 1 (8.3%)" in classifier and 'color="#c0392b"' in classifier
    spanish = next(line for line in text.splitlines() if line.strip().startswith("n1 ["))
    assert "replicas: 1 of 2 running" in spanish and "requests: 7 (0.7/s)" in spanish and "#c0392b" not in spanish


def test_a_deployment_with_no_traffic_reads_zero_and_dashes() -> None:
    text = live.to_live_dot(
        outline(_ir("hello", "language_classifier")), hello_stats(), name="default", route_prefix="/"
    )
    french = next(line for line in text.splitlines() if line.strip().startswith("n2 ["))
    assert "requests: 0 (0/s)" in french and "p50 –, p99 –" in french and "errors: 0 (0%)" in french
    assert "replicas: – of 1 running" in french  # never reported: unknown, not zero


def test_no_statistics_at_all_still_draws_every_deployment() -> None:
    app = outline(_ir("pipeline", "app"))
    text = live.to_live_dot(app, {}, name="pipe")
    for name in ("preprocess", "LengthModel", "VowelModel", "combine"):
        assert f'label="{name}\\n' in text
    assert text.count("requests: 0 (0/s)") == 4


def test_calls_are_written_on_the_arrows_they_travel() -> None:
    text = live.to_live_dot(
        outline(_ir("hello", "language_classifier")), hello_stats(), name="default", route_prefix="/"
    )
    # A handle's arrow points from the callee to the deployment holding the handle.
    assert 'n1 -> n0 [label="arg 0\\nsay_hello(): 7 calls, 0.7/s, p50 2.0 ms", style=dashed];' in text
    assert 'http -> n0 [label="12 calls, 1.2/s, p50 3.1 ms, 1 error", style=bold];' in text
    assert 'n2 -> n0 [label="arg 1", style=dashed];' in text  # no call yet: the static label alone


def test_a_plans_calls_land_on_its_data_arrows_and_unseen_ones_get_their_own() -> None:
    text = live.to_live_dot(outline(_ir("pipeline", "app")), pipeline_stats(), name="pipe")
    lines = text.splitlines()
    assert '  n4 -> n3 [label="arg 0\\n5 calls, 0.5/s, p50 1.2 ms"];' in lines  # <input> -> preprocess
    assert '  n3 -> n1 [label="arg 0\\n5 calls, 0.5/s, p50 1.2 ms"];' in lines  # preprocess -> LengthModel.predict
    assert '  n1 -> n0 [label="arg 0\\n5 calls, 0.5/s, p50 1.2 ms"];' in lines  # LengthModel -> combine
    # combine -> LengthModel.explain: no arrow in the diagram, so one of its own onto the deployment.
    assert any(line.startswith("  n0 -> n2 [") and "explain(): 3 calls" in line and "dashed" in line for line in lines)
    assert "Elsewhere" not in text


def test_the_live_svg_is_drawn_by_dot_with_every_deployment_and_figure() -> None:
    svg = live.to_live_svg(outline(_ir("pipeline", "app")), pipeline_stats(), name="pipe")
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for name in ("preprocess", "LengthModel", "VowelModel", "combine"):
        assert f">{name}</text>" in svg
    assert svg.count("requests: 5 (0.5/s)") == 4
    assert "explain(): 3 calls" in svg


def test_the_static_diagram_is_unchanged_by_the_live_one() -> None:
    compiled = serve.compile(_ir_node("pipeline", "app"))
    assert dot.diagram_dot(diagram.build(compiled)) == compiled.to_dot()
    assert "requests" not in compiled.to_dot()


def _ir_node(module: str, attr: str):
    import importlib

    return getattr(importlib.import_module(module), attr)


# -- the terminal ---------------------------------------------------------------------
def _printed(renderable) -> str:
    console = Console(width=160, record=True, file=open(os.devnull, "w"))  # noqa: SIM115  # closed with the console
    console.print(renderable)
    return console.export_text()


def test_the_terminal_tree_follows_requests_with_every_figure() -> None:
    out = _printed(
        live.live_tree(outline(_ir("hello", "language_classifier")), hello_stats(), name="default", route_prefix="/")
    )
    lines = out.splitlines()
    assert lines[0] == "default  route /, last 10 s"
    assert lines[1].startswith("└── LanguageClassifier  <- 12 calls, 1.2/s, p50 3.1 ms, 1 error")
    assert "replicas: 1 of 1 running  requests: 12 (1.2/s)  p50 3.1 ms, p99 9.0 ms  errors: 1 (8.3%)" in lines[2]
    assert "SpanishResponder  <- say_hello(): 7 calls, 0.7/s, p50 2.0 ms" in out
    assert "FrenchResponder" in out and "requests: 0 (0/s)  p50 –, p99 –" in out


def test_the_terminal_tree_writes_a_deployment_reached_twice_once() -> None:
    out = _printed(live.live_tree(outline(_ir("pipeline", "app")), pipeline_stats(), name="pipe"))
    assert out.count("combine  <-") == 1 and "combine (above)  <- 5 calls" in out
    assert out.index("preprocess") < out.index("LengthModel") < out.index("combine")


# -- the pages ------------------------------------------------------------------------
def test_the_page_inlines_the_svg_and_refreshes_it_from_this_proxy_only() -> None:
    svg = live.to_live_svg(outline(_ir("hello", "language_classifier")), hello_stats(), name="my app", route_prefix="/")
    page = live_graph.page_html("my app", svg)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "<svg" in page
    assert 'const graph = document.getElementById("graph")' in page
    assert 'fetch("/-/graph/my%20app.svg"' in page and "setInterval(refresh, 2000)" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org', "").replace('xmlns:xlink="http://www.w3.org', "")
    assert " src=" not in page and "<link" not in page  # no asset from elsewhere


def test_the_index_links_every_application() -> None:
    page = live_graph.index_html(["default", "a/b"])
    assert '<a href="/-/graph/default">default</a>' in page and '<a href="/-/graph/a%2Fb">a/b</a>' in page
    assert "No applications are running." in live_graph.index_html([])


def test_unknown_pages_are_404_in_the_proxys_words() -> None:
    status, _, body = http_codec.not_found("/-/graph/nope", "-/graph", "applications", ["default"])
    assert status == 404
    assert body.decode() == (
        "Path '/-/graph/nope' not found. Ping http://.../-/graph for available applications. "
        "(servegraph: applications are default)"
    )


# -- the CLI without a cluster --------------------------------------------------------
def test_render_live_with_no_cluster_says_so(tmp_path: Path) -> None:
    # A process of its own: this one may be connected to the test session's cluster.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), SERVEGRAPH_CLUSTER_FILE=str(tmp_path / "cluster.json"))
    target = tmp_path / "g.svg"
    result = subprocess.run(
        [sys.executable, "-m", "servegraph", "render", "default", "--live", "-o", str(target)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "No Ray cluster: pass --address HOST:PORT or set RAY_ADDRESS" in result.stderr
    assert not target.exists()


def test_a_live_graph_has_no_mermaid_form(tmp_path: Path) -> None:
    graph = live_graph.LiveGraph("pipe", outline(_ir("pipeline", "app")), "/", pipeline_stats())
    with pytest.raises(RenderError, match=r"use one of \.dot, \.svg, \.png, \.pdf"):
        graph.write(str(tmp_path / "g.mmd"))
    assert json.loads(json.dumps(graph.stats)) == pipeline_stats()
    assert graph.write(str(tmp_path / "g.dot")).endswith("g.dot")
    assert "requests: 5 (0.5/s)" in (tmp_path / "g.dot").read_text()


@pytest.mark.parametrize(
    "module",
    [
        "servegraph.compiler.emit.live",
        "servegraph.compiler.outline",
        "servegraph.runtime.actors.live_graph",
        "servegraph.runtime.common.http_codec",
    ],
)
def test_examples_in_docstrings(module: str) -> None:
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# -- the proxy's pages, with a controller made up here ----------------------------------
class _Call:
    """What ``actor.method.remote(...)`` gives: something whose ``future()`` holds the answer (or raises)."""

    def __init__(self, answer):
        self.answer = answer

    def future(self):
        import concurrent.futures

        done = concurrent.futures.Future()
        if isinstance(self.answer, BaseException):
            done.set_exception(self.answer)
        else:
            done.set_result(self.answer)
        return done


class _Method:
    def __init__(self, fn):
        self.remote = lambda *args: _Call(fn(*args))


class FakeController:
    """Runs ``pipe`` (the pipeline example); ``gone`` is deleted between its outline and its figures."""

    def __init__(self, stats: dict):
        from servegraph.runtime.control.replies import AppRecord

        running = {
            "pipe": AppRecord(outline(_ir("pipeline", "app")), {}, "/pipe"),
            "gone": AppRecord(outline(_ir("pipeline", "app")), {}, "/gone"),
        }
        self.graph_outline = _Method(running.get)
        self.graph_stats = _Method(lambda name: stats if name == "pipe" else KeyError(name))
        self.status = _Method(lambda: type("Status", (), {"applications": dict.fromkeys(running)})())


@pytest.fixture
def pages(monkeypatch):
    """``page(path)``: the proxy's answer to ``path`` (status, content type, body)."""
    import asyncio

    async def controller():
        return FakeController(pipeline_stats())

    monkeypatch.setattr(live_graph, "_controller", controller)

    def page(path: str) -> tuple[int, str, str]:
        status, headers, body = asyncio.run(live_graph.graph_page(path))
        return status, dict(headers)["content-type"], body.decode()

    return page


def test_the_proxy_answers_the_index_a_page_and_its_svg(pages) -> None:
    status, kind, body = pages("/-/graph")
    assert (status, kind) == (200, "text/html; charset=utf-8") and '<a href="/-/graph/pipe">pipe</a>' in body
    status, kind, body = pages("/-/graph/pipe")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert "<h1>pipe</h1>" in body and body.count("requests: 5 (0.5/s)") == 4 and "HTTP /pipe" in body
    status, kind, body = pages("/-/graph/pipe.svg")
    assert (status, kind) == (200, "image/svg+xml") and body.lstrip().startswith("<?xml")


def test_the_proxy_answers_404_for_an_application_that_does_not_run_or_was_just_deleted(pages) -> None:
    status, _, body = pages("/-/graph/nope")
    assert status == 404 and body.startswith("Path '/-/graph/nope' not found. Ping http://.../-/graph")
    assert body.endswith("(servegraph: applications are gone, pipe)")
    assert pages("/-/graph/nope.svg")[0] == 404
    assert pages("/-/graph/gone")[0] == 404


def test_the_proxy_answers_503_while_the_controller_does_not(monkeypatch) -> None:
    import asyncio

    from servegraph.runtime.data.long_poll import ControllerUnavailable

    async def controller():
        raise ControllerUnavailable("no servegraph controller answered within 10 s")

    monkeypatch.setattr(live_graph, "_controller", controller)
    status, _, body = asyncio.run(live_graph.graph_page("/-/graph/pipe"))
    assert status == 503 and body.decode().startswith("the servegraph controller did not answer")
