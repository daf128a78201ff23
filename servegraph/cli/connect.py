"""Which Ray cluster a command talks to, said out loud, and connecting to it in bounded time.

The cluster is, in order: ``--address``; ``RAY_ADDRESS``; the one ``servegraph run``
or ``serve.run`` started (recorded by :mod:`servegraph.runtime.cluster_record`);
else none, and the command says so (``deploy`` and ``run`` start one instead).
Connecting ends within ``--connect-timeout`` seconds with one line, and Ctrl-C
always works: ``ray.init`` runs in a daemon thread the command waits on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from ..runtime.cluster import NAMESPACE
from ..runtime.cluster_record import forget_record, read_record, record_path, write_record

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
        help="The Ray cluster (its GCS address). Default: RAY_ADDRESS, else the cluster `servegraph run` "
        f"or `serve.run` started (recorded in {record_path()}).",
    )(fn)


@dataclasses.dataclass(frozen=True)
class Cluster:
    address: str
    #: Why this cluster: "--address", "RAY_ADDRESS", "started by servegraph run (pid 12)", "started here".
    source: str


def choose(address: str | None) -> Cluster | None:
    """The cluster a command should use, or None when nothing names one."""
    if address:
        return Cluster(address, "--address")
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return Cluster(env, "RAY_ADDRESS")
    record = read_record()
    if record is not None:
        return Cluster(record.address, f"started by {record.by}, pid {record.pid}")
    return None


def _host_port(address: str) -> tuple[str, int] | None:
    if "://" in address:
        address = address.split("://", 1)[1]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _fail(message: str, *, hard: bool = False) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    if hard:
        # A ray.init still trying in its thread could hold up interpreter exit: leave at once.
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    sys.exit(1)


def _probe(cluster: Cluster, deadline: float) -> None:
    """Fail at once if nothing listens at the address; wait (until the deadline) while it is unreachable."""
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
            hint = ""
            if cluster.source.startswith("started by"):
                forget_record(cluster.address)
                hint = "; it has stopped (record removed). Start one with `servegraph run`, or pass --address"
            _fail(f"no Ray cluster at {cluster.address} ({cluster.source}): connection refused{hint}")
        except OSError:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _init(address: str, deadline: float, what: str) -> None:
    import ray

    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="servegraph-connect", daemon=True)
    thread.start()
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.1)  # short waits, so Ctrl-C reaches the main thread
    if thread.is_alive():
        _fail(f"cannot connect to the Ray cluster at {what}: no answer in time (--connect-timeout)", hard=True)
    error = outcome.get("error")
    if error is not None:
        _fail(f"cannot connect to the Ray cluster at {what}: {type(error).__name__}: {error}")


def start_local(by: str) -> str:
    """Start a local cluster that outlives this command (``ray start --head``); record and return its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    click.echo(f"No Ray cluster named; starting a local one at {address}...", err=True)
    subprocess.run(
        [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
            "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    write_record(address, by, pid=_gcs_pid(port))
    return address


def _gcs_pid(port: int) -> int | None:
    """The pid of the GCS now serving ``port`` (what outlives us), best effort; None if unknown."""
    from .portinfo import port_holder

    holder = port_holder("127.0.0.1", port)
    return holder[0] if holder else None


def connect(
    address: str | None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    *,
    start_if_missing: str | None = None,
    quiet: bool = False,
) -> Cluster | None:
    """Connect this process to the chosen cluster and say which on stderr.

    Args:
        start_if_missing: who is starting a cluster when none is named (e.g. "servegraph deploy");
            None returns None instead.
    """
    import ray

    if ray.is_initialized():
        return Cluster(ray.get_runtime_context().gcs_address, "this process")
    cluster = choose(address)
    if cluster is None:
        if start_if_missing is None:
            return None
        cluster = Cluster(start_local(start_if_missing), f"started here by {start_if_missing}")
    deadline = time.monotonic() + timeout
    try:
        _probe(cluster, deadline)
        _init(cluster.address, deadline, f"{cluster.address} ({cluster.source})")
    except KeyboardInterrupt:
        _fail("interrupted while connecting", hard=True)
    if not quiet:
        click.echo(f"Ray cluster: {cluster.address} ({cluster.source})", err=True)
    return cluster


def no_cluster_message() -> str:
    return (
        "No Ray cluster: pass --address HOST:PORT or set RAY_ADDRESS, or start one with `servegraph run` "
        "(which records it for the other commands)."
    )


def record_started(by: str) -> str:
    """Record the cluster this process is connected to (which it started) and return its address."""
    import ray

    address = ray.get_runtime_context().gcs_address
    write_record(address, by)
    return address
