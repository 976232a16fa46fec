"""The batch record in Redis: meta, request lines, pending set, results.

Redis is the record and arq only the transport: a line is finished exactly when its result is in
the results hash, and writing a result is one Lua step (result + pending + counts + status), so a
rerun of a finished line changes nothing. Stored results start with one byte, b"1" for a success
and b"0" for an error record, so exports need not parse them; the batch keeps the size of each
kind (`BYTE_FIELDS`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from batchrelay.errors import BatchNotFound
from batchrelay.money.ledger import SEP
from batchrelay.money.pricing import pico
from batchrelay.spec import BatchSpec
from batchrelay.store.connection import connect
from batchrelay.store.ids import checked_batch_id
from batchrelay.store.keys import Keys
from batchrelay.store.queue import chunk_lines, chunk_map_entries
from batchrelay.store.replicas import ReplicaAcks
from batchrelay.store.scripts import Scripts
from batchrelay.store.status import FINISHED as FINISHED  # where the CLI has always found it
from batchrelay.store.status import STOPPED, Status
from batchrelay.wire.jobs import JobLine

OK, ERR = b"1", b"0"
EXPORT_BLOCK = 2000

COUNT_FIELDS = ("total", "invalid", "succeeded", "failed", "cancelled", "expired", "max_line", "chunks")
# the size of the stored answers and of the other records, as an export writes them (JSON + newline),
# kept as they are written and removed (lua/_result_bytes.lua), so no one reads them all to know it
BYTE_FIELDS = {True: "ok_bytes", False: "error_bytes"}


@dataclass(frozen=True, slots=True)
class Claim:
    jobs: list[JobLine]
    first_tried: dict[int, float]
    allow: list[str] | None  # the batch's provider allow-list, if it has one
    earlier: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # attempts before a deferral
    budgeted: bool = False  # the batch has a spending limit: every call takes a reservation first
    cached: bool = False  # the batch uses the response cache (store/cache.py)
    fresh: list[int] = field(default_factory=list)  # lines never tried before: `note_first_try` once they are
    deadline: float | None = None  # the batch's deadline (meta expires_at): a lane takes lines only before it


@dataclass(frozen=True, slots=True)
class BatchInfo:
    id: str
    name: str
    status: str
    created_at: float
    finished_at: float | None
    source: str
    queue: str
    input_format: str
    total: int
    invalid: int
    succeeded: int
    failed: int
    pending: int
    max_line: int
    cancelled: int = 0
    expired: int = 0
    expires_at: float | None = None
    start_at: float | None = None  # a deferred batch starts then (`scheduled` until it does)
    webhook: dict[str, Any] | None = None  # url, status (pending, retrying, delivered, failed), attempts, last

    @property
    def done(self) -> int:
        return self.invalid + self.succeeded + self.failed + self.cancelled + self.expired

    @property
    def unsuccessful(self) -> int:
        return self.invalid + self.failed + self.cancelled + self.expired

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def rate(self, now: float) -> float:
        """Lines finished per second since the batch was created."""
        end = self.finished_at or now
        return self.done / max(1e-9, end - self.created_at)

    def eta_seconds(self, now: float) -> float | None:
        """None unless it is worked (in progress): no rate foretells when a paused, stopped or stopping batch ends."""
        rate = self.rate(now)
        return self.pending / rate if self.status == Status.IN_PROGRESS and rate > 0 else None

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        eta = self.eta_seconds(now)
        return {
            "id": self.id, "name": self.name, "status": self.status, "created_at": self.created_at,
            "finished_at": self.finished_at, "source": self.source, "input_format": self.input_format,
            "rate_lines_per_s": round(self.rate(now), 2), "eta_s": None if eta is None else round(eta, 1),
            "counts": {"total": self.total, "done": self.done, "succeeded": self.succeeded,
                       "failed": self.failed, "invalid": self.invalid, "cancelled": self.cancelled,
                       "expired": self.expired, "pending": self.pending},
            "expires_at": self.expires_at, "start_at": self.start_at, "webhook": self.webhook,
        }


UNSUCCESSFUL = ("failed", "invalid", "cancelled", "expired")  # the counts of lines without an answer


def unsuccessful(counts: dict[str, int]) -> int:
    """`BatchInfo.unsuccessful` from the `counts` of its `as_dict`."""
    return sum(counts[k] for k in UNSUCCESSFUL)


def _info(batch_id: str, raw: dict[bytes, bytes], pending: int) -> BatchInfo:
    m = {k.decode(): v.decode() for k, v in raw.items()}
    return BatchInfo(
        id=batch_id, name=m.get("name", ""), status=m.get("status", "unknown"),
        created_at=float(m.get("created_at", 0)),
        finished_at=float(m["finished_at"]) if m.get("finished_at") else None,
        source=m.get("source", ""), queue=m.get("queue", ""), input_format=m.get("input_format", ""),
        pending=pending, expires_at=float(m["expires_at"]) if m.get("expires_at") else None,
        start_at=float(m["start_at"]) if m.get("start_at") else None,
        webhook={"url": m["webhook"], "status": m.get("webhook_status", "pending"),
                 "attempts": int(m.get("webhook_attempts", 0)), "last": m.get("webhook_last")}
        if m.get("webhook") else None,
        **{f: int(m.get(f, 0)) for f in ("total", "invalid", "succeeded", "failed", "cancelled", "expired",
                                         "max_line")},
    )


class Store:
    """One Redis client and key prefix: the only way the rest of batchrelay reads or writes Redis."""

    def __init__(self, redis: Redis, keys: Keys, *, acks: ReplicaAcks | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts.of(redis)
        self.acks = acks or ReplicaAcks()  # result writes wait for replicas ([redis] min_replicas_ack)

    @classmethod
    async def connect(cls, url: str, keys: Keys, *, wait_s: float = 0.0) -> Store:
        """A store on its own client (StoreError naming the masked URL if Redis cannot be reached);
        `aclose` it, or use it as `async with`."""
        return cls(await connect(url, wait_s=wait_s), keys)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def create_batch(self, batch_id: str, spec: BatchSpec, *, source: str, queue: str | None = None,
                           fingerprint: str | None = None) -> None:
        """The batch's record, with its options (`spec`; named after `source` unless it has a name).
        A deferred batch's (`start_at`) completion window runs from its start. `queue`: the arq queue
        its chunks go on (default: the shared one). `fingerprint` (resume.py): the batch becomes the
        one its fingerprint finds."""
        now = time.time()
        extra: dict[str, Any] = {"providers": ",".join(spec.providers)} if spec.providers else {}
        if fingerprint:
            extra["fingerprint"] = fingerprint
        extra["queue"] = queue or self.keys.queue
        if spec.cache:
            extra["cache"] = 1
        if (expires_at := spec.expires_at(now)) is not None:  # start + window, or the deadline
            extra["expires_at"] = expires_at
        if spec.completion_window is not None:
            extra["completion_window_s"] = spec.completion_window
        if spec.deadline is not None:
            extra["deadline"] = spec.deadline
        async with self.redis.pipeline(transaction=True) as pipe:
            if spec.max_cost is not None:
                extra["max_cost"] = pico(spec.max_cost)
                pipe.hset(self.keys.budget(batch_id), "max", str(pico(spec.max_cost)))
            pipe.hset(self.keys.meta(batch_id), mapping={
                "id": batch_id, "name": spec.name or source, "source": source, "status": Status.VALIDATING,
                "created_at": now, **{f: 0 for f in (*COUNT_FIELDS, *BYTE_FIELDS.values())}, **extra,
            })
            pipe.zadd(self.keys.batches, {batch_id: now})
            if fingerprint:
                pipe.set(self.keys.fingerprint(fingerprint), batch_id)
            if spec.webhook:
                pipe.hset(self.keys.meta(batch_id), mapping={"webhook": spec.webhook, "webhook_status": "pending"})
                pipe.zadd(self.keys.webhooks, {batch_id: 0})
            await pipe.execute()

    async def add_lines(
        self, batch_id: str, jobs: Sequence[JobLine], bad: Sequence[tuple[int, bytes]],
        chunks: Sequence[tuple[str, list[int]]],
    ) -> None:
        """One round trip for a block of parsed lines: requests, pending set, input errors, chunk map.
        Input errors are final results: they add to the fleet's count of invalid lines in the same
        MULTI, so the count is never short of them (nor over)."""
        k = self.keys
        async with self.redis.pipeline(transaction=bool(bad)) as pipe:
            if jobs:
                pipe.hset(k.lines(batch_id), mapping={j.line: j.to_json() for j in jobs})
                pipe.sadd(k.pending(batch_id), *[j.line for j in jobs])
            if bad:
                pipe.hset(k.results(batch_id), mapping={line: ERR + rec for line, rec in bad})
                pipe.hincrby(k.meta(batch_id), BYTE_FIELDS[False], sum(len(rec) + 1 for _, rec in bad))
                pipe.hincrby(k.fleet_counts, f"lines{SEP}invalid", len(bad))  # results/tally.line_field
            if chunks:
                pipe.hset(k.chunks(batch_id), mapping=chunk_map_entries(chunks))
            await pipe.execute()

    async def finish_submit(self, batch_id: str, counts: dict[str, int | str], start_at: float | None = None) -> str:
        """End the submit: `in_progress` (or `scheduled` until `start_at`); returns the status it set
        ('' when the batch was stopped meanwhile)."""
        return await self.scripts.finish_submit(self.keys, batch_id, now=time.time(), start_at=start_at, counts=counts)

    async def start_due(self, batch_id: str, now: float) -> bool:
        """Move a due `scheduled` batch to `in_progress`; True for the one caller that did."""
        return await self.scripts.start_due(self.keys, batch_id, now)

    async def mark_failed(self, batch_id: str, reason: str) -> None:
        await self.redis.hset(self.keys.meta(batch_id), mapping={  # type: ignore[misc]
            "status": Status.FAILED, "finished_at": time.time(), "error": reason[:500]})

    async def get_fields(self, batch_id: str, names: Sequence[str]) -> dict[str, str]:
        """These fields of the batch's meta hash, those it has (e.g. `serve`'s own `serve_*` fields)."""
        values = await self.redis.hmget(self.keys.meta(batch_id), list(names))  # type: ignore[misc]
        return {f: v.decode() for f, v in zip(names, values, strict=True) if v is not None}

    async def set_fields(self, batch_id: str, fields: dict[str, str]) -> None:
        """Note fields of the caller's own on the batch's meta hash (they go when the batch is forgotten)."""
        await self.redis.hset(self.keys.meta(batch_id), mapping=fields)  # type: ignore[misc]

    async def set_queue(self, batch_id: str, queue: str) -> None:
        """The arq queue the batch's chunks go to from now on."""
        await self.redis.hset(self.keys.meta(batch_id), "queue", queue)  # type: ignore[misc]

    async def claim(self, batch_id: str, lines: Sequence[int], *, stopped_too: bool = False) -> Claim:
        """The lines of `lines` that still need work, with their requests and first-try times (those
        tried for the first time now are `fresh`: the caller notes them once it tries them); none of a
        stopped batch unless `stopped_too` (a lane's parcel is collected whatever the batch's status)."""
        if not lines:
            return Claim([], {}, None)
        k, now = self.keys, time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smismember(k.pending(batch_id), list(lines))
            pipe.hmget(k.lines(batch_id), list(lines))
            pipe.hmget(k.first_try(batch_id), list(lines))
            pipe.hmget(k.meta(batch_id), ["providers", "status", "max_cost", "cache", "expires_at"])
            pipe.hmget(k.attempts(batch_id), list(lines))
            flags, raws, firsts, (allow, status, max_cost, cached, expires), tried = await pipe.execute()
        if status is not None and status.decode() in STOPPED and not stopped_too:
            return Claim([], {}, None)  # nothing more is spent on a batch that was stopped or is over budget
        jobs, first_tried, fresh, earlier = [], {}, {}, {}
        for line, flag, raw, first, before in zip(lines, flags, raws, firsts, tried, strict=True):
            if flag and raw:
                jobs.append(JobLine.from_json(raw))
                first_tried[line] = float(first) if first else now
                if before:
                    earlier[line] = orjson.loads(before)
                if not first:
                    fresh[line] = now
        return Claim(jobs, first_tried, allow.decode().split(",") if allow else None, earlier, max_cost is not None,
                     cached is not None, list(fresh), float(expires) if expires else None)

    async def is_pending(self, batch_id: str, line: int) -> bool:
        """Whether the line still has no result."""
        return bool(await self.redis.sismember(self.keys.pending(batch_id), str(line)))  # type: ignore[misc]

    async def note_first_try(self, batch_id: str, first_tried: dict[int, float]) -> None:
        """When lines were first tried (kept for their retries; a cache hit never needs it)."""
        if first_tried:
            await self.redis.hset(self.keys.first_try(batch_id), mapping=first_tried)  # type: ignore[misc]

    async def save_attempts(self, batch_id: str, line: int, attempts: list[dict[str, Any]]) -> None:
        """A deferred line keeps its attempts, so its result can list every one of them."""
        await self.redis.hset(self.keys.attempts(batch_id), str(line), orjson.dumps(attempts).decode())  # type: ignore[misc]

    async def write_result(self, batch_id: str, line: int, record: bytes, ok: bool,
                           ledger: dict[str, int] | None = None, count: str | None = None,
                           tally: dict[str, int] | None = None) -> bool:
        """Record a line's final result and add its calls to the ledger, once; False when it already
        had one (a harmless rerun, which counts nothing). `count`: the count it adds to (default
        succeeded or failed; `cancelled` and `expired` for lines a stopped batch never ran);
        `tally`: its calls by outcome, for the fleet's counts (results/tally.py)."""
        args = _result(line, record, ok, ledger, count)
        if not self.acks.n:
            return await self.scripts.write_result(self.keys, batch_id, **args, tally=tally)

        async def queue(pipe: Pipeline, _again: bool) -> None:
            await self.scripts.write_result(self.keys, batch_id, **args, tally=tally, pipe=pipe)
        return bool((await self.acked_write(queue))[0])

    async def write_results(self, batch_id: str, items: Sequence[tuple[int, bytes, bool, dict[str, int], str | None]],
                            tallies: Sequence[dict[str, int]] | None = None) -> int:
        """Many `write_result`s in one script call: (line, record, ok, ledger, count), with each
        line's `tally` in `tallies` (none: lines with no call); how many were new."""
        if not items:
            return 0
        lines: list[tuple[int, bytes, str, dict[str, int], dict[str, int]]] = [
            (line, (OK if ok else ERR) + record, count or ("succeeded" if ok else "failed"), ledger or {},
             tallies[i] if tallies else {})
            for i, (line, record, ok, ledger, count) in enumerate(items)]
        if not self.acks.n:
            return await self.scripts.write_results(self.keys, batch_id, now=time.time(), lines=lines)

        async def queue(pipe: Pipeline, _again: bool) -> None:
            await self.scripts.write_results(self.keys, batch_id, now=time.time(), lines=lines, pipe=pipe)
        return int((await self.acked_write(queue))[0])

    async def acked_write(self, queue: Callable[[Pipeline, bool], Awaitable[None]]) -> list[Any]:
        """Run what `queue(pipe, again)` puts on a pipeline (script calls go by sha: no SCRIPT EXISTS
        round trip), with the WAIT of `[redis] min_replicas_ack`, in one round trip; its replies. When
        Redis lost its scripts (a restart), they are loaded and `queue` is called again with `again`
        True: the commands besides the scripts already ran once, and it must queue only the scripts."""
        for again in (False, True):
            async with self.redis.pipeline(transaction=False) as pipe:
                await queue(pipe, again)
                try:
                    return await self.acks.execute(pipe)
                except NoScriptError:
                    if again:
                        raise
            await self.scripts.load_all()
        raise AssertionError("unreachable")

    async def ledger(self, batch_id: str) -> dict[bytes, bytes]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.ledger(batch_id))  # type: ignore[misc]
        return raw

    async def info(self, batch_id: str) -> BatchInfo:
        """BatchNotFound for an unknown id, or one of another shape (ids.py; no key is read for it)."""
        checked_batch_id(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.meta(batch_id))
            pipe.scard(self.keys.pending(batch_id))
            raw, pending = await pipe.execute()
        if not raw:
            raise BatchNotFound(batch_id)
        return _info(batch_id, raw, pending)

    async def batch_ids(self, limit: int, *, after: str | None = None) -> list[str]:
        """Up to `limit` batch ids, newest first; with `after`, those older than that batch (all of
        them when it is unknown)."""
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(self.keys.batches, after)
            start = 0 if rank is None else rank + 1
        return [b.decode() for b in await self.redis.zrevrange(self.keys.batches, start, start + limit - 1)]

    async def list_batches(self, limit: int = 50) -> list[BatchInfo]:
        ids = await self.batch_ids(limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in ids:
                pipe.hgetall(self.keys.meta(b))
                pipe.scard(self.keys.pending(b))
            raw = await pipe.execute()
        return [_info(b, raw[2 * i], raw[2 * i + 1]) for i, b in enumerate(ids) if raw[2 * i]]

    async def chunk_map(self, batch_id: str) -> dict[str, list[int]]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.chunks(batch_id))  # type: ignore[misc]
        return {k.decode(): chunk_lines(v) for k, v in raw.items()}

    async def iter_results(self, batch_id: str) -> AsyncIterator[tuple[bool, bytes]]:
        """Every stored result in input order, as (ok, JSON record)."""
        info = await self.info(batch_id)
        key = self.keys.results(batch_id)
        for start in range(1, info.max_line + 1, EXPORT_BLOCK):
            block = list(range(start, min(start + EXPORT_BLOCK, info.max_line + 1)))
            for raw in await self.redis.hmget(key, block):  # type: ignore[misc]
                if raw:
                    yield raw[:1] == OK, raw[1:]

    async def delete_batch(self, batch_id: str) -> None:
        fp, idem = await self.redis.hmget(self.keys.meta(batch_id), ["fingerprint", "idempotency"])  # type: ignore[misc]
        for key in ([self.keys.fingerprint(fp.decode())] if fp else []) + ([self.keys.idempotency(idem.decode())]
                                                                          if idem else []):
            if await self.redis.get(key) == batch_id.encode():  # a later batch may have taken it over
                await self.redis.delete(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self.keys.batch_keys(batch_id))
            pipe.zrem(self.keys.batches, batch_id)
            pipe.zrem(self.keys.webhooks, batch_id)
            await pipe.execute()


def _result(line: int, record: bytes, ok: bool, ledger: dict[str, int] | None, count: str | None) -> dict[str, Any]:
    """`Scripts.write_result`'s arguments for a line's record: b"1" or b"0" in front, the count it adds to."""
    return {"line": line, "record": (OK if ok else ERR) + record, "count": count or ("succeeded" if ok else "failed"),
            "now": time.time(), "ledger": ledger or {}}
