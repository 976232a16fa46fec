"""Output a person reads. Tables: rich's on a terminal; in a pipe, plain aligned columns, every
cell whole (a pipe has no width to cut them to, and `grep`/`awk` want the full text). Counts with
their noun in the right number."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import click


def counted(n: int, noun: str) -> str:
    """`1 line`, `2 lines`, `0 lines`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a table with columns two spaces apart and nothing cut. Pure."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]]


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(r) for r in rows]
    if not sys.stdout.isatty():
        for line in plain_table(headers, rows):
            click.echo(line)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
