"""``servegraph logs APP [DEPLOYMENT]``: the recent output of an application's replicas (``--follow`` for more).

Replicas' stdout and stderr are Ray worker log files on the node each replica runs on. This command
reads the ones on this machine's node; for a replica elsewhere it says where its logs are.
"""

from __future__ import annotations

import glob
import os
import sys
import time

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
@click.argument("app_name", metavar="APP")
@click.argument("deployment", required=False)
@click.option("--tail", "-n", "tail", type=click.IntRange(min=0), default=50, show_default=True, help="Lines per replica log.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@cluster_options
def logs_cmd(app_name: str, deployment: str | None, tail: int, follow: bool, address: str | None, connect_timeout: float) -> None:
    """Recent output (stdout and stderr) of APP's replicas, or of one DEPLOYMENT's, each line prefixed by its replica."""
    with user_errors():
        if connect(address, connect_timeout) is None:
            click.echo(no_cluster_message(), err=True)
            sys.exit(1)
        import ray

        from ..runtime.api import _ask, _controller

        controller = _controller(create=False)
        raw = _ask(controller.status.remote(), "status") if controller is not None else None
        applications = raw.applications if raw is not None else {}
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


__all__ = ["logs_cmd"]
