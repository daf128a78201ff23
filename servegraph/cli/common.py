"""Helpers shared by CLI commands: one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from ..errors import GraphError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a GraphError (or a bad import) as its message and exit 1."""
    try:
        yield
    except GraphError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
