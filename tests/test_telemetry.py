"""The telemetry core without Ray: what the request path records becomes Ray Serve's metrics at a flush."""

from __future__ import annotations

import pytest

from servegraph.runtime.actors import proxy, replica  # noqa: F401  (their expanders register)
from servegraph.runtime.common import telemetry
from servegraph.runtime.data import router  # noqa: F401  (its expander registers)


@pytest.fixture
def exported(monkeypatch):
    """Every metric operation a flush makes, as (kind, name, tags, value); stats deltas sent to the sink."""
    calls: list[tuple[str, str, dict, float]] = []
    monkeypatch.setattr(telemetry, "ENABLED", True)
    monkeypatch.setattr(telemetry, "inc", lambda name, tags, n=1: calls.append(("inc", name, dict(tags), n)))
    monkeypatch.setattr(telemetry, "observe", lambda name, tags, v: calls.append(("observe", name, dict(tags), v)))
    monkeypatch.setattr(telemetry, "set_gauge", lambda name, tags, v: calls.append(("gauge", name, dict(tags), v)))
    sent: list[tuple[dict, dict]] = []
    monkeypatch.setattr(telemetry, "_stats_sink", lambda d, e: sent.append((d, e)))
    telemetry.flush()  # whatever an earlier test left
    calls.clear()
    sent.clear()
    return calls, sent


def test_grpc_requests_count_by_status_code_name_and_errors_apart(exported):
    calls, _ = exported
    telemetry.record(("grpc", "greeter", "/user.Greeter/SayHello", "greeter", "OK", "Greeter"), 3.0)
    telemetry.record(("grpc", "greeter", "/user.Greeter/SayHello", "greeter", "OK", "Greeter"), 5.0)
    telemetry.record(("grpc", "greeter", "/user.Greeter/SayHello", "greeter", "NOT_FOUND", ""), 1.0)
    telemetry.flush()
    incs = {(name, tags.get("status_code") or tags.get("error_code")): n for kind, name, tags, n in calls if kind == "inc"}
    assert incs == {
        ("serve_num_grpc_requests", "OK"): 2,
        ("serve_num_grpc_requests", "NOT_FOUND"): 1,
        ("serve_num_grpc_error_requests", "NOT_FOUND"): 1,
        ("serve_num_deployment_grpc_error_requests", "NOT_FOUND"): 1,
    }
    assert sorted(v for kind, name, _, v in calls if name == "serve_grpc_request_latency_ms") == [1.0, 3.0, 5.0]


def test_replica_events_become_request_error_latency_and_edge_metrics_and_stats(exported):
    calls, sent = exported
    key = ("replica", "app", "B", "r1", "/", "predict", ("A",), "")
    telemetry.record(key, (2.0, 4.0))
    telemetry.record(key, (3.0, 3.5))
    telemetry.record(("replica", "app", "B", "r1", "/", "predict", ("A",), "ValueError"), (1.0, 1.0))
    telemetry.flush()
    by_name: dict[str, float] = {}
    for kind, name, _tags, n in calls:
        if kind == "inc":
            by_name[name] = by_name.get(name, 0) + n
    assert by_name == {
        "serve_deployment_request_counter": 2,
        "serve_deployment_error_counter": 1,
        "servegraph_edge_calls": 3,
        "servegraph_edge_errors": 1,
    }
    edge_tags = next(tags for kind, name, tags, _ in calls if name == "servegraph_edge_calls")
    assert edge_tags == {"application": "app", "edge": "A -> B.predict", "source": "A", "target": "B", "method": "predict"}
    (deployments, edges), = sent
    assert deployments[("app", "B")][:2] == (3, 1)
    assert edges[("app", "A", "B", "predict")][:2] == (3, 1)


def test_counters_and_gauges_are_exported_with_every_tag_key_named(exported):
    calls, _ = exported
    telemetry.count("serve_deployment_replica_starts", ("B", "r1", "app"))
    telemetry.count("serve_deployment_replica_starts", ("B", "r1", "app"))
    token = telemetry.add_gauge_source(lambda: [("serve_replica_processing_queries", {"deployment": "B", "replica": "r1", "application": "app"}, 3)])
    try:
        telemetry.flush()
    finally:
        telemetry.remove_gauge_source(token)
        telemetry.stop(flush_first=False)
    assert ("inc", "serve_deployment_replica_starts", {"deployment": "B", "replica": "r1", "application": "app"}, 2) in calls
    assert ("gauge", "serve_replica_processing_queries", {"deployment": "B", "replica": "r1", "application": "app"}, 3) in calls


def test_percentiles_come_from_bucket_counts():
    buckets = [0] * (len(telemetry.STATS_BUCKETS_MS) + 1)
    i = telemetry.STATS_BUCKETS_MS.index(10)
    buckets[i] = 100  # 100 samples in (7.5, 10]
    assert 7.5 < telemetry.percentile(buckets, 0.5) <= 10
    assert telemetry.percentile([0] * len(buckets), 0.5) is None


def test_the_stats_window_sums_what_is_in_it_and_forgets_the_rest():
    window = telemetry.StatsWindow(keep_s=60)
    one = (1, 0, tuple([0] * (len(telemetry.STATS_BUCKETS_MS) + 1)))
    window.add(100.0, {("app", "A"): one})
    window.add(105.0, {("app", "A"): (4, 1, one[2])})
    summary = window.summary(("app", "A"), 106.0, window_s=2.0)
    assert summary["total"] == 5 and summary["errors_total"] == 1
    assert summary["per_s"] == 2.0  # 4 in the last 2 s
    window.add(200.0, {})
    assert window.keys() == []
