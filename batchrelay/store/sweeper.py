"""Re-enqueueing lines that are pending but whose chunk job is gone.

arq drops a job without running our code once its tries are exhausted, and fails it for good at
job_timeout; the lines stay pending in our store. Re-enqueueing their chunk ids is safe: an id
still queued or running is left alone (NX), and a rerun skips finished lines. Several workers may
sweep at once; the worst case is a harmless no-op enqueue.
"""

from __future__ import annotations

import time

from arq.constants import job_key_prefix

from batchrelay.store.queue import chunk_lines, chunk_map_entries, enqueue_chunks, requeued_job_id
from batchrelay.store.status import Status
from batchrelay.store.store import Store

SCAN_BLOCK = 1000


async def requeue_pending(store: Store, batch_id: str) -> int:
    """Enqueue every chunk of `batch_id` that has no arq job but a pending line; returns how many."""
    requeued = 0
    queue = await batch_queue(store, batch_id)
    pending_key = store.keys.pending(batch_id)
    async for block in _chunk_blocks(store, batch_id):
        async with store.redis.pipeline(transaction=False) as pipe:
            for cid, _ in block:
                pipe.exists(job_key_prefix + cid)
            alive = await pipe.execute()
        orphans = [(cid, lines) for (cid, lines), live in zip(block, alive, strict=True) if not live]
        if not orphans:
            continue
        async with store.redis.pipeline(transaction=False) as pipe:
            for _, lines in orphans:
                pipe.smismember(pending_key, lines)
            flags = await pipe.execute()
        stuck = [chunk for chunk, f in zip(orphans, flags, strict=True) if any(f)]
        await enqueue_chunks(store.redis, queue, batch_id, stuck)
        requeued += len(stuck)
    return requeued


async def batch_queue(store: Store, batch_id: str) -> str:
    raw = await store.redis.hget(store.keys.meta(batch_id), "queue")  # type: ignore[misc]
    return raw.decode() if raw else store.keys.queue


async def _chunk_blocks(store: Store, batch_id: str):  # type: ignore[no-untyped-def]
    block: list[tuple[str, list[int]]] = []
    async for cid, raw in store.redis.hscan_iter(store.keys.chunks(batch_id), count=SCAN_BLOCK):
        block.append((cid.decode(), chunk_lines(raw)))
        if len(block) >= SCAN_BLOCK:
            yield block
            block = []
    if block:
        yield block


async def enqueue_all(store: Store, batch_id: str, queue: str) -> int:
    """Enqueue every chunk of a batch just submitted (an id already queued is left alone)."""
    n = 0
    async for block in _chunk_blocks(store, batch_id):
        await enqueue_chunks(store.redis, queue, batch_id, block)
        n += len(block)
    return n


async def requeue_deferred(store: Store, batch_id: str, job_id: str, lines: list[int], defer_s: float,
                           parked: list[int] | None = None) -> str:
    """Deferred lines of chunk `job_id` become a new chunk job due in `defer_s`; the old id stops
    owning them (the sweeper must not put them back twice). `parked`: lines of the chunk that stay
    pending with no job (their batch stopped, or its budget ran out): the old id keeps owning those
    alone, so that a raised budget or the sweeper finds them (dropped, they were never run again)."""
    new_id = requeued_job_id(job_id, time.time_ns() // 1_000_000)
    await enqueue_chunks(store.redis, await batch_queue(store, batch_id), batch_id, [(new_id, lines)],
                         defer_s=defer_s)
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(store.keys.chunks(batch_id), mapping=chunk_map_entries([(new_id, lines)]))
        if parked:
            pipe.hset(store.keys.chunks(batch_id), mapping=chunk_map_entries([(job_id, parked)]))
        else:
            pipe.hdel(store.keys.chunks(batch_id), job_id)
        await pipe.execute()
    return new_id


async def sweep(store: Store, queue: str) -> int:
    """Requeue orphaned chunks of every batch still in progress on `queue`."""
    total = 0
    for info in await store.list_batches(limit=10_000):
        if info.status == Status.IN_PROGRESS and info.pending and (info.queue or store.keys.queue) == queue:
            total += await requeue_pending(store, info.id)
    return total


async def queued_jobs(store: Store, queue: str) -> int:
    """Jobs on `queue`, due or deferred: what keeps a burst worker going (worker.py)."""
    return int(await store.redis.zcard(queue))
