"""``servegraph run``: deploy a graph and serve it until Ctrl-C, as ``serve run`` does."""

from __future__ import annotations

import os
import signal
import time

import click

from .common import user_errors
from .load import load_app


@click.command("run")
@click.argument("target")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy binds.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--name", default="default", show_default=True, help="Application name.")
@click.option("--route-prefix", default=None, help="Where HTTP requests reach the app [default: the .sg graph's `at`, else /].")
@click.option("--graph", "graph_name", default=None, help="Graph to run from a .sg file with several.")
@click.option("--address", default=None, help="Ray cluster to use (default: RAY_ADDRESS, else a new local cluster).")
@click.option("--no-resource-check", is_flag=True, help="Deploy even if the cluster lacks resources now (it may grow).")
@click.option("--non-blocking", is_flag=True, help="Return after deploying (only useful on an existing cluster).")
def run_cmd(
    target: str,
    host: str,
    port: int,
    name: str,
    route_prefix: str | None,
    graph_name: str | None,
    address: str | None,
    no_resource_check: bool,
    non_blocking: bool,
) -> None:
    """Deploy TARGET (MODULE:ATTR or a .sg file) and serve it until Ctrl-C."""
    if address:
        os.environ["RAY_ADDRESS"] = address
    with user_errors():
        app = load_app(target, name=graph_name)
        if route_prefix is None and target.endswith(".sg"):
            from ..grammar import route_prefix_of

            route_prefix = route_prefix_of(target, graph_name)
        route_prefix = route_prefix or "/"
        from ..runtime.api import run, shutdown

        click.echo(f"Deploying {target} as application {name!r}...", err=True)
        started = time.monotonic()
        run(app, name=name, route_prefix=route_prefix, host=host, port=port, resource_check=not no_resource_check)
        url = f"http://{host}:{port}{route_prefix}"
        click.echo(f"Deployed {name!r} in {time.monotonic() - started:.1f}s; serving at {url} (Ctrl-C to stop)", err=True)
    if non_blocking:
        return
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("Shutting down...", err=True)
        shutdown()
