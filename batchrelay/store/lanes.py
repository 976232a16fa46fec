"""Lanes in Redis: the parcels of lines handed to an official Batch API (config/lanes.py says what a
lane is; worker/lanes.py drives a parcel through its states with the upstream's client).

A parcel is the lines of ONE batch gathered for ONE upstream batch, `{batch}-p{n}`. Its record is
the hash `Keys.lane_parcel` (the fields of `ParcelView`), its lines `Keys.lane_parcel_lines`
(custom_id -> line), and `Keys.lane_parcels` is the to-do list (pid -> when its next step is due).
A line a parcel holds is in `Keys.lane_held` (line -> pid) and in no chunk of the chunk map.

States: gathering -> sealed -> uploaded -> creating -> created -> (cancelling ->) ended -> collected,
and `failed` (its lines released). Each change that must be atomic is one Lua script (lua/lane_*.lua):
- take: lines still pending, not held and still in their chunk's map entry become held and leave the
  entry in the same step, so the sweeper and a reclaim never run them too; a crash before it changes
  nothing (the chunk runs them), one after it leaves them with the parcel.
- record: a parcel gets at most one upstream id, ever; the lane's recorded ids are kept apart, so a
  create cut off by a crash is looked for among the upstream batches not recorded.
- write_results: the same exactly-once write as `Store.write_results` (a line answered twice counts
  once, whoever answers first), the line no longer held and its budget reservation (token
  `lane:{pid}:{line}`) settled at the lane's cost, all in one script.
- release: the lines the parcel still holds are let go, their reservations settled at 0, and become
  a chunk in the chunk map before its job is enqueued (an enqueue cut off is put back by the
  sweeper); without requeue (the batch is stopping) nothing is enqueued and lifecycle.advance stops
  them next.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay.money.ledger import SEP
from batchrelay.store.queue import enqueue_chunks
from batchrelay.store.store import ERR, OK, Claim, Store
from batchrelay.store.sweeper import batch_queue

ABANDONED = "lane_abandoned"
STATES = ("gathering", "sealed", "uploaded", "creating", "created", "cancelling", "ended", "collected", "failed")


@dataclass(frozen=True)
class ParcelView:
    """A parcel's record as it is now (times are unix seconds)."""

    pid: str
    lane: str
    batch: str
    state: str
    n: int  # lines
    bytes: int  # request bytes of its lines
    deadline: float  # its batch's deadline (meta expires_at)
    must_end_by: float  # deadline - the lane's margin: not ended by then, it is cancelled
    first_at: float  # its first line was taken
    sealed_at: float | None
    file_id: str | None
    creating_at: float | None
    upstream_id: str | None
    upstream_status: str | None
    polls: int
    next_poll_s: float
    ended_at: float | None
    collected: int  # lines collected so far
    error: str | None = None  # what the upstream last said when a call failed (no secret: lane_client redacts)
    error_status: int | None = None  # its HTTP status (None: it was not reached)


def abandoned_field(lane: str | None) -> str:
    """The fleet counter (`Keys.fleet_counts`) of a lane's lines given back while their upstream batch
    had not ended (a cancel it did not finish in time, or an upstream unreachable): they may be paid
    twice. '' for none."""
    return f"{ABANDONED}{SEP}{lane}" if lane else ""


def batch_of(pid: str) -> str:
    """The batch a parcel id belongs to (`{batch}-p{n}`; batch ids have no '-p')."""
    return pid.rpartition("-p")[0]


def _view(pid: str, raw: Mapping[bytes, bytes]) -> ParcelView:
    m = {k.decode(): v.decode() for k, v in raw.items()}

    def num(name: str) -> float:
        return float(m.get(name) or 0)

    def when(name: str) -> float | None:
        return float(m[name]) if m.get(name) else None

    return ParcelView(
        pid=pid, lane=m.get("lane", ""), batch=m.get("batch") or batch_of(pid), state=m.get("state", ""),
        n=int(num("n")), bytes=int(num("bytes")), deadline=num("deadline"), must_end_by=num("must_end_by"),
        first_at=num("first_at"), sealed_at=when("sealed_at"), file_id=m.get("file_id") or None,
        creating_at=when("creating_at"), upstream_id=m.get("upstream_id") or None,
        upstream_status=m.get("upstream_status") or None, polls=int(num("polls")), next_poll_s=num("next_poll_s"),
        ended_at=when("ended_at"), collected=int(num("collected")), error=m.get("error") or None,
        error_status=int(num("error_status")) or None)


def _ms(t: float) -> int:
    return int(t * 1000)


class LaneStore:
    """The lanes' parcels in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def take(self, lane: str, batch_id: str, job_id: str, lines: list[tuple[int, str, int]], *,
                   deadline: float, must_end_by: float, max_lines: int, max_bytes: int, gather_s: float,
                   now: float) -> list[int]:
        """Hand lines (line, custom_id, request bytes) of chunk `job_id` to the lane's gathering parcel
        of the batch, in one step (lua/lane_take.lua): those still pending, not held and in the chunk's
        map entry become held and leave the entry; a parcel full at max_lines / max_bytes is sealed
        (due now) and the next one opened; a new parcel is due at first_at + gather_s. The lines taken."""
        if not lines:
            return []
        s = self.store
        return await s.scripts.lane_take(s.keys, batch_id, lane=lane, job=job_id, now=now, deadline=deadline,
                                         must_end_by=must_end_by, max_lines=max_lines, max_bytes=max_bytes,
                                         gather_s=gather_s, lines=lines)

    async def due(self, now: float, limit: int = 50, *, queue: str | None = None) -> list[str]:
        """Parcels whose next step is due, most overdue first (of the batches on `queue` only, when given)."""
        raw = await self.store.redis.zrangebyscore(self.store.keys.lane_parcels, "-inf", _ms(now), start=0,
                                                   num=limit if queue is None else limit * 20)
        return (await self._on_queue([p.decode() for p in raw], queue))[:limit]

    async def _on_queue(self, pids: list[str], queue: str | None) -> list[str]:
        """The parcels of `pids` whose batch is on `queue` (all of them when it is None)."""
        if queue is None or not pids:
            return pids
        batches = sorted({batch_of(p) for p in pids})
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for b in batches:
                pipe.hget(self.store.keys.meta(b), "queue")
            raw = await pipe.execute()
        default = self.store.keys.queue
        ours = {b for b, q in zip(batches, raw, strict=True) if (q.decode() if q else default) == queue}
        return [p for p in pids if batch_of(p) in ours]

    async def lease(self, pid: str, holder: str, ttl_s: float) -> bool:
        """Take the parcel's lease (or renew it when `holder` has it); False: another worker works it."""
        return await self.store.scripts.lane_lease(self.store.keys.lane_lease(pid), holder=holder,
                                                   ttl_ms=max(1, _ms(ttl_s)))

    async def unlease(self, pid: str, holder: str) -> None:
        await self.store.scripts.lane_lease(self.store.keys.lane_lease(pid), holder=holder, ttl_ms=0)

    async def create_lease(self, lane: str, holder: str, ttl_s: float) -> bool:
        """One create in flight per lane (a lost create is then told apart from the others: LANE_PLAN §3);
        ttl_s <= 0 gives it up."""
        return await self.store.scripts.lane_lease(self.store.keys.lane_creating(lane), holder=holder,
                                                   ttl_ms=max(0, _ms(ttl_s)))

    async def parcel(self, pid: str) -> ParcelView | None:
        raw: dict[bytes, bytes] = await self.store.redis.hgetall(self.store.keys.lane_parcel(pid))  # type: ignore[misc]
        return _view(pid, raw) if raw else None

    async def parcel_lines(self, pid: str) -> dict[str, int]:
        """custom_id -> line, of every line the parcel ever took."""
        raw: dict[bytes, bytes] = await self.store.redis.hgetall(self.store.keys.lane_parcel_lines(pid))  # type: ignore[misc]
        return {k.decode(): int(v) for k, v in raw.items()}

    async def advance(self, pid: str, expect: str, state: str, **fields: str | float | int) -> bool:
        """Move the parcel from `expect` to `state` with `fields`; False when it was not in `expect`
        (another worker moved it on) or is gone."""
        return await self.store.scripts.lane_set(self.store.keys, pid, batch_of(pid), expect=expect, state=state,
                                                 fields=fields)

    async def save(self, pid: str, **fields: str | float | int) -> None:
        """Note fields (polls, upstream status, ...) without a change of state (nothing on a parcel gone)."""
        if fields:
            await self.store.scripts.lane_set(self.store.keys, pid, batch_of(pid), fields=fields)

    async def schedule(self, pid: str, due_at: float) -> None:
        """The parcel's next step is due at `due_at` (a collected parcel stays off the to-do list)."""
        await self.store.redis.zadd(self.store.keys.lane_parcels, {pid: _ms(due_at)}, xx=True)

    async def record(self, pid: str, upstream_id: str, *, due_at: float) -> bool:
        """creating -> created with the upstream batch's id, only while the parcel has none (False
        otherwise: a parcel has at most one upstream batch, ever); due at `due_at`."""
        s = self.store
        lane = await s.redis.hget(s.keys.lane_parcel(pid), "lane")  # type: ignore[misc]
        if lane is None:
            return False
        return await s.scripts.lane_record(s.keys, pid, lane=lane.decode(), upstream_id=upstream_id,
                                           due_ms=_ms(due_at))

    async def creating(self, lane: str) -> dict[str, float]:
        """The lane's parcels marked `creating` (pid -> when): a create in flight, or one a crash or a
        failed call cut off (not found upstream yet)."""
        r, k = self.store.redis, self.store.keys
        pids = [p.decode() for p in await r.zrange(k.lane_parcels, 0, -1)]
        async with r.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.hmget(k.lane_parcel(pid), ["lane", "state", "creating_at"])
            got = await pipe.execute()
        return {pid: float(at or 0) for pid, (ln, state, at) in zip(pids, got, strict=True)
                if ln is not None and ln.decode() == lane and state == b"creating"}

    async def recorded(self, lane: str) -> set[str]:
        """The upstream batch ids recorded for the lane's parcels."""
        raw: set[bytes] = await self.store.redis.smembers(self.store.keys.lane_recorded(lane))  # type: ignore[misc]
        return {r.decode() for r in raw}

    async def write_results(self, batch_id: str, pid: str,
                            items: list[tuple[int, bytes, bool, dict[str, int], str | None]],
                            tallies: list[dict[str, int]]) -> int:
        """`Store.write_results` of the parcel's lines (line, record, ok, ledger, count), with each
        line's tally in `tallies`, un-held and their reservations settled, in one script; how many
        were new."""
        if not items:
            return 0
        lines = [(line, (OK if ok else ERR) + record, count or ("succeeded" if ok else "failed"), ledger or {},
                  tallies[i] if tallies else {}) for i, (line, record, ok, ledger, count) in enumerate(items)]
        s = self.store
        if not s.acks.n:
            return await s.scripts.lane_write(s.keys, batch_id, pid, now=time.time(), lines=lines)

        async def queue(pipe: Any, _again: bool) -> None:
            await s.scripts.lane_write(s.keys, batch_id, pid, now=time.time(), lines=lines, pipe=pipe)
        return int((await s.acked_write(queue))[0])

    async def release(self, batch_id: str, pid: str, lines: list[int], attempts: dict[int, list[dict[str, Any]]],
                      *, now: float, requeue: bool, abandoned: str | None = None) -> str | None:
        """Let go of the `lines` the parcel still holds: their `attempts` saved, tried from `now` on,
        reservations settled at 0, and those still pending a chunk of the chunk map. `requeue`: that
        chunk is enqueued on the batch's queue (its id returned); else (the batch is stopping) nothing
        is queued and lifecycle.advance stops them (were the batch not stopping after all, the
        sweeper would find the chunk without a job and enqueue it: no line is left with no owner).
        `abandoned`: the lane whose upstream batch has not ended (it may still bill them): the lines
        let go of are counted in the fleet counter `abandoned_field(lane)` in the same step."""
        s = self.store
        job = f"{s.keys.prefix}{batch_id}:lane-{pid.rpartition('-')[2]}.f{time.time_ns() // 1_000_000}"
        back = await s.scripts.lane_release(
            s.keys, batch_id, pid, job=job, now=now if requeue else "", abandoned=abandoned_field(abandoned),
            lines=[(line, orjson.dumps(attempts[line]).decode() if line in attempts else "") for line in lines])
        if not requeue or not back:
            return None
        await enqueue_chunks(s.redis, await batch_queue(s, batch_id), batch_id, [(job, back)])
        return job

    async def finish(self, pid: str) -> None:
        """The parcel is collected: off the to-do list."""
        await self.store.scripts.lane_set(self.store.keys, pid, batch_of(pid), state="collected", done=True)

    async def held(self, batch_id: str, lines: Sequence[int] | None = None) -> dict[int, str]:
        """line -> the parcel holding it (of `lines` only, when given)."""
        key = self.store.keys.lane_held(batch_id)
        if lines is None:
            raw: dict[bytes, bytes] = await self.store.redis.hgetall(key)  # type: ignore[misc]
            return {int(k): v.decode() for k, v in raw.items()}
        if not lines:
            return {}
        pids = await self.store.redis.hmget(key, list(lines))  # type: ignore[misc]
        return {line: p.decode() for line, p in zip(lines, pids, strict=True) if p is not None}

    async def claim_lines(self, batch_id: str, lines: Sequence[int]) -> Claim:
        """`Store.claim` for a parcel's lines (upload, collect, release): those still pending, with
        their requests and earlier attempts, whatever the batch's status (`Store.claim` gives nothing
        of a stopping batch, whose parcels are still collected: an answer the upstream bills after a
        cancel is written like any other)."""
        return await self.store.claim(batch_id, lines, stopped_too=True)

    async def _pids(self, batch_id: str) -> list[str]:
        n = await self.store.redis.hget(self.store.keys.meta(batch_id), "lane_parcels")  # type: ignore[misc]
        return [f"{batch_id}-p{i}" for i in range(1, int(n or 0) + 1)]

    async def open_parcels(self, batch_id: str | None = None, *, queue: str | None = None) -> int:
        """Parcels not collected yet (of the batch, or of every batch; of the batches on `queue`
        only, when given: a burst worker waits for those of the batches it works, not for others')."""
        k = self.store.keys
        if batch_id is None:
            if queue is None:
                return int(await self.store.redis.zcard(k.lane_parcels))
            raw = await self.store.redis.zrange(k.lane_parcels, 0, -1)
            return len(await self._on_queue([p.decode() for p in raw], queue))
        pids = await self._pids(batch_id)
        if not pids:
            return 0
        return sum(s is not None for s in await self.store.redis.zmscore(k.lane_parcels, pids))

    async def forget(self, batch_id: str) -> None:
        """Remove the batch's parcels (before the batch itself is forgotten: their ids come from its meta)."""
        k = self.store.keys
        pids = await self._pids(batch_id)
        if not pids:
            return
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*[key for p in pids for key in (k.lane_parcel(p), k.lane_parcel_lines(p), k.lane_lease(p))])
            pipe.zrem(k.lane_parcels, *pids)
            await pipe.execute()
