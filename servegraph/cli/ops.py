"""``servegraph deploy``, ``status`` and ``shutdown``: operating applications on a running cluster."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import click

from .common import user_errors
from .load import load_app


def connect(start_if_missing: bool) -> bool:
    """Connect to RAY_ADDRESS or a cluster running on this machine; optionally start one that outlives us.

    Returns False when there is no cluster and ``start_if_missing`` is off.
    """
    import ray

    if ray.is_initialized():
        return True
    address = os.environ.get("RAY_ADDRESS", "auto")
    try:
        ray.init(address=address, namespace="servegraph", logging_level=logging.ERROR, log_to_driver=False)
        return True
    except ConnectionError:
        if address != "auto" or not start_if_missing:
            if address != "auto":
                raise click.ClickException(f"cannot connect to the Ray cluster at RAY_ADDRESS={address}") from None
            return False
    click.echo("No Ray cluster is running here; starting a local one (`ray stop` ends it)...", err=True)
    subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--include-dashboard=false", "--disable-usage-stats"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ray.init(address="auto", namespace="servegraph", logging_level=logging.ERROR, log_to_driver=False)
    return True


def _prepare(config_path: str) -> tuple[Any, list[tuple[Any, Any, Any]]]:
    """Validate the config and compile every application before anything changes on the cluster."""
    from ..compiler import compile
    from ..compiler.config_schema import check_overrides, deployment_overrides, load_config

    config = load_config(config_path)
    prepared = []
    for app in config.applications:
        node = load_app(app.graph)
        overrides = deployment_overrides(app)
        check_overrides(compile(node), overrides)
        prepared.append((app, node, overrides))
    return config, prepared


@click.command("deploy")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-resource-check", is_flag=True, help="Deploy even if the cluster lacks resources now.")
def deploy_cmd(config_path: str, no_resource_check: bool) -> None:
    """Apply a deploy config (from `servegraph build`) to the cluster: RAY_ADDRESS, the one running here, or a new one.

    Config values override the code's options. Re-deploying touches only the
    deployments that changed; a user_config change alone reconfigures live replicas.
    """
    from ..compiler import compile
    from ..runtime.api import _controller, _free_resources, deploy_compiled

    with user_errors():
        config, prepared = _prepare(config_path)
        connect(start_if_missing=True)
        http = config.http_options
        compiled_apps = []
        for app, node, overrides in prepared:
            resources = None if no_resource_check else _free_resources(_controller(), app.name)
            compiled_apps.append((app, compile(node, overrides=overrides, cluster_resources=resources)))
        for app, compiled in compiled_apps:
            _, changes = deploy_compiled(
                compiled,
                name=app.name,
                route_prefix=app.route_prefix,
                host=http.host,
                port=http.port,
                http=config.proxy_location != "Disabled",
            )
            summary = ", ".join(f"{d} {what}" for d, what in changes.items())
            click.echo(f"application {app.name!r} at {app.route_prefix}: {summary}")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status_cmd(as_json: bool) -> None:
    """Applications, deployments and replica counts by state on the running cluster."""
    with user_errors():
        if not connect(start_if_missing=False):
            click.echo("No Ray cluster is running (set RAY_ADDRESS to use a remote one).", err=True)
            sys.exit(1)
        from ..runtime.api import status

        current = status()
    data: dict[str, Any] = {
        "proxy": current.proxy,
        "applications": {
            name: {
                "status": app.status,
                "route_prefix": app.route_prefix,
                "message": app.message,
                "deployments": {
                    d: {"status": dep.status, "replica_states": dep.replica_states} for d, dep in app.deployments.items()
                },
            }
            for name, app in current.applications.items()
        },
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="servegraph applications")
    for column in ("application", "route", "status", "deployment", "replicas"):
        table.add_column(column)
    for name, app in data["applications"].items():
        first = True
        for dname, dep in app["deployments"].items():
            states = ", ".join(f"{k} {v}" for k, v in sorted(dep["replica_states"].items())) or "none"
            table.add_row(
                name if first else "", str(app["route_prefix"]) if first else "", app["status"] if first else "", dname, states
            )
            first = False
    if not data["applications"]:
        click.echo("No applications are running.")
        return
    Console(width=120).print(table)


@click.command("shutdown")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def shutdown_cmd(yes: bool) -> None:
    """Delete every application, the HTTP proxy and the controller."""
    with user_errors():
        if not connect(start_if_missing=False):
            click.echo("No Ray cluster is running; nothing to shut down.")
            return
        if not yes and sys.stdin.isatty() and not click.confirm("Delete every servegraph application?"):
            return
        from ..runtime.api import shutdown

        shutdown()
        click.echo("All servegraph applications were deleted.")


__all__ = ["deploy_cmd", "shutdown_cmd", "status_cmd"]
