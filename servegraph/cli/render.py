"""``servegraph render``: draw a graph to a file; the extension picks the format.

With ``--live`` the argument is a running application's name instead, and the drawing is its live graph
(the diagram with each deployment's and each call's figures now, see ``servegraph status --graph``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from ..compiler import compile
from ..compiler.emit.render import FORMATS
from .common import user_errors
from .connect import cluster_options, connect, no_cluster_message
from .load import load_target

if TYPE_CHECKING:
    from ..runtime.actors.live_graph import LiveGraph


@click.command("render")
@click.argument("target", metavar="MODULE:ATTR | APP")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help=f"The file to write: {', '.join(FORMATS)} (.svg, .png and .pdf need Graphviz's `dot`; --live: all but .mmd).",
)
@click.option(
    "--rankdir",
    type=click.Choice(["LR", "TB"]),
    default="LR",
    show_default=True,
    help="Left to right or top to bottom.",
)
@click.option("--graph", "name", default=None, help="Graph to draw in a .sg file with several.")
@click.option("--name", "old_name", default=None, hidden=True)  # the earlier spelling; run/check say --graph
@click.option(
    "--live",
    is_flag=True,
    help="TARGET is a running application: draw its live graph (requests/s, latency, errors, replicas, calls) on the cluster.",
)
@cluster_options
def render_cmd(
    target: str,
    output: str,
    rankdir: str,
    name: str | None,
    old_name: str | None,
    live: bool,
    address: str | None,
    connect_timeout: float,
) -> None:
    """Draw the graph MODULE:ATTR (or a .sg file): deployments, calls, inputs, handles and the ingress.

    With --live, draw the running application APP as it is now: the same diagram with each deployment's
    replicas, requests, latency and errors, and each call's rate and latency.
    """
    with user_errors():
        draw: Callable[[str, str], str]
        if live:
            draw = _live_graph(target, address, connect_timeout).write
        else:
            loaded = load_target(target, name=name or old_name)
            draw = compile(loaded.node).with_app(import_path=target, route_prefix=loaded.route_prefix).render
        try:
            draw(output, rankdir)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)


def _live_graph(app_name: str, address: str | None, connect_timeout: float) -> LiveGraph:
    """The running application's live graph, or a one-line error (no cluster, no such application)."""
    if connect(address, connect_timeout) is None:
        click.echo(no_cluster_message(), err=True)
        sys.exit(1)
    from ..runtime.client.api import live_graph, status

    running = status().applications
    drawing = live_graph(app_name) if app_name in running else None
    if drawing is None:
        raise click.ClickException(
            f"no application named {app_name!r}; running: {', '.join(sorted(running)) or 'none'}"
        )
    return drawing
