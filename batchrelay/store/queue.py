"""The thin layer over arq (maintenance-only upstream): job ids, bulk enqueue, worker settings.

`enqueue_job` costs ~3 round trips per job; a batch's chunk jobs are written with one pipeline
of the same keys arq writes (job payload + queue entry), which arq's worker reads as usual.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

CHUNK_FUNCTION = "run_chunk"
JOB_EXPIRES_MS = 7 * 86_400_000  # a queued chunk waits for workers up to a week


def chunk_job_id(batch_id: str, index: int) -> str:
    return f"{batch_id}:c{index}"


async def enqueue_chunks(
    redis: Redis, queue: str, batch_id: str, chunks: Sequence[tuple[str, list[int]]], *, defer_s: float = 0
) -> None:
    """Enqueue chunk jobs in one round trip; an id already queued or running is left alone."""
    if not chunks:
        return
    now_ms = int(time.time() * 1000)
    score = now_ms + int(defer_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, lines in chunks:
            payload = serialize_job(CHUNK_FUNCTION, (batch_id, lines), {}, None, now_ms)
            pipe.set(job_key_prefix + job_id, payload, px=JOB_EXPIRES_MS + score - now_ms, nx=True)
            pipe.zadd(queue, {job_id: score}, nx=True)
        await pipe.execute()
