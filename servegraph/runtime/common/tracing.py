"""OpenTelemetry traces: every hop of a request is a span, and one request is one trace.

Off unless asked for; then the cluster's processes (set it where the cluster starts, or in its
runtime_env's env_vars) read:

- ``SERVEGRAPH_TRACING``: ``console`` (each process writes its spans as JSON to
  ``<Ray session>/logs/serve/spans/<process>_tracing.json``, as Ray Serve's default exporter does),
  ``otlp`` (OTLP over HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``), or
  ``module:function``, a function taking nothing that returns a list of span processors (Ray Serve's
  ``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH``, honoured too);
- ``SERVEGRAPH_TRACING_SAMPLING_RATIO`` (or Ray Serve's ``RAY_SERVE_TRACING_SAMPLING_RATIO``): the
  share of new traces recorded, 1.0 by default; a request whose client sent a sampled ``traceparent``
  is always recorded.

Spans: the proxy's (``proxy <METHOD> <route>``, a server span whose parent is the client's
``traceparent`` header when it sends one), one per call a replica handles (``<deployment>.<method>``),
parented to the span that made the call: the proxy's, a caller replica's, or the driver's current span.
The parent travels with the call as a W3C ``traceparent`` (see context.RequestContext.trace), through
handles, the plan and the compiled lanes. Nothing of OpenTelemetry is imported while tracing is off.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .. import ray_compat

EXPORTER = os.environ.get("SERVEGRAPH_TRACING") or os.environ.get("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH", "")
ENABLED = bool(EXPORTER.strip())

_tracer: Any = None
_lock = threading.Lock()


class TracingSetupError(RuntimeError):
    """Tracing was asked for and cannot run (a missing package, an exporter that does not import)."""


def _sampling_ratio() -> float:
    raw = os.environ.get("SERVEGRAPH_TRACING_SAMPLING_RATIO") or os.environ.get("RAY_SERVE_TRACING_SAMPLING_RATIO") or "1.0"
    try:
        ratio = float(raw)
    except ValueError:
        raise TracingSetupError(f"SERVEGRAPH_TRACING_SAMPLING_RATIO must be a number from 0 to 1, got {raw!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise TracingSetupError(f"SERVEGRAPH_TRACING_SAMPLING_RATIO must be from 0 to 1, got {ratio}")
    return ratio


def _processors(component: str) -> list[Any]:
    exporter = EXPORTER.strip()
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        base = ray_compat.logs_dir() or "/tmp"
        spans_dir = os.path.join(base, "serve", "spans")
        os.makedirs(spans_dir, exist_ok=True)
        out = open(os.path.join(spans_dir, f"{component}_tracing.json"), "a")  # noqa: SIM115  # open while the process lives
        return [SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n"))]
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingSetupError(
                "SERVEGRAPH_TRACING=otlp needs the OTLP exporter: pip install 'servegraph[tracing]'"
            ) from None
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return [BatchSpanProcessor(OTLPSpanExporter())]
    module, _, name = exporter.partition(":")
    if not module or not name:
        raise TracingSetupError(
            f"SERVEGRAPH_TRACING is {exporter!r}: use console, otlp, or module:function returning span processors"
        )
    import importlib

    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TracingSetupError(f"SERVEGRAPH_TRACING={exporter}: cannot import it ({exc})") from None
    try:
        processors = factory()
    except Exception as exc:
        raise TracingSetupError(f"SERVEGRAPH_TRACING={exporter}: calling it failed ({type(exc).__name__}: {exc}); it must take no arguments") from None
    if not isinstance(processors, list):
        raise TracingSetupError(f"SERVEGRAPH_TRACING={exporter}: it must return a list of span processors, got {type(processors).__name__}")
    return processors


def setup(component: str) -> None:
    """Start tracing in this process (once), naming it ``component`` (the file and the service name).

    Raises:
        TracingSetupError: tracing is asked for and cannot run.
    """
    global _tracer
    if not ENABLED or _tracer is not None:
        return
    with _lock:
        if _tracer is not None:
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
        except ImportError:
            raise TracingSetupError("SERVEGRAPH_TRACING needs OpenTelemetry: pip install 'servegraph[tracing]'") from None
        provider = TracerProvider(
            sampler=ParentBasedTraceIdRatio(_sampling_ratio()),
            resource=Resource.create({"service.name": "servegraph", "servegraph.component": component}),
        )
        for processor in _processors(component):
            provider.add_span_processor(processor)
        _tracer = provider.get_tracer("servegraph")


def start(name: str, parent: str, attributes: dict[str, Any], server: bool = True) -> tuple[Any, str]:
    """A started span (None when this process does not trace) and its ``traceparent`` for the calls it makes.

    ``parent`` is the caller's ``traceparent`` ("" for a new trace).
    """
    tracer = _tracer
    if tracer is None:
        return None, parent
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    context = propagator.extract({"traceparent": parent}) if parent else None
    kind = trace.SpanKind.SERVER if server else trace.SpanKind.INTERNAL
    span = tracer.start_span(name, context=context, kind=kind, attributes=attributes)
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier.get("traceparent", parent)


def end(span: Any, error: BaseException | None = None, attributes: dict[str, Any] | None = None) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def current_traceparent() -> str:
    """The ``traceparent`` of the span current in the caller's own OpenTelemetry context (a driver that
    traces its own code), or ""; read only while tracing is on."""
    if not ENABLED:
        return ""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return ""
    if not trace.get_current_span().get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")
