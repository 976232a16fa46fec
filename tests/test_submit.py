"""Submitting a JSONL stream (store/submit.py) on a real redis-server: what a new batch holds (lines,
pending set, chunk map, input errors, its options) and when its chunk jobs are enqueued."""

from __future__ import annotations

import io
import time
from decimal import Decimal as D
from typing import Any

import orjson
import pytest
from arq.constants import job_key_prefix

from batchrelay.money.pricing import pico
from batchrelay.spec import BatchSpec
from batchrelay.store import submit as submit_module
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.sniff import SNIFF_LINES

from .conftest import openai_line


def _jsonl(*items: dict[str, Any] | bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(i if isinstance(i, bytes) else orjson.dumps(i) + b"\n" for i in items))


async def _errors(store: Store, batch: str) -> dict[int, dict[str, Any]]:
    """line -> the error of each input error record."""
    return {rec["error"]["line"]: rec["error"] for ok, raw in [r async for r in store.iter_results(batch)]
            if not ok and (rec := orjson.loads(raw))["batchrelay"]["error"] == "invalid_input"}


async def _queued(store: Store) -> set[str]:
    return {m.decode() for m in await store.redis.zrange(store.keys.queue, 0, -1)}


async def test_submit_writes_each_line_pends_it_maps_it_to_a_chunk_and_enqueues_the_chunks(store: Store) -> None:
    res = await submit_stream(store, _jsonl(*[openai_line(i) for i in range(1, 6)]), BatchSpec(name="n", chunk_size=2), source="in.jsonl")
    b, k = res.batch_id, store.keys
    assert (res.total, res.valid, res.invalid) == (5, 5, 0)
    lines = {int(n): JobLine.from_json(v) for n, v in (await store.redis.hgetall(k.lines(b))).items()}  # type: ignore[misc]
    assert sorted(lines) == [1, 2, 3, 4, 5]
    assert (lines[3].custom_id, lines[3].fmt, lines[3].body["messages"][0]["content"]) == ("req-3", "openai",
                                                                                         "question 3")
    assert {int(x) for x in await store.redis.smembers(k.pending(b))} == {1, 2, 3, 4, 5}  # type: ignore[misc]
    job = f"{k.prefix}{b}"  # chunk job ids carry the setup's prefix (another setup's jobs are never ours)
    assert await store.chunk_map(b) == {f"{job}:c0": [1, 2], f"{job}:c1": [3, 4], f"{job}:c2": [5]}
    assert await _queued(store) == {f"{job}:c0", f"{job}:c1", f"{job}:c2"}
    assert await store.redis.exists(job_key_prefix + f"{job}:c0") == 1
    info = await store.info(b)
    assert (info.status, info.name, info.source, info.input_format, info.total, info.pending, info.max_line) == (
        "in_progress", "n", "in.jsonl", "openai", 5, 5, 5)
    assert await _errors(store, b) == {}


async def test_bad_lines_become_error_records_and_the_rest_of_the_batch_runs(store: Store) -> None:
    res = await submit_stream(store, _jsonl(openai_line(1), b"{broken\n", b"\n", {"custom_id": "x"}, openai_line(5)),
                              BatchSpec(name="t", chunk_size=10), source="t")
    b = res.batch_id
    assert (res.total, res.valid, res.invalid) == (4, 2, 2)  # the blank line is no line of input
    errors = await _errors(store, b)
    assert sorted(errors) == [2, 4] and all(e["code"] == "invalid_input" for e in errors.values())
    assert await store.chunk_map(b) == {f"{store.keys.prefix}{b}:c0": [1, 5]}
    info = await store.info(b)
    assert (info.invalid, info.pending, info.max_line, info.status) == (2, 2, 5, "in_progress")


@pytest.mark.parametrize("flush_lines", [2, 5000])  # the repeat in a later block, or in the same one
async def test_a_repeated_custom_id_is_an_input_error_naming_the_line_that_had_it_first(
    store: Store, monkeypatch: pytest.MonkeyPatch, flush_lines: int
) -> None:
    monkeypatch.setattr(submit_module, "FLUSH_LINES", flush_lines)
    res = await submit_stream(store, _jsonl(openai_line(1), openai_line(2), openai_line(3), openai_line(2)), BatchSpec(name="t"), source="t")
    b = res.batch_id
    assert (res.valid, res.invalid) == (3, 1)
    assert "duplicate custom_id 'req-2' (first on line 2)" in (await _errors(store, b))[4]["message"]
    assert {int(x) for x in await store.redis.smembers(store.keys.pending(b))} == {1, 2, 3}  # type: ignore[misc]


async def test_a_line_over_the_size_limit_is_an_input_error(store: Store) -> None:
    big = openai_line(2)
    big["body"]["messages"][0]["content"] = "x" * 2000
    res = await submit_stream(store, _jsonl(openai_line(1), big), BatchSpec(name="t", max_line_bytes=1000), source="t")
    assert (res.valid, res.invalid) == (1, 1)
    assert list(await _errors(store, res.batch_id)) == [2]


async def test_a_deferred_batch_is_written_but_nothing_is_enqueued_until_it_starts(store: Store) -> None:
    start_at = time.time() + 3600
    res = await submit_stream(store, _jsonl(openai_line(1)), BatchSpec(name="t", start_at=start_at, completion_window=600), source="t")
    info = await store.info(res.batch_id)
    assert (info.status, info.start_at, info.pending) == ("scheduled", start_at, 1)
    assert info.expires_at == pytest.approx(start_at + 600)  # its window runs from its start
    assert await store.chunk_map(res.batch_id) == {f"{store.keys.prefix}{res.batch_id}:c0": [1]}
    assert await _queued(store) == set()


async def test_a_batch_keeps_its_options(store: Store) -> None:
    queue = f"{store.keys.queue}:run:x"
    res = await submit_stream(store, _jsonl(openai_line(1)), BatchSpec(name="t", providers=("a", "b"), max_cost=D("0.25"), webhook="https://example.com/hook"), source="t", queue=queue)
    b = res.batch_id
    claim = await store.claim(b, [1])
    assert (claim.allow, claim.budgeted) == (["a", "b"], True)
    assert (await store.redis.hget(store.keys.budget(b), "max")) == str(pico(D("0.25"))).encode()  # type: ignore[misc]
    info = await store.info(b)
    assert (info.queue, info.webhook) == (queue, {"url": "https://example.com/hook", "status": "pending",
                                                  "attempts": 0, "last": None})
    assert await store.redis.zscore(store.keys.webhooks, b) == 0
    assert {m.decode() for m in await store.redis.zrange(queue, 0, -1)} == {f"{store.keys.prefix}{b}:c0"}  # on its own queue
    assert await _queued(store) == set()


async def test_a_file_of_only_input_errors_is_completed_at_once_with_nothing_enqueued(store: Store) -> None:
    res = await submit_stream(store, _jsonl(b'{"model": ""}\n', b'{"custom_id": 7}\n'), BatchSpec(name="t"),
                              source="t")
    info = await store.info(res.batch_id)
    assert (info.status, info.invalid, info.pending) == ("completed", 2, 0)
    assert info.finished_at is not None
    assert await _queued(store) == set()


class _Breaks(io.BytesIO):
    """A stream that fails after its first `SNIFF_LINES` + 1 lines (a disk error, a dropped upload),
    once the batch exists."""

    def readline(self, size: int | None = -1, /) -> bytes:
        if self.getvalue().count(b"\n", 0, self.tell()) > SNIFF_LINES:
            raise OSError("input went away")
        return super().readline(size)


async def test_a_submit_cut_short_leaves_a_failed_batch_that_nothing_works_on(store: Store) -> None:
    with pytest.raises(OSError, match="input went away"):
        await submit_stream(store, _Breaks(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 30))),
                            BatchSpec(name="t"), source="t")
    (info,) = await store.list_batches()
    assert (info.status, await store.get_fields(info.id, ["error"])) == (
        "failed", {"error": "submit interrupted: OSError"})
    assert await _queued(store) == set()
