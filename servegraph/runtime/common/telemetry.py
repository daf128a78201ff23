"""Metrics with Ray Serve's names, per-edge metrics, and the numbers behind the live graph.

The request path only appends to a dict in this process (:func:`record`: one lock, one append). A
thread per process (the *flusher*, started by the first component that records and stopped with
servegraph's client) turns what was recorded into

- Ray metrics (``ray.util.metrics``) under Ray Serve's names, types, units and tag keys, so the
  Prometheus endpoint of Ray's metrics agent serves them and Ray Serve's Grafana dashboards read them
  (see :data:`METRICS`; Ray prefixes every name with ``ray_`` and counters get ``_total``);
- per-edge metrics (``servegraph_edge_*``: caller deployment, or ``<input>``, to callee deployment.method);
- deltas of request counts, errors and latency buckets per deployment and per edge, sent to the
  controller, which keeps a short window of them for ``graph_stats`` (the live graph, ``status --graph``).

``SERVEGRAPH_METRICS=0`` in the environment of the cluster's processes turns all of it off (requests
keep their ids). ``SERVEGRAPH_METRICS_INTERVAL_S`` sets how often the flusher runs (default 1 s).

Edges are measured where a call arrives: the callee knows its caller (carried with the call, see
router.py) and the time the call was sent, so an edge's latency includes its time in queues.
"""

from __future__ import annotations

import atexit
import bisect
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .context import current_replica
from .records import CONTROLLER_NAME, NAMESPACE

ENABLED = os.environ.get("SERVEGRAPH_METRICS", "1").strip().lower() not in ("0", "false", "off", "no")
INTERVAL_S = float(os.environ.get("SERVEGRAPH_METRICS_INTERVAL_S", "1.0"))


# Ray Serve's histogram boundaries (ray/serve/_private/constants.py), so its dashboards' bucket
# queries read ours the same way.
LATENCY_BUCKETS_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 60000, 120000, 300000, 600000]
STARTUP_BUCKETS_MS: list[float] = [5, 20, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000, 30000, 60000, 120000, 240000]

#: Finer buckets for the live graph's percentiles (sent to the controller; not exported).
STATS_BUCKETS_MS = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500,
    750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 30000, 60000, 120000, 300000,
)  # fmt: skip

_REPLICA = ("deployment", "replica", "application")
_EDGE = ("application", "edge", "source", "target", "method")

#: Every metric servegraph exports: name (as given to Ray) -> (kind, tag keys, description, boundaries).
METRICS: dict[str, tuple[str, tuple[str, ...], str, list[float] | None]] = {
    # HTTP proxy (Ray Serve: _private/request_ingress_metrics.py)
    "serve_num_http_requests": ("counter", ("route", "method", "application", "status_code"), "The number of HTTP requests processed.", None),
    "serve_num_http_error_requests": ("counter", ("route", "error_code", "method", "application"), "The number of errored HTTP responses.", None),
    "serve_num_deployment_http_error_requests": (
        "counter", ("deployment", "error_code", "method", "route", "application"),
        "The number of errored HTTP responses returned by each deployment.", None,
    ),
    "serve_http_request_latency_ms": (
        "histogram", ("method", "route", "application", "status_code"),
        "The end-to-end latency of HTTP requests (measured from the Serve HTTP proxy).", LATENCY_BUCKETS_MS,
    ),
    "serve_num_ongoing_http_requests": ("gauge", ("node_id", "node_ip_address"), "The number of ongoing requests in this HTTP proxy.", None),
    # gRPC proxy
    "serve_num_grpc_requests": ("counter", ("route", "method", "application", "status_code"), "The number of gRPC requests processed.", None),
    "serve_num_grpc_error_requests": ("counter", ("route", "error_code", "method", "application"), "The number of errored gRPC responses.", None),
    "serve_num_deployment_grpc_error_requests": (
        "counter", ("deployment", "error_code", "method", "route", "application"),
        "The number of errored gRPC responses returned by each deployment.", None,
    ),
    "serve_grpc_request_latency_ms": (
        "histogram", ("method", "route", "application", "status_code"),
        "The end-to-end latency of gRPC requests (measured from the Serve gRPC proxy).", LATENCY_BUCKETS_MS,
    ),
    "serve_num_ongoing_grpc_requests": ("gauge", ("node_id", "node_ip_address"), "The number of ongoing requests in this gRPC proxy.", None),
    # Handles and routers (Ray Serve: handle.py, _private/router.py)
    "serve_handle_request_counter": (
        "counter", ("handle", "deployment", "route", "application"),
        "The number of handle.remote() calls that have been made on this handle.", None,
    ),
    "serve_num_router_requests": (
        "counter", ("deployment", "route", "application", "handle", "actor_id"),
        "The number of requests processed by the router.", None,
    ),
    "serve_deployment_queued_queries": (
        "gauge", ("deployment", "application", "handle", "actor_id"),
        "The current number of queries to this deployment waiting to be assigned to a replica.", None,
    ),
    "serve_num_ongoing_requests_at_replicas": (
        "gauge", ("deployment", "application", "handle", "actor_id"),
        "The current number of requests to this deployment that have been submitted to a replica.", None,
    ),
    "serve_num_scheduling_tasks": (
        "gauge", ("app", "deployment", "actor_id", "application", "handle_source"), "The number of request routing tasks in the router.", None,
    ),
    "serve_num_scheduling_tasks_in_backoff": (
        "gauge", ("app", "deployment", "actor_id", "application", "handle_source"),
        "The number of request routing tasks in the router that are undergoing backoff.", None,
    ),
    # Replicas (Ray Serve: _private/replica.py; deployment, replica, application added as it adds them)
    "serve_deployment_replica_starts": ("counter", _REPLICA, "The number of times this replica has been restarted due to failure.", None),
    "serve_deployment_request_counter": ("counter", (*_REPLICA, "route"), "The number of queries that have been processed in this replica.", None),
    "serve_deployment_error_counter": (
        "counter", (*_REPLICA, "route", "exception_type"), "The number of exceptions that have occurred in this replica.", None,
    ),
    "serve_deployment_processing_latency_ms": (
        "histogram", (*_REPLICA, "route"), "The latency for queries to be processed.", LATENCY_BUCKETS_MS,
    ),
    "serve_replica_processing_queries": ("gauge", _REPLICA, "The current number of queries being processed.", None),
    # Multiplexed models (Ray Serve: multiplex.py)
    "serve_multiplexed_model_load_latency_ms": ("histogram", _REPLICA, "The time it takes to load a model.", LATENCY_BUCKETS_MS),
    "serve_multiplexed_model_unload_latency_ms": ("histogram", _REPLICA, "The time it takes to unload a model.", LATENCY_BUCKETS_MS),
    "serve_num_multiplexed_models": ("gauge", _REPLICA, "The number of models loaded on the current replica.", None),
    "serve_registered_multiplexed_model_id": ("gauge", (*_REPLICA, "model_id"), "The model id registered on the current replica.", None),
    "serve_multiplexed_get_model_requests_counter": ("counter", _REPLICA, "The counter for get model requests on the current replica.", None),
    "serve_multiplexed_models_unload_counter": ("counter", _REPLICA, "The counter for unloaded models on the current replica.", None),
    "serve_multiplexed_models_load_counter": ("counter", _REPLICA, "The counter for loaded models on the current replica.", None),
    # The controller (Ray Serve: _private/deployment_state.py, application_state.py, autoscaling_state.py)
    "serve_deployment_replica_healthy": ("gauge", ("deployment", "application"), "Tracks whether this deployment replica is healthy. 1 means healthy, 0 means unhealthy.", None),
    "serve_health_check_failures_total": ("counter", ("deployment", "application"), "The number of health check failures.", None),
    "serve_replica_startup_latency_ms": (
        "histogram", ("deployment", "application"), "Time from replica creation to ready state in milliseconds.", STARTUP_BUCKETS_MS,
    ),
    "serve_deployment_status": (
        "gauge", ("deployment", "application"),
        "Numeric status of deployment. 0=UNKNOWN, 1=DEPLOY_FAILED, 2=UNHEALTHY, 3=UPDATING, 4=UPSCALING, 5=DOWNSCALING, 6=HEALTHY.", None,
    ),
    "serve_application_status": (
        "gauge", ("application",),
        "Numeric status of application. 0=UNKNOWN, 1=DEPLOY_FAILED, 2=UNHEALTHY, 3=NOT_STARTED, 4=DELETING, 5=DEPLOYING, 6=RUNNING.", None,
    ),
    "serve_autoscaling_target_replicas": ("gauge", ("deployment", "application"), "The target number of replicas for this deployment.", None),
    "serve_autoscaling_desired_replicas": ("gauge", ("deployment", "application"), "The raw autoscaling decision (number of replicas) from the autoscaling policy before applying min/max bounds.", None),
    "serve_autoscaling_total_requests": ("gauge", ("deployment", "application"), "Total number of requests as seen by the autoscaler.", None),
    "serve_controller_num_control_loops": ("gauge", ("actor_id",), "The number of control loops performed by the controller.", None),
    "serve_controller_control_loop_duration_s": ("gauge", (), "The duration of the last control loop.", None),
    # Graph edges (servegraph's own: no peer has them)
    "servegraph_edge_calls": ("counter", _EDGE, "Calls along one edge of the compiled graph (caller -> deployment.method).", None),
    "servegraph_edge_errors": ("counter", _EDGE, "Calls along one edge that raised.", None),
    "servegraph_edge_latency_ms": (
        "histogram", _EDGE, "Latency of calls along one edge, from when the caller sent it to when the callee finished.", LATENCY_BUCKETS_MS,
    ),
}  # fmt: skip

#: Ray Serve's numeric statuses (its ``DeploymentStatus.to_numeric``, ``ApplicationStatus``).
DEPLOYMENT_STATUS_NUMBERS = {"DEPLOY_FAILED": 1, "UNHEALTHY": 2, "UPDATING": 3, "UPSCALING": 4, "DOWNSCALING": 5, "HEALTHY": 6}
APPLICATION_STATUS_NUMBERS = {"DEPLOY_FAILED": 1, "UNHEALTHY": 2, "NOT_STARTED": 3, "DELETING": 4, "DEPLOYING": 5, "RUNNING": 6}


# What the request path records ---------------------------------------------------------------
_lock = threading.Lock()
#: Event key (its first item names the kind, see :func:`expander`) -> the values recorded for it.
_events: dict[tuple, list[Any]] = {}
#: Counter name -> tag values (in METRICS order) -> count.
_counts: dict[tuple[str, tuple[str, ...]], int] = {}


def record(key: tuple, value: Any) -> None:
    """One event (the hot path: kept to a dict append); its kind's expander reads it at the next flush."""
    with _lock:
        values = _events.get(key)
        if values is None:
            _events[key] = [value]
        else:
            values.append(value)


def count(name: str, tag_values: tuple[str, ...], n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` (tag values in the order of its tag keys) at the next flush."""
    key = (name, tag_values)
    with _lock:
        _counts[key] = _counts.get(key, 0) + n


# Gauges are read when the flusher runs: a source returns (metric name, tags, value) triples.
GaugeSource = Callable[[], Iterable[tuple[str, dict[str, str], float]]]
_gauge_sources: dict[int, GaugeSource] = {}


def add_gauge_source(source: GaugeSource) -> int:
    """Read ``source`` at every flush until :func:`remove_gauge_source`; starts the flusher."""
    token = id(source)
    _gauge_sources[token] = source
    start()
    return token


def remove_gauge_source(token: int) -> None:
    _gauge_sources.pop(token, None)


# Observers of finished requests in a replica (the access log; see replica_logging) --------------
#: ``observer(method, ok, elapsed_ms, error, http)``: ``http`` is (HTTP method, status) for a request that came
#: over HTTP, else None.
RequestObserver = Callable[[str, bool, float, "BaseException | None", "tuple[str, Any] | None"], None]
_observers: list[RequestObserver] = []


def add_request_observer(observer: RequestObserver) -> None:
    """Call ``observer(method, ok, elapsed_ms, error, http)`` after every request a replica in this process
    handles, with the request's context (``context.current_request()``) still set: the request's one timing."""
    if observer not in _observers:
        _observers.append(observer)


def remove_request_observer(observer: RequestObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


def observers() -> list[RequestObserver]:
    return _observers


# The flusher -------------------------------------------------------------------------------------
_metrics: dict[str, Any] = {}
_thread: threading.Thread | None = None
_stop = threading.Event()
_thread_lock = threading.Lock()
#: Where this process sends stats deltas (replicas: the controller), or None.
_stats_sink: Callable[[dict, dict], None] | None = None


def set_stats_sink(sink: Callable[[dict, dict], None] | None) -> None:
    global _stats_sink
    _stats_sink = sink


def start() -> None:
    """Start this process's flusher (once; again after :func:`stop`). Nothing with metrics off."""
    global _thread
    if not ENABLED or (_thread is not None and _thread.is_alive()):
        return
    with _thread_lock:
        if _thread is not None and _thread.is_alive():
            return
        _stop.clear()
        _thread = threading.Thread(target=_run, name="servegraph-metrics", daemon=True)
        _thread.start()


def stop(flush_first: bool = True) -> None:
    """Stop the flusher (servegraph was shut down in this process), sending what is recorded first."""
    global _thread
    thread, _thread = _thread, None
    _stop.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=2.0)
    if flush_first:
        try:
            flush()
        except Exception:  # Ray may be gone already (at exit): what was recorded is lost with it
            pass


atexit.register(stop, False)


def _run() -> None:
    while not _stop.wait(INTERVAL_S):
        try:
            flush()
        except Exception as exc:  # a metrics failure must never take a process down; say it once per kind
            _warn_once(f"servegraph: exporting metrics failed: {type(exc).__name__}: {exc}")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


def _metric(name: str) -> Any:
    metric = _metrics.get(name)
    if metric is None:
        from ray.util import metrics as ray_metrics

        kind, keys, description, boundaries = METRICS[name]
        if kind == "counter":
            metric = ray_metrics.Counter(name, description=description, tag_keys=keys)
        elif kind == "gauge":
            metric = ray_metrics.Gauge(name, description=description, tag_keys=keys)
        else:
            metric = ray_metrics.Histogram(name, description=description, boundaries=boundaries or [], tag_keys=keys)
        _metrics[name] = metric
    return metric


def inc(name: str, tags: dict[str, str], n: float = 1) -> None:
    """Add to a Ray counter now (the control plane's rare events; the request path uses :func:`count`)."""
    if ENABLED and n:
        _metric(name).inc(n, tags=tags)


def node_tags() -> dict[str, str]:
    """Ray Serve's node tags for a proxy's metrics (node_id, node_ip_address); empty outside Ray.

    Asking Ray's runtime context outside a Ray process would start a local cluster: a proxy built in a
    test, or one whose cluster went away, must not.
    """
    import ray

    if not ray.is_initialized():
        return {"node_id": "", "node_ip_address": ""}
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip_address": ray.util.get_node_ip_address()}


def replica_tags() -> dict[str, str]:
    """Ray Serve's tags of metrics recorded in a replica (deployment, replica, application); {} elsewhere."""
    replica = current_replica()
    if replica is None:
        return {}
    return {"deployment": replica.deployment, "replica": replica.replica_tag, "application": replica.app_name}


def set_gauge(name: str, tags: dict[str, str], value: float) -> None:
    if ENABLED:
        _metric(name).set(value, tags=tags)


def observe(name: str, tags: dict[str, str], value: float) -> None:
    if ENABLED:
        _metric(name).observe(value, tags=tags)


class Stats:
    """Count, errors and latency buckets (:data:`STATS_BUCKETS_MS`, one more for beyond) of some events."""

    __slots__ = ("count", "errors", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.buckets = [0] * (len(STATS_BUCKETS_MS) + 1)

    def add(self, samples: list[float], error: bool) -> None:
        self.count += len(samples)
        if error:
            self.errors += len(samples)
        for ms in samples:
            self.buckets[bisect.bisect_left(STATS_BUCKETS_MS, ms)] += 1

    def as_tuple(self) -> tuple[int, int, tuple[int, ...]]:
        return (self.count, self.errors, tuple(self.buckets))


#: Expanders by event kind: (key, values, stats by deployment, stats by edge) -> None. Registered by
#: the modules that record (replica, proxy, router), so this module knows no event's shape.
Expander = Callable[[tuple, list[float], dict, dict], None]
_EXPANDERS: dict[str, Expander] = {}


def expander(kind: str) -> Callable[[Expander], Expander]:
    def register(fn: Expander) -> Expander:
        _EXPANDERS[kind] = fn
        return fn

    return register


def flush() -> None:
    """Export what was recorded since the last flush; send the stats deltas to the sink."""
    global _events, _counts
    with _lock:
        events, _events = _events, {}
        counts, _counts = _counts, {}
    deployments: dict[tuple, Stats] = {}
    edges: dict[tuple, Stats] = {}
    for key, values in events.items():
        _EXPANDERS[key[0]](key, values, deployments, edges)
    for (name, tag_values), n in counts.items():
        inc(name, dict(zip(METRICS[name][1], tag_values, strict=True)), n)
    for source in list(_gauge_sources.values()):
        try:
            for name, tags, value in source():
                set_gauge(name, tags, value)
        except Exception as exc:
            _warn_once(f"servegraph: reading a gauge failed: {type(exc).__name__}: {exc}")
    sink = _stats_sink
    if sink is not None and (deployments or edges):
        sink({k: v.as_tuple() for k, v in deployments.items()}, {k: v.as_tuple() for k, v in edges.items()})


# Reading stats (the controller) ------------------------------------------------------------------
def percentile(buckets: Iterable[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of latencies counted in :data:`STATS_BUCKETS_MS` buckets, interpolated
    within its bucket; None with no samples.

    >>> percentile([0, 10] + [0] * len(STATS_BUCKETS_MS), 0.5)
    0.375
    """
    counts = list(buckets)
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = STATS_BUCKETS_MS[i - 1] if i > 0 else 0.0
            high = STATS_BUCKETS_MS[i] if i < len(STATS_BUCKETS_MS) else STATS_BUCKETS_MS[-1] * 2
            return low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    return float(STATS_BUCKETS_MS[-1])


class StatsWindow:
    """The last ``keep_s`` seconds of stats deltas per key (deployment or edge), summed over a window."""

    def __init__(self, keep_s: float = 120.0):
        self.keep_s = keep_s
        self._series: dict[tuple, list[tuple[float, int, int, tuple[int, ...]]]] = {}

    def add(self, now: float, deltas: dict[tuple, tuple[int, int, tuple[int, ...]]]) -> None:
        for key, (n, errors, buckets) in deltas.items():
            series = self._series.setdefault(key, [])
            series.append((now, n, errors, buckets))
        cutoff = now - self.keep_s
        for key in list(self._series):
            series = self._series[key]
            while series and series[0][0] < cutoff:
                series.pop(0)
            if not series:
                del self._series[key]

    def keys(self) -> list[tuple]:
        return list(self._series)

    def service_time_ms(self, key: tuple, now: float, window_s: float, min_count: int = 3) -> float | None:
        """The lowest p50 of any one report (one process, about a second) in the window: the time a
        request takes when it waits for nothing downstream, which queueing only ever adds to."""
        best = None
        for t, n, _, buckets in self._series.get(key, ()):
            if t >= now - window_s and n >= min_count:
                p50 = percentile(buckets, 0.5)
                if p50 is not None and (best is None or p50 < best):
                    best = p50
        return best

    def summary(self, key: tuple, now: float, window_s: float) -> dict[str, Any]:
        """Rates over the last ``window_s`` seconds, percentiles over it, and totals over what is kept."""
        n = errors = total = total_errors = 0
        buckets = [0] * (len(STATS_BUCKETS_MS) + 1)
        for t, dn, de, db in self._series.get(key, ()):
            total += dn
            total_errors += de
            if t >= now - window_s:
                n += dn
                errors += de
                for i, c in enumerate(db):
                    buckets[i] += c
        return {
            "per_s": n / window_s,
            "errors_per_s": errors / window_s,
            "error_rate": errors / n if n else 0.0,
            "p50_ms": percentile(buckets, 0.5),
            "p99_ms": percentile(buckets, 0.99),
            "total": total,
            "errors_total": total_errors,
        }


# Where replicas send their stats -----------------------------------------------------------------
_controller: Any = None
_controller_found = 0.0
#: How long a found controller handle is used before it is looked up again (it may have been restarted).
_CONTROLLER_TTL_S = 30.0


def send_to_controller(deployments: dict, edges: dict) -> None:
    """The stats sink of replicas: the controller keeps a window of them (see Controller.record_stats)."""
    global _controller, _controller_found
    import ray

    now = time.monotonic()
    if _controller is None or now - _controller_found > _CONTROLLER_TTL_S:
        try:
            _controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        except ValueError:  # no controller now (restarting): these deltas are dropped, the next ones go
            _controller = None
            return
        _controller_found = now
    _controller.record_stats.remote(deployments, edges)
