"""``servegraph deploy``, ``status`` and ``shutdown``: operating applications on a running cluster."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from ..runtime.client.cluster_record import BY_DEPLOY
from .common import user_errors
from .connect import cluster_options, connect, no_cluster_message
from .load import load_app
from .stopping import keep_started_cluster, not_ours, stop_started_cluster


def _prepare(config_path: str) -> tuple[Any, list[tuple[Any, Any, Any, Any]]]:
    """Validate the config and compile every application before anything changes on the cluster."""
    from ..compiler import compile
    from ..compiler.config.loading import load_config
    from ..compiler.config.overrides import check_overrides, deployment_overrides, local_code_dirs, split_weights

    config = load_config(config_path)
    _refuse_unapplied_http_options(config, config_path)
    prepared = []
    for i, app in enumerate(config.applications):
        # The graph imports from the application's runtime_env working_dir / py_modules, as on Ray Serve.
        for directory in reversed(local_code_dirs(app.runtime_env, f"{config_path}: applications[{i}]")):
            if directory not in sys.path:
                sys.path.insert(0, directory)
        node = load_app(app.graph)
        compiled = compile(node)
        weights, overrides = split_weights(compiled, deployment_overrides(app))
        check_overrides(compiled, overrides)
        compile(node, weights=weights)  # the weights checked too, before anything changes on the cluster
        prepared.append((app, node, overrides, weights))
    return config, prepared


#: http_options servegraph's runtime does not pass to its proxy yet (the proxy can apply them, see
#: runtime/proxy.py HTTP_OPTION_DEFAULTS, once the controller hands them over), with the value that is honoured.
#: http_options the proxy cannot apply, with the only value it accepts for each.
_HTTP_OPTIONS_HONOURED_ONLY_AS = {"root_path": ""}
#: http_options the proxy applies through uvicorn (see runtime.common.http_codec.HTTP_OPTION_DEFAULTS).
_HTTP_OPTIONS_APPLIED = (
    "request_timeout_s",
    "keep_alive_timeout_s",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_keyfile_password",
    "ssl_ca_certs",
)


def _refuse_unapplied_http_options(config: Any, source: str) -> None:
    """A config asking for an http_option servegraph would not apply is refused, never served without it."""
    from ..errors import ConfigError

    unapplied = [f"http_options.{k}" for k, v in _HTTP_OPTIONS_HONOURED_ONLY_AS.items() if getattr(config.http_options, k) != v]
    if unapplied:
        fields = ", ".join(unapplied)
        raise ConfigError(
            f"{source}: {fields}: servegraph deploy does not apply {'this' if len(unapplied) == 1 else 'these'} yet "
            "and will not serve without them; remove them, or run this config on Ray Serve, which applies them: "
            "serve deploy " + source
        )


def _applied_http_options(config: Any) -> dict[str, Any]:
    return {k: getattr(config.http_options, k) for k in _HTTP_OPTIONS_APPLIED}


def _progress_display(app: str) -> tuple[Any, Any]:
    """A live line per deployment (replicas by state) while deploying, on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console

    status = Console(stderr=True).status(f"deploying {app!r}...")
    status.start()

    def show(states: dict[str, dict[str, int]]) -> None:
        parts = [f"{d}: " + (", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none") for d, c in states.items()]
        status.update(f"deploying {app!r}: " + "; ".join(parts))

    return show, status.stop


@click.command("deploy")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-resource-check", is_flag=True, help="Deploy even if the cluster lacks resources now.")
@cluster_options
def deploy_cmd(config_path: str, no_resource_check: bool, address: str | None, connect_timeout: float) -> None:
    """Apply a deploy config (from `servegraph build`) to the cluster: --address, RAY_ADDRESS, the recorded one, or a new one.

    Config values override the code's options. Re-deploying touches only the
    deployments that changed, and says what it did to each: unchanged,
    reconfigured (a user_config change, applied to live replicas), scaled,
    restarted (new replicas), created or deleted. A cluster it starts keeps
    running until `servegraph shutdown`.
    """
    from ..compiler import compile
    from ..compiler.config.overrides import with_app_runtime_env
    from ..errors import DeploymentError
    from ..runtime.client.api import _ask, _controller, _free_resources, deploy_compiled
    from ..runtime.client.cluster import cluster_nodes
    from ..runtime.ray_compat import upload_local_code

    with user_errors():
        config, prepared = _prepare(config_path)
        cluster = connect(address, connect_timeout, start_if_missing=BY_DEPLOY)
        http = config.http_options
        compiled_apps = []
        for app, node, overrides, weights in prepared:
            resources = None if no_resource_check else _free_resources(_controller(), app.name)
            nodes = None if no_resource_check else cluster_nodes()
            if app.runtime_env:  # every replica starts in it; local code is uploaded to the cluster first
                overrides = with_app_runtime_env(compile(node), overrides, upload_local_code(app.runtime_env))
            # As in Ray Serve: the application's logging_config, else the config's top-level one, for every
            # deployment that sets none (in the code or in the config's deployments).
            logging_config = app.logging_config or config.logging_config
            compiled = compile(
                node,
                overrides=overrides,
                cluster_resources=resources,
                weights=weights,
                logging_config=logging_config,
                cluster_nodes=nodes,
            )
            compiled_apps.append((app, compiled))
        if config.logging_config is not None:  # as in Ray Serve, the proxies' logs too (see serve.start)
            refusal = _ask(_controller().set_logging_config.remote(config.logging_config), "set_logging_config")
            if refusal is not None:
                raise DeploymentError(refusal.message)
        for app, compiled in compiled_apps:
            before = _running_options(app.name)
            specs = {spec.name: spec.options for spec in compiled.ir.deployments}
            progress, done = _progress_display(app.name)
            try:
                _, changes = deploy_compiled(
                    compiled,
                    name=app.name,
                    route_prefix=app.route_prefix,
                    host=http.host,
                    port=http.port,
                    http=config.proxy_location != "Disabled",
                    proxy_location=config.proxy_location,
                    http_options=_applied_http_options(config),
                    grpc_options=config.grpc_options.model_dump(),
                    on_progress=progress,
                    compiled_path=app.compiled,
                    graph_autoscaling=app.graph_autoscaling,
                )
            finally:
                done()
            click.echo(f"application {app.name!r} at {app.route_prefix}:")
            for dname, what in changes.items():
                click.echo(f"  {dname}: {describe_change(what, before.get(dname), specs.get(dname))}")
        if cluster is not None and cluster.started_here:
            click.echo(f"The Ray cluster at {cluster.address} keeps running; `servegraph shutdown` stops it.", err=True)


def _running_options(app_name: str) -> dict[str, Any]:
    """Each deployment's options as the cluster runs them now (empty for a new application)."""
    from ..runtime.client.api import _ask, _controller

    controller = _controller(create=False)
    running = _ask(controller.get_app.remote(app_name), "get_app") if controller is not None else None
    return {spec.name: spec.options for spec in running.app.deployments} if running is not None else {}


def describe_change(what: str, before: Any, after: Any) -> str:
    """What a deploy did to one deployment, in words (``what`` is the controller's word for it).

    ``before``/``after`` are its options as they ran and as deployed (None when absent).
    """
    from ..runtime.control.version import changed_settings

    replicas = f"{after.replicas()} replica(s)" if after is not None else "its replicas"
    if after is not None and after.autoscaling_config is not None:
        scaling = after.autoscaling_config
        replicas = f"autoscaling {scaling.min_replicas}-{scaling.max_replicas} replicas"
    if what == "options":
        settings = changed_settings(before, after) if before is not None and after is not None else ()
        if not settings:
            return "unchanged"
        return f"{', '.join(settings)} changed; applied without restarting a replica"
    if what == "reconfigured" and before is not None and after is not None:
        taken = [k for k in ("user_config", "logging_config") if getattr(before, k) != getattr(after, k)] or ["user_config"]
        return f"reconfigured: the running replicas took the new {' and '.join(taken)}; none restarted"
    return {
        "created": f"created with {replicas}",
        "updated": "restarted: new replicas (new code, constructor arguments, actor options or placement group) replace the old ones",
        "reconfigured": "reconfigured: the running replicas took the new user_config; none restarted",
        "scaled": f"scaled to {replicas}; none restarted",
        "unchanged": "unchanged",
        "deleted": "deleted: no longer in the config; its replicas stopped",
    }.get(what, what)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--graph",
    "live_graph",
    is_flag=True,
    help="Also print each application's live graph: deployments in the order requests reach them, each with "
    "replicas, requests, latency and errors, and each call with its rate and latency (--json: the figures, as `graph`).",
)
@cluster_options
def status_cmd(as_json: bool, live_graph: bool, address: str | None, connect_timeout: float) -> None:
    """Applications, deployments and replica counts by state on the running cluster."""
    with user_errors():
        if connect(address, connect_timeout) is None:
            if as_json:  # stdout stays JSON, for scripts that parse it
                click.echo(json.dumps({"cluster": None, "error": no_cluster_message()}, indent=2))
            click.echo(no_cluster_message(), err=True)
            sys.exit(1)
        from ..runtime.client.api import status

        current = status()
        replicas = _replica_lists()
        graphs = _live_graphs(sorted(current.applications)) if live_graph else {}
    data: dict[str, Any] = {
        "proxy": current.proxy,
        "applications": {
            name: {
                "status": app.status,
                "route_prefix": app.route_prefix,
                "message": app.message,
                "path": app.path,
                "deployments": {
                    d: {
                        "status": dep.status,
                        "replica_states": dep.replica_states,
                        "message": dep.message,
                        **({"autoscaling": dep.autoscaling} if dep.autoscaling is not None else {}),
                        **({"replicas": replicas[(name, d)]} if (name, d) in replicas else {}),
                    }
                    for d, dep in app.deployments.items()
                },
                **({"graph": dict(graphs[name].stats)} if name in graphs else {}),
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
    for column in ("application", "route", "status (path)", "deployment", "replicas"):
        table.add_column(column)
    for name, app in data["applications"].items():
        first = True
        for dname, dep in app["deployments"].items():
            states = ", ".join(f"{k} {v}" for k, v in sorted(dep["replica_states"].items())) or "none"
            # One line per replica where the controller reports them: state, node, pid.
            for r in dep.get("replicas", []):
                node = str(r.get("node_id") or "?")[:12]
                states += f"\n  {r.get('replica_id', '?')}: {r.get('state', '?')} on node {node}, pid {r.get('pid', '?')}"
            scaling = dep.get("autoscaling")
            if scaling:  # target, and what decided it
                states += f"\n  autoscaling: target {scaling['target']}: {scaling['reason']}"
            table.add_row(
                name if first else "",
                str(app["route_prefix"]) if first else "",
                f"{app['status']}\n({describe_path(app['path'], short=True)})" if first else "",
                dname,
                states,
            )
            first = False
    if not data["applications"]:
        click.echo("No applications are running.")
        return
    Console(width=120).print(table)
    for name, app in data["applications"].items():
        if app["path"].get("reason"):
            click.echo(f"{name}: {describe_path(app['path'])}")
        for dname, dep in app["deployments"].items():
            if dep["message"]:  # why it is not at its target (a replica pending, failing, being replaced)
                click.echo(f"{name} {dname}: {dep['message']}")
    for graph in graphs.values():
        click.echo()
        Console(width=160).print(graph.tree())


def _live_graphs(names: list[str]) -> dict[str, Any]:
    """Each running application's live graph (runtime/live_graph.py), by name; one deleted meanwhile is left out."""
    from ..runtime.client.api import live_graph

    graphs = {name: live_graph(name) for name in names}
    return {name: graph for name, graph in graphs.items() if graph is not None}


def describe_path(path: dict[str, Any], short: bool = False) -> str:
    """One line on which path an application's requests take (see the README's "compiled path")."""
    if not path:
        return "-"
    if short:
        return f"compiled, {path.get('lanes', 0)} lane(s)" if path.get("kind") == "compiled" else "plan"
    if path.get("kind") == "compiled":
        lanes = path.get("lanes", 0)
        return f"compiled, {lanes} lane(s)" + (f" ({path['reason']})" if path.get("reason") else "")
    return f"plan: {path.get('reason') or 'not compiled'}"


def _replica_lists() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each deployment's replicas (replica_id, state, node_id, pid, actor_name), where the controller reports them."""
    import ray

    from ..runtime.client.api import _controller

    controller = _controller(create=False)
    if controller is None:
        return {}
    raw = ray.get(controller.status.remote(), timeout=60)
    out = {}
    for app_name, app in raw.applications.items():
        for dep_name, dep in app.deployments.items():
            out[(app_name, dep_name)] = [dataclasses.asdict(r) for r in dep.replicas]
    return out


@click.command("shutdown")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--keep-cluster",
    is_flag=True,
    help="Leave the Ray cluster servegraph started running; only the applications, controller and proxy stop.",
)
@cluster_options
def shutdown_cmd(yes: bool, keep_cluster: bool, address: str | None, connect_timeout: float) -> None:
    """Delete every application, stop the HTTP proxy and the controller, and stop the Ray cluster servegraph started.

    A cluster servegraph did not start (--address, RAY_ADDRESS, serve.run's) keeps running.
    """
    with user_errors():
        cluster = connect(address, connect_timeout)
        if cluster is None:
            click.echo(no_cluster_message() + " Nothing to shut down.")
            return
        from ..runtime.client.api import _controller, shutdown, status

        current = status()
        names = sorted(current.applications)
        controller = _controller(create=False)
        record = cluster.record
        stops_cluster = record is not None and record.host and not keep_cluster
        if not yes and sys.stdin.isatty():
            doing = [f"delete {', '.join(names)}"] if names else []
            if stops_cluster:
                doing.append(f"stop the Ray cluster at {cluster.address}")
            if doing and not click.confirm(" and ".join(doing).capitalize() + "?"):
                return
        # Kept before the applications go: a foreground `servegraph run` that owns the cluster ends when they
        # do, and reads then whether to stop the cluster.
        kept = keep_started_cluster(record) if record is not None and record.host and keep_cluster else None
        if controller is not None:
            shutdown()
        if names:
            click.echo(f"Deleted {len(names)} application(s): {', '.join(names)}.")
        else:
            click.echo("No applications were running.")
        if controller is not None:
            click.echo("Stopped the servegraph controller" + (" and its HTTP proxy." if current.proxy else "."))
        if kept is not None:
            click.echo(kept)
        elif record is not None and record.host:
            click.echo(stop_started_cluster(record))
        else:
            click.echo(not_ours(cluster.address, cluster.source, record))


@click.command("delete")
@click.argument("app_names", nargs=-1, required=True, metavar="APP...")
@cluster_options
def delete_cmd(app_names: tuple[str, ...], address: str | None, connect_timeout: float) -> None:
    """Delete the applications APP... and their replicas; the others keep running."""
    with user_errors():
        if connect(address, connect_timeout) is None:
            click.echo(no_cluster_message(), err=True)
            sys.exit(1)
        from ..runtime.client.api import delete, status

        running = status().applications
        missing = [n for n in app_names if n not in running]
        if missing:
            click.echo(
                f"Error: no application named {', '.join(map(repr, missing))}; running: "
                f"{', '.join(sorted(running)) or 'none'}",
                err=True,
            )
            sys.exit(1)
        for name in app_names:
            delete(name)
            click.echo(f"Deleted application {name!r}.")


__all__ = ["delete_cmd", "deploy_cmd", "describe_change", "shutdown_cmd", "status_cmd"]
