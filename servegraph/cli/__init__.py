"""The ``servegraph`` command line. Each command lives in a module of its own, registered here."""

from __future__ import annotations

import click

from .build import build_cmd
from .check import check_cmd
from .export import export_cmd
from .fmt import fmt_cmd
from .logs import logs_cmd
from .ops import delete_cmd, deploy_cmd, shutdown_cmd, status_cmd
from .render import render_cmd
from .run import run_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="servegraph")
def main() -> None:
    """Compose deployments into graphs, check them, and serve them on Ray."""


main.add_command(run_cmd)
main.add_command(check_cmd)
main.add_command(deploy_cmd)
main.add_command(status_cmd)
main.add_command(shutdown_cmd)
main.add_command(delete_cmd)
main.add_command(logs_cmd)
main.add_command(build_cmd)
main.add_command(render_cmd)
main.add_command(fmt_cmd)
main.add_command(export_cmd)

__all__ = ["main"]
