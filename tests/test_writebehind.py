"""Final results written behind (worker/writebehind.py): many lines per script call, each once,
and a line done for its chunk only once its write has returned."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.worker.writebehind import ResultWriter

from .conftest import openai_line, worker_runtime

MODEL = "gpt-4o-mini"


async def _batch(store: Store, n: int) -> tuple[str, str, list[int]]:
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    res = await submit_stream(store, src, BatchSpec(name="t", chunk_size=n), source="t")
    ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
    return res.batch_id, cid, lines


async def test_a_chunk_writes_its_lines_in_fewer_script_calls_than_lines_each_once(
    store: Store, simulator: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    write_results = Store.write_results

    async def counted(self: Store, batch_id: str, items: Any, tallies: Any = None) -> int:
        calls.append(len(items))
        return await write_results(self, batch_id, items, tallies)

    monkeypatch.setattr(Store, "write_results", counted)
    async with worker_runtime(store, simulator.base_url, concurrency=8) as rt:
        await rt.health.report(rt.providers[0], None, MODEL, "success")  # known good: no probe, no slow start
        batch, cid, lines = await _batch(store, 40)
        assert await rt.run_chunk(batch, lines, cid) == 40
        # run_chunk returned: every line's write had returned
        info = await store.info(batch)
        assert info.succeeded == 40 and info.finished
        assert not rt.in_flight
        assert sum(calls) == 40 and len(calls) < 40, calls
        records = [orjson.loads(r) async for _, r in store.iter_results(batch)]
        assert sorted(r["custom_id"] for r in records) == sorted(f"req-{i}" for i in range(1, 41))
        assert await rt.run_chunk(batch, lines, cid) == 0  # a rerun finds nothing left
    assert simulator.stats()["calls"] == 40


async def test_lines_still_waiting_are_written_on_close(store: Store) -> None:
    batch, _, lines = await _batch(store, 3)
    writer = ResultWriter(store, window_s=30)  # nothing would go before close
    written = [writer.write(batch, n, b'{"ok":1}', True, {}, {}) for n in lines]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in written)
    await writer.close()
    assert all(w.done() and w.exception() is None for w in written)
    assert (await store.info(batch)).succeeded == 3


async def test_a_write_redis_refuses_fails_each_of_its_lines_and_writes_nothing() -> None:
    gone = Redis.from_url("redis://127.0.0.1:9", socket_connect_timeout=1)  # nothing listens there
    writer = ResultWriter(Store(gone, Keys("brtest-gone:")), window_s=0.001)
    written = [writer.write("batch_x", n, b"{}", True, {}, {}) for n in (1, 2)]
    for w in written:
        with pytest.raises((RedisConnectionError, OSError)):
            await w
    assert writer.unwritten == 0
    await writer.close()  # and it still closes cleanly
    await gone.aclose()
