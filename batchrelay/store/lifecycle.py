"""A batch's life after submit: cancel, expiry, retry, and forgetting old batches (the statuses
it goes through are drawn in status.py).

There is no separate `finalizing` step: a line's result is final the moment it is written, so the
last one completes the batch. Stopping is two-phase and safe with any number of workers: the batch
is first marked `cancelling`/`expiring` (claims then take none of its lines); lines never started
get their `cancelled`/`expired` record at once; lines a worker may still be calling get
`grace_s` (`WorkerConfig.cancel_grace_s`) to finish with their real answer, then are stopped too; lines
a lane holds (store/lanes.py) wait until the lane lets go of them, so an answer the upstream bills
after the stop still reaches the ledger. A paused batch (an interrupted `run`) has no call in
flight: its stop forgets its first tries, so its lines end at the first step, and moves it to the
shared queue, whose workers move its lane parcels on (lua/stop_request.lua). The
last record ends the batch (lua/result_write.lua). `advance` does one step and is run by the
`cancel` command and by every worker's sweep, so a stop finishes even if its CLI is interrupted;
`serve` runs a bounded step (`most` lines) in a request, so a large batch's cancel answers at once.
`retry` puts failed, cancelled and expired lines back: each keeps its billed attempts, so the ledger
(which gives their cost back while they are pending) still equals the sum of the result lines.
A deferred batch (`submit --at/--in`) waits `scheduled`, with no chunk enqueued; the first sweep
after its `start_at` moves it to `in_progress` (one Lua step: one worker wins) and enqueues it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay.errors import BatchNotFound, RetryRefused
from batchrelay.money.ledger import increments
from batchrelay.results.outcome import Attempt, billed_calls
from batchrelay.results.records import stopped_record
from batchrelay.store.ids import checked_batch_id
from batchrelay.store.lanes import LaneStore
from batchrelay.store.queue import chunk_map_entries, enqueue_chunks, split_chunks
from batchrelay.store.status import EXPIRABLE, INTERIM, STOPPED, Status
from batchrelay.store.status import FINAL as FINAL  # where serve/app.py has always found it
from batchrelay.store.store import ERR, BatchInfo, Store
from batchrelay.store.sweeper import enqueue_all
from batchrelay.wire.jobs import JobLine

BLOCK = 1000
CANCEL_POLL_S = 0.5
STALE_SUBMIT_S = 3600.0  # a batch still `validating` this long after it was created was abandoned
# an error record's `error` -> the count it came from (`invalid_input` stays: retrying cannot fix the input)
RETRYABLE = {"invalid_request": "failed", "provider_error": "failed", "cancelled": "cancelled", "expired": "expired"}


async def request_stop(store: Store, batch_id: str, final: str) -> str:
    """Mark the batch `cancelling` / `expiring` (`final`: cancelled / expired); returns its status
    (unchanged if already finished). BatchNotFound for an unknown batch (or an id of another shape)."""
    checked_batch_id(batch_id)
    status = await store.scripts.request_stop(store.keys, batch_id, INTERIM[Status(final)], time.time())
    if status is None:
        raise BatchNotFound(batch_id)
    return status


async def not_started(store: Store, batch_id: str, line: int) -> None:
    """A worker found `line`'s batch being stopped before it called it: no call of the line is in
    flight there, so it need not wait out the grace (its first try is forgotten: the next `advance`
    stops it at once). Only while the batch is `cancelling`/`expiring`: a line parked over its
    budget keeps its first try."""
    if (await store.get_fields(batch_id, ["status"])).get("status") in FINAL:
        await store.redis.hdel(store.keys.first_try(batch_id), str(line))  # type: ignore[misc]


async def is_stopped(store: Store, batch_id: str) -> bool:
    """Whether the batch takes no more work (stopped, being stopped, over budget or not started yet).
    A batch found past its completion window is marked expiring here, before the next sweep."""
    fields = await store.get_fields(batch_id, ["status", "expires_at"])
    status = fields.get("status")
    if status not in STOPPED and float(fields.get("expires_at") or "inf") <= time.time():
        try:
            status = await request_stop(store, batch_id, Status.EXPIRED)
        except BatchNotFound:
            return False  # forgotten meanwhile: its lines are gone with it
    return status in STOPPED


async def _pending_blocks(store: Store, batch_id: str, most: int | None = None) -> AsyncIterator[list[int]]:
    """The batch's pending lines, a block at a time; no more than `most` of them in all."""
    block: list[int] = []
    left = most
    if left is not None and left < 1:
        return
    async for raw in store.redis.sscan_iter(store.keys.pending(batch_id), count=BLOCK):
        block.append(int(raw))
        if len(block) >= BLOCK or len(block) == left:
            yield block
            if left is not None:
                left -= len(block)
                if left <= 0:
                    return
            block = []
    if block:
        yield block


async def advance(store: Store, batch_id: str, grace_s: float, now: float | None = None, *,
                  most: int | None = None) -> int:
    """One step of stopping a batch; returns how many lines it stopped now. `most`: look at no more
    than that many pending lines (a bounded step, as a request takes; the next step, or a worker's
    sweep, goes on)."""
    now = time.time() if now is None else now
    fields = await store.get_fields(batch_id, ["status", "stop_at"])
    status = fields.get("status", "")
    final = FINAL[Status(status)] if status in FINAL else None
    if final is None:
        return 0
    everything = now - float(fields.get("stop_at") or now) >= grace_s
    k, stopped = store.keys, 0
    async for block in _pending_blocks(store, batch_id, most):
        async with store.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.first_try(batch_id), block)
            pipe.hmget(k.lines(batch_id), block)
            pipe.hmget(k.attempts(batch_id), block)
            pipe.hmget(k.lane_held(batch_id), block)
            started, raws, tried, held = await pipe.execute()
        items = []
        for line, first, raw, before, lane in zip(block, started, raws, tried, held, strict=True):
            if raw is None or (first is not None and not everything) or lane is not None:
                continue  # a worker may be calling it: it gets its grace; a lane's, until the lane lets go of it
            attempts = [Attempt.from_dict(a) for a in orjson.loads(before)] if before else []
            items.append((line, stopped_record(batch_id, JobLine.from_json(raw), attempts, final), False,
                          increments(billed_calls(attempts)), final))
        stopped += await store.write_results(batch_id, items)
    if not await store.redis.scard(k.pending(batch_id)):  # type: ignore[misc]
        # no line was left to end it (all were answered while it was being stopped)
        await store.scripts.finish_stop(k, batch_id, INTERIM[final], final, now)
    return stopped


async def cancel(store: Store, batch_id: str, grace_s: float, *, wait: bool = True) -> BatchInfo:
    """Request the cancel and move it on; with `wait`, until it is done (at most the grace period)."""
    await request_stop(store, batch_id, Status.CANCELLED)  # BatchNotFound
    deadline = time.monotonic() + grace_s + 1
    while True:
        started = time.monotonic()
        await advance(store, batch_id, grace_s)
        info = await store.info(batch_id)
        if not wait or info.status not in FINAL or time.monotonic() > deadline:
            return info
        await asyncio.sleep(max(0.0, CANCEL_POLL_S - (time.monotonic() - started)))


@dataclass(frozen=True, slots=True)
class Retried:
    lines: int
    chunks: int
    queue: str


async def workable_queue(store: Store, info: BatchInfo) -> str:
    """The queue a batch's lines should go back to: a `run`'s private queue has no worker once that
    run has ended, so such a batch moves to the shared queue."""
    if ":run:" not in info.queue:
        return info.queue or store.keys.queue
    await store.set_queue(info.id, store.keys.queue)
    return store.keys.queue


async def retry(store: Store, batch_id: str, chunk_size: int) -> Retried:
    """Put the batch's failed, cancelled and expired lines back on the queue (invalid input stays)."""
    info = await store.info(batch_id)
    if info.status == Status.PAUSED:
        raise RetryRefused(f"batch {batch_id} is paused: the same `batchrelay run` command or `batchrelay resume "
                           f"{batch_id}` continues it; retry its failed lines once it has ended")
    if not info.finished or info.status == Status.FAILED:  # `failed`: its submit never finished
        raise RetryRefused(f"batch {batch_id} is {info.status}: only a completed, cancelled or expired batch "
                           "can be retried")
    k = store.keys
    reopened: list[int] = []
    async for line, raw in _error_records(store, batch_id):
        meta: dict[str, Any] = orjson.loads(raw[1:]).get("batchrelay") or {}
        count = RETRYABLE.get(meta.get("error", ""))
        if count is None:
            continue
        attempts = [Attempt.from_dict(a) for a in meta.get("attempts") or [] if a.get("provider") != "…"]
        kept = [a.as_dict() for a in attempts if a.billed is not None]  # their cost stays with the line
        if await store.scripts.reopen_line(
                k, batch_id, line=line, record=raw, count=count, attempts=orjson.dumps(kept).decode() if kept else "",
                ledger=increments(a.billed for a in attempts if a.billed is not None)):
            reopened.append(line)
    queue = await workable_queue(store, info)
    if not reopened:
        return Retried(0, 0, queue)
    round_no = await store.redis.hincrby(k.meta(batch_id), "retries", 1)  # type: ignore[misc]
    chunks = split_chunks(k.prefix, batch_id, reopened, chunk_size, retry_round=round_no)
    mapping: dict[str, Any] = {"status": Status.IN_PROGRESS}
    window, deadline = await store.redis.hmget(k.meta(batch_id), ["completion_window_s", "deadline"])  # type: ignore[misc]
    if window:  # a new window from now, never past the batch's deadline
        mapping["expires_at"] = min(time.time() + float(window), float(deadline or "inf"))
    if info.webhook:  # the retried batch's end is news again (a new webhook-id: see webhooks.py)
        mapping.update(webhook_status="pending", webhook_attempts=0)
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(k.chunks(batch_id), mapping=chunk_map_entries(chunks))
        pipe.hset(k.meta(batch_id), mapping=mapping)
        pipe.hdel(k.meta(batch_id), "finished_at", "stop_at", "webhook_last")
        if info.webhook:
            pipe.zadd(k.webhooks, {batch_id: 0})
        await pipe.execute()
    await enqueue_chunks(store.redis, queue, batch_id, chunks)
    return Retried(len(reopened), len(chunks), queue)


async def _error_records(store: Store, batch_id: str) -> AsyncIterator[tuple[int, bytes]]:
    async for line, raw in store.redis.hscan_iter(store.keys.results(batch_id), count=BLOCK):
        if raw[:1] == ERR:
            yield int(line), raw


async def tick(store: Store, *, grace_s: float, retention_s: float | None, now: float | None = None,
               batches: Sequence[BatchInfo] | None = None) -> dict[str, int]:
    """The housekeeping every worker's sweep does: start deferred batches that are due, expire batches
    past their window, move stops on,
    forget finished batches older than the retention (and batches paused for longer).
    Safe to run in several workers at once."""
    now = time.time() if now is None else now
    done = {"started": 0, "expired": 0, "stopped_lines": 0, "forgotten": 0, "abandoned_submits": 0}
    for info in batches if batches is not None else await store.list_batches(limit=10_000):
        if info.status == Status.SCHEDULED and info.start_at is not None and now >= info.start_at:
            if await store.start_due(info.id, now):
                await enqueue_all(store, info.id, await workable_queue(store, info))
                done["started"] += 1
            continue
        if info.status == Status.VALIDATING and now - info.created_at > STALE_SUBMIT_S:
            # its submit died without a word (Redis was gone): no job was ever enqueued for it
            await store.mark_failed(info.id, "submit never finished")
            done["abandoned_submits"] += 1
            continue
        if info.expires_at is not None and now >= info.expires_at and info.status in EXPIRABLE:
            await request_stop(store, info.id, Status.EXPIRED)
            done["expired"] += 1
            info = await store.info(info.id)
        if info.status in FINAL:
            done["stopped_lines"] += await advance(store, info.id, grace_s, now)
        elif (retention_s is not None and info.finished and info.finished_at is not None
              and now - info.finished_at > retention_s):
            await LaneStore(store).forget(info.id)
            await store.delete_batch(info.id)
            done["forgotten"] += 1
        elif retention_s is not None and info.status == Status.PAUSED:
            paused_at = float((await store.get_fields(info.id, ["paused_at"])).get("paused_at") or now)
            if now - paused_at > retention_s:  # paused and left: forgotten like a finished batch
                await LaneStore(store).forget(info.id)
                await store.delete_batch(info.id)
                done["forgotten"] += 1
    return done
