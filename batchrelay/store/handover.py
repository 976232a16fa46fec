"""Handing a batch over: a `run` stopped before its batch was done leaves it to `batchrelay worker`.

`run` works its batch on an arq queue of its own, which no other worker reads. Once the run's
workers have stopped, that queue and its jobs are dropped (nothing runs them any more) and every
chunk with a pending line goes on the shared queue, where any worker takes it; a line recorded
meanwhile is skipped by the rerun, so nothing is answered twice.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from batchrelay.store.lifecycle import workable_queue
from batchrelay.store.store import Store
from batchrelay.store.sweeper import requeue_pending


async def hand_over(store: Store, batch_id: str, private_queue: str) -> int:
    """Drop `private_queue` (its workers have stopped) and queue the batch's pending chunks on the
    shared queue; how many chunks went there."""
    job_ids = [raw.decode() for raw in await store.redis.zrange(private_queue, 0, -1)]
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.delete(private_queue)
        for job_id in job_ids:
            pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
        await pipe.execute()
    await workable_queue(store, await store.info(batch_id))
    return await requeue_pending(store, batch_id)
