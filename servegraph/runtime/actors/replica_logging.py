"""A replica's log file: every line names its request, as Ray Serve's replica logs do.

Each replica writes ``replica_<app>_<deployment>_<replica id>.log`` in the Ray session's ``logs/serve``
directory (or the deployment's ``logging_config.logs_dir``), in Ray Serve's TEXT format or one JSON object a
line. What goes there: the ``ray.serve`` logger (the user's, as in Ray Serve: ``logging.getLogger("ray.serve")``)
and servegraph's own ``servegraph`` loggers, each record tagged with the request it was written under
(:func:`~servegraph.runtime.common.context.current_request`), the application, deployment and replica; and, with
``enable_access_log``, one access line per request (:func:`access_log`, which every replica request reports to
as a request observer of telemetry.py: ``CALL <method> OK 1.2ms`` for a call, ``POST /route 200 1.2ms`` for an
HTTP request). Those loggers also write to the replica's stderr (what ``servegraph logs APP`` shows),
access lines apart, as Ray Serve's do by default; ``print`` output stays in the worker's own files, unless
``RAY_SERVE_LOG_TO_STDERR=0`` sends it to the log file too (:class:`_Printed`), as in Ray Serve. HTTP
proxies write Ray Serve's ``proxy_<node ip>.log`` the same way (:func:`configure_proxy`), with an access
line per HTTP request; their logging_config is ``serve.start``'s.

Matches Ray Serve 2.60 (``ray/serve/_private/logging_utils.py``): file name, TEXT layout
``LEVEL asctime <app>_<deployment> <replica> <request id> -- message``, JSON field names. One difference:
the JSON ``deployment`` field is the deployment's name (Ray Serve writes ``<app>_<deployment>`` there), as
``application`` is its own field.

:func:`configure` runs when the replica is initialized and again whenever the deployment's logging_config
changes (the controller pushes it; the replica is not restarted).

Access lines are on the request path of every call, so they cost little: in the TEXT format, with only these
handlers on the logger, the line is written to the file directly (the same text ``logging`` would write), and
the file is flushed when the process has no request left (:func:`flush_pending`, at most once every
:data:`FLUSH_AFTER_S`), whenever any other line is written, when a replica is stopped, at exit, and otherwise by
a thread a moment later (:data:`FLUSH_AFTER_S`), instead of once per line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any

from ...dsl.options import LOGRECORD_STANDARD_ATTRS, LoggingConfig
from .. import ray_compat
from ..common import telemetry
from ..common.context import current_request

#: The logger Ray Serve gives users and writes its own replica lines to.
SERVE_LOGGER = "ray.serve"
#: servegraph's own loggers (``servegraph.*``), captured the same way.
OWN_LOGGER = "servegraph"
LOGGERS = (SERVE_LOGGER, OWN_LOGGER)

#: Ray Serve's switch (on by default): the loggers also write to stderr. "0" instead sends everything a
#: replica prints (``print``, ``sys.stdout``, ``sys.stderr``) into its log file, each line tagged like a
#: logger's, as Ray Serve does then.
LOG_TO_STDERR_ENV = "RAY_SERVE_LOG_TO_STDERR"

#: Ray's log rotation settings (the same environment variables Ray's own logs follow), with Ray's defaults.
ROTATION_BYTES = int(os.environ.get("RAY_ROTATION_MAX_BYTES", 512 * 1024 * 1024))
ROTATION_BACKUPS = int(os.environ.get("RAY_ROTATION_BACKUP_COUNT", 5))

#: Characters Ray Serve replaces by "_" in a log file's name (``ray.serve._private.utils.FILE_NAME_REGEX``).
_UNSAFE = re.compile(r"[^\x20-\x7E]|[<>:\"/\\|?*]")

#: Record attributes that steer handlers and must not reach a JSON line (Ray Serve drops the same).
_STEERING = frozenset({"serve_access_log", "log_to_stderr", "skip_context_filter"})
#: Ray Serve's key whose dict value is spread into a JSON line's own fields.
_FLATTEN = "ray_serve_extra_fields"
#: What marks an access line: written to the log file only (never stderr), and dropped with enable_access_log off.
_ACCESS = {"serve_access_log": True, "log_to_stderr": False}
#: How long an access line may wait in the log file's buffer before it is flushed (other lines flush at once).
FLUSH_AFTER_S = 0.05

#: Where access lines, "Request failed." and (with RAY_SERVE_LOG_TO_STDERR=0) printed lines are logged.
_serve = logging.getLogger(SERVE_LOGGER)


def log_file_name(app: str, deployment: str, replica_id: str) -> str:
    """Ray Serve's name for a replica's log file.

    >>> log_file_name("default", "Model", "ab12cd34")
    'replica_default_Model_ab12cd34.log'
    """
    return f"replica_{_UNSAFE.sub('_', f'{app}_{deployment}')}_{replica_id}.log"


def default_logs_dir() -> str:
    """Where replicas write their logs when ``logs_dir`` is not set: the Ray session's ``logs/serve``.

    A process on no Ray node (a proxy built in a test, Ray Client) writes under the system's temporary
    directory, never into the directory it was started from.
    """
    ray_logs = ray_compat.logs_dir()
    return os.path.join(ray_logs if ray_logs is not None else os.path.join(tempfile.gettempdir(), "servegraph-logs"), "serve")


class ReplicaContextFilter(logging.Filter):
    """Tags each record with the replica that wrote it and the request it handles; filters nothing."""

    def __init__(self, app: str, deployment: str, replica_id: str):
        super().__init__()
        self.app, self.deployment, self.replica_id = app, deployment, replica_id

    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        if request is not None and "request_id" not in record.__dict__:
            record.request_id = request.request_id
            record.route = request.route
        record.application = self.app
        record.deployment = self.deployment
        record.replica = self.replica_id
        record.component_name = "replica"
        return True


class ProxyContextFilter(logging.Filter):
    """Tags each record of a proxy (Ray Serve's ``proxy_<node ip>.log``) with the proxy and the request."""

    def __init__(self, component_id: str):
        super().__init__()
        self.component_id = component_id

    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        if request is not None and "request_id" not in record.__dict__:
            record.request_id = request.request_id
        record.component_name = "proxy"
        record.component_id = self.component_id
        return True


def _not_access(record: logging.LogRecord) -> bool:
    return not getattr(record, "serve_access_log", False)


def _to_stderr(record: logging.LogRecord) -> bool:
    return getattr(record, "log_to_stderr", True) is not False


class TextFormatter(logging.Formatter):
    """Ray Serve's replica line: ``INFO 2026-01-02 10:00:00,123 default_Model ab12cd34 <request id> -- message``.

    The request id is left out outside a request (a constructor's lines); ``additional_log_standard_attrs``
    come before the ``--``; a traceback follows on its own lines, as ``logging`` writes it.
    """

    def __init__(self, component: str, component_id: str, extra_attrs: tuple[str, ...] = ()):
        component = f"{component} {component_id}".replace("%", "%%")  # names are text, not format fields
        head = f"%(levelname)s %(asctime)s {component} "
        tail = "".join(f"%({attr})s " for attr in extra_attrs) + "-- %(message)s"
        self._plain = logging.Formatter(head + tail)
        self._in_request = logging.Formatter(head + "%(request_id)s " + tail)
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        return (self._in_request if "request_id" in record.__dict__ else self._plain).format(record)


class JSONFormatter(logging.Formatter):
    """One JSON object a line, with Ray Serve's field names (``asctime``, ``levelname``, ``message``,
    ``request_id``, ``route``, ``application``, ``deployment``, ``replica``...), the record's ``extra=`` fields,
    and ``timestamp_ns`` (the record's time, for ordering lines across files)."""

    def __init__(self, extra_attrs: tuple[str, ...] = ()):
        super().__init__()
        self.extra_attrs = extra_attrs
        self._actor = _actor_fields()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "asctime": self.formatTime(record),
            "levelname": record.levelname,
            "message": record.getMessage(),
            "filename": record.filename,
            "lineno": record.lineno,
            "process": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_text"] = record.exc_text
        for attr in self.extra_attrs:
            out[attr] = getattr(record, attr, None)
        for key, value in record.__dict__.items():
            if key in LOGRECORD_STANDARD_ATTRS or key in _STEERING:
                continue
            if key == _FLATTEN and isinstance(value, dict):
                out.update(value)
            else:
                out[key] = value
        out.update(self._actor)
        out["timestamp_ns"] = int(record.created * 1e9)
        return json.dumps(out, default=str)


def _actor_fields() -> dict[str, str]:
    """The worker, node and actor a replica runs as (Ray Serve's JSON lines carry them too); {} outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        context = ray.get_runtime_context()
        fields = {"worker_id": context.get_worker_id(), "node_id": context.get_node_id(), "actor_id": context.get_actor_id()}
    except Exception:  # best effort: a line without them is still a line
        return {}
    return {k: v for k, v in fields.items() if v}


class LogFile(logging.handlers.RotatingFileHandler):
    """Ray's rotation (a new file past ``max_bytes``, ``backups`` old ones kept), formatting each record once
    and counting what it wrote: the standard handler formats every record twice and seeks the file to
    measure it, which doubles the cost of a line on the request path. Access lines (:meth:`write_line` with
    ``flush=False``) are flushed by a thread a moment later (:data:`FLUSH_AFTER_S`), or with the next other
    line, or when the handler is flushed or closed (``logging`` does that at exit)."""

    def __init__(self, path: str, max_bytes: int, backups: int):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._written = os.path.getsize(path)
        #: Lines written but not flushed yet; the flusher waits for the first of them.
        self.unflushed = False
        #: ``time.monotonic()`` of the last flush.
        self.flushed_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record) + self.terminator, flush=True)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str, flush: bool) -> None:
        """Write one formatted line (with its newline); ``flush=False`` leaves it for the flusher thread."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if self.maxBytes and self._written and self._written + len(line) >= self.maxBytes:
                self.doRollover()
                self._written = 0
            stream = self.stream if self.stream is not None else self._open()
            self.stream = stream
            stream.write(line)
            self._written += len(line)  # characters, near enough to bytes for when to rotate
            if flush:
                stream.flush()
                self.unflushed = False
                self.flushed_at = time.monotonic()
            elif not self.unflushed:
                self.unflushed = True
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_later, name="servegraph-log-flush", daemon=True)
                    self._flusher.start()
                self._wake.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.unflushed = False
            self.flushed_at = time.monotonic()
            super().flush()

    def _flush_later(self) -> None:
        # Ends when the handler is closed (a new logging_config, unconfigure, or logging's exit hook).
        while not self._stop.is_set():
            self._wake.wait()
            self._stop.wait(FLUSH_AFTER_S)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        super().close()  # flushes what is left


class InstalledLogs:
    """The handlers this process (a replica, or a proxy) installed on :data:`LOGGERS`, so a new logging_config
    replaces them."""

    def __init__(self, config: LoggingConfig, path: str, handlers: list[logging.Handler], access_head: str | None = None):
        self.config, self.path, self.handlers = config, path, handlers
        #: Where access lines go; None when they are off.
        self.access_file = handlers[0] if config.enable_access_log and isinstance(handlers[0], LogFile) else None
        #: ``INFO {asctime} <component> <id> `` split at the time, when the file's lines are TEXT with no extra
        #: attributes: then an access line is written directly, as the TextFormatter would write it.
        self.access_head = access_head
        self._second = -1
        self._stamp = ""

    def access(self, message: str, route: str | None = None) -> None:
        """Write an access line, in the request's context (its id from ``current_request()``); ``route``: an
        HTTP request's route prefix (a JSON line's ``route`` field)."""
        if self.access_file is None:
            return
        if self.access_head is None or _serve.handlers != self.handlers or _serve.filters or _serve.propagate:
            # JSON, extra attributes, or the user's own handlers or filters: the line goes through logging
            _serve.info(message, extra=_ACCESS if route is None else {**_ACCESS, "route": route})
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # logging's asctime: local time to the second, then milliseconds
            self._stamp, self._second = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)), second
        request = current_request()
        request_id = f"{request.request_id} " if request is not None else ""
        millis = int((now - second) * 1000)
        self.access_file.write_line(f"INFO {self._stamp},{millis:03d} {self.access_head}{request_id}-- {message}\n", flush=False)

    def close(self) -> None:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            for handler in self.handlers:
                logger.removeHandler(handler)
        for handler in self.handlers:
            handler.close()


_INSTALLED: InstalledLogs | None = None


def log_to_stderr() -> bool:
    """Ray Serve's ``RAY_SERVE_LOG_TO_STDERR`` (default on), read as Ray Serve reads it."""
    return os.environ.get(LOG_TO_STDERR_ENV, "1").strip().lower() in ("1", "true")


def configure(app: str, deployment: str, replica_id: str, config: LoggingConfig | None = None) -> InstalledLogs:
    """Send this process's ``ray.serve`` and ``servegraph`` loggers to the replica's log file (and stderr),
    as ``config`` says (None: Ray Serve's defaults); replaces what an earlier call installed. With
    ``RAY_SERVE_LOG_TO_STDERR=0``, what the replica prints goes to the log file instead (see _Printed)."""
    context = ReplicaContextFilter(app, deployment, replica_id)
    to_stderr = log_to_stderr()
    logs = _install(f"{app}_{deployment}", replica_id, log_file_name(app, deployment, replica_id), config, context, to_stderr)
    if not to_stderr:
        _capture_output()
    telemetry.add_request_observer(access_log)  # once: the same function each time
    return logs


def configure_proxy(component_id: str, config: LoggingConfig | None = None) -> InstalledLogs:
    """The same for an HTTP proxy: Ray Serve's ``proxy_<node ip>.log``, with an access line per HTTP request."""
    return _install("proxy", component_id, f"proxy_{_UNSAFE.sub('_', component_id)}.log", config, ProxyContextFilter(component_id))


def _install(
    component: str, component_id: str, file_name: str, config: LoggingConfig | None, context: logging.Filter, to_stderr: bool = True
) -> InstalledLogs:
    global _INSTALLED
    config = config if config is not None else LoggingConfig()
    logs_dir = config.logs_dir or default_logs_dir()
    os.makedirs(logs_dir, exist_ok=True)
    path = os.path.join(logs_dir, file_name)
    extra = tuple(config.additional_log_standard_attrs)
    text = TextFormatter(component, component_id, extra)
    plain = config.encoding != "JSON" and not extra  # then access lines are written directly (InstalledLogs.access)

    to_file = LogFile(path, ROTATION_BYTES, ROTATION_BACKUPS)
    to_file.addFilter(context)
    if not config.enable_access_log:
        to_file.addFilter(_not_access)
    to_file.setFormatter(JSONFormatter(extra) if config.encoding == "JSON" else text)

    stderr = logging.StreamHandler(_ORIGINAL_STREAMS[1] if _ORIGINAL_STREAMS else sys.stderr)
    stderr.addFilter(context)
    stderr.addFilter(_to_stderr)
    stderr.setFormatter(text)

    if _INSTALLED is not None:
        _INSTALLED.close()
    handlers: list[logging.Handler] = [to_file, stderr] if to_stderr else [to_file]
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()  # as Ray Serve's own setup: these loggers write where the replica says, only
        logger.propagate = False  # as Ray Serve's: its lines go to the replica's files only, once
        logger.setLevel(config.level_number)
        for handler in handlers:
            logger.addHandler(handler)
    _INSTALLED = InstalledLogs(config, path, handlers, f"{component} {component_id} " if plain else None)
    return _INSTALLED


class _Printed:
    """A replica's ``sys.stdout`` or ``sys.stderr`` with ``RAY_SERVE_LOG_TO_STDERR=0``: each line written becomes
    an INFO record of the ``ray.serve`` logger (Ray Serve's ``StreamToLogger``); anything else is the stream's."""

    def __init__(self, original: Any):
        self._original = original
        self._partial = ""
        self._writing = False

    def write(self, text: str) -> int:
        if self._writing:  # the logging machinery itself printing (an error in a handler): not again through it
            return int(self._original.write(text))
        self._writing = True
        try:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                _serve.info(line, stacklevel=2)
        finally:
            self._writing = False
        return len(text)

    def flush(self) -> None:
        if self._partial and not self._writing:
            partial, self._partial = self._partial, ""
            self.write(partial + "\n")

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


#: The process's own stdout and stderr while a replica's output is captured (see _capture_output).
_ORIGINAL_STREAMS: tuple[Any, Any] | None = None


def _capture_output() -> None:
    global _ORIGINAL_STREAMS
    if _ORIGINAL_STREAMS is None:
        _ORIGINAL_STREAMS = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Printed(sys.stdout), _Printed(sys.stderr)


def unconfigure() -> None:
    """Undo :func:`configure`: the loggers go back to Python's defaults (for tests and tools run in one process)."""
    global _INSTALLED, _ORIGINAL_STREAMS
    telemetry.remove_request_observer(access_log)
    if _ORIGINAL_STREAMS is not None:
        sys.stdout, sys.stderr = _ORIGINAL_STREAMS
        _ORIGINAL_STREAMS = None
    if _INSTALLED is not None:
        _INSTALLED.close()
        _INSTALLED = None
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def flush_pending() -> None:
    """Flush access lines still in the buffer, if any: a replica or proxy left with no request calls it, so the
    log of a process at rest is complete at once.

    Under load a process is left with no request for a moment between most requests; flushing each time
    would cost a write (and a GIL hand-off) per request. So a file flushed less than :data:`FLUSH_AFTER_S`
    ago is left to the flusher thread, which writes its lines within that time anyway.
    """
    installed = _INSTALLED
    file = installed.access_file if installed is not None else None
    if file is not None and file.unflushed and time.monotonic() - file.flushed_at >= FLUSH_AFTER_S:
        file.flush()


def flush() -> None:
    """Write out the access lines still in the log file's buffer now (the flusher writes them within
    :data:`FLUSH_AFTER_S` anyway): for a reader in this process, such as a test."""
    if _INSTALLED is not None:
        for handler in _INSTALLED.handlers:
            handler.flush()


def current_config() -> LoggingConfig | None:
    """The logging_config this replica applies now (None before :func:`configure`)."""
    return _INSTALLED.config if _INSTALLED is not None else None



def access_message(method: str, route: str, status: str, latency_ms: float) -> str:
    """Ray Serve's access line (``ray.serve._private.logging_utils.access_log_msg``).

    >>> access_message("CALL", "say_hello", "OK", 1.234)
    'CALL say_hello OK 1.2ms'
    """
    return f"{method} {route} {status} {latency_ms:.1f}ms"


def request_failed(error: BaseException, to_stderr: bool = True) -> None:
    """Ray Serve's ``Request failed.`` line, with the traceback, in the replica's log (and on stderr, unless
    the request came over HTTP: the 500's own traceback is there already, see http_codec.encode_error)."""
    if _INSTALLED is not None:
        _serve.error("Request failed.", exc_info=error, extra={"log_to_stderr": to_stderr})


def access_log(method: str, ok: bool, elapsed_ms: float, error: BaseException | None, http: tuple[str, Any] | None = None) -> None:
    """One access line for a request this replica handled (a request observer, see telemetry.py).

    As Ray Serve's replica writes it: ``CALL <method> OK|ERROR|CANCELLED <ms>ms`` for a call, or, for a request
    that came over HTTP (``http`` is its method and status), ``POST /route 200 <ms>ms`` with the application's
    route prefix; at INFO on the ``ray.serve`` logger (so ``log_level`` above INFO hides it too), into the log
    file only, tagged with the request's id. A failed request's error is logged first, with its traceback, as
    Ray Serve's "Request failed.".
    """
    installed = _INSTALLED
    if installed is None:
        return
    cancelled = isinstance(error, asyncio.CancelledError)
    if error is not None and not cancelled:
        request_failed(error, to_stderr=http is None)  # whether access lines are on or not
    if installed.access_file is None or not _serve.isEnabledFor(logging.INFO):
        return
    if http is None:
        status = "CANCELLED" if cancelled else "OK" if ok and error is None else "ERROR"
        installed.access(access_message("CALL", method, status, elapsed_ms))
    else:
        request = current_request()
        route = (request.route if request is not None else "") or "/"
        installed.access(access_message(http[0], route, str(http[1]), elapsed_ms), route)


def proxy_access_log(scope: dict, route: str, status: Any, elapsed_ms: float) -> None:
    """A proxy's access line for one HTTP request, as Ray Serve's proxy writes it: ``GET /route 200 5.1ms``."""
    installed = _INSTALLED
    if installed is None or installed.access_file is None or not _serve.isEnabledFor(logging.INFO):
        return
    if not route and str(scope.get("path", "")).startswith("/-/"):  # health and route probes: no one's request
        return
    method = str(scope.get("method") or "GET").upper()
    installed.access(access_message(method, route or scope.get("path", "/"), str(status), elapsed_ms), route)
