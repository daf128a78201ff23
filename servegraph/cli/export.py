"""``servegraph export``: write a Python graph as ``.sg`` text."""

from __future__ import annotations

import click

from ..grammar import export
from .common import user_errors
from .load import load_app


@click.command("export")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--name", "graph_name", default="app", show_default=True, help="Name of the graph in the .sg text.")
@click.option("--route-prefix", default=None, help='Write the graph as served at this route: graph NAME at "/route".')
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write to this file (default: stdout).")
def export_cmd(target: str, graph_name: str, route_prefix: str | None, output: str | None) -> None:
    """Print the graph TARGET (MODULE:ATTR) as a .sg graph file that compiles to the same graph."""
    with user_errors():
        text = export(load_app(target), graph_name, route_prefix=route_prefix)
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {output}", err=True)
