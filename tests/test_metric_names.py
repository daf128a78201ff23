"""Ray Serve's own Grafana dashboards read servegraph's metrics without edits (checked without Ray running).

Ray ships the dashboards it generates for Serve as Python panel lists; every ``ray_serve_*`` series a panel
queries must be one servegraph exports, with every label the panel filters or groups by.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from servegraph.runtime.common.telemetry import METRICS

_RAY = Path(importlib.util.find_spec("ray").origin).parent  # type: ignore[union-attr, arg-type]
DASHBOARDS = [
    _RAY / "dashboard/modules/metrics/dashboards/serve_dashboard_panels.py",
    _RAY / "dashboard/modules/metrics/dashboards/serve_deployment_dashboard_panels.py",
]

_EXPR = re.compile(r"expr=(?:f)?(['\"])(.*?)\1,\s*$", re.MULTILINE)
_SERIES = re.compile(r"ray_serve_[a-z_]*[a-z]")
_MATCHER = re.compile(r"([A-Za-z_]+)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"by \(([^)]*)\)")
#: Labels every Ray metric carries or that dashboards add themselves (``{global_filters}``).
_RAY_LABELS = {"le", "__name__", "global_filters"}


def _queries() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for _, expr in _EXPR.findall(path.read_text()):
            if "ray_serve_" in expr:
                found.append((path.name, expr))
    return found


def _metric(series: str) -> str:
    """A series' metric name as servegraph gives it to Ray: without Ray's ``ray_`` prefix and the suffix
    Prometheus adds for its type."""
    name = series.removeprefix("ray_")
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name.removesuffix(suffix) in METRICS:
            return name.removesuffix(suffix)
    return name


def test_the_dashboards_are_found():
    assert len(_queries()) >= 30, "Ray's Serve dashboard panels moved; point DASHBOARDS at them"


@pytest.mark.parametrize(("dashboard", "expr"), _queries())
def test_every_serve_panel_reads_a_metric_servegraph_exports(dashboard, expr):
    names = {_metric(series) for series in _SERIES.findall(expr)}
    if "ray_serve_(http|grpc)_request_latency_ms_bucket" in expr:
        names |= {"serve_http_request_latency_ms", "serve_grpc_request_latency_ms"}
    assert names, expr
    labels = set(_MATCHER.findall(expr)) | {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
    labels -= _RAY_LABELS
    for name in names:
        assert name in METRICS, f"{dashboard} reads {name}, which servegraph does not export"
        missing = labels - set(METRICS[name][1])
        assert not missing, f"{dashboard} filters or groups {name} by {sorted(missing)}, which it lacks: {expr}"


def test_metric_kinds_match_the_suffixes_prometheus_gives_them():
    for _, expr in _queries():
        for series in _SERIES.findall(expr):
            name = _metric(series)
            if name not in METRICS:
                continue
            kind = METRICS[name][0]
            if series.endswith("_bucket"):
                assert kind == "histogram", (series, kind)
            elif series.endswith("_total"):
                assert kind == "counter", (series, kind)
            else:
                assert kind == "gauge", (series, kind)


def test_every_exported_metric_is_listed_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in METRICS:
        assert f"ray_{name}" in readme, f"README's metric table lacks ray_{name}"
