"""A line of a batch that uses the response cache (store/cache.py): answered from it, or sent once.

Before any provider is chosen the line's request key (wire/cache_key.py) is looked up. A hit answers
the line at once: no provider call, no budget reservation, cost 0; its record says where the answer
came from and what it had cost, and goes through the same exactly-once write as any answer. A miss
takes the key's single-flight lease (renewed while the call runs) and relays the line; a successful
answer is stored before the lease is given up. Lines with the same key meanwhile, in this batch or
another, in this process or another, wait for that answer (polling with backoff) and take the lease
over when it lapses (its worker died) or when the holder's call failed (nothing was stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from redis.exceptions import RedisError

from batchrelay.money.ledger import hit_increments
from batchrelay.money.pricing import usd_str
from batchrelay.results.outcome import Outcome
from batchrelay.results.records import hit_record
from batchrelay.store.cache import CachedAnswer, ResponseCache
from batchrelay.wire.cache_key import cache_key
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.metrics import lines_cached

log = logging.getLogger("batchrelay.worker.cached")
POLL_FIRST_S, POLL_MAX_S = 0.02, 1.0
MISS: dict[str, Any] = {"status": "miss"}

Relay = Callable[[], Awaitable[Outcome]]
Finish = Callable[[Outcome, dict[str, Any]], Awaitable[float | None]]


def answer_of(batch_id: str, job: JobLine, out: Outcome) -> CachedAnswer:
    """What the cache keeps of an ANSWERED outcome."""
    assert out.reply is not None and out.provider is not None
    billed = out.billed
    spent = [b.cost.billed for b in billed if not b.failed]
    return CachedAnswer(out.reply.body, str(job.body["model"]), out.reply.usage.as_dict(), batch_id, job.line,
                        out.provider.name, time.time(), usd_str(spent[-1]) if spent else None,
                        out.reply.request_id)


class CachedLines:
    """The cache side of a worker process: `handle` one line of a cached batch. `max_wait_s`: how long
    a line waits on another's lease before it sends the request itself anyway."""

    def __init__(self, cache: ResponseCache, max_wait_s: float) -> None:
        self.cache, self.max_wait_s = cache, max_wait_s

    async def answer_hits(self, batch_id: str, jobs: list[JobLine]) -> set[int]:
        """Answer a chunk's lines that are in the cache, in two round trips; the lines answered. The
        others go through `handle` (looked up again there, uncounted: another worker may have just
        stored their answer)."""
        found = await self.cache.get_many([cache_key(job.dialect, job.body) for job in jobs])
        hits = [self._hit(batch_id, job, hit) for job, hit in zip(jobs, found, strict=True) if hit is not None]
        if hits:
            lines_cached(await self.cache.write_hits(batch_id, hits))
        return {h[0] for h in hits}

    async def handle(self, batch_id: str, job: JobLine, relay: Relay, finish: Finish) -> float | None:
        key = cache_key(job.dialect, job.body)
        hit = await self.cache.get(key, count=False)
        if hit is not None:
            await self._answer(batch_id, job, hit)
            return None
        token, waited, delay = await self.cache.lease(key), 0.0, POLL_FIRST_S
        while token is None and waited < self.max_wait_s:
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, POLL_MAX_S)
            hit = await self.cache.get(key, count=False)
            if hit is not None:
                await self._answer(batch_id, job, hit)
                return None
            token = await self.cache.lease(key)  # free again: its holder failed, or died and its lease lapsed
        if token is None:
            log.warning("line %s of %s: waited %.0fs on another call of the same request; sending it",
                        job.line, batch_id, waited)
            return await finish(await relay(), MISS)
        renewing = asyncio.create_task(self._renew(key, token))
        try:
            out = await relay()
            if out.ok:
                await self.cache.put(key, answer_of(batch_id, job, out))
        finally:
            renewing.cancel()
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self.cache.release(key, token))
        return await finish(out, MISS)

    async def _renew(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.cache.cfg.lease_s / 3)
            with contextlib.suppress(RedisError, OSError):
                if not await self.cache.renew(key, token):
                    return  # lapsed (this loop was starved) and another took over: its answer will do

    async def _answer(self, batch_id: str, job: JobLine, hit: CachedAnswer) -> None:
        lines_cached(await self.cache.write_hits(batch_id, [self._hit(batch_id, job, hit)]))

    @staticmethod
    def _hit(batch_id: str, job: JobLine, hit: CachedAnswer) -> tuple[int, bytes, dict[str, int], Decimal]:
        """A hit's result write: (line, record, ledger increments, saved USD)."""
        saved = Decimal(hit.usd) if hit.usd is not None else None
        meta = {"status": "hit", "from": hit.origin, "saved_usd": hit.usd}
        record = hit_record(batch_id, job, hit.body, hit.request_id, hit.usage, meta)
        return job.line, record, hit_increments(str(job.body["model"]), saved), saved or Decimal(0)
