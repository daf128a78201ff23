"""``servegraph export``: write a Python graph as ``.sg`` text."""

from __future__ import annotations

import click

from ..grammar import export
from .common import user_errors
from .load import load_app


@click.command("export")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--name", "graph_name", default=None, help="Name of the graph in the .sg text [default: ATTR of MODULE:ATTR].")
@click.option(
    "--route-prefix",
    default=None,
    help='The graph\'s route: graph NAME at "/route" [default: the ingress\'s route_prefix option, else /].',
)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write to this file (default: stdout).")
def export_cmd(target: str, graph_name: str | None, route_prefix: str | None, output: str | None) -> None:
    """Print the graph TARGET (MODULE:ATTR) as a .sg graph file that compiles to the same graph."""
    with user_errors():
        app = load_app(target)
        if graph_name is None:
            graph_name = target.rpartition(":")[2].rpartition(".")[2] or "app"
        if route_prefix is None:
            from ..compiler import compile
            from ..compiler.config.app import resolve

            route_prefix = resolve(compile(app)).route_prefix
        text = export(app, graph_name, route_prefix=route_prefix)
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {output}", err=True)
