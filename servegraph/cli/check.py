"""``servegraph check``: run the compiler's checks and print every diagnostic."""

from __future__ import annotations

import json
import sys

import click

from ..compiler import compile
from ..compiler.fast_path import compiled_path_problem
from ..errors import GraphError
from .load import load_app


@click.command("check")
@click.argument("target")
@click.option("--graph", "name", default=None, help="Graph to check in a .sg file with several.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--resources",
    "resources",
    default=None,
    help="Check against these cluster resources, e.g. CPU=2,GPU=0 (default: no resource check).",
)
def check_cmd(target: str, name: str | None, fmt: str, resources: str | None) -> None:
    """Check the graph TARGET (MODULE:ATTR or a .sg file) without deploying it."""
    cluster = None
    if resources:
        try:
            cluster = {k.strip(): float(v) for k, v in (item.split("=") for item in resources.split(","))}
        except ValueError:
            raise click.BadParameter(
                "expected NAME=AMOUNT[,NAME=AMOUNT...], e.g. CPU=2", param_hint="--resources"
            ) from None
    diagnostics = []
    path = None
    try:
        app = load_app(target, name=name)
        compiled = compile(app, cluster_resources=cluster, strict=False)
        diagnostics = list(compiled.diagnostics)
        if not any(d.severity == "error" for d in diagnostics):
            problem = compiled_path_problem(compiled.ir)
            path = (
                f"requests run as a plan of actor calls: {problem}"
                if problem
                else "requests run on the compiled path (Ray compiled graphs; serve.run(..., compiled=False) turns it off)"
            )
    except GraphError as exc:  # every error carries its diagnostics, located where the user wrote the code
        diagnostics = list(exc.diagnostics)
    if fmt == "json":
        click.echo(json.dumps([d.to_dict() for d in diagnostics], indent=2))
    else:
        for d in diagnostics:
            click.echo(d.format(), err=d.severity == "error")
        errors = sum(d.severity == "error" for d in diagnostics)
        if not diagnostics:
            click.echo(f"{target}: ok, no problems found")
        if path is not None:
            click.echo(path)
        else:
            click.echo(f"{target}: {errors} error(s), {len(diagnostics) - errors} warning(s)", err=True)
    sys.exit(1 if any(d.severity == "error" for d in diagnostics) else 0)
