"""The thin layer over arq (maintenance-only upstream): job ids, the chunk map, bulk enqueue.

arq keeps its own keys outside our prefix, named by job id (`arq:job:ID`, `arq:in-progress:ID`,
`arq:retry:ID`) and refuses a job whose id is already taken, whatever its queue. So every job id
batchrelay makes starts with the setup's key prefix or queue, and setups sharing a Redis never
take each other's jobs (nor each other's cron ticks, which arq names `{cron name}:{unix ms}`).

A chunk is a job of up to `chunk_size` lines of one batch. Its id says where it came from:
`{prefix}{batch}:c{i}` from the submit, `{prefix}{batch}:r{round}-{i}` from a retry, and either
with `.d{ms}` for the deferred lines of a chunk, requeued, or `.k{ms}` for the lines a dead worker
held, put back (heartbeat.py). The batch's chunk map (`Keys.chunks`) holds each chunk's lines,
comma-separated, so the sweeper can put back a chunk arq dropped.

`enqueue_job` costs ~3 round trips per job; a batch's chunk jobs are written with one pipeline
of the same keys arq writes (job payload + queue entry), which arq's worker reads as usual.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

CHUNK_FUNCTION = "run_chunk"
JOB_EXPIRES_MS = 7 * 86_400_000  # a queued chunk waits for workers up to a week


_REQUEUED = re.compile(r"(\.[dk]\d+)+$")


def cron_name(queue: str, name: str) -> str:
    """The name of a cron job of the workers of `queue`; arq makes each tick's job id from it."""
    return f"{queue}:{name}"


def chunk_job_id(prefix: str, batch_id: str, index: int, retry_round: int = 0) -> str:
    """The id of the batch's `index`-th chunk of its submit (or of its `retry_round`-th retry)."""
    return f"{prefix}{batch_id}:r{retry_round}-{index}" if retry_round else f"{prefix}{batch_id}:c{index}"


def requeued_job_id(job_id: str, at_ms: int, *, reclaimed: bool = False) -> str:
    """The id of the chunk that takes over some lines of chunk `job_id` at `at_ms` (unix ms): its
    deferred lines, or (`reclaimed`) those a dead worker held."""
    return f"{_REQUEUED.sub('', job_id)}.{'k' if reclaimed else 'd'}{at_ms}"


def split_chunks(prefix: str, batch_id: str, lines: Sequence[int], size: int,
                 retry_round: int = 0) -> list[tuple[str, list[int]]]:
    """`lines` in chunks of `size`, with their job ids."""
    return [(chunk_job_id(prefix, batch_id, i, retry_round), list(lines[s:s + size]))
            for i, s in enumerate(range(0, len(lines), size))]


def chunk_map_entries(chunks: Iterable[tuple[str, Sequence[int]]]) -> dict[str, str]:
    """Chunk map fields: job id -> its lines, comma-separated."""
    return {job_id: ",".join(map(str, lines)) for job_id, lines in chunks}


def chunk_lines(raw: bytes) -> list[int]:
    """A chunk map value's lines."""
    return [int(x) for x in raw.split(b",")]


async def enqueue_chunks(
    redis: Redis, queue: str, batch_id: str, chunks: Sequence[tuple[str, list[int]]], *, defer_s: float = 0,
    at_ms: int | None = None,
) -> None:
    """Enqueue chunk jobs in one round trip, due in `defer_s` (or at `at_ms`, unix ms: a due time in
    the past puts them before the jobs due since); an id already queued or running is left alone."""
    if not chunks:
        return
    now_ms = int(time.time() * 1000)
    score = now_ms + int(defer_s * 1000) if at_ms is None else at_ms
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, lines in chunks:
            payload = serialize_job(CHUNK_FUNCTION, (batch_id, lines), {}, None, now_ms)
            pipe.set(job_key_prefix + job_id, payload, px=JOB_EXPIRES_MS + score - now_ms, nx=True)
            pipe.zadd(queue, {job_id: score}, nx=True)
        await pipe.execute()
