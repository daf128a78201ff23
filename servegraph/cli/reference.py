"""The command-line reference (docs/cli.md), rendered from the commands' own ``--help`` so it cannot drift.

    python -m servegraph.cli.reference docs/cli.md     # write it
    python -m servegraph.cli.reference                 # print it

A test renders it again and fails when docs/cli.md differs.
"""

from __future__ import annotations

import sys

import click

#: Help is wrapped at this width whatever the terminal, so the file is the same on every machine.
WIDTH = 100

HEADER = """\
# servegraph command reference

Every command and option, as `servegraph COMMAND --help` prints them. This file is generated from
the commands themselves (`python -m servegraph.cli.reference docs/cli.md`); a test fails when the two
differ.
"""


def render() -> str:
    """The whole reference: the group's help, then each command's, in the order ``servegraph --help`` lists them."""
    from . import main

    root = _context(main, "servegraph", None)
    parts = [HEADER, _section("servegraph", root)]
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        if command is not None and not command.hidden:
            parts.append(_section(f"servegraph {name}", _context(command, name, root)))
    return "\n".join(parts)


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # As `--help` makes it (the group's context settings apply), at a fixed width, without parsing arguments.
    return command.make_context(name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH)


def _section(title: str, ctx: click.Context) -> str:
    return f"## `{title}`\n\n```text\n{ctx.command.get_help(ctx).rstrip()}\n```\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args:
        with open(args[0], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
