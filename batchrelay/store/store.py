"""The batch record in Redis: meta, request lines, pending set, results.

Redis is the record and arq only the transport: a line is finished exactly when its result is in
the results hash, and writing a result is one Lua step (result + pending + counts + status), so a
rerun of a finished line changes nothing. Stored results start with one byte, b"1" for a success
and b"0" for an error record, so exports need not parse them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from batchrelay.errors import BatchNotFound
from batchrelay.money.pricing import pico
from batchrelay.spec import BatchSpec
from batchrelay.store.keys import Keys
from batchrelay.wire.jobs import JobLine

OK, ERR = b"1", b"0"
EXPORT_BLOCK = 2000

# KEYS: results, pending, meta, attempts, ledger. ARGV: line, record, count field, now, then ledger
# field/increment pairs (integers as strings: Redis adds them as 64-bit integers, never as floats).
# The last line of a batch ends it: completed, or cancelled / expired when it was being stopped.
_WRITE_RESULT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[5], ARGV[i], ARGV[i + 1]) end
if redis.call('SCARD', KEYS[2]) == 0 then
  local status = redis.call('HGET', KEYS[3], 'status')
  local final = nil
  if status == 'in_progress' or status == 'budget_exhausted' then final = 'completed'
  elseif status == 'cancelling' then final = 'cancelled'
  elseif status == 'expiring' then final = 'expired' end
  if final then redis.call('HSET', KEYS[3], 'status', final, 'finished_at', ARGV[4]) end
end
return 1
"""

# KEYS: pending, meta. ARGV: now, start_at ('' = at once), then field/value pairs of final counts.
# A deferred batch becomes `scheduled` (no chunk is enqueued for it until lifecycle.tick starts it).
_FINISH_SUBMIT = """
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if redis.call('HGET', KEYS[2], 'status') ~= 'validating' then return 0 end  -- cancelled while submitting
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], 'status', 'completed', 'finished_at', ARGV[1])
elseif ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], 'status', 'scheduled', 'start_at', ARGV[2])
else
  redis.call('HSET', KEYS[2], 'status', 'in_progress')
end
return 1
"""

# KEYS: meta. ARGV: now. A scheduled batch that is due becomes in_progress; 1 for the one caller that
# moved it (it enqueues the chunks), 0 for everyone else.
_START_DUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'scheduled' then return 0 end
local start_at = tonumber(redis.call('HGET', KEYS[1], 'start_at') or '0')
if start_at > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'started_at', ARGV[1])
return 1
"""

COUNT_FIELDS = ("total", "invalid", "succeeded", "failed", "cancelled", "expired", "max_line", "chunks")
FINISHED = ("completed", "failed", "cancelled", "expired")
# claims take nothing from these: not started yet, stopped, being stopped, or over budget
STOPPED = (b"scheduled", b"failed", b"cancelled", b"cancelling", b"expired", b"expiring", b"budget_exhausted")


@dataclass(frozen=True, slots=True)
class Claim:
    jobs: list[JobLine]
    first_tried: dict[int, float]
    allow: list[str] | None  # the batch's provider allow-list, if it has one
    earlier: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # attempts before a deferral
    budgeted: bool = False  # the batch has a spending limit: every call takes a reservation first


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
        rate = self.rate(now)
        return None if self.finished or rate <= 0 else self.pending / rate

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


def _result_args(line: int, record: bytes, ok: bool, ledger: dict[str, int] | None, count: str | None) -> list[Any]:
    """_WRITE_RESULT's ARGV: the line, its record, the count it adds to, now, then ledger field/amount pairs."""
    args: list[Any] = [line, (OK if ok else ERR) + record, count or ("succeeded" if ok else "failed"), time.time()]
    for f, n in (ledger or {}).items():
        args += [f, str(n)]
    return args


class Store:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._write_result = redis.register_script(_WRITE_RESULT)
        self._finish_submit = redis.register_script(_FINISH_SUBMIT)
        self._start_due = redis.register_script(_START_DUE)

    async def create_batch(self, batch_id: str, spec: BatchSpec, *, source: str, queue: str | None = None) -> None:
        """The batch's record, with its options (`spec`; named after `source` unless it has a name).
        A deferred batch's (`start_at`) completion window runs from its start. `queue`: the arq queue
        its chunks go on (default: the shared one)."""
        now = time.time()
        extra: dict[str, Any] = {"providers": ",".join(spec.providers)} if spec.providers else {}
        extra["queue"] = queue or self.keys.queue
        if spec.completion_window is not None:
            extra["expires_at"] = max(now, spec.start_at or now) + spec.completion_window
            extra["completion_window_s"] = spec.completion_window
        async with self.redis.pipeline(transaction=True) as pipe:
            if spec.max_cost is not None:
                extra["max_cost"] = pico(spec.max_cost)
                pipe.hset(self.keys.budget(batch_id), "max", str(pico(spec.max_cost)))
            pipe.hset(self.keys.meta(batch_id), mapping={
                "id": batch_id, "name": spec.name or source, "source": source, "status": "validating",
                "created_at": now, **{f: 0 for f in COUNT_FIELDS}, **extra,
            })
            pipe.zadd(self.keys.batches, {batch_id: now})
            if spec.webhook:
                pipe.hset(self.keys.meta(batch_id), mapping={"webhook": spec.webhook, "webhook_status": "pending"})
                pipe.zadd(self.keys.webhooks, {batch_id: 0})
            await pipe.execute()

    async def add_lines(
        self, batch_id: str, jobs: Sequence[JobLine], bad: Sequence[tuple[int, bytes]],
        chunks: Sequence[tuple[str, list[int]]],
    ) -> None:
        """One round trip for a block of parsed lines: requests, pending set, input errors, chunk map."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            if jobs:
                pipe.hset(k.lines(batch_id), mapping={j.line: j.to_json() for j in jobs})
                pipe.sadd(k.pending(batch_id), *[j.line for j in jobs])
            if bad:
                pipe.hset(k.results(batch_id), mapping={line: ERR + rec for line, rec in bad})
            if chunks:
                pipe.hset(k.chunks(batch_id), mapping={cid: ",".join(map(str, ls)) for cid, ls in chunks})
            await pipe.execute()

    async def finish_submit(self, batch_id: str, counts: dict[str, int | str], start_at: float | None = None) -> str:
        """End the submit: `in_progress` (or `scheduled` until `start_at`); returns the status it set
        ('' when the batch was stopped meanwhile)."""
        args: list[Any] = [time.time(), "" if start_at is None else repr(start_at)]
        for f, v in counts.items():
            args += [f, v]
        await self._finish_submit(keys=[self.keys.pending(batch_id), self.keys.meta(batch_id)], args=args)
        status = await self.redis.hget(self.keys.meta(batch_id), "status")  # type: ignore[misc]
        return status.decode() if status else ""

    async def start_due(self, batch_id: str, now: float) -> bool:
        """Move a due `scheduled` batch to `in_progress`; True for the one caller that did."""
        return bool(await self._start_due(keys=[self.keys.meta(batch_id)], args=[repr(now)]))

    async def mark_failed(self, batch_id: str, reason: str) -> None:
        await self.redis.hset(self.keys.meta(batch_id), mapping={  # type: ignore[misc]
            "status": "failed", "finished_at": time.time(), "error": reason[:500]})

    async def claim(self, batch_id: str, lines: Sequence[int]) -> Claim:
        """The lines of `lines` that still need work, with their requests and first-try times."""
        if not lines:
            return Claim([], {}, None)
        k, now = self.keys, time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smismember(k.pending(batch_id), list(lines))
            pipe.hmget(k.lines(batch_id), list(lines))
            pipe.hmget(k.first_try(batch_id), list(lines))
            pipe.hmget(k.meta(batch_id), ["providers", "status", "max_cost"])
            pipe.hmget(k.attempts(batch_id), list(lines))
            flags, raws, firsts, (allow, status, max_cost), tried = await pipe.execute()
        if status in STOPPED:
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
        if fresh:
            await self.redis.hset(k.first_try(batch_id), mapping=fresh)  # type: ignore[misc]
        return Claim(jobs, first_tried, allow.decode().split(",") if allow else None, earlier, max_cost is not None)

    async def save_attempts(self, batch_id: str, line: int, attempts: list[dict[str, Any]]) -> None:
        """A deferred line keeps its attempts, so its result can list every one of them."""
        await self.redis.hset(self.keys.attempts(batch_id), str(line), orjson.dumps(attempts).decode())  # type: ignore[misc]

    async def write_result(self, batch_id: str, line: int, record: bytes, ok: bool,
                           ledger: dict[str, int] | None = None, count: str | None = None) -> bool:
        """Record a line's final result and add its calls to the ledger, once; False when it already
        had one (a harmless rerun, which counts nothing). `count`: the count it adds to (default
        succeeded or failed; `cancelled` and `expired` for lines a stopped batch never ran)."""
        written = await self._write_result(keys=self._result_keys(batch_id),
                                           args=_result_args(line, record, ok, ledger, count))
        return bool(written)

    async def write_results(self, batch_id: str, items: Sequence[tuple[int, bytes, bool, dict[str, int], str | None]]
                            ) -> int:
        """Many `write_result`s in one round trip: (line, record, ok, ledger, count); how many were new."""
        if not items:
            return 0
        keys = self._result_keys(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for line, record, ok, ledger, count in items:
                await self._write_result(keys=keys, args=_result_args(line, record, ok, ledger, count), client=pipe)
            written = await pipe.execute()
        return sum(1 for w in written if w)

    def _result_keys(self, batch_id: str) -> list[str]:
        k = self.keys
        return [k.results(batch_id), k.pending(batch_id), k.meta(batch_id), k.attempts(batch_id), k.ledger(batch_id)]

    async def ledger(self, batch_id: str) -> dict[bytes, bytes]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.ledger(batch_id))  # type: ignore[misc]
        return raw

    async def info(self, batch_id: str) -> BatchInfo:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.meta(batch_id))
            pipe.scard(self.keys.pending(batch_id))
            raw, pending = await pipe.execute()
        if not raw:
            raise BatchNotFound(batch_id)
        return _info(batch_id, raw, pending)

    async def list_batches(self, limit: int = 50) -> list[BatchInfo]:
        ids = [b.decode() for b in await self.redis.zrevrange(self.keys.batches, 0, limit - 1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in ids:
                pipe.hgetall(self.keys.meta(b))
                pipe.scard(self.keys.pending(b))
            raw = await pipe.execute()
        return [_info(b, raw[2 * i], raw[2 * i + 1]) for i, b in enumerate(ids) if raw[2 * i]]

    async def chunk_map(self, batch_id: str) -> dict[str, list[int]]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.chunks(batch_id))  # type: ignore[misc]
        return {k.decode(): [int(x) for x in v.split(b",")] for k, v in raw.items()}

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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self.keys.batch_keys(batch_id))
            pipe.zrem(self.keys.batches, batch_id)
            pipe.zrem(self.keys.webhooks, batch_id)
            await pipe.execute()

