"""Worker heartbeats: which worker processes are alive, and which chunk jobs each one holds.

arq gives a dead worker's job to another only once the job's in-progress key lapses (`job_timeout`
+ 10 s: 610 s with the defaults). So each worker process renews a key of its own (`Keys.worker`,
lapsing after `LAPSE_S`) every `BEAT_S`, and notes each chunk job it runs in `Keys.held` while it
runs it. Every `RECLAIM_S` each worker looks for chunks whose holder's key has lapsed: their lines
still pending go back on the queue as a new chunk job and the old job leaves the queue
(lua/chunk_reclaim.lua). A dead worker's lines run elsewhere within LAPSE_S + RECLAIM_S (+ a beat).

A worker that was only stalled, or cut off from Redis, for LAPSE_S and comes back may finish a
line that is also running elsewhere: the result write keeps each line answered (and billed in the
ledger) once. Before it starts a line of a chunk it may have lost that way (`may_have_lost`), it asks
whether the line is still pending: one another worker answered meanwhile is not paid for twice.
A worker that itself could not reach Redis judges no other until it has beaten for LAPSE_S again:
the others were cut off as long as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid

from redis.exceptions import RedisError

from batchrelay.store.queue import enqueue_chunks, requeued_job_id
from batchrelay.store.store import Store
from batchrelay.store.sweeper import batch_queue

log = logging.getLogger("batchrelay.store.heartbeat")
BEAT_S = 2.0
LAPSE_S = 10.0  # several missed beats: a worker whose event loop stalls for a moment is not taken for dead
RECLAIM_S = 5.0


class BeatGaps:
    """When this process's own key may have lapsed, so that others may have put its chunks back: a
    gap of LAPSE_S or more between two beats that reached Redis (a partition, a stalled event loop),
    or one going on now. Pure: the times (monotonic) are passed in."""

    def __init__(self, now: float) -> None:
        self.last = now  # the latest beat that reached Redis
        self.lapse_ended = -math.inf  # the beat that ended the latest gap

    def beaten(self, now: float) -> None:
        if now - self.last >= LAPSE_S:
            self.lapse_ended = now
        self.last = now

    def unsure_since(self, t: float, now: float) -> bool:
        """Whether the key may have lapsed after `t`."""
        return self.lapse_ended >= t or now - self.last >= LAPSE_S


class Heartbeat:
    """One worker process's heartbeat (`run` it beside the jobs) and the chunk jobs it holds."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gaps = BeatGaps(time.monotonic())
        self.id = uuid.uuid4().hex[:12]
        self.about = f"{socket.gethostname()} {os.getpid()}"  # for a person reading the key
        self.running: set[str] = set()  # the chunk jobs this process holds now, as it knows them

    def _holder(self, batch_id: str) -> str:
        return f"{self.id} {batch_id}"

    async def beat(self) -> None:
        await self.store.redis.set(self.store.keys.worker(self.id), self.about, px=int(LAPSE_S * 1000))
        self.gaps.beaten(time.monotonic())

    def may_have_lost(self, since: float) -> bool:
        """Whether a chunk this process held at `since` (monotonic) may have been put back meanwhile."""
        return self.gaps.unsure_since(since, time.monotonic())

    async def hold(self, job_id: str, batch_id: str) -> None:
        """Note that this process runs chunk `job_id` (and beat, so it is never held without one)."""
        k = self.store.keys
        self.running.add(job_id)  # before the entry: an entry of ours never looks stale while it is not
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.set(k.worker(self.id), self.about, px=int(LAPSE_S * 1000))
            pipe.hset(k.held, job_id, self._holder(batch_id))
            await pipe.execute()
        self.gaps.beaten(time.monotonic())

    async def release(self, job_id: str, batch_id: str) -> None:
        """This process is done with chunk `job_id` (its lines are answered or handed on)."""
        try:
            await self.store.scripts.release_chunk(self.store.keys, job=job_id, holder=self._holder(batch_id))
        finally:
            self.running.discard(job_id)  # an entry left behind is put back by `reclaim_lapsed`

    async def run(self) -> None:
        """Beat every BEAT_S and put back lapsed workers' chunks every RECLAIM_S, until cancelled."""
        beating_since: float | None = time.monotonic() - LAPSE_S  # at start-up the others' beats are current
        next_reclaim = 0.0
        while True:
            now = time.monotonic()
            try:
                await self.beat()
                if beating_since is None:
                    beating_since = now
                if now >= next_reclaim:
                    next_reclaim = now + RECLAIM_S
                    if n := await reclaim_lapsed(self.store, self, others=now - beating_since >= LAPSE_S):
                        log.warning("put back %d chunk jobs of worker processes whose heartbeat lapsed, or "
                                    "whose end a Redis failover lost", n)
            except (RedisError, OSError) as e:
                beating_since = None
                log.info("heartbeat: Redis unreachable (%s)", type(e).__name__)  # the worker reports the outage
            await asyncio.sleep(BEAT_S)

    async def stop(self) -> None:
        """The process is leaving: its key goes (a chunk still held is put back at the next look)."""
        with contextlib.suppress(RedisError, OSError):
            await self.store.redis.delete(self.store.keys.worker(self.id))


async def reclaim_lapsed(store: Store, me: Heartbeat | None = None, *, others: bool = True) -> int:
    """Put the pending lines of chunks held by worker processes whose heartbeat lapsed (with
    `others`), and of those held by `me` that it does not run, back on their queue as new chunk
    jobs; how many jobs were made."""
    k = store.keys
    my_id, running = (me.id, me.running) if me else ("", set())
    held = [(job.decode(), holder.decode()) for job, holder in (await store.redis.hgetall(k.held)).items()]  # type: ignore[misc]
    workers = sorted({holder.split(" ", 1)[0] for _, holder in held} - {my_id}) if others else []
    gone: set[str] = set()
    if workers:
        async with store.redis.pipeline(transaction=False) as pipe:
            for w in workers:
                pipe.exists(k.worker(w))
            gone = {w for w, alive in zip(workers, await pipe.execute(), strict=True) if not alive}
    made = 0
    for job, holder in held:
        worker, batch_id = holder.split(" ", 1)
        own = worker == my_id
        if not (worker in gone or (own and job not in running)):
            continue
        queue = await batch_queue(store, batch_id)
        due = await store.redis.zscore(queue, job)  # its lines have waited longest: they keep their place
        new_job = requeued_job_id(job, time.time_ns() // 1_000_000, reclaimed=True)
        if own and job in running:
            continue  # it came back to this process meanwhile
        lines = await store.scripts.reclaim_chunk(k, batch_id, job=job, holder=holder, worker=worker, queue=queue,
                                                  new_job=new_job, own=own)
        if lines:
            await enqueue_chunks(store.redis, queue, batch_id, [(new_job, lines)],
                                 at_ms=None if due is None else int(due))
            made += 1
    return made
