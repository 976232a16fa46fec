"""The thin layer over arq (maintenance-only upstream): chunk job ids, the chunk map, bulk enqueue.

A chunk is a job of up to `chunk_size` lines of one batch. Its id says where it came from:
`{batch}:c{i}` from the submit, `{batch}:r{round}-{i}` from a retry, and either with `.d{ms}` for
the deferred lines of a chunk, requeued. The batch's chunk map (`Keys.chunks`) holds each chunk's
lines, comma-separated, so the sweeper can put back a chunk arq dropped.

`enqueue_job` costs ~3 round trips per job; a batch's chunk jobs are written with one pipeline
of the same keys arq writes (job payload + queue entry), which arq's worker reads as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

CHUNK_FUNCTION = "run_chunk"
JOB_EXPIRES_MS = 7 * 86_400_000  # a queued chunk waits for workers up to a week


def chunk_job_id(batch_id: str, index: int, retry_round: int = 0) -> str:
    """The id of the batch's `index`-th chunk of its submit (or of its `retry_round`-th retry)."""
    return f"{batch_id}:r{retry_round}-{index}" if retry_round else f"{batch_id}:c{index}"


def deferred_job_id(job_id: str, at_ms: int) -> str:
    """The id of the chunk that takes chunk `job_id`'s deferred lines, made at `at_ms` (unix ms)."""
    return f"{job_id.split('.d')[0]}.d{at_ms}"


def split_chunks(batch_id: str, lines: Sequence[int], size: int, retry_round: int = 0) -> list[tuple[str, list[int]]]:
    """`lines` in chunks of `size`, with their job ids."""
    return [(chunk_job_id(batch_id, i, retry_round), list(lines[s:s + size]))
            for i, s in enumerate(range(0, len(lines), size))]


def chunk_map_entries(chunks: Iterable[tuple[str, Sequence[int]]]) -> dict[str, str]:
    """Chunk map fields: job id -> its lines, comma-separated."""
    return {job_id: ",".join(map(str, lines)) for job_id, lines in chunks}


def chunk_lines(raw: bytes) -> list[int]:
    """A chunk map value's lines."""
    return [int(x) for x in raw.split(b",")]


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
