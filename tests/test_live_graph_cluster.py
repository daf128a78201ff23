"""The live graph of running applications: the proxy's page in a real headless Chromium, `status --graph`
and `render --live`, on the session's cluster with traffic sent over real HTTP.

The figures asserted are outcomes (every deployment shown, request counts that grew by what was sent),
never how fast anything was.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from servegraph.cli import main

HELLO = ("LanguageClassifier", "SpanishResponder", "FrenchResponder")
PIPELINE = ("preprocess", "LengthModel", "VowelModel", "combine")


@pytest.fixture(scope="module")
def base(deploy, http_port) -> str:
    from hello import language_classifier
    from pipeline import app

    deploy(language_classifier, name="live-hello", route_prefix="/live-hello")
    deploy(app, name="live-pipeline", route_prefix="/live-pipeline")
    return f"http://127.0.0.1:{http_port}"


def send_hello(base: str, language: str, count: int) -> None:
    for _ in range(count):
        reply = httpx.post(f"{base}/live-hello", json={"language": language, "name": "Dora"}, timeout=60)
        assert reply.status_code == 200, reply.text


def send_pipeline(base: str, count: int) -> None:
    for _ in range(count):
        reply = httpx.post(f"{base}/live-pipeline", json={"text": "Hello World"}, timeout=60)
        assert reply.status_code == 200 and reply.json()["length"] == 11.0, reply.text


def browse(url: str, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran (Chromium's virtual time lets its refresh timer fire)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the graph page is checked in a real browser")
    out = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=5000",
         f"--user-data-dir={tmp_path / 'chromium'}", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def drawn_requests(svg: str) -> dict[str, int]:
    """Each box's request count as drawn: ``{"LanguageClassifier": 12, ...}`` (from the SVG's node groups)."""
    found = {}
    for group in svg.split('class="node"')[1:]:
        texts = re.findall(r"<text[^>]*>([^<]*)</text>", group.split("</g>")[0])
        counts = [int(m.group(1)) for t in texts if (m := re.match(r"requests: (\d+) \(", t))]
        if texts and counts:
            found[texts[0]] = counts[0]
    return found


def wait_drawn(base: str, app: str, at_least: dict[str, int]) -> dict[str, int]:
    """The application's drawn request counts once each has reached ``at_least`` (replicas report their
    figures to the controller every so often); after a minute, what there is, for the caller's assertion."""
    deadline = time.monotonic() + 60
    while True:
        drawn = drawn_requests(httpx.get(f"{base}/-/graph/{app}.svg", timeout=60).text)
        if all(drawn.get(name, 0) >= count for name, count in at_least.items()) or time.monotonic() > deadline:
            return drawn
        time.sleep(0.25)


def test_the_index_links_every_application(base: str, tmp_path: Path) -> None:
    dom = browse(f"{base}/-/graph", tmp_path)
    assert '<a href="/-/graph/live-hello">live-hello</a>' in dom
    assert '<a href="/-/graph/live-pipeline">live-pipeline</a>' in dom


@pytest.mark.parametrize(
    ("app", "sent", "send", "calls"),
    [
        # Spanish requests: the classifier and the Spanish responder get each one, the French one none.
        ("live-hello", {"LanguageClassifier": 4, "SpanishResponder": 4, "FrenchResponder": 0},
         lambda base: send_hello(base, "spanish", 4), "say_hello(): "),
        ("live-pipeline", dict.fromkeys(PIPELINE, 4), lambda base: send_pipeline(base, 4), " calls, "),
    ],
)  # fmt: skip
def test_the_graph_page_shows_every_deployment_and_its_figures_move_with_traffic(
    base: str, tmp_path: Path, app: str, sent: dict[str, int], send, calls: str
) -> None:
    before_dom = browse(f"{base}/-/graph/{app}", tmp_path)
    refreshes = re.search(r'<body data-refreshes="(\d+)"', before_dom)
    assert refreshes is not None and int(refreshes.group(1)) >= 1, "the page's script did not refresh the graph"
    assert '<span id="updated">updated ' in before_dom  # not "could not refresh: ..."
    before = drawn_requests(before_dom)
    assert set(sent) == set(before), before  # every deployment, with its count (0 before any request)

    send(base)
    wait_drawn(base, app, {name: before[name] + count for name, count in sent.items()})
    after_dom = browse(f"{base}/-/graph/{app}", tmp_path)
    after = drawn_requests(after_dom)
    for name, count in sent.items():
        assert after[name] >= before[name] + count, (name, before, after)
    assert calls in after_dom  # a call's figures on its arrow


def test_an_unknown_application_is_404_in_the_proxys_words(base: str) -> None:
    reply = httpx.get(f"{base}/-/graph/no-such-app", timeout=60)
    assert reply.status_code == 404
    assert reply.text.startswith(
        "Path '/-/graph/no-such-app' not found. Ping http://.../-/graph for available applications."
    )
    assert "live-hello" in reply.text
    assert httpx.get(f"{base}/-/graph/no-such-app.svg", timeout=60).status_code == 404


def test_the_svg_alone_is_a_drawing_of_the_application(base: str) -> None:
    reply = httpx.get(f"{base}/-/graph/live-pipeline.svg", timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/svg+xml"
    assert set(PIPELINE) <= set(drawn_requests(reply.text))


def test_status_graph_prints_every_deployment_with_its_figures(base: str) -> None:
    send_hello(base, "french", 3)
    send_pipeline(base, 3)
    wait_drawn(base, "live-hello", {"FrenchResponder": 3})
    wait_drawn(base, "live-pipeline", {"combine": 3})
    result = CliRunner().invoke(main, ["status", "--graph"])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in (*HELLO, *PIPELINE):
        assert re.search(rf"{name}\b.*\n\W*replicas: \d+ of \d+ running  requests: \d+ \(", out), (name, out)
    counts = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"(\w+)(?:  <-[^\n]*)?\n\W*replicas: [^\n]*requests: (\d+)", out)
    }
    assert counts["FrenchResponder"] >= 3 and counts["combine"] >= 3, counts
    assert "say_hello(): " in out
    as_json = CliRunner().invoke(main, ["status", "--json", "--graph"])
    assert as_json.exit_code == 0, as_json.output
    graph = json.loads(as_json.stdout)["applications"]["live-hello"]["graph"]
    assert set(graph["deployments"]) == set(HELLO) and graph["deployments"]["FrenchResponder"]["requests_total"] >= 3


def test_render_live_writes_a_snapshot_of_the_running_application(base: str, tmp_path: Path) -> None:
    send_pipeline(base, 2)
    wait_drawn(base, "live-pipeline", dict.fromkeys(PIPELINE, 2))
    target = tmp_path / "graph.svg"
    result = CliRunner().invoke(main, ["render", "live-pipeline", "--live", "-o", str(target)])
    assert result.exit_code == 0, result.output
    drawn = drawn_requests(target.read_text())
    assert set(PIPELINE) <= set(drawn) and all(drawn[name] >= 2 for name in PIPELINE), drawn
    missing = CliRunner().invoke(main, ["render", "no-such-app", "--live", "-o", str(tmp_path / "x.svg")])
    assert missing.exit_code == 1
    assert "no application named 'no-such-app'; running: " in missing.output and "live-hello" in missing.output
