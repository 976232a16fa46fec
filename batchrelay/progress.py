"""Watching a batch: a rich progress bar on a terminal, nothing otherwise."""

from __future__ import annotations

import asyncio
import sys
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

from .store import BatchInfo, Store

POLL_S = 0.25


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f} lines/s"), TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True), transient=False,
    )


async def watch(
    store: Store, batch_id: str, *, show: bool, until_done: Callable[[], bool] = lambda: False
) -> BatchInfo:
    """Poll the batch until it is finished (or `until_done()`), drawing progress if `show`."""
    show = show and sys.stderr.isatty()
    info = await store.info(batch_id)
    progress = make_progress() if show else None
    task = progress.add_task(batch_id, total=max(1, info.total), rate=0.0, failed=0) if progress else None
    if progress:
        progress.start()
    loop = asyncio.get_running_loop()
    first_done, t0 = info.done, loop.time()
    try:
        while True:
            info = await store.info(batch_id)
            if progress is not None and task is not None:
                elapsed = max(1e-6, loop.time() - t0)
                progress.update(task, total=max(1, info.total), completed=info.done,
                                rate=(info.done - first_done) / elapsed, failed=info.unsuccessful)
            if info.finished or until_done():
                return await store.info(batch_id)
            await asyncio.sleep(POLL_S)
    finally:
        if progress:
            progress.stop()
