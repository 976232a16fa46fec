"""`run` stopped from outside: a signal (Ctrl-C, SIGTERM) or its embedded Redis going away.

Under `run`, SIGINT, SIGTERM and SIGHUP mean the same: the first lets the calls in flight finish and
be recorded, then the run stops and pauses its batch (the same command resumes it); a second stops
at once.
Outside the event loop (starting the embedded Redis and the simulators, shutting them down)
SIGTERM raises `Terminated` where Ctrl-C raises KeyboardInterrupt, so both end the same clean way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from batchrelay.store.embedded import EmbeddedRedis

REDIS_CHECK_S = 0.5
ABORT_S = 3.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def sigterm_as_interrupt() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)  # the terminal closed


Drain = Callable[[signal.Signals, bool], None]  # (signal, now): stop the work, at once if `now`


class Guard:
    """For the length of a `run`'s event loop: SIGINT and SIGTERM go to the work being done
    (`drain`, set while workers run), or cancel the run outside it; the embedded Redis, if any, is
    watched, and its end cancels the run at once."""

    def __init__(self, embedded: EmbeddedRedis | None) -> None:
        self.embedded = embedded
        self.signum: signal.Signals | None = None
        self.signals = 0
        self.redis_gone = False
        self.drain: Drain | None = None
        self._main: asyncio.Task[Any] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._saved: dict[signal.Signals, Any] = {}

    @property
    def stopped(self) -> bool:
        return self.signum is not None or self.redis_gone

    async def __aenter__(self) -> Guard:
        self._main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
            self._saved[signum] = signal.getsignal(signum)
            loop.add_signal_handler(signum, self._on_signal, signum)
        if self.embedded is not None:
            self._watchdog = asyncio.create_task(self._watch(self.embedded))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        loop = asyncio.get_running_loop()
        for signum, handler in self._saved.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)  # asyncio would leave SIGTERM at its default: death

    def _on_signal(self, signum: signal.Signals) -> None:
        self.signals += 1
        self.signum = self.signum or signum
        if self.drain is None:
            self._cancel_main()
            return
        if self.signals == 1:
            again = "press Ctrl-C again" if signum == signal.SIGINT else "signal again"
            click.echo(f"\nStopping ({signum.name}): the calls in flight finish and are recorded; "
                       f"{again} to stop at once (their lines are then sent again when the batch goes on).", err=True)
        self.drain(signum, self.signals > 1)

    async def _watch(self, embedded: EmbeddedRedis) -> None:
        while embedded.alive():
            await asyncio.sleep(REDIS_CHECK_S)
        self.redis_gone = True
        self._cancel_main()

    def _cancel_main(self) -> None:
        if self._main is not None:
            self._main.cancel()

    def absorb(self) -> None:
        """The run was cancelled by this guard and ends cleanly: take the cancel back."""
        if self._main is not None:
            self._main.uncancel()


async def abort_others() -> None:
    """Cancel every other task until none is left (or ABORT_S passed): with its Redis gone, a task
    would otherwise retry its commands for half a minute before it gave up."""
    me, deadline = asyncio.current_task(), time.monotonic() + ABORT_S
    # what the cancelled tasks leave behind ("exception was never retrieved") is this one end, told once
    asyncio.get_running_loop().set_exception_handler(lambda _loop, _context: None)
    while time.monotonic() < deadline:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not others:
            return
        for t in others:
            t.cancel()
        await asyncio.wait(others, timeout=0.2)
