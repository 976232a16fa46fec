"""Watching a batch: a rich progress bar on a terminal, nothing otherwise.

The batch id is printed once above the bar, so the bar itself fits 80 columns whole; it counts
failed and invalid lines apart, as the summary does, and appears only once the real total is known.
Lines a lane (an official Batch API) holds are shown apart (`40 in lanes`), and while there are any
the time remaining reads `-:--:--`: they wait upstream, and no rate foretells when they come back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from batchrelay.cli.text import counted, printable
from batchrelay.store.lane_status import held_lines
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store

POLL_S = 0.25


class RemainingColumn(TimeRemainingColumn):
    """rich's time remaining, unknown (`-:--:--`) while lanes hold lines."""

    def render(self, task: Task) -> Text:
        if task.fields.get("lanes"):
            return Text("-:--:--", style="progress.remaining")
        return super().render(task)


class ElapsedColumn(TimeElapsedColumn):
    """The time since the bar appeared, read at each redraw: it keeps running while lanes hold lines
    and nothing else changes (rich's own stops with its task, e.g. one it thinks complete)."""

    def __init__(self, since: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.since, self.clock = since, clock

    def render(self, task: Task) -> Text:
        return Text(str(timedelta(seconds=max(0, int(self.clock() - self.since)))), style="progress.elapsed")


def _in_lanes(n: int) -> str:
    return f"{n} in lanes" if n else ""


def make_progress(console: Console | None = None, *, since: float | None = None,
                  clock: Callable[[], float] = time.monotonic) -> Progress:
    return Progress(
        BarColumn(bar_width=None), MofNCompleteColumn(),  # the bar takes the width the rest leaves
        TextColumn("{task.fields[rate]:.0f} lines/s"), TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("[yellow]{task.fields[invalid]} invalid"), TextColumn("[cyan]{task.fields[in_lanes]}"),
        ElapsedColumn(clock() if since is None else since, clock), RemainingColumn(),
        console=console or Console(stderr=True), transient=False, expand=True, get_time=clock,
    )


class Bar:
    """A batch's progress bar on stderr (or `console`) when it is a terminal, nothing otherwise."""

    def __init__(self, batch_id: str, *, show: bool, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        console = console or Console(stderr=True)
        self.batch_id, self.clock = batch_id, clock
        self.t0 = clock()
        self.progress = make_progress(console, since=self.t0, clock=clock) if show and console.is_terminal else None
        self.task: TaskID | None = None
        self.first_done = 0

    def update(self, counts: dict[str, int], lanes: int = 0) -> None:
        """`counts` as in a batch's status: total, done, pending, failed, invalid, cancelled, expired;
        `lanes`: how many of the pending lines lanes hold."""
        if self.progress is None:
            return
        if self.task is None:  # the first counts: until now the total was not known
            self.first_done = counts["done"]
            shown = escape(printable(self.batch_id))  # an id typed by the user: no markup, no controls
            self.progress.console.print(f"[bold]{shown}[/bold]: {counted(counts['total'], 'line')}", highlight=False)
            self.task = self.progress.add_task(self.batch_id, total=max(1, counts["total"]), rate=0.0, failed=0,
                                               invalid=0, lanes=0, in_lanes="")
            self.progress.start()
        elapsed = max(1e-6, self.clock() - self.t0)
        self.progress.update(self.task, total=max(1, counts["total"]), completed=counts["done"],
                             rate=(counts["done"] - self.first_done) / elapsed,
                             failed=counts["failed"], invalid=counts["invalid"], lanes=lanes, in_lanes=_in_lanes(lanes))

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


def waited_for(info: BatchInfo) -> bool:
    """Nothing more will happen to the batch by itself: finished, its budget exhausted, or paused (an
    interrupted `run`'s batch) — where `status --watch` and `results --wait` stop waiting."""
    return info.finished or info.status in (Status.BUDGET_EXHAUSTED, Status.PAUSED)


async def watch(
    store: Store, batch_id: str, *, show: bool, until_done: Callable[[], bool] = lambda: False,
    ends: Callable[[BatchInfo], bool] = lambda info: info.finished,
) -> BatchInfo:
    """Poll the batch until `ends(info)` (default: it is finished) or `until_done()`, drawing
    progress if `show`."""
    bar = Bar(batch_id, show=show)
    try:
        while True:
            info = await store.info(batch_id)
            bar.update(info.as_dict()["counts"], await held_lines(store, batch_id) if bar.progress else 0)
            if ends(info) or until_done():
                return await store.info(batch_id)
            await asyncio.sleep(POLL_S)
    finally:
        bar.close()
