"""`[redis] min_replicas_ack`: a result write that waits (Redis `WAIT`) until N replicas have it.

Replication is asynchronous: a master that dies right after a result write may take it along, and
the promoted replica still has the line pending, so it runs again (exactly-once in the record
holds; the provider is called, and paid, twice). `WAIT N timeout` after the write narrows that
window to nothing while N replicas answer. WAIT covers the writes made *on its connection*, so it
goes in the same pipeline as the write (one connection, one round trip more for the script check).

When fewer than N replicas acknowledge within the timeout, the write is kept and the line counts as
done: a warning is logged (at most once a minute) and the worker goes on. Retrying could not help
the write (it is on the master already, and a rerun of the line is a no-op), and stopping would
turn a lost replica into a stopped fleet; Redis's own `min-replicas-to-write` is the setting that
refuses writes when replicas are missing. WAIT makes a loss unlikely, not impossible (a replica
that acknowledged may still not be the one promoted).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import Pipeline

log = logging.getLogger("batchrelay.store.replicas")
WARN_EVERY_S = 60.0


@dataclass(slots=True)
class ReplicaAcks:
    """How many replicas must have a result write (`n`; 0: none) and how long to wait for them."""

    n: int = 0
    timeout_s: float = 1.0
    short: int = 0  # writes that went on with fewer acknowledgements (since the process started)
    _warned: float = field(default=-WARN_EVERY_S, repr=False)

    async def execute(self, pipe: Pipeline) -> list[Any]:
        """`pipe.execute()` with a WAIT after the writes queued on it (none when `n` is 0); the
        writes' replies, without the WAIT's."""
        if not self.n:
            return await pipe.execute()
        pipe.execute_command("WAIT", self.n, max(1, int(self.timeout_s * 1000)))
        *replies, acked = await pipe.execute()
        if int(acked) < self.n:
            self.short += 1
            now = time.monotonic()
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                log.warning("a result write reached %d of the %d replicas [redis] min_replicas_ack asks for "
                            "within %gs; going on (%d such writes so far)", int(acked), self.n, self.timeout_s,
                            self.short, extra={"acked": int(acked), "wanted": self.n})
        return replies
