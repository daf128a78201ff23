"""``servegraph render``: draw a graph to a file; the extension picks the format."""

from __future__ import annotations

import click

from ..compiler import compile
from ..compiler.emit.render import FORMATS
from .common import user_errors
from .load import load_target


@click.command("render")
@click.argument("target", metavar="MODULE:ATTR")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help=f"The file to write: {', '.join(FORMATS)} (.svg, .png and .pdf need Graphviz's `dot`).",
)
@click.option("--rankdir", type=click.Choice(["LR", "TB"]), default="LR", show_default=True, help="Left to right or top to bottom.")
@click.option("--graph", "name", default=None, help="Graph to draw in a .sg file with several.")
@click.option("--name", "old_name", default=None, hidden=True)  # the earlier spelling; run/check say --graph
def render_cmd(target: str, output: str, rankdir: str, name: str | None, old_name: str | None) -> None:
    """Draw the graph MODULE:ATTR (or a .sg file): deployments, calls, inputs, handles and the ingress."""
    name = name or old_name
    with user_errors():
        loaded = load_target(target, name=name)
        compiled = compile(loaded.node).with_app(import_path=target, route_prefix=loaded.route_prefix)
        try:
            compiled.render(output, rankdir)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)
