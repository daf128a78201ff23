"""``servegraph run``: deploy a graph and serve it until Ctrl-C, as ``serve run`` does."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any

import click

from ..compiler.config.app import DEFAULT_APP_NAME
from ..errors import GraphError
from ..runtime.client.cluster_record import BY_RUN, read_record
from .common import user_errors
from .connect import Cluster, cluster_options, connect
from .load import load_target
from .portinfo import bind_error, describe_holder
from .stopping import disconnect, keep_started_cluster, not_ours, stop_started_cluster

#: How often a foreground run looks whether its application still runs.
_WATCH_EVERY_S = 1.0
#: How long the cluster may not answer before a foreground run says it is gone and ends.
_LOST_AFTER_S = 30.0


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

    from ..runtime.client.api import status

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
    "--graph-autoscaling/--no-graph-autoscaling",
    default=True,
    show_default=True,
    help="Size autoscaled deployments from their callers' load too (see the README's autoscaling); "
    "--no-graph-autoscaling: each on its own queue, as Ray Serve does.",
)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None, help="Also serve gRPC on this port (needs --grpc-servicer-functions).")
@click.option(
    "--grpc-servicer-functions",
    multiple=True,
    help="Import path of a generated add_XServicer_to_server function the gRPC proxy serves (repeat for several), as Ray Serve's `serve run` takes it.",
)
@click.option(
    "--grpc-enable-reflection/--grpc-disable-reflection",
    default=True,
    show_default=True,
    help="gRPC server reflection (needs grpcio-reflection), as in Ray Serve.",
)
@click.option(
    "--non-blocking",
    is_flag=True,
    help="Return after deploying; a Ray cluster started for it keeps running until `servegraph shutdown`.",
)
@click.option(
    "--keep-cluster",
    is_flag=True,
    help="When this command ends, leave the Ray cluster it started running (`servegraph shutdown` stops it later).",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Redeploy when a source file of the graph changes (the target's module and the modules it imports "
    "from this directory); only deployments whose code changed restart.",
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
    graph_autoscaling: bool,
    grpc_port: int | None,
    grpc_servicer_functions: tuple[str, ...],
    grpc_enable_reflection: bool,
    non_blocking: bool,
    keep_cluster: bool,
    reload: bool,
    address: str | None,
    connect_timeout: float,
) -> None:
    """Deploy TARGET (MODULE:ATTR or a .sg file) and serve it until Ctrl-C.

    Uses the cluster at --address, RAY_ADDRESS, or the one servegraph recorded;
    otherwise starts a local one and records it, so `servegraph status`, `logs`,
    `deploy`, `delete` ... find it. Ctrl-C (or the application deleted from
    elsewhere) ends the command and stops the cluster it started, unless
    --keep-cluster or --non-blocking.
    """
    if reload and non_blocking:
        raise click.UsageError("--reload watches the source while the command serves; it cannot be --non-blocking")
    if bool(grpc_port) != bool(grpc_servicer_functions):
        raise click.UsageError(
            "gRPC needs both --grpc-port and --grpc-servicer-functions (the generated add_XServicer_to_server functions to serve)"
        )
    grpc = (
        {"port": grpc_port, "grpc_servicer_functions": list(grpc_servicer_functions), "enable_reflection": grpc_enable_reflection}
        if grpc_port
        else None
    )
    with user_errors():
        loaded = load_target(target, name=graph_name)
        watch = _SourceWatch(target) if reload else None
        app = loaded.node
        route_prefix = route_prefix or loaded.route_prefix or "/"
        owner = None if (non_blocking or keep_cluster) else os.getpid()
        cluster = connect(address, connect_timeout, start_if_missing=BY_RUN, owner_pid=owner)
        assert cluster is not None  # start_if_missing: one was started if none was named
        # A failed deploy (or Ctrl-C) leaves no cluster behind that this command started for it.
        ours = cluster.record if cluster.started_here and not (non_blocking or keep_cluster) else None
        try:
            _deploy(app, target, name, route_prefix, host, port, no_resource_check, compiled, non_blocking, graph_autoscaling, grpc)
        except (GraphError, click.ClickException) as exc:
            if ours is None:
                raise
            text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            click.echo(f"Error: {text}", err=True)
            click.echo(stop_started_cluster(ours, wait_for_owner=False), err=True)
            sys.exit(1)
        except BaseException:
            if ours is not None:
                click.echo(stop_started_cluster(ours, wait_for_owner=False), err=True)
            raise
    if non_blocking:
        if cluster.started_here:
            click.echo(f"The Ray cluster at {cluster.address} keeps running; `servegraph shutdown` stops it.", err=True)
        return
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    redeploy = None
    if watch is not None:
        argv = [target, "--non-blocking", "--address", cluster.address, "--name", name, "--route-prefix", route_prefix,
                "--host", host, "--port", str(port)]
        argv += (["--graph", graph_name] if graph_name else []) + ([] if compiled else ["--no-compiled"])
        argv += ["--no-resource-check"] if no_resource_check else []
        argv += [] if graph_autoscaling else ["--no-graph-autoscaling"]
        redeploy = (watch, argv)
        click.echo(f"Watching {len(watch.files)} source file(s) for changes.", err=True)
    try:
        ended, code = _serve_until_gone(name, redeploy), None
    except KeyboardInterrupt:
        ended, code = None, 0
    if ended is not None:
        message, code = ended
        click.echo(message, err=True)
    else:
        click.echo("Shutting down...", err=True)
        _take_down(name, cluster)
    _end_cluster(cluster, keep_cluster)
    sys.exit(code)


def _deploy(
    app: Any,
    target: str,
    name: str,
    route_prefix: str,
    host: str,
    port: int,
    no_resource_check: bool,
    compiled: bool,
    non_blocking: bool,
    graph_autoscaling: bool = True,
    grpc: dict[str, Any] | None = None,
) -> None:
    _check_port(host, port)
    from ..runtime.client.api import run, start
    from .ops import _progress_display

    click.echo(f"Deploying {target} as application {name!r}...", err=True)
    began = time.monotonic()
    progress, done = _progress_display(name)
    if grpc is not None:  # the proxy serves gRPC beside HTTP; the deploy below keeps its options
        start(http_options={"host": host, "port": port}, grpc_options=grpc)
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
            graph_autoscaling=graph_autoscaling,
        )
    finally:
        done()
    url = f"http://{host}:{port}{route_prefix}" + (f" and gRPC on {host}:{grpc['port']}" if grpc is not None else "")
    stop = "" if non_blocking else " (Ctrl-C to stop)"
    click.echo(f"Deployed {name!r} in {time.monotonic() - began:.1f}s; serving at {url}{stop}", err=True)


class _SourceWatch:
    """The files a graph was loaded from (its target and the modules it imported from this directory) and
    when each last changed: ``changed()`` lists those edited since the last look."""

    def __init__(self, target: str):
        root = os.path.abspath(os.getcwd())
        files = {os.path.abspath(target.split(":")[0])} if target.split(":")[0].endswith(".sg") else set()
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if path and os.path.abspath(path).startswith(root + os.sep) and "site-packages" not in path:
                files.add(os.path.abspath(path))
        self.files = sorted(f for f in files if os.path.exists(f))
        self._seen = {f: self._stamp(f) for f in self.files}

    @staticmethod
    def _stamp(path: str) -> tuple[float, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return info.st_mtime, info.st_size

    def changed(self) -> list[str]:
        out = []
        for path in self.files:
            stamp = self._stamp(path)
            if stamp != self._seen[path]:
                self._seen[path] = stamp
                out.append(path)
        return out


def _redeploy(argv: list[str], changed: list[str]) -> None:
    """Deploy the graph again from its changed source, in a fresh process (fresh imports); the running
    application keeps serving if the new code fails to load or deploy."""
    import subprocess

    shown = ", ".join(os.path.relpath(p) for p in changed)
    click.echo(f"Changed: {shown}; redeploying...", err=True)
    result = subprocess.run([sys.executable, "-m", "servegraph", "run", *argv], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("Deployed", "Error", "  "))]
    for line in lines or result.stderr.splitlines()[-5:]:
        click.echo(line, err=True)
    if result.returncode != 0:
        click.echo("The redeploy failed; the previous version keeps serving.", err=True)


def _serve_until_gone(name: str, redeploy: tuple[_SourceWatch, list[str]] | None = None) -> tuple[str, int]:
    """Wait while application ``name`` runs; returns why it ended (said to the user) and the exit code.

    With ``redeploy`` (``--reload``): deploy again whenever a watched source file changes.
    """
    from ..runtime.client.api import _ask, _controller

    unanswered_since: float | None = None
    while True:
        time.sleep(_WATCH_EVERY_S)
        if redeploy is not None:
            changed = redeploy[0].changed()
            if changed:
                _redeploy(redeploy[1], changed)
        try:
            controller = _controller(create=False)
            running = _ask(controller.status.remote(), "status", timeout_s=10).applications if controller else {}
        except Exception as exc:  # the controller restarting, or the cluster gone: wait a while before saying so
            unanswered_since = unanswered_since or time.monotonic()
            if time.monotonic() - unanswered_since > _LOST_AFTER_S:
                return f"The Ray cluster stopped answering ({type(exc).__name__}); stopping.", 1
            continue
        unanswered_since = None
        if name not in running:
            return f"Application {name!r} was deleted or shut down from elsewhere; stopping.", 0


def _take_down(name: str, cluster: Cluster) -> None:
    """Ctrl-C: everything on a cluster this command started; only its own application on anyone else's."""
    from ..runtime.client.api import delete, shutdown

    try:
        if cluster.started_here:
            shutdown()
        else:
            delete(name)
            click.echo(f"Deleted application {name!r}.", err=True)
    except Exception as exc:  # the cluster is going away under us: nothing left to delete
        click.echo(f"Could not delete {name!r}: {exc}", err=True)


def _end_cluster(cluster: Cluster, keep: bool) -> None:
    """Stop the cluster this command started, unless the user asked to keep it (here or in shutdown)."""
    record = cluster.record
    if not cluster.started_here or record is None:
        disconnect()
        click.echo(not_ours(cluster.address, cluster.source, record), err=True)
        return
    now = read_record()
    if keep or (now is not None and now.address == record.address and now.keep):
        disconnect()
        click.echo(keep_started_cluster(record if now is None else now), err=True)
        return
    click.echo(stop_started_cluster(record, wait_for_owner=False), err=True)
