"""Worker heartbeats (store/heartbeat.py): a chunk is held by the process running it, and the chunks of
a process whose heartbeat lapsed go back on the queue as new chunk jobs, their finished lines left out."""

from __future__ import annotations

import asyncio
import io
import time

import orjson
import pytest
from arq.constants import job_key_prefix

from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.heartbeat import LAPSE_S, BeatGaps, Heartbeat, reclaim_lapsed
from batchrelay.store.queue import chunk_job_id, cron_name, requeued_job_id
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.worker.runtime import LineWork

from .conftest import openai_line, worker_runtime


@pytest.mark.parametrize(("job", "reclaimed", "new"), [
    ("p:batch_1:c0", False, "p:batch_1:c0.d7"),
    ("p:batch_1:r2-3", True, "p:batch_1:r2-3.k7"),
    ("p:batch_1:c0.d5", True, "p:batch_1:c0.k7"),  # one suffix, however often its lines moved on
    ("p:batch_1:c0.k5.d6", False, "p:batch_1:c0.d7"),
    ("my.d1:batch_1:c0", False, "my.d1:batch_1:c0.d7"),  # a prefix that looks like a suffix stays whole
])
def test_a_requeued_chunk_is_named_after_the_chunk_it_came_from(job: str, reclaimed: bool, new: str) -> None:
    assert requeued_job_id(job, 7, reclaimed=reclaimed) == new


def test_every_job_id_starts_with_the_setups_prefix_or_queue() -> None:
    assert chunk_job_id("a:", "batch_1", 4) == "a:batch_1:c4"
    assert chunk_job_id("a:", "batch_1", 4, retry_round=2) == "a:batch_1:r2-4"
    assert cron_name("a:queue", "batchrelay-sweep") == "a:queue:batchrelay-sweep"


async def _chunks(store: Store, n: int, size: int) -> tuple[str, list[str]]:
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    batch = (await submit_stream(store, src, BatchSpec(chunk_size=size), source="t")).batch_id
    return batch, sorted(await store.chunk_map(batch))


async def _queued(store: Store) -> set[str]:
    return {m.decode() for m in await store.redis.zrange(store.keys.queue, 0, -1)}


async def test_a_lapsed_workers_chunk_goes_back_as_a_new_job_of_its_pending_lines(store: Store) -> None:
    batch, (c0, c1) = await _chunks(store, 6, 3)
    dead, alive = Heartbeat(store), Heartbeat(store)
    await dead.hold(c0, batch)
    await alive.hold(c1, batch)
    await store.write_result(batch, 2, b"{}", True)  # answered before the worker died
    assert await reclaim_lapsed(store) == 0  # both beat

    await store.redis.delete(store.keys.worker(dead.id))  # its key lapsed: the process is gone
    due = await store.redis.zscore(store.keys.queue, c0)
    assert await reclaim_lapsed(store) == 1
    chunks = await store.chunk_map(batch)
    ((new, lines),) = [(cid, lines) for cid, lines in chunks.items() if cid not in (c0, c1)]
    assert new.startswith(c0 + ".k") and sorted(lines) == [1, 3]
    assert c0 not in chunks and chunks[c1] == [4, 5, 6]
    assert await _queued(store) == {new, c1}  # the old job never runs again
    assert await store.redis.zscore(store.keys.queue, new) == due  # its place: it has waited longest
    assert not await store.redis.exists(job_key_prefix + c0)
    assert await store.redis.hkeys(store.keys.held) == [c1.encode()]  # type: ignore[misc]
    assert await reclaim_lapsed(store) == 0  # once


async def test_a_chunk_whose_lines_are_all_done_is_only_forgotten(store: Store) -> None:
    batch, (c0,) = await _chunks(store, 2, 2)
    dead = Heartbeat(store)
    await dead.hold(c0, batch)
    for line in (1, 2):
        await store.write_result(batch, line, b"{}", True)
    await dead.stop()  # a worker that leaves drops its key at once
    assert await reclaim_lapsed(store) == 0
    assert await store.redis.hlen(store.keys.held) == 0  # type: ignore[misc]
    assert await store.chunk_map(batch) == {}


async def test_a_release_takes_only_its_own_entry(store: Store) -> None:
    batch, (c0,) = await _chunks(store, 2, 2)
    first, second = Heartbeat(store), Heartbeat(store)
    await first.hold(c0, batch)
    await second.hold(c0, batch)  # arq gave the same job to another process since (a retry)
    await first.release(c0, batch)
    assert await store.redis.hget(store.keys.held, c0) == f"{second.id} {batch}".encode()  # type: ignore[misc]
    await second.release(c0, batch)
    assert await store.redis.hlen(store.keys.held) == 0  # type: ignore[misc]


async def test_a_running_chunk_is_held_by_its_worker_and_let_go_when_it_ends(store: Store) -> None:
    batch, (c0,) = await _chunks(store, 3, 3)
    with SimulatorProcess({"latency_ms": 500}) as base:
        async with worker_runtime(store, base, concurrency=3) as rt:
            assert rt.heartbeat is not None
            chunk = asyncio.create_task(rt.run_chunk(batch, [1, 2, 3], c0))
            await asyncio.sleep(0.2)
            assert await store.redis.get(store.keys.worker(rt.heartbeat.id)) is not None  # it beats
            assert await store.redis.hget(store.keys.held, c0) == f"{rt.heartbeat.id} {batch}".encode()  # type: ignore[misc]
            assert await chunk == 3
            assert await store.redis.hlen(store.keys.held) == 0  # type: ignore[misc]
            worker_key = store.keys.worker(rt.heartbeat.id)
        assert not await store.redis.exists(worker_key)  # gone with the process


async def test_a_chunk_is_not_reclaimed_from_a_holder_that_beats_or_from_an_entry_that_changed(store: Store) -> None:
    batch, (c0,) = await _chunks(store, 2, 2)
    worker = Heartbeat(store)
    await worker.hold(c0, batch)
    reclaim = {"job": c0, "worker": worker.id, "queue": store.keys.queue, "new_job": c0 + ".k1"}
    assert await store.scripts.reclaim_chunk(store.keys, batch, holder=f"{worker.id} {batch}", **reclaim) is None
    await store.redis.delete(store.keys.worker(worker.id))
    assert await store.scripts.reclaim_chunk(store.keys, batch, holder=f"{worker.id} other", **reclaim) is None
    assert await store.chunk_map(batch) == {c0: [1, 2]} and await _queued(store) == {c0}  # untouched
    assert await store.scripts.reclaim_chunk(store.keys, batch, holder=f"{worker.id} {batch}", **reclaim) == [1, 2]


@pytest.mark.parametrize(("beats", "since", "now", "unsure"), [
    ([1, 3, 5], 0, 6, False),  # beating every 2 s: its key never lapsed
    ([1, 3, 5], 0, 5 + LAPSE_S, True),  # no beat for LAPSE_S now (cut off): it may be lapsing
    ([1, 3, 3 + LAPSE_S], 2, 4 + LAPSE_S, True),  # a gap after `since`: others may have put its chunks back
    ([1, 3, 3 + LAPSE_S], 3.5 + LAPSE_S, 4 + LAPSE_S, False),  # claimed after the gap ended: its own
    ([1, 1 + LAPSE_S - 0.1, 1 + 2 * LAPSE_S - 0.2], 0, 1 + 2 * LAPSE_S, False),  # gaps just short of a lapse
])
def test_beat_gaps_tell_when_a_chunk_held_since_then_may_have_been_put_back(
        beats: list[float], since: float, now: float, unsure: bool) -> None:
    gaps = BeatGaps(0)
    for t in beats:
        gaps.beaten(t)
    assert gaps.unsure_since(since, now) is unsure


async def test_a_worker_back_from_a_lapse_does_not_send_a_line_another_worker_answered_meanwhile(
        store: Store, simulator: SimulatorProcess) -> None:
    batch, _ = await _chunks(store, 2, 2)
    async with worker_runtime(store, simulator.base_url) as rt:
        assert rt.heartbeat is not None
        claim = await store.claim(batch, [1, 2])
        claimed = time.monotonic()
        work = {job.line: LineWork(batch, job, claim.first_tried[job.line], claim.allow, [], claimed=claimed)
                for job in claim.jobs}
        # its beats stopped for LAPSE_S (a partition) while it held the lines, and meanwhile another
        # worker took line 1 over and answered it
        rt.heartbeat.gaps.last = claimed - LAPSE_S
        rt.heartbeat.gaps.beaten(time.monotonic())
        assert rt.heartbeat.may_have_lost(claimed)
        await store.write_result(batch, 1, b'{"answered": "elsewhere"}', True)
        assert await rt.handle_line(0, work[1]) is None
        assert simulator.stats()["calls"] == 0  # not paid for twice
        sent = await rt.handle_line(0, work[2])  # a line still pending is sent as ever: its result written behind
        assert (await sent if isinstance(sent, asyncio.Future) else sent) is None
        assert simulator.stats()["calls"] == 1
        assert not await store.is_pending(batch, 2)


async def test_a_chunk_held_in_a_live_workers_name_that_it_no_longer_runs_goes_back(store: Store) -> None:
    """After a failover to a replica that lacked the release: the entry is there, its worker beats,
    and only that worker knows it does not run the chunk; it puts it back, others leave it alone."""
    batch, (c0, c1) = await _chunks(store, 6, 3)
    me, other = Heartbeat(store), Heartbeat(store)
    await me.hold(c0, batch)
    await me.hold(c1, batch)
    await store.write_result(batch, 1, b"{}", True)
    await me.release(c0, batch)
    await store.redis.hset(store.keys.held, c0, f"{me.id} {batch}")  # type: ignore[misc]  # the release, lost
    assert await reclaim_lapsed(store, other) == 0  # not the other's to judge: the holder beats
    assert await reclaim_lapsed(store, me, others=False) == 1  # c1 runs here still: left alone
    chunks = await store.chunk_map(batch)
    ((new, lines),) = [(cid, lines) for cid, lines in chunks.items() if cid not in (c0, c1)]
    assert new.startswith(c0 + ".k") and sorted(lines) == [2, 3]
    assert await _queued(store) == {new, c1}
    assert await store.redis.hkeys(store.keys.held) == [c1.encode()]  # type: ignore[misc]
    assert await reclaim_lapsed(store, me) == 0  # once
