"""Counts a process's Redis round trips and commands, client-side, for the benchmarks.

Imported first in a worker process the bench starts (`python -c "import _counting; ..."`), it
wraps redis-py's asyncio connection: every `send_packed_command` is one round trip (a pipeline's
commands, or one command, go out in one write and their answers are awaited together), every
`pack_command` one command. On SIGUSR1 the process writes its counts to $BRBENCH_COUNTS, so the
bench reads them at the start and the end of its window and takes the difference: exact figures
for that process, with nobody else's commands in them (the server's INFO counts everybody's).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from redis.asyncio.connection import AbstractConnection

COUNTS = {"round_trips": 0, "commands": 0}
_send = AbstractConnection.send_packed_command
_pack = AbstractConnection.pack_command


async def _counted_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    COUNTS["round_trips"] += 1
    await _send(self, command, check_health)


def _counted_pack(self: AbstractConnection, *args: Any) -> list[bytes]:
    COUNTS["commands"] += 1
    return _pack(self, *args)


def _dump(*_: object) -> None:
    path = os.environ["BRBENCH_COUNTS"]
    with open(path + ".tmp", "w") as f:
        json.dump(COUNTS, f)
    os.replace(path + ".tmp", path)


def install() -> None:
    AbstractConnection.send_packed_command = _counted_send  # type: ignore[method-assign]
    AbstractConnection.pack_command = _counted_pack  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, _dump)


def read(pid: int, path: str, timeout: float = 5.0) -> dict[str, int]:
    """Ask process `pid` for its counts now (it must have called `install`)."""
    import time

    with __import__("contextlib").suppress(FileNotFoundError):
        os.unlink(path)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            time.sleep(0.01)
    raise TimeoutError(f"process {pid} did not write its Redis counts")
