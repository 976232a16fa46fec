"""The input files uploaded to `serve` (OpenAI Files): their bytes are on disk, their record here (a
hash per file) and their ids in an index scored by upload time, so they can be listed."""

from __future__ import annotations

from batchrelay.store.ids import is_file_id
from batchrelay.store.store import Store


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def file_record(store: Store, file_id: str) -> dict[str, str] | None:
    """The uploaded file's id, bytes, created_at, filename, purpose (and expires_at if it has one);
    None if there is none (an id of another shape names none: ids.py)."""
    if not is_file_id(file_id):
        return None
    raw: dict[bytes, bytes] = await store.redis.hgetall(store.keys.file(file_id))  # type: ignore[misc]
    return _decoded(raw) or None


async def save_file_record(store: Store, file_id: str, record: dict[str, str]) -> None:
    """Write the record (`created_at` is its place in the index)."""
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(store.keys.file(file_id), mapping=record)
        pipe.zadd(store.keys.files, {file_id: float(record["created_at"])})
        await pipe.execute()


async def delete_file_record(store: Store, file_id: str) -> bool:
    """False when there was no such record (another request deleted it first)."""
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.delete(store.keys.file(file_id))
        pipe.zrem(store.keys.files, file_id)
        deleted, _ = await pipe.execute()
    return bool(deleted)


async def file_records(store: Store) -> list[dict[str, str]]:
    """Every uploaded file's record, oldest first."""
    ids = await store.redis.zrange(store.keys.files, 0, -1)
    async with store.redis.pipeline(transaction=False) as pipe:
        for file_id in ids:
            pipe.hgetall(store.keys.file(file_id.decode()))
        raws = await pipe.execute()
    return [_decoded(raw) for raw in raws if raw]


def _glob_escaped(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def index_files(store: Store) -> int:
    """Index the records an older `serve` left without one (it kept no index); how many it added.
    Run when `serve` starts, until there is an index: a scan of this prefix's file records."""
    if await store.redis.exists(store.keys.files):
        return 0
    added = 0
    prefix = store.keys.file("")
    async for key in store.redis.scan_iter(match=_glob_escaped(prefix) + "*", count=1000, _type="HASH"):
        created_at = await store.redis.hget(key, "created_at")  # type: ignore[misc]
        if created_at is not None:
            added += await store.redis.zadd(store.keys.files, {key.decode()[len(prefix):]: float(created_at)}, nx=True)
    return added
