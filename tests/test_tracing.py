"""Traces: one HTTP request is one trace, with a span per hop parented as the calls were made."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TESTS
from support import user_env

from servegraph.runtime.common import tracing


@pytest.mark.ray
def test_a_request_is_one_trace_with_a_span_per_hop(tmp_path):
    """The console exporter, on a cluster of the child's own (tracing is set where the cluster starts)."""
    proc = subprocess.run(
        [sys.executable, str(TESTS / "tracing_child.py")],
        env=user_env(tmp_path, SERVEGRAPH_TRACING="console"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["answers"] == {"hello": "Hola Dora", "pipeline": json.dumps({"length": 11.0, "vowels": 3, "score": 14.0})}

    # The hello graph: client -> proxy -> LanguageClassifier.__call__ -> SpanishResponder.say_hello.
    spans = {s["name"]: s for s in out["spans"]["traced-hello"]}
    assert set(spans) == {"proxy POST /", "LanguageClassifier.__call__", "SpanishResponder.say_hello"}
    assert {s["context"]["trace_id"] for s in spans.values()} == {"0x4bf92f3577b34da6a3ce929d0e0e4736"}  # the client's
    assert spans["proxy POST /"]["parent_id"] == "0x00f067aa0ba902b7"  # the client's span
    assert spans["LanguageClassifier.__call__"]["parent_id"] == spans["proxy POST /"]["context"]["span_id"]
    assert spans["SpanishResponder.say_hello"]["parent_id"] == spans["LanguageClassifier.__call__"]["context"]["span_id"]
    assert spans["LanguageClassifier.__call__"]["attributes"]["servegraph.deployment"] == "LanguageClassifier"

    # The pipeline (an InputNode graph the proxy runs): a new trace, every call a child of the proxy's span.
    spans = {s["name"]: s for s in out["spans"]["traced-pipeline"]}
    assert set(spans) == {"proxy POST /pipeline", "preprocess.__call__", "LengthModel.predict", "VowelModel.predict", "combine.__call__"}
    assert len({s["context"]["trace_id"] for s in spans.values()}) == 1
    root = spans["proxy POST /pipeline"]
    assert root.get("parent_id") is None
    for name, span in spans.items():
        if name != "proxy POST /pipeline":
            assert span["parent_id"] == root["context"]["span_id"], name


def test_without_the_setting_nothing_traces(monkeypatch):
    assert tracing._tracer is None
    span, parent = tracing.start("x", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", {})
    assert span is None and parent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nonsense", "use console, otlp, or module:function"),
        ("no_such_module:make", "cannot import it"),
        ("json:dumps", "calling it failed .*must take no arguments"),
        ("os:getcwd", "must return a list of span processors, got str"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_with_what_to_do(monkeypatch, setting, message):
    monkeypatch.setattr(tracing, "EXPORTER", setting)
    monkeypatch.setattr(tracing, "ENABLED", True)
    monkeypatch.setattr(tracing, "_tracer", None)
    with pytest.raises(tracing.TracingSetupError, match=message):
        tracing.setup("test")
    assert tracing._tracer is None


def test_a_bad_sampling_ratio_is_refused(monkeypatch):
    monkeypatch.setenv("SERVEGRAPH_TRACING_SAMPLING_RATIO", "2")
    with pytest.raises(tracing.TracingSetupError, match="from 0 to 1"):
        tracing._sampling_ratio()
