"""The README's CLI reference lists every command and every option its help has, and no other: the
table is compared with what click knows of each command, so the two cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest

from batchrelay.cli.main import cli

from .conftest import ROOT

EVERYWHERE = {"-h", "--help", "-c", "--config"}  # every command has them: the README says so once
OPTION = re.compile(r"(?<![\w-])(--?[a-z][\w-]*)")


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if not command.hidden:
            yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _documented() -> dict[str, str]:
    """The first cell of each row of the README's CLI table, by the command it shows."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## CLI\n"):]
    section = section[:section.index("\n## ", 1)]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if m := re.match(r"\| `batchrelay ((?:[a-z]+ ?)+)(.*?)` \|", line):
            rows[m.group(1).strip()] = m.group(2)
    return rows


def _options(command: click.Command) -> list[list[str]]:
    return [[*p.opts, *p.secondary_opts] for p in command.params
            if isinstance(p, click.Option) and not p.hidden and not EVERYWHERE & set(p.opts)]


COMMANDS = dict(_commands(cli))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_readme_shows_each_option_of_the_command(name: str) -> None:
    rows = _documented()
    assert name in rows, f"the README's CLI table has no row for `batchrelay {name}`"
    shown = set(OPTION.findall(rows[name]))
    missing = [" / ".join(names) for names in _options(COMMANDS[name]) if not shown & set(names)]
    assert not missing, f"`batchrelay {name}`: the README leaves out {', '.join(missing)}"
    known = {n for names in _options(COMMANDS[name]) for n in names}
    assert not shown - known, f"`batchrelay {name}`: the README shows options it does not have: {shown - known}"


def test_the_readme_shows_no_command_that_does_not_exist() -> None:
    assert set(_documented()) <= set(COMMANDS)


def test_the_readme_says_where_the_config_option_goes_and_what_providers_check_exits_with() -> None:
    text = (ROOT / "README.md").read_text()
    assert "`-c FILE`" in text[text.index("\n## CLI\n"):]
    row = next(line for line in text.splitlines() if line.startswith("| `batchrelay providers check"))
    assert "exit 0" in row and "1 when" in row and "5 when" in row
