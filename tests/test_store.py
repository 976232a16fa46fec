"""The store keeps one result per line, whatever reruns happen."""

from __future__ import annotations

import io

import orjson

from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream

from .conftest import openai_line, worker_runtime


def _file(n: int, extra: bytes = b"") -> io.BytesIO:
    return io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)) + extra)


async def test_submit_writes_lines_pending_set_and_input_errors(store: Store) -> None:
    res = await submit_stream(store, _file(25, b"{oops\n\n[1]\n"), BatchSpec(chunk_size=10), source="t.jsonl")
    info = await store.info(res.batch_id)
    assert (res.valid, res.invalid, info.total, info.pending, info.status) == (25, 2, 27, 25, "in_progress")
    assert info.max_line == 28  # the blank line 27 still counts as a physical line
    chunks = await store.chunk_map(res.batch_id)
    assert sorted(line for lines in chunks.values() for line in lines) == list(range(1, 26))
    errors = [orjson.loads(rec) for ok, rec in [r async for r in store.iter_results(res.batch_id)] if not ok]
    assert [e["error"]["line"] for e in errors] == [26, 28]


async def test_writing_a_result_twice_changes_nothing(store: Store) -> None:
    res = await submit_stream(store, _file(3), BatchSpec(chunk_size=10), source="t")
    assert await store.write_result(res.batch_id, 2, b'{"first":1}', True) is True
    assert await store.write_result(res.batch_id, 2, b'{"second":1}', False) is False
    info = await store.info(res.batch_id)
    assert (info.succeeded, info.failed, info.pending) == (1, 0, 2)
    records = [rec async for _, rec in store.iter_results(res.batch_id)]
    assert records == [b'{"first":1}']


async def test_batch_completes_when_its_last_line_is_written(store: Store) -> None:
    res = await submit_stream(store, _file(2), BatchSpec(chunk_size=10), source="t")
    await store.write_result(res.batch_id, 1, b"{}", True)
    assert (await store.info(res.batch_id)).status == "in_progress"
    await store.write_result(res.batch_id, 2, b"{}", False)
    info = await store.info(res.batch_id)
    assert (info.status, info.succeeded, info.failed) == ("completed", 1, 1)
    assert info.finished_at is not None


async def test_a_file_of_only_bad_lines_is_completed_at_once(store: Store) -> None:
    res = await submit_stream(store, io.BytesIO(b"nope\n{}\n"), BatchSpec(), source="t")
    info = await store.info(res.batch_id)
    assert (info.status, info.invalid, info.pending) == ("completed", 2, 0)


async def test_rerunning_a_finished_chunk_calls_no_provider_and_changes_nothing(store: Store) -> None:
    with SimulatorProcess({}) as base:
        async with worker_runtime(store, base, concurrency=4, chunk_size=10) as rt:
            res = await submit_stream(store, _file(10), BatchSpec(chunk_size=10), source="t")
            (lines,) = (await store.chunk_map(res.batch_id)).values()
            assert await rt.run_chunk(res.batch_id, lines, "c0") == 10
            before = [r async for r in store.iter_results(res.batch_id)]
            info_before = await store.info(res.batch_id)
            calls_before = SimulatorProcess.stats_of(base)["calls"]

            assert await rt.run_chunk(res.batch_id, lines, "c0") == 0  # an arq rerun of the same chunk

            assert [r async for r in store.iter_results(res.batch_id)] == before
            assert await store.info(res.batch_id) == info_before
            assert SimulatorProcess.stats_of(base)["calls"] == calls_before == 10
