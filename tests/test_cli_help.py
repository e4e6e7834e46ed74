"""Every command answers --help with a summary and an example, and the README's command table lists it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from ninport.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
COMMANDS = main.list_commands(click.Context(main))


def test_all_commands_present():
    assert {"inspect", "convert", "run", "verify", "layers", "paper", "validate", "evaluate", "train",
            "bench"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_is_documented(run_cli, name):
    result = run_cli(name, "--help")
    assert result.exit_code == 0, result.output
    command = main.get_command(click.Context(main), name)
    assert command.help and command.help.strip().splitlines()[0], name
    assert f"`ninport {name}" in README, f"README's command table does not list `ninport {name}`"
