"""``servegraph fmt``: print ``.sg`` files in canonical form, check that they are, or rewrite them."""

from __future__ import annotations

import sys

import click

from ..errors import GraphError
from ..grammar import format_source
from ..grammar.errors import SgSyntaxError


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise SgSyntaxError(f"{path}: error: the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SgSyntaxError(f"{path}: error: cannot read the file: {exc.strerror}") from None


@click.command("fmt")
@click.argument("files", nargs=-1, required=True, metavar="FILE.sg...")
@click.option("--check", is_flag=True, help="Print nothing; exit 1 if a file is not formatted.")
@click.option("--write", is_flag=True, help="Rewrite files that are not formatted.")
def fmt_cmd(files: tuple[str, ...], check: bool, write: bool) -> None:
    """Format .sg graph files: one statement per line, canonical spacing and quotes, comments kept.

    Without --check or --write, prints each file formatted.
    """
    if check and write:
        raise click.UsageError("--check and --write do not go together: --check changes nothing")
    failed = unformatted = False
    for path in files:
        try:
            text = _read(path)
            formatted = format_source(text, path)
        except GraphError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        if check:
            if formatted != text:
                click.echo(f"{path}: not formatted; run: servegraph fmt --write {path}", err=True)
                unformatted = True
        elif write:
            if formatted != text:
                with open(path, "w", encoding="utf-8", newline="") as f:
                    f.write(formatted)
                click.echo(f"reformatted {path}", err=True)
        else:
            click.echo(formatted, nl=False)
    sys.exit(1 if failed or unformatted else 0)
