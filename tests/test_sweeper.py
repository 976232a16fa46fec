"""Chunks arq dropped (tries exhausted, job_timeout) are put back; live ones are left alone."""

from __future__ import annotations

import io

import orjson
from arq.constants import job_key_prefix

from batchrelay.config.settings import ProviderConfig, Settings, WorkerConfig
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.store.sweeper import requeue_pending, sweep
from batchrelay.worker.worker import build_worker, run_worker

from .conftest import openai_line


async def _submit(store: Store, n: int) -> str:
    data = b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1))
    return (await submit_stream(store, io.BytesIO(data), BatchSpec(chunk_size=10), source="t")).batch_id


async def _drop(store: Store, job_id: str) -> None:
    """What arq does to a job whose tries are exhausted: job and queue entry gone, our lines untouched."""
    await store.redis.delete(job_key_prefix + job_id)
    await store.redis.zrem(store.keys.queue, job_id)


async def _burst_worker(store: Store, redis_url: str) -> None:
    with SimulatorProcess({}) as base:
        settings = Settings(redis={"prefix": store.keys.prefix}, worker=WorkerConfig(concurrency=4, chunk_size=10),
                            providers=(ProviderConfig(name="sim", base_url=base),))
        await run_worker(build_worker(settings, redis_url, burst=True, handle_signals=False))


async def test_queued_chunks_are_not_requeued(store: Store) -> None:
    batch = await _submit(store, 30)
    assert await requeue_pending(store, batch) == 0
    assert await store.redis.zcard(store.keys.queue) == 3


async def test_a_dropped_chunk_is_requeued_and_its_lines_get_answered(store: Store, redis_url: str) -> None:
    batch = await _submit(store, 30)
    await _drop(store, f"{store.keys.prefix}{batch}:c1")
    assert await store.redis.zcard(store.keys.queue) == 2

    assert await sweep(store, store.keys.queue) == 1
    assert await store.redis.zscore(store.keys.queue, f"{store.keys.prefix}{batch}:c1") is not None

    await _burst_worker(store, redis_url)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == ("completed", 30, 0)


async def test_a_dropped_chunk_whose_lines_all_finished_is_left_alone(store: Store) -> None:
    batch = await _submit(store, 10)
    for line in range(1, 11):
        await store.write_result(batch, line, b"{}", True)
    await _drop(store, f"{store.keys.prefix}{batch}:c0")
    assert await requeue_pending(store, batch) == 0
    assert await store.redis.zcard(store.keys.queue) == 0


async def test_a_burst_worker_sweeps_before_it_exits(store: Store, redis_url: str) -> None:
    batch = await _submit(store, 30)
    await _drop(store, f"{store.keys.prefix}{batch}:c2")
    await _burst_worker(store, redis_url)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == ("completed", 30, 0)


async def test_a_burst_worker_runs_a_cron_tick_it_takes_from_the_shared_queue(store: Store, redis_url: str) -> None:
    """Long-running workers' cron ticks are jobs on the queue; a burst worker beside them used to fail
    the one it took ('function not found') and report a failed chunk job (found by a fresh-clone check)."""
    from arq.connections import create_pool

    from batchrelay.store.connection import redis_settings
    from batchrelay.store.queue import cron_name

    pool = await create_pool(redis_settings(redis_url))
    try:
        for name in ("batchrelay-webhooks", "batchrelay-sweep"):
            job = cron_name(store.keys.queue, name)
            await pool.enqueue_job(job, _job_id=f"{job}:1", _queue_name=store.keys.queue)
    finally:
        await pool.aclose()
    with SimulatorProcess({}) as base:
        settings = Settings(redis={"prefix": store.keys.prefix}, worker=WorkerConfig(concurrency=4, chunk_size=10),
                            providers=(ProviderConfig(name="sim", base_url=base),))
        worker = build_worker(settings, redis_url, burst=True, handle_signals=False)
        await run_worker(worker)
    assert (worker.jobs_complete, worker.jobs_failed) == (2, 0)
    assert await store.redis.zcard(store.keys.queue) == 0
