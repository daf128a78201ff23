"""``servegraph run``: deploy a graph and serve it until Ctrl-C, as ``serve run`` does."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

import click

from ..compiler.config.app import DEFAULT_APP_NAME
from ..runtime.cluster import NAMESPACE
from ..runtime.cluster_record import forget_record
from .common import user_errors
from .connect import cluster_options, connect, record_started, start_local
from .load import load_target
from .portinfo import bind_error, describe_holder


def _is_local(ip: str) -> bool:
    """Whether ``ip`` is an address of this machine (binding to it succeeds only then)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def _check_port(host: str, port: int) -> None:
    """Fail at once, naming the port and its holder, when the proxy could not listen on host:port.

    Skipped when servegraph's proxy already serves there (it is reused), and on
    clusters with nodes on other machines, where the proxy may not be on this one.
    """
    import ray

    from ..runtime.api import status

    proxy = status().proxy
    if proxy and (proxy.get("host"), proxy.get("port")) == (host, port):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not nodes or not all(_is_local(n.get("NodeManagerAddress", "")) for n in nodes):
        return
    problem = bind_error(host, port)
    if problem is not None:
        raise click.ClickException(
            f"cannot serve HTTP on {host}:{port}: {problem}{describe_holder(host, port)}; "
            "stop that process or pick another --port"
        )


@click.command("run")
@click.argument("target")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy binds.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--name", default=DEFAULT_APP_NAME, show_default=True, help="Application name.")
@click.option("--route-prefix", default=None, help="Where HTTP requests reach the app [default: the .sg graph's `at`, else /].")
@click.option("--graph", "graph_name", default=None, help="Graph to run from a .sg file with several.")
@click.option("--no-resource-check", is_flag=True, help="Deploy even if the cluster lacks resources now (it may grow).")
@click.option(
    "--compiled/--no-compiled",
    default=True,
    show_default=True,
    help="Run an eligible InputNode graph on Ray compiled graphs (see the README's compiled path).",
)
@click.option(
    "--non-blocking",
    is_flag=True,
    help="Return after deploying; without --address/RAY_ADDRESS the new cluster outlives the command.",
)
@cluster_options
def run_cmd(
    target: str,
    host: str,
    port: int,
    name: str,
    route_prefix: str | None,
    graph_name: str | None,
    no_resource_check: bool,
    compiled: bool,
    non_blocking: bool,
    address: str | None,
    connect_timeout: float,
) -> None:
    """Deploy TARGET (MODULE:ATTR or a .sg file) and serve it until Ctrl-C.

    Uses the cluster at --address (or RAY_ADDRESS); otherwise starts a new local
    one and records it, so `servegraph status`, `logs`, `delete` ... find it.
    """
    started: str | None = None
    with user_errors():
        loaded = load_target(target, name=graph_name)
        app = loaded.node
        route_prefix = route_prefix or loaded.route_prefix or "/"
        explicit = address or os.environ.get("RAY_ADDRESS")
        if explicit:
            connect(explicit, connect_timeout)
        elif non_blocking:
            connect(start_local("servegraph run"), connect_timeout)
            started = "detached"
        else:
            import ray

            # Ends with this command, as `serve run`'s does.
            ray.init(namespace=NAMESPACE, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
            started = record_started("servegraph run")
            click.echo(f"Ray cluster: {started} (started here; other commands find it while this runs)", err=True)
        _check_port(host, port)
        from ..runtime.api import run, shutdown

        click.echo(f"Deploying {target} as application {name!r}...", err=True)
        began = time.monotonic()
        from .ops import _progress_display

        progress, done = _progress_display(name)
        try:
            run(
                app,
                name=name,
                route_prefix=route_prefix,
                host=host,
                port=port,
                resource_check=not no_resource_check,
                _on_progress=progress,
                compiled=compiled,
            )
        finally:
            done()
        url = f"http://{host}:{port}{route_prefix}"
        stop = "" if non_blocking else " (Ctrl-C to stop)"
        click.echo(f"Deployed {name!r} in {time.monotonic() - began:.1f}s; serving at {url}{stop}", err=True)
    if non_blocking:
        return
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("Shutting down...", err=True)
        shutdown()
        if started and started != "detached":
            forget_record(started)
