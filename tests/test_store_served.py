"""What `serve` keeps in the store beyond a batch's record: the walk over one API's batches from a
cursor either way (store/served.py), the deletion of a batch's answers or error records, and the
index of uploaded files (store/files.py)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from batchrelay.errors import BatchNotFound
from batchrelay.spec import BatchSpec
from batchrelay.store import served
from batchrelay.store.files import delete_file_record, file_record, file_records, index_files, save_file_record
from batchrelay.store.served import delete_records, served_batches
from batchrelay.store.store import Store


async def _batches(store: Store, redis: Redis, apis: list[str | None], scores: list[float], first: int = 0
                   ) -> list[str]:
    """Batches created through `apis` (None: by the CLI) at these creation times, in that order."""
    ids = []
    for i, (api, score) in enumerate(zip(apis, scores, strict=True), start=first):
        batch_id = f"batch_{i:024x}"
        await store.create_batch(batch_id, BatchSpec(), source="t")
        if api:
            await store.set_fields(batch_id, {"serve_api": api})
        await redis.zadd(store.keys.batches, {batch_id: score})
        ids.append(batch_id)
    return ids


async def _walk(store: Store, api: str, **kw: object) -> list[str]:
    return [b async for b, _ in served_batches(store, api, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize("block", [1, 2, 3, 100])
async def test_one_apis_batches_are_walked_either_way_from_any_cursor(store: Store, redis: Redis, block: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served, "BLOCK", block)
    # four share one creation time: the walk orders them by id, as Redis does, and skips none
    ids = await _batches(store, redis, ["openai", None, "openai", "anthropic", "openai", "openai", "openai", None],
                         [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.5, 5.0])
    mine = [ids[i] for i in (0, 2, 4, 5, 6)]
    assert await _walk(store, "openai") == mine[::-1]
    assert await _walk(store, "openai", newer=True) == mine
    for i, cursor in enumerate(ids):
        older = [b for b in mine if ids.index(b) < i]
        newer = [b for b in mine if ids.index(b) > i]
        assert await _walk(store, "openai", after=cursor) == older[::-1]
        assert await _walk(store, "openai", after=cursor, newer=True) == newer
    assert await _walk(store, "anthropic") == [ids[3]]
    walked = [(b, meta["serve_api"]) async for b, meta in served_batches(store, "anthropic")]
    assert walked == [(ids[3], "anthropic")]


async def test_batches_created_or_forgotten_during_a_walk_neither_repeat_nor_hide_others(
        store: Store, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served, "BLOCK", 2)
    ids = await _batches(store, redis, ["openai"] * 6, [float(i) for i in range(6)])
    seen = []
    async for batch_id, _ in served_batches(store, "openai"):
        seen.append(batch_id)
        if len(seen) == 2:
            await _batches(store, redis, ["openai"], [9.0], first=100)  # newer than the walk's start: not in it
            await store.delete_batch(ids[5])  # already seen
    assert seen == ids[::-1]


async def test_a_cursor_that_is_no_batch_is_not_found(store: Store) -> None:
    with pytest.raises(BatchNotFound):
        await _walk(store, "openai", after="batch_nope")


async def test_a_batchs_answers_or_its_error_records_are_deleted_and_its_counts_stay(store: Store, redis: Redis) -> None:
    (batch_id,) = await _batches(store, redis, ["openai"], [1.0])
    await store.set_fields(batch_id, {"max_line": "5"})
    for line, ok in ((1, True), (2, False), (3, True), (4, False), (5, True)):
        await store.write_result(batch_id, line, b'{"line":%d}' % line, ok)
    assert await delete_records(store, batch_id, successes=True) == 3
    assert [(ok, rec) async for ok, rec in store.iter_results(batch_id)] == [(False, b'{"line":2}'),
                                                                             (False, b'{"line":4}')]
    assert await delete_records(store, batch_id, successes=True) == 0
    assert await delete_records(store, batch_id, successes=False) == 2
    assert [r async for r in store.iter_results(batch_id)] == []
    info = await store.info(batch_id)
    assert (info.succeeded, info.failed) == (3, 2)


async def test_uploaded_files_are_indexed_by_upload_time(store: Store) -> None:
    for file_id, at in (("file-b", "20.5"), ("file-a", "10.0"), ("file-c", "30.0")):
        await save_file_record(store, file_id, {"id": file_id, "bytes": "1", "created_at": at, "filename": "f",
                                                "purpose": "batch"})
    assert [r["id"] for r in await file_records(store)] == ["file-a", "file-b", "file-c"]
    assert await delete_file_record(store, "file-b") is True
    assert await delete_file_record(store, "file-b") is False
    assert await file_record(store, "file-b") is None
    assert [r["id"] for r in await file_records(store)] == ["file-a", "file-c"]


async def test_file_records_an_older_serve_left_unindexed_are_indexed_once(store: Store, redis: Redis) -> None:
    for file_id, at in (("file-old1", "5.0"), ("file-old2", "6.0")):
        await redis.hset(store.keys.file(file_id), mapping={"id": file_id, "bytes": "1", "created_at": at,
                                                             "filename": "f", "purpose": "batch"})
    assert await index_files(store) == 2
    assert await index_files(store) == 0
    await save_file_record(store, "file-new", {"id": "file-new", "bytes": "1", "created_at": "7.0", "filename": "f",
                                               "purpose": "batch"})
    assert [r["id"] for r in await file_records(store)] == ["file-old1", "file-old2", "file-new"]
