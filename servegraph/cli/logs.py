"""``servegraph logs APP [DEPLOYMENT]``: the recent output of an application's replicas (``--follow`` for more);
``servegraph logs --request-id ID``: every line one request left in any replica's log, on any node.

Replicas' stdout and stderr are Ray worker log files on the node each replica runs on. This command
reads the ones on this machine's node; for a replica elsewhere it says where its logs are. A request's
lines are in the replicas' own log files (see runtime/replica_logging.py), read on every node
(runtime/log_search.py).
"""

from __future__ import annotations

import glob
import os
import sys
import time
from typing import Any

import click

from ..runtime import ray_compat
from .common import user_errors
from .connect import cluster_options, connect, no_cluster_message

#: How often ``--follow`` looks for new lines (seconds).
_FOLLOW_EVERY_S = 0.5


def _replica_files(logs_dir: str, pid: int) -> list[str]:
    # Ray names a worker's files worker-<worker id>-<job id>-<pid>.out / .err.
    return sorted(glob.glob(os.path.join(logs_dir, f"worker-*-{pid}.out")) + glob.glob(os.path.join(logs_dir, f"worker-*-{pid}.err")))


def _own_lines(data: bytes) -> list[str]:
    """The replica's own output in ``data``: without the lines Ray writes into every worker log to mark its
    job and actor (its log monitor reads them; they are no one's output)."""
    from ..runtime.ray_compat import WORKER_LOG_MARKERS

    return [line for line in data.decode("utf-8", "replace").splitlines() if not line.startswith(WORKER_LOG_MARKERS)]


def _last_lines(path: str, count: int) -> tuple[list[str], int]:
    with open(path, "rb") as f:
        data = f.read()
    lines = _own_lines(data)
    return lines[-count:] if count > 0 else [], len(data)


@click.command("logs")
@click.argument("app_name", metavar="[APP]", required=False)
@click.argument("deployment", required=False)
@click.option("--tail", "-n", "tail", type=click.IntRange(min=0), default=50, show_default=True, help="Lines per replica log.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option(
    "--request-id",
    "request_id",
    metavar="ID",
    help="Every line of the request with this id (its X-Request-ID) from every replica on every node, in time order.",
)
@cluster_options
def logs_cmd(
    app_name: str | None,
    deployment: str | None,
    tail: int,
    follow: bool,
    request_id: str | None,
    address: str | None,
    connect_timeout: float,
) -> None:
    """Recent output (stdout and stderr) of APP's replicas, or of one DEPLOYMENT's, each line prefixed by its replica;
    with --request-id, every line one request left in the replicas' logs (APP, DEPLOYMENT narrow it down)."""
    with user_errors():
        if app_name is None and request_id is None:
            raise click.UsageError("give an APP, or --request-id ID")
        if request_id is not None and follow:
            raise click.UsageError("--follow reads an application's output; leave it out with --request-id")
        if connect(address, connect_timeout) is None:
            click.echo(no_cluster_message(), err=True)
            sys.exit(1)
        import ray

        from ..runtime.client.api import _ask, _controller

        controller = _controller(create=False)
        raw = _ask(controller.status.remote(), "status") if controller is not None else None
        applications = raw.applications if raw is not None else {}
        if request_id is not None:
            _request_logs(request_id, applications, app_name, deployment, controller)
            return
        app = applications.get(app_name)
        if app is None:
            running = ", ".join(sorted(applications)) or "none"
            raise click.ClickException(f"no application named {app_name!r}; running: {running}")
        deployments = app.deployments
        if deployment is not None:
            if deployment not in deployments:
                raise click.ClickException(
                    f"application {app_name!r} has no deployment {deployment!r}; it has {', '.join(deployments)}"
                )
            deployments = {deployment: deployments[deployment]}
        here = ray.get_runtime_context().get_node_id()
        logs_dir = ray_compat.logs_dir()
        if logs_dir is None:  # connected through Ray Client: this process has no node, so no log files
            raise click.ClickException("servegraph logs needs a connection to a Ray node, not a Ray Client one")
        sources: list[tuple[str, str]] = []
        for dname, dep in deployments.items():
            for replica in dep.replicas:
                label = f"{dname}#{replica.replica_id}"
                if replica.node_id != here:
                    click.echo(f"[{label}] runs on node {replica.node_id}: its logs are in that node's Ray logs directory", err=True)
                    continue
                if replica.pid is None:
                    click.echo(f"[{label}] is {replica.state}: no process yet", err=True)
                    continue
                sources += [(label, path) for path in _replica_files(logs_dir, replica.pid)]
        offsets: dict[str, int] = {}
        printed = 0
        for label, path in sources:
            lines, offsets[path] = _last_lines(path, tail)
            for line in lines:
                click.echo(f"[{label}] {line}")
            printed += len(lines)
        if not sources:
            click.echo(f"no replica log of {app_name!r} on this node", err=True)
        elif not printed and tail > 0:
            click.echo(f"no output from {app_name!r}'s replicas yet (logs in {logs_dir})", err=True)
        try:
            while follow:
                time.sleep(_FOLLOW_EVERY_S)
                for label, path in sources:
                    with open(path, "rb") as f:
                        f.seek(offsets[path])
                        data = f.read()
                    offsets[path] += len(data)
                    for line in _own_lines(data):
                        click.echo(f"[{label}] {line}")
        except KeyboardInterrupt:
            pass


def _request_logs(request_id: str, applications: dict, app_name: str | None, deployment: str | None, controller: Any) -> None:
    """Print the request's lines from every node, each prefixed by its deployment and replica; exit 1 if none."""
    from ..runtime.client.api import _ask
    from ..runtime.client.log_search import label, search_cluster

    if app_name is not None and app_name not in applications:
        running = ", ".join(sorted(applications)) or "none"
        raise click.ClickException(f"no application named {app_name!r}; running: {running}")
    # Each running replica by id (to name its deployment), and every logs_dir a deployment writes to.
    names: dict[str, str] = {}
    wanted: set[str] | None = None if app_name is None and deployment is None else set()
    for aname, app in applications.items():
        for dname, dep in app.deployments.items():
            for replica in dep.replicas:
                names[replica.replica_id] = dname
                if wanted is not None and (app_name in (None, aname)) and deployment in (None, dname):
                    wanted.add(replica.replica_id)
    dirs = _ask(controller.logs_dirs.remote(), "logs_dirs") if controller is not None else []
    lines = search_cluster(request_id, dirs)
    if wanted is not None:
        lines = [line for line in lines if line.replica in wanted]
    if not lines:
        where = f" of {app_name!r}" if app_name is not None else ""
        click.echo(f"no replica log{where} has a line of request {request_id!r}", err=True)
        sys.exit(1)
    for line in lines:
        click.echo(f"[{label(line, names)}] {line.text}")


__all__ = ["logs_cmd"]
