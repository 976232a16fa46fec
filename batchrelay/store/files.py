"""The input files uploaded to `serve` (OpenAI Files): their bytes are on disk, their record here."""

from __future__ import annotations

from batchrelay.store.store import Store


async def file_record(store: Store, file_id: str) -> dict[str, str] | None:
    """The uploaded file's id, bytes, created_at, filename and purpose; None if there is none."""
    raw: dict[bytes, bytes] = await store.redis.hgetall(store.keys.file(file_id))  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()} or None


async def save_file_record(store: Store, file_id: str, record: dict[str, str]) -> None:
    await store.redis.hset(store.keys.file(file_id), mapping=record)  # type: ignore[misc]


async def delete_file_record(store: Store, file_id: str) -> None:
    await store.redis.delete(store.keys.file(file_id))
