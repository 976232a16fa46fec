"""What `serve` reads and writes beyond a batch's own record: the batches created through one of its
APIs, walked from a cursor in either direction, and the deletion of a batch's answers or errors
(an OpenAI output or error file deleted or expired).

Each API sees only the batches created through it (their `serve_api` field); the walk reads the
shared index of batches a block at a time, so a page costs what it skips, not the whole index.
It walks by (creation time, id) rather than by rank, so batches created or forgotten meanwhile
neither repeat nor hide others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from batchrelay.errors import BatchNotFound
from batchrelay.store.store import BYTE_FIELDS, ERR, OK, Store

BLOCK = 100
SCAN = 1000

Bound = tuple[bytes, float]  # a member of the index and its score


async def _past(store: Store, bound: Bound | None, newer: bool, n: int) -> list[Bound]:
    """Up to `n` ids of the index past `bound`: older ones (newest first), or newer ones with `newer`.
    Equal scores are ordered by id, as Redis orders them."""
    r, key = store.redis, store.keys.batches
    if bound is None:
        got: list[Bound] = await r.zrange(key, 0, n - 1, desc=not newer, withscores=True)
        return got
    member, score = bound
    out: list[Bound] = []
    offset = 0
    while len(out) < n:
        if newer:
            got = await r.zrangebyscore(key, score, "+inf", start=offset, num=n, withscores=True)
        else:
            got = await r.zrevrangebyscore(key, score, "-inf", start=offset, num=n, withscores=True)
        if not got:
            break
        offset += len(got)
        out.extend((m, s) for m, s in got if s != score or (m > member if newer else m < member))
    return out[:n]


async def served_batches(store: Store, api: str, *, after: str | None = None, newer: bool = False
                         ) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The batches created through `api` (their meta hash with each), newest first, or oldest
    first with `newer`; past the batch `after` when given (BatchNotFound when it is not a batch)."""
    bound: Bound | None = None
    if after is not None:
        score = await store.redis.zscore(store.keys.batches, after)
        if score is None:
            raise BatchNotFound(after)
        bound = (after.encode(), score)
    want = api.encode()
    while block := await _past(store, bound, newer, BLOCK):
        async with store.redis.pipeline(transaction=False) as pipe:
            for member, _ in block:
                pipe.hgetall(store.keys.meta(member.decode()))
            metas: list[dict[bytes, bytes]] = await pipe.execute()
        for (member, _), meta in zip(block, metas, strict=True):
            if meta.get(b"serve_api") == want:
                yield member.decode(), {k.decode(): v.decode() for k, v in meta.items()}
        bound = block[-1]


async def delete_records(store: Store, batch_id: str, successes: bool) -> int:
    """Delete the batch's answers (or, `successes` False, its error records); how many went. Its
    counts stay: they say what happened, the records were what came back. Their size goes with them
    (store.BYTE_FIELDS, of a batch that keeps it)."""
    key, mark = store.keys.results(batch_id), OK if successes else ERR
    deleted = size = 0
    block: list[tuple[str, int]] = []

    async def delete() -> None:
        nonlocal deleted, size
        async with store.redis.pipeline(transaction=False) as pipe:
            for line, _ in block:
                pipe.hdel(key, line)
            gone = await pipe.execute()
        deleted += sum(gone)
        size += sum(n for (_, n), g in zip(block, gone, strict=True) if g)
        block.clear()

    async for line, raw in store.redis.hscan_iter(key, count=SCAN):
        if raw[:1] == mark:
            block.append((line.decode(), len(raw)))
        if len(block) >= SCAN:
            await delete()
    if block:
        await delete()
    field = BYTE_FIELDS[successes]
    if size and await store.redis.hexists(store.keys.meta(batch_id), field):  # type: ignore[misc]
        await store.redis.hincrby(store.keys.meta(batch_id), field, -size)  # type: ignore[misc]
    return deleted
