"""Output a person reads. Tables: rich's on a terminal; in a pipe, plain aligned columns, every
cell whole (a pipe has no width to cut them to, and `grep`/`awk` want the full text). Counts with
their noun in the right number.

Text that comes from Redis, files or providers (names, ids, paths, error reasons) goes through
`printable` before it reaches the terminal: a batch name that carries an escape sequence would
otherwise recolour, move or clear the screen of whoever lists the batches."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Sequence

import click

from batchrelay.parse import CONTROL


def counted(n: int, noun: str) -> str:
    """`1 line`, `2 lines`, `0 lines`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _escaped(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


def printable(text: object) -> str:
    """`text` safe to print: each control character (parse.CONTROL) shown escaped, as Python writes
    it in a string (`\\x1b`, `\\n`, `\\u202e`). Pure."""
    return CONTROL.sub(_escaped, str(text))


def command_with(config: str | None) -> str:
    """`batchrelay`, with `-c FILE` when the command ran with a config file, as the commands it
    suggests must be typed (a suggestion without it would read another config, or none). Pure."""
    return printable(shlex.join(["batchrelay", "-c", config]) if config else "batchrelay")


def echo(text: str, err: bool = False) -> None:
    """A line of output that may hold data: printed `printable`."""
    click.echo(printable(text), err=err)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a table with columns two spaces apart and nothing cut. Pure."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]]


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [[printable(cell) for cell in r] for r in rows]
    if not sys.stdout.isatty():
        for line in plain_table(headers, rows):
            click.echo(line)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*headers)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text, not str: a `[red]` in a name is shown, not obeyed
    Console().print(table)
