"""Re-enqueueing lines that are pending but whose chunk job is gone.

arq drops a job without running our code once its tries are exhausted, and fails it for good at
job_timeout; the lines stay pending in our store. Re-enqueueing their chunk ids is safe: an id
still queued or running is left alone (NX), and a rerun skips finished lines.
"""

from __future__ import annotations

from .queue import enqueue_chunks
from .store import Store


async def requeue_pending(store: Store, batch_id: str) -> int:
    """Enqueue every chunk of `batch_id` that still has a pending line; returns how many."""
    members = await store.redis.smembers(store.keys.pending(batch_id))  # type: ignore[misc]
    pending = {int(x) for x in members}
    if not pending:
        return 0
    chunks = [(cid, lines) for cid, lines in (await store.chunk_map(batch_id)).items() if pending.intersection(lines)]
    await enqueue_chunks(store.redis, store.keys, batch_id, chunks)
    return len(chunks)
