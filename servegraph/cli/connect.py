"""Which Ray cluster a command talks to, said out loud, and connecting to it in bounded time.

The cluster is, in order: ``--address``; ``RAY_ADDRESS``; the one ``servegraph run``,
``servegraph deploy`` or ``serve.run`` started (recorded by :mod:`servegraph.runtime.client.cluster_record`);
else none, and the command says so (``deploy`` and ``run`` start one instead, through a
cluster host that ``servegraph shutdown`` can stop, see :mod:`servegraph.runtime.client.cluster_host`).

Connecting ends within ``--connect-timeout`` seconds with one line, and Ctrl-C always
works: ``ray.init`` runs in a daemon thread the command waits on, with Ray's C++ retry
lines kept off the terminal. Ray's token authentication is arranged before that: a
cluster servegraph started on this machine gets this machine's token, as Ray itself
does for a local cluster it finds; any other cluster that wants one is named in one
line that says how to give it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click

from ..runtime.client.cluster_record import ClusterRecord, forget_record, read_record
from ..runtime.common.records import NAMESPACE

DEFAULT_CONNECT_TIMEOUT_S = 30.0

F = TypeVar("F", bound=Callable[..., Any])


def cluster_options(fn: F) -> F:
    """``--address`` and ``--connect-timeout``, for every command that talks to a cluster."""
    fn = click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_CONNECT_TIMEOUT_S,
        show_default=True,
        help="Give up connecting to the cluster after this many seconds.",
    )(fn)
    return click.option(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="The Ray cluster (its GCS address). Default: RAY_ADDRESS, else the cluster servegraph started "
        "(`servegraph run`, `servegraph deploy` or `serve.run`; recorded in ~/.servegraph/cluster.json, "
        "or SERVEGRAPH_CLUSTER_FILE).",
    )(fn)


@dataclasses.dataclass(frozen=True)
class Cluster:
    address: str
    #: Why this cluster: "--address", "RAY_ADDRESS", "started by servegraph run, pid 12", "this process".
    source: str
    #: servegraph's record of it, when servegraph started it (what reaching and stopping it takes).
    record: ClusterRecord | None = None
    #: This command started it (``run`` and ``deploy`` with no cluster named).
    started_here: bool = False


def _host_port(address: str) -> tuple[str, int] | None:
    if "://" in address:
        address = address.split("://", 1)[1]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _same_cluster(address: str, record: ClusterRecord) -> bool:
    """Whether ``address`` names the recorded cluster (its own address, or its port on this machine)."""
    given, recorded = _host_port(address), _host_port(record.address)
    if given is None or recorded is None:
        return False
    return given == recorded or (given[1] == recorded[1] and given[0] in ("127.0.0.1", "localhost", "::1"))


def recorded_cluster() -> ClusterRecord | None:
    """The cluster servegraph recorded, if the process it ends with is still there (a stale record is removed)."""
    record = read_record()
    if record is not None and not record.process_alive():
        forget_record(record.address)
        return None
    return record


def choose(address: str | None) -> Cluster | None:
    """The cluster a command should use, or None when nothing names one."""
    record = recorded_cluster()
    for given, source in ((address, "--address"), (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if given:
            return Cluster(given, source, record if record is not None and _same_cluster(given, record) else None)
    if record is not None:
        return Cluster(record.address, record.describe(), record)
    return None


def _fail(message: str, *, hard: bool = False) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    if hard:
        # A ray.init still trying in its thread could hold up interpreter exit: leave at once.
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    sys.exit(1)


class _Refused(Exception):
    """Nothing listens at the address (connection refused)."""


def _probe(cluster: Cluster, deadline: float) -> None:
    """Return once something listens at the address; raise _Refused if nothing does; fail at the deadline."""
    target = _host_port(cluster.address)
    if target is None:
        return  # "auto", "local", ...: ray.init's own resolution, still bounded by the deadline
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _fail(f"cannot reach the Ray cluster at {cluster.address} ({cluster.source}): no answer in time")
        try:
            with socket.create_connection(target, timeout=min(left, 2.0)):
                return
        except ConnectionRefusedError:
            raise _Refused() from None
        except OSError:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _refused(cluster: Cluster) -> NoReturn:
    hint = ""
    if cluster.record is not None:
        forget_record(cluster.record.address)
        hint = "; it has stopped (record removed). Start one with `servegraph run`, or pass --address"
    _fail(f"no Ray cluster at {cluster.address} ({cluster.source}): connection refused{hint}")


def _arrange_auth(cluster: Cluster, deadline: float) -> None:
    """Make this process send the token the cluster wants (Ray's token authentication), or fail in one line.

    Never turns authentication off, and sends this machine's token unasked only to a cluster
    servegraph recorded starting here, as ``ray.init`` does for a local cluster it finds itself.
    """
    from ..runtime import ray_compat

    target = _host_port(cluster.address)
    if target is None or not ray_compat.token_auth_supported():
        return
    where = f"the Ray cluster at {cluster.address} ({cluster.source})"
    ask_timeout = max(0.1, min(5.0, deadline - time.monotonic()))
    if ray_compat.ask_gcs(cluster.address, ask_timeout) != ray_compat.REFUSES_TOKEN:
        return  # it needs no token, or ray.init will say (within the deadline) why it cannot connect
    how = (
        f"set {ray_compat.AUTH_MODE_ENV}=token, with the cluster's token in {ray_compat.TOKEN_ENV}, "
        f"{ray_compat.TOKEN_PATH_ENV} or {ray_compat.default_token_path()}"
    )
    mode = os.environ.get(ray_compat.AUTH_MODE_ENV)
    if mode is None and cluster.record is not None:
        ray_compat.use_token_auth(cluster.record.token_path)
    elif (mode or "").lower() != "token":
        state = f"{ray_compat.AUTH_MODE_ENV} is {mode}" if mode else f"{ray_compat.AUTH_MODE_ENV} is not set"
        _fail(f"{where} requires Ray's authentication token and {state}: {how}")
    if not ray_compat.token_available():
        _fail(f"{where} requires Ray's authentication token and this machine has none: {how}")
    if ray_compat.ask_gcs(cluster.address, ask_timeout, with_token=True) == ray_compat.REFUSES_TOKEN:
        _fail(f"{where} refuses the token found here: {how}")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Keep the C++ core's lines (a GCS retry a second, for up to 20 s) off the terminal while connecting.

    They go to a temporary file at the descriptor level, where Ray's C++ writes; Python's own
    ``sys.stderr`` is untouched once this ends.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _init(address: str, deadline: float, what: str) -> None:
    import ray

    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            outcome["error"] = exc

    with _quiet_stderr():
        thread = threading.Thread(target=run, name="servegraph-connect", daemon=True)
        thread.start()
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.1)  # short waits, so Ctrl-C reaches the main thread
    if thread.is_alive():
        _fail(f"cannot connect to the Ray cluster at {what}: no answer in time (--connect-timeout)", hard=True)
    error = outcome.get("error")
    if error is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _fail(f"cannot connect to the Ray cluster at {what}: {type(error).__name__}: {first}")


def start_local(by: str, owner_pid: int | None = None) -> ClusterRecord:
    """Start a local cluster through a cluster host, which records it; it lives until ``servegraph shutdown``
    (or, with ``owner_pid``, until that process ends)."""
    from ..runtime.client.cluster_host import ClusterStartError, start_cluster

    click.echo("No Ray cluster named; starting a local one...", err=True)
    try:
        return start_cluster(by, owner_pid=owner_pid)
    except ClusterStartError as exc:
        _fail(f"cannot start a local Ray cluster: {exc}")


def connect(
    address: str | None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    *,
    start_if_missing: str | None = None,
    owner_pid: int | None = None,
    quiet: bool = False,
) -> Cluster | None:
    """Connect this process to the chosen cluster and say which on stderr.

    Args:
        start_if_missing: who is starting a cluster when none is named (e.g. "servegraph deploy");
            None returns None instead. A recorded cluster that has stopped is then replaced.
        owner_pid: the process a cluster started here ends with (None: it lives until shutdown).
    """
    import ray

    if ray.is_initialized():
        return Cluster(ray.get_runtime_context().gcs_address, "this process", _this_process_record())
    cluster = choose(address)
    if cluster is None and start_if_missing is not None:
        record = start_local(start_if_missing, owner_pid)
        cluster = Cluster(record.address, f"started here by {start_if_missing}", record, started_here=True)
    if cluster is None:
        return None
    deadline = time.monotonic() + timeout
    try:
        try:
            _probe(cluster, deadline)
        except _Refused:
            from_record = cluster.record is not None and cluster.source == cluster.record.describe()
            if not from_record or start_if_missing is None or cluster.record is None:
                _refused(cluster)
            forget_record(cluster.record.address)  # a recorded cluster that has stopped: start another
            record = start_local(start_if_missing, owner_pid)
            cluster = Cluster(record.address, f"started here by {start_if_missing}", record, started_here=True)
            deadline = time.monotonic() + timeout
            try:
                _probe(cluster, deadline)
            except _Refused:
                _refused(cluster)
        _arrange_auth(cluster, deadline)
        _init(cluster.address, deadline, f"{cluster.address} ({cluster.source})")
    except KeyboardInterrupt:
        _fail("interrupted while connecting", hard=True)
    if not quiet:
        click.echo(f"Ray cluster: {cluster.address} ({cluster.source})", err=True)
    return cluster


def _this_process_record() -> ClusterRecord | None:
    import ray

    record = read_record()
    if record is not None and _same_cluster(ray.get_runtime_context().gcs_address, record):
        return record
    return None


def no_cluster_message() -> str:
    return (
        "No Ray cluster: pass --address HOST:PORT or set RAY_ADDRESS, or start one with `servegraph run` "
        "(which records it for the other commands)."
    )
