"""Watching a batch: a rich progress bar on a terminal, nothing otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batchrelay.store.store import BatchInfo, Store, unsuccessful

POLL_S = 0.25


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f} lines/s"), TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True), transient=False,
    )


class Bar:
    """A batch's progress bar on stderr when it is a terminal (nothing otherwise)."""

    def __init__(self, batch_id: str, *, show: bool) -> None:
        self.progress = make_progress() if show and sys.stderr.isatty() else None
        self.task = self.progress.add_task(batch_id, total=1, rate=0.0, failed=0) if self.progress else None
        self.first_done: int | None = None
        self.t0 = time.monotonic()
        if self.progress:
            self.progress.start()

    def update(self, counts: dict[str, int]) -> None:
        """`counts` as in a batch's status: total, done, pending, failed, invalid, cancelled, expired."""
        if self.progress is None or self.task is None:
            return
        if self.first_done is None:
            self.first_done = counts["done"]
        elapsed = max(1e-6, time.monotonic() - self.t0)
        self.progress.update(self.task, total=max(1, counts["total"]), completed=counts["done"],
                             rate=(counts["done"] - self.first_done) / elapsed,
                             failed=unsuccessful(counts))

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


async def watch(
    store: Store, batch_id: str, *, show: bool, until_done: Callable[[], bool] = lambda: False
) -> BatchInfo:
    """Poll the batch until it is finished (or `until_done()`), drawing progress if `show`."""
    bar = Bar(batch_id, show=show)
    try:
        while True:
            info = await store.info(batch_id)
            bar.update(info.as_dict()["counts"])
            if info.finished or until_done():
                return await store.info(batch_id)
            await asyncio.sleep(POLL_S)
    finally:
        bar.close()
