"""Metrics on a real cluster: Ray Serve's names read from the Prometheus endpoint of Ray's metrics agent.

Each test deploys its own application and filters every series by it, so counts are exact whatever
else the session's cluster served.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from conftest import METRICS_PORT

import servegraph as serve
from servegraph import InputNode

#: How long a test waits for the numbers it expects (the flusher and Ray's agent each report every second).
WAIT_S = 40.0

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape() -> list[tuple[str, dict[str, str], float]]:
    """Every sample the cluster's metrics agent serves now: (name, labels, value)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def total(samples: list, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over workers, as Prometheus's sum())."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


def wait_for(check: Callable[[list], bool]) -> list:
    """Scrape until ``check(samples)`` holds (bounded by WAIT_S); returns the last scrape either way."""
    deadline = time.monotonic() + WAIT_S
    samples = scrape()
    while not check(samples) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = scrape()
    return samples


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_http_requests_into_the_hello_graph_show_up_under_ray_serve_names(serve_app, http_port):
    from hello import FrenchResponder, LanguageClassifier, SpanishResponder

    app = "metrics-hello"
    graph = LanguageClassifier.bind(SpanishResponder.bind(), FrenchResponder.bind())
    serve_app.run(graph, name=app, route_prefix="/metrics-hello", port=http_port)
    sent = {"spanish": 4, "french": 3}
    for language, n in sent.items():
        for _ in range(n):
            status, headers, _ = post(http_port, "/metrics-hello", json.dumps({"language": language, "name": "Dora"}).encode())
            assert status == 200
            assert headers.get("x-request-id")
    for _ in range(2):  # no language: the classifier raises KeyError, the client gets a 500
        assert post(http_port, "/metrics-hello", json.dumps({"name": "Dora"}).encode())[0] == 500

    def settled(s: list) -> bool:
        return (
            total(s, "ray_serve_num_http_requests_total", application=app) >= 9
            and total(s, "ray_serve_deployment_request_counter_total", application=app, deployment="FrenchResponder") >= 3
            and total(s, "ray_serve_deployment_error_counter_total", application=app) >= 2
            and total(s, "ray_servegraph_edge_calls_total", application=app) >= 16
            and total(s, "ray_serve_handle_request_counter_total", application=app, deployment="FrenchResponder") >= 3
        )

    s = wait_for(settled)
    # The proxy: every request, by status; errors by code; latency observed once per request.
    assert total(s, "ray_serve_num_http_requests_total", application=app, status_code="200", route="/metrics-hello", method="POST") == 7
    assert total(s, "ray_serve_num_http_requests_total", application=app, status_code="500") == 2
    assert total(s, "ray_serve_num_http_error_requests_total", application=app, error_code="500") == 2
    assert total(s, "ray_serve_num_deployment_http_error_requests_total", application=app, deployment="LanguageClassifier") == 2
    assert total(s, "ray_serve_http_request_latency_ms_count", application=app) == 9
    # The replicas: successes and errors apart (as Ray Serve counts them), with the route the request came in on.
    assert total(s, "ray_serve_deployment_request_counter_total", application=app, deployment="LanguageClassifier", route="/metrics-hello") == 7
    assert total(s, "ray_serve_deployment_error_counter_total", application=app, deployment="LanguageClassifier") == 2
    assert any(
        lab.get("exception_type") == "KeyError" for n, lab, _ in s if n == "ray_serve_deployment_error_counter_total" and lab.get("application") == app
    )
    assert total(s, "ray_serve_deployment_request_counter_total", application=app, deployment="SpanishResponder", route="/metrics-hello") == 4
    assert total(s, "ray_serve_deployment_request_counter_total", application=app, deployment="FrenchResponder") == 3
    assert total(s, "ray_serve_deployment_processing_latency_ms_count", application=app, deployment="SpanishResponder") == 4
    # The handles the classifier calls its responders through.
    assert total(s, "ray_serve_handle_request_counter_total", application=app, deployment="SpanishResponder") == 4
    assert total(s, "ray_serve_num_router_requests_total", application=app, deployment="FrenchResponder") == 3
    # The graph's edges, counted per call.
    assert total(s, "ray_servegraph_edge_calls_total", application=app, source="LanguageClassifier", target="SpanishResponder", method="say_hello") == 4
    assert total(s, "ray_servegraph_edge_calls_total", application=app, source="LanguageClassifier", target="FrenchResponder") == 3
    assert total(s, "ray_servegraph_edge_errors_total", application=app, source="LanguageClassifier") == 0
    # HTTP requests enter the ingress along the edge from the request's input.
    assert total(s, "ray_servegraph_edge_calls_total", application=app, source="<input>", target="LanguageClassifier") == 9
    assert total(s, "ray_servegraph_edge_errors_total", application=app, source="<input>", target="LanguageClassifier") == 2
    # Replica and deployment state from the controller.
    s = wait_for(lambda s: total(s, "ray_serve_deployment_replica_healthy", application=app) >= 3)
    for deployment in ("LanguageClassifier", "SpanishResponder", "FrenchResponder"):
        assert total(s, "ray_serve_deployment_replica_healthy", application=app, deployment=deployment) == 1
        assert total(s, "ray_serve_deployment_status", application=app, deployment=deployment) == 6  # HEALTHY
        assert total(s, "ray_serve_deployment_replica_starts_total", application=app, deployment=deployment) == 1
    assert total(s, "ray_serve_application_status", application=app) == 6  # RUNNING


@serve.deployment
def first(x: int) -> int:
    return x + 1


@serve.deployment
class Twice:
    def apply(self, x: int) -> int:
        return 2 * x


@serve.deployment
def fail_on_three(a: int, b: int) -> int:
    if a == 6:
        raise ValueError("two in, six here")
    return a + b


with InputNode() as value:
    _one = first.bind(value)
    _twice = Twice.bind()
    FANOUT_GRAPH = fail_on_three.bind(_twice.apply.bind(_one), _twice.apply.bind(_one))


@pytest.mark.parametrize("path", ["plan", "compiled"])
def test_edge_counts_follow_the_graphs_fan_out_on_both_paths(serve_app, path):
    app = f"metrics-edges-{path}"
    handle = serve_app.run(FANOUT_GRAPH, name=app, route_prefix=None, compiled=path == "compiled")
    if path == "compiled":
        from servegraph.runtime.data.lanes import lanes_for

        lanes = lanes_for(app)
        deadline = time.monotonic() + WAIT_S
        while lanes.active() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lanes.active() >= 1, lanes.reason
    inputs = [1, 2, 3, 4, 5]  # 2 fails in fail_on_three
    for x in inputs:
        if x == 2:
            with pytest.raises(ValueError, match="two in, six here"):
                handle.remote(x).result(timeout_s=60)
        else:
            assert handle.remote(x).result(timeout_s=60) == 4 * (x + 1)
    n = len(inputs)

    s = wait_for(lambda s: total(s, "ray_servegraph_edge_calls_total", application=app) >= 4 * n)
    edges = {
        (lab["source"], lab["target"], lab["method"]): v
        for name, lab, v in s
        if name == "ray_servegraph_edge_calls_total" and lab.get("application") == app
    }
    # input -> first; first -> Twice.apply twice per request (the fan-out); fail_on_three is called once
    # per request with both of Twice's results.
    assert edges == {
        ("<input>", "first", "__call__"): n,
        ("first", "Twice", "apply"): 2 * n,
        ("Twice", "fail_on_three", "__call__"): n,
    }
    assert total(s, "ray_servegraph_edge_errors_total", application=app, source="Twice", target="fail_on_three") == 1
    assert total(s, "ray_servegraph_edge_latency_ms_count", application=app, source="first") == 2 * n

    stats = wait_for_stats(app, lambda st: st["deployments"]["Twice"]["requests_total"] >= 2 * n)
    assert stats["deployments"]["Twice"]["requests_total"] == 2 * n
    assert stats["deployments"]["fail_on_three"]["errors_total"] == 1
    assert stats["deployments"]["first"]["replicas_running"] == 1
    by_edge = {(e["source"], e["target"]): e for e in stats["edges"]}
    assert by_edge[("first", "Twice")]["calls_total"] == 2 * n
    assert by_edge[("<input>", "first")]["calls_total"] == n
    assert by_edge[("first", "Twice")]["p50_ms"] is not None


def wait_for_stats(app: str, check: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + WAIT_S
    stats = serve.graph_stats(app)
    while not check(stats) and time.monotonic() < deadline:
        time.sleep(0.5)
        stats = serve.graph_stats(app)
    return stats


def test_graph_stats_of_an_unknown_application_says_so(ray_cluster):
    from servegraph.errors import DeploymentError

    with pytest.raises(DeploymentError, match="Application 'no-such-app' does not exist"):
        serve.graph_stats("no-such-app")
