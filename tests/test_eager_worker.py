"""EagerWorker (worker/eager.py): a job that ends frees its slot for the next queued job at once, not
at arq's next poll. With a 30 s poll delay and one slot, plain arq would start the second of five
quick jobs only after 30 s; the eager worker runs all five within a fraction of that."""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

from arq import create_pool
from arq.worker import func

from batchrelay.store.connection import redis_settings
from batchrelay.worker.eager import EagerWorker

POLL_DELAY_S = 30.0


async def _quick(ctx: dict[str, Any], n: int) -> int:
    ctx["done"].append((n, time.monotonic()))
    return n


async def _run_jobs(redis_url: str, prefix: str, *, jobs: int, max_jobs: int) -> tuple[list[int], float]:
    done: list[tuple[int, float]] = []
    pool = await create_pool(redis_settings(redis_url))
    queue = f"{prefix}queue"
    for i in range(jobs):
        await pool.enqueue_job("quick", i, _job_id=f"{prefix}job{i}", _queue_name=queue)
    worker = EagerWorker(functions=[func(_quick, name="quick")], redis_settings=redis_settings(redis_url),
                         queue_name=queue, max_jobs=max_jobs, poll_delay=POLL_DELAY_S, keep_result=0,
                         handle_signals=False, ctx={"done": done})
    t0 = time.monotonic()
    task = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(POLL_DELAY_S / 2):
            while len(done) < jobs:
                await asyncio.sleep(0.01)
        return [n for n, _ in done], time.monotonic() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with warnings.catch_warnings():  # arq 0.28 closes its pool with redis-py's deprecated close()
            warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
            await worker.close()
        leftovers = [k async for k in pool.scan_iter(match=f"arq:*{prefix}*")]
        if leftovers:
            await pool.delete(*leftovers)
        await pool.aclose()


async def test_a_slot_is_refilled_when_its_job_ends_not_at_the_next_poll(redis_url: str, prefix: str) -> None:
    order, took = await _run_jobs(redis_url, prefix, jobs=5, max_jobs=1)
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert took < POLL_DELAY_S / 2


async def test_several_slots_all_refilled(redis_url: str, prefix: str) -> None:
    order, _ = await _run_jobs(redis_url, prefix, jobs=12, max_jobs=3)
    assert sorted(order) == list(range(12))
