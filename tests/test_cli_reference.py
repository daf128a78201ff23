"""docs/cli.md is the commands' own --help: rendered again here, it must not differ."""

from __future__ import annotations

from conftest import ROOT

from servegraph.cli import main
from servegraph.cli.reference import render


def test_docs_cli_md_is_what_the_commands_say():
    written = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == render(), "docs/cli.md is stale: run `python -m servegraph.cli.reference docs/cli.md`"


def test_every_command_and_option_is_in_the_reference():
    text = render()
    for name, command in main.commands.items():
        assert f"## `servegraph {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in text, f"servegraph {name} {opt}"
