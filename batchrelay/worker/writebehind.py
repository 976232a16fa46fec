"""Final results gathered across lines: one script call, one Redis round trip, for many lines.

A consumer that finished a line hands its result here and takes its next line at once; the line
counts as done for its chunk only once its write has returned (the Future `write` gives back).
Results gather for up to WINDOW_S, or until MAX_LINES wait, and go out as one `results_write`
call per batch (batches in the same round concurrently). Each line's result, its removal from
pending and its counts stay atomic per line inside that script (HSETNX: a rerun writes nothing),
so every line is still written exactly once; a process that dies before the write returned leaves
its lines pending and they are rerun, as when it dies mid-call. Measured (bench/throughput.py
--payload realistic): one round trip per line less, and less Redis CPU per line (README "Scaling").
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from batchrelay.store.store import Store

WINDOW_S = 0.005  # a line's result waits at most this long for others to go with it
MAX_LINES = 100  # or goes as soon as this many are waiting


@dataclass(slots=True)
class _Line:
    line: int
    record: bytes
    ok: bool
    ledger: dict[str, int]
    tally: dict[str, int]
    done: asyncio.Future[Any]


class ResultWriter:
    """One per worker process (the Runtime's); `close` writes what still waits."""

    def __init__(self, store: Store, window_s: float = WINDOW_S, max_lines: int = MAX_LINES) -> None:
        self.store, self.window_s, self.max_lines = store, window_s, max_lines
        self._waiting: dict[str, list[_Line]] = {}
        self._queued = 0  # lines waiting, not yet in a write
        self._unsettled = 0  # lines handed in whose write has not returned (waiting, or in a write)
        self._wake = asyncio.Event()
        self._now = asyncio.Event()  # cuts the window short: closing, or max_lines waiting
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def write(self, batch_id: str, line: int, record: bytes, ok: bool, ledger: dict[str, int],
              tally: dict[str, int]) -> asyncio.Future[Any]:
        """Queue a line's final result (as Store.write_result takes it); done once written."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.add_done_callback(self._written)
        self._waiting.setdefault(batch_id, []).append(_Line(line, record, ok, ledger, tally, done))
        self._queued += 1
        self._unsettled += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batchrelay-result-writer")
        self._wake.set()
        if self._queued >= self.max_lines:
            self._now.set()
        return done

    @property
    def unwritten(self) -> int:
        """Lines handed in whose write has not returned: answers a cut-off worker would lose (their
        lines are rerun elsewhere and paid for again), so the caller bounds it."""
        return self._unsettled

    @staticmethod
    def _written(done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: the chunk that waits for it re-raises it (or is gone)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and self._queued < self.max_lines:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.window_s):
                        await self._now.wait()
            self._wake.clear()
            if not self._closing:
                self._now.clear()
            batches, self._waiting, self._queued = self._waiting, {}, 0
            if batches:
                await asyncio.gather(*(self._write(b, lines) for b, lines in batches.items()))
            if self._closing and not self._waiting:
                return

    async def _write(self, batch_id: str, lines: list[_Line]) -> None:
        try:
            await self._write_lines(batch_id, lines)
        finally:
            self._unsettled -= len(lines)  # each is settled now: written, failed or cancelled

    async def _write_lines(self, batch_id: str, lines: list[_Line]) -> None:
        try:
            await self.store.write_results(batch_id, [(x.line, x.record, x.ok, x.ledger, None) for x in lines],
                                           tallies=[x.tally for x in lines])
        except Exception as e:  # the store is unreachable: each line's chunk fails and retries, as before
            for x in lines:
                if not x.done.done():
                    x.done.set_exception(e)
        except BaseException:  # cancelled: whether it was written or not, its chunk must not wait forever
            for x in lines:
                x.done.cancel()
            raise
        else:
            for x in lines:
                if not x.done.done():
                    x.done.set_result(None)

    async def close(self) -> None:
        """Write every line still waiting (a stopping worker's last results), then stop."""
        self._closing = True
        if self._task is not None:
            self._now.set()  # a window under way ends now
            self._wake.set()
            await self._task
            self._task = None
