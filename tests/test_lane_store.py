"""Lanes in Redis (store/lanes.py, lua/lane_*.lua) on a real redis-server: lines handed to a parcel
leave their chunk (the sweeper, a reclaim and a stop leave them to the lane), a parcel fills, seals,
is leased, moves on by compare-and-set and records one upstream batch, and its lines come back
either answered (once, with the ledger and the budget) or released (to a new chunk, or to a stop)."""

from __future__ import annotations

import io
import time
from decimal import Decimal as D
from typing import Any

import orjson
from arq.constants import job_key_prefix

from batchrelay.config.settings import HealthConfig
from batchrelay.money.ledger import SEP
from batchrelay.money.pricing import pico
from batchrelay.serve.metrics import families
from batchrelay.spec import BatchSpec
from batchrelay.store.budget import Budget
from batchrelay.store.fleet import read_fleet
from batchrelay.store.heartbeat import reclaim_lapsed
from batchrelay.store.lanes import LaneStore, ParcelView, abandoned_field
from batchrelay.store.lifecycle import advance, not_started, request_stop, tick
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.store.sweeper import requeue_pending

from .conftest import openai_line

LANE = "lane"
HOUR = 3600.0


async def _batch(store: Store, n: int, *, chunk: int = 10, **kw: Any) -> str:
    """A submitted batch of n lines in chunks of `chunk`, in progress, its deadline a day away."""
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    spec = BatchSpec(name="t", chunk_size=chunk, completion_window=24 * HOUR, **kw)
    return (await submit_stream(store, src, spec, source="t")).batch_id


def _job(store: Store, batch: str, i: int = 0) -> str:
    return f"{store.keys.prefix}{batch}:c{i}"


async def _take(lanes: LaneStore, batch: str, job: str, lines: range | list[int], *, size: int = 100,
                max_lines: int = 100, max_bytes: int = 10_000, gather_s: float = 60, now: float | None = None,
                lane: str = LANE) -> list[int]:
    now = time.time() if now is None else now
    return await lanes.take(lane, batch, job, [(n, f"{batch}-{n}", size) for n in lines], deadline=now + 24 * HOUR,
                            must_end_by=now + 23 * HOUR, max_lines=max_lines, max_bytes=max_bytes, gather_s=gather_s,
                            now=now)


async def _answer(lanes: LaneStore, batch: str, pid: str, lines: list[int], cost: int = 500) -> int:
    """The lane's answers for `lines`, each billed `cost` pico-dollars on the lane."""
    items = [(n, orjson.dumps({"line": n}), True, {f"{LANE}{SEP}m{SEP}requests": 1, f"{LANE}{SEP}m{SEP}cost": cost},
              None) for n in lines]
    return await lanes.write_results(batch, pid, items, [{} for _ in lines])


async def _map(store: Store, batch: str) -> dict[str, list[int]]:
    return await store.chunk_map(batch)


async def _ledger_cost(store: Store, batch: str) -> int:
    return sum(int(v) for k, v in (await store.ledger(batch)).items() if k.decode().endswith(f"{SEP}cost"))


# --- take -----------------------------------------------------------------------------------------------

async def test_lines_taken_leave_their_chunk_so_the_sweeper_and_a_reclaim_leave_them_to_the_lane(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 10)
    job = _job(store, batch)
    assert await _take(lanes, batch, job, range(1, 5)) == [1, 2, 3, 4]
    assert await _map(store, batch) == {job: [5, 6, 7, 8, 9, 10]}
    pid = f"{batch}-p1"
    assert await lanes.held(batch) == {n: pid for n in range(1, 5)}
    assert await lanes.held(batch, [1, 5]) == {1: pid}
    assert await lanes.parcel_lines(pid) == {f"{batch}-{n}": n for n in range(1, 5)}

    # its worker dies: the reclaim puts back only the lines the chunk still owns
    await store.redis.hset(store.keys.held, job, f"deadbeef {batch}")  # type: ignore[misc]
    assert await reclaim_lapsed(store) == 1
    ((_, reclaimed),) = (await _map(store, batch)).items()
    assert reclaimed == [5, 6, 7, 8, 9, 10]

    # the rest taken too: no entry is left, and the sweeper finds nothing to put back
    await store.redis.delete(store.keys.queue, *[job_key_prefix + j for j in await _map(store, batch)])
    assert await _take(lanes, batch, next(iter(await _map(store, batch))), range(5, 11)) == list(range(5, 11))
    assert await _map(store, batch) == {}
    assert await requeue_pending(store, batch) == 0
    assert await store.redis.zcard(store.keys.queue) == 0
    assert len(await lanes.held(batch)) == 10 and (await store.info(batch)).pending == 10


async def test_take_seals_a_full_parcel_at_max_lines_and_opens_the_next(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 5)
    now = time.time()
    assert await _take(lanes, batch, _job(store, batch), range(1, 6), max_lines=2, now=now) == [1, 2, 3, 4, 5]
    views = [await lanes.parcel(f"{batch}-p{i}") for i in (1, 2, 3)]
    assert [(v.state, v.n, v.bytes) for v in views if v] == [("sealed", 2, 200), ("sealed", 2, 200),
                                                             ("gathering", 1, 100)]
    assert views[0] is not None and views[0].sealed_at == now and views[2] is not None and views[2].sealed_at is None
    # sealed parcels are due now, the gathering one gather_s after its first line
    assert await lanes.due(now) == [f"{batch}-p1", f"{batch}-p2"]
    assert await lanes.due(now + 60) == [f"{batch}-p1", f"{batch}-p2", f"{batch}-p3"]
    assert await lanes.held(batch) == {1: f"{batch}-p1", 2: f"{batch}-p1", 3: f"{batch}-p2", 4: f"{batch}-p2",
                                       5: f"{batch}-p3"}


async def test_take_seals_at_max_bytes_adds_to_the_gathering_parcel_and_skips_a_line_too_large(
        store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 8)
    job = _job(store, batch)
    now = time.time()
    assert await _take(lanes, batch, job, [1, 2], size=400, max_bytes=1000, now=now) == [1, 2]
    # a later chunk's lines join the same gathering parcel until the next would pass max_bytes
    assert await _take(lanes, batch, job, [3, 4], size=400, max_bytes=1000, now=now) == [3, 4]
    assert await _take(lanes, batch, job, [5], size=1001, max_bytes=1000, now=now) == []  # never fits
    assert await _take(lanes, batch, job, [6], size=200, max_bytes=1000, now=now) == [6]
    p1, p2 = await lanes.parcel(f"{batch}-p1"), await lanes.parcel(f"{batch}-p2")
    assert p1 is not None and (p1.state, p1.n, p1.bytes) == ("sealed", 2, 800)
    assert p2 is not None and (p2.state, p2.n, p2.bytes) == ("sealed", 3, 1000)  # full: sealed at once
    assert p2.deadline == now + 24 * HOUR and p2.must_end_by == now + 23 * HOUR and p2.first_at == now
    assert await _map(store, batch) == {job: [5, 7, 8]}


async def test_take_of_a_line_held_answered_not_in_the_chunk_or_of_a_stopped_batch_takes_nothing(
        store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 20)
    job = _job(store, batch)
    await store.write_result(batch, 2, b"{}", True)
    assert await _take(lanes, batch, job, [1, 2]) == [1]
    assert await _take(lanes, batch, job, [1]) == []  # already held
    assert await _take(lanes, batch, job, [11]) == []  # chunk c1's line
    assert await _take(lanes, batch, "nope", [3]) == []  # no such chunk
    await request_stop(store, batch, Status.CANCELLED)
    assert await _take(lanes, batch, job, [3]) == []
    assert await lanes.held(batch) == {1: f"{batch}-p1"}
    assert (await _map(store, batch))[job] == list(range(2, 11))


async def test_claim_reads_the_batch_deadline_and_a_parcels_lines_are_read_while_the_batch_stops(
        store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 3)
    claim = await store.claim(batch, [1, 2])
    assert claim.deadline == (await store.info(batch)).expires_at and claim.deadline is not None
    await _take(lanes, batch, _job(store, batch), [1, 2, 3])
    await store.write_result(batch, 3, b"{}", True)
    await store.save_attempts(batch, 2, [{"provider": "sync", "status": 500}])
    await request_stop(store, batch, Status.CANCELLED)
    assert (await store.claim(batch, [1, 2])).jobs == []
    held = await lanes.claim_lines(batch, [1, 2, 3])
    assert [j.line for j in held.jobs] == [1, 2] and held.earlier == {2: [{"provider": "sync", "status": 500}]}
    assert held.deadline == claim.deadline


# --- the parcel's record ----------------------------------------------------------------------------------

async def test_due_lease_and_unlease(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 2)
    now = time.time()
    await _take(lanes, batch, _job(store, batch), [1, 2], gather_s=5, now=now)
    pid = f"{batch}-p1"
    assert await lanes.due(now) == [] and await lanes.due(now + 5) == [pid]
    await lanes.schedule(pid, now - 1)
    assert await lanes.due(now) == [pid]

    assert await lanes.lease(pid, "a", 30)
    assert not await lanes.lease(pid, "b", 30)
    assert await lanes.lease(pid, "a", 30)  # renewed
    await lanes.unlease(pid, "b")  # not b's to give up
    assert not await lanes.lease(pid, "b", 30)
    await lanes.unlease(pid, "a")
    assert await lanes.lease(pid, "b", 0.05)
    time.sleep(0.1)
    assert await lanes.lease(pid, "a", 30)  # b's lapsed

    assert await lanes.create_lease(LANE, "a", 30) and not await lanes.create_lease(LANE, "b", 30)
    assert await lanes.create_lease("other", "b", 30)


async def test_advance_is_a_compare_and_set_and_save_changes_no_state(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 4)
    job = _job(store, batch)
    await _take(lanes, batch, job, [1, 2])
    pid = f"{batch}-p1"
    assert await lanes.advance(pid, "gathering", "sealed", sealed_at=123.5)
    assert not await lanes.advance(pid, "gathering", "sealed", sealed_at=999)  # the other worker lost
    assert await lanes.advance(pid, "sealed", "uploaded", file_id="file-1")
    await lanes.save(pid, polls=3, next_poll_s=22.5, upstream_status="in_progress")
    view = await lanes.parcel(pid)
    assert view is not None
    assert (view.state, view.sealed_at, view.file_id, view.polls, view.next_poll_s, view.upstream_status) == (
        "uploaded", 123.5, "file-1", 3, 22.5, "in_progress")
    # a parcel that stopped gathering takes no more lines: the next ones open another
    assert await _take(lanes, batch, job, [3]) == [3]
    assert await lanes.held(batch, [3]) == {3: f"{batch}-p2"}
    assert await lanes.parcel("nope-p1") is None
    assert not await lanes.advance("nope-p1", "gathering", "sealed")
    await lanes.save("nope-p1", polls=1)
    assert not await store.redis.exists(store.keys.lane_parcel("nope-p1"))


async def test_record_keeps_the_first_upstream_id_and_the_lanes_recorded_ids(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 2)
    await _take(lanes, batch, _job(store, batch), [1, 2])
    pid = f"{batch}-p1"
    now = time.time()
    assert not await lanes.record(pid, "batch_up1", due_at=now)  # not creating yet
    assert await lanes.advance(pid, "gathering", "sealed") and await lanes.advance(pid, "sealed", "creating",
                                                                                  creating_at=now)
    assert await lanes.record(pid, "batch_up1", due_at=now + 15)
    assert not await lanes.record(pid, "batch_up2", due_at=now)
    assert await lanes.advance(pid, "created", "creating")  # even back in `creating`, it keeps its one id
    assert not await lanes.record(pid, "batch_up2", due_at=now)
    view = await lanes.parcel(pid)
    assert view is not None and view.upstream_id == "batch_up1"
    assert await lanes.recorded(LANE) == {"batch_up1"} and await lanes.recorded("other") == set()
    assert await lanes.due(now + 14) == [] and await lanes.due(now + 15) == [pid]


async def test_open_parcels_counts_those_not_collected(store: Store) -> None:
    lanes = LaneStore(store)
    a, b = await _batch(store, 4), await _batch(store, 2)
    await _take(lanes, a, _job(store, a), [1, 2, 3], max_lines=2)
    await _take(lanes, b, _job(store, b), [1])
    assert (await lanes.open_parcels(a), await lanes.open_parcels(b), await lanes.open_parcels()) == (2, 1, 3)
    await lanes.finish(f"{a}-p1")
    view = await lanes.parcel(f"{a}-p1")
    assert view is not None and view.state == "collected"
    assert (await lanes.open_parcels(a), await lanes.open_parcels()) == (1, 2)
    await lanes.schedule(f"{a}-p1", 0)  # a collected parcel is not put back on the to-do list
    assert await lanes.open_parcels(a) == 1 and f"{a}-p1" not in await lanes.due(time.time() + HOUR)


async def test_a_burst_worker_sees_only_the_parcels_of_the_batches_on_its_queue(store: Store) -> None:
    """A `run` works its batch on a queue of its own: it waits for, and moves on, that batch's parcels,
    not those of a batch on the shared queue (or another run's)."""
    lanes = LaneStore(store)
    shared, mine = await _batch(store, 4), await _batch(store, 2)
    run_queue = f"{store.keys.queue}:run:abc"
    await store.set_queue(mine, run_queue)
    now = time.time()
    await _take(lanes, shared, _job(store, shared), [1, 2, 3], max_lines=2, gather_s=0, now=now)
    await _take(lanes, mine, _job(store, mine), [1], gather_s=0, now=now)
    assert await lanes.open_parcels(queue=run_queue) == 1
    assert await lanes.open_parcels(queue=store.keys.queue) == 2  # a batch with no queue of its own is on it
    assert await lanes.open_parcels() == 3
    assert await lanes.due(now + 1, queue=run_queue) == [f"{mine}-p1"]
    assert sorted(await lanes.due(now + 1, queue=store.keys.queue)) == [f"{shared}-p1", f"{shared}-p2"]
    assert len(await lanes.due(now + 1)) == 3
    await lanes.finish(f"{mine}-p1")
    assert await lanes.open_parcels(queue=run_queue) == 0 and await lanes.due(now + 1, queue=run_queue) == []


async def test_lines_given_back_while_their_upstream_batch_runs_are_counted_for_the_metrics(store: Store) -> None:
    """A cancel the upstream did not finish in time: the lines the parcel still held are counted as
    abandoned (they may be paid twice) in the release's own step, and /metrics shows them per lane."""
    lanes = LaneStore(store)
    batch = await _batch(store, 4)
    await _take(lanes, batch, _job(store, batch), [1, 2, 3])
    pid = f"{batch}-p1"
    assert await _answer(lanes, batch, pid, [1]) == 1  # answered: no longer held, not given back
    await lanes.release(batch, pid, [1, 2, 3], {}, now=time.time(), requeue=True, abandoned=LANE)
    await lanes.release(batch, pid, [2, 3], {}, now=time.time(), requeue=True, abandoned=LANE)  # none held now
    fleet = await read_fleet(store, [], HealthConfig())
    assert fleet.counts[abandoned_field(LANE)] == 2
    (family,) = [f for f in families(fleet) if f.name == "batchrelay_lane_lines_abandoned"]
    assert [(s.labels, s.value) for s in family.samples] == [({"provider": LANE}, 2)]
    other = await _batch(store, 2)  # an ordinary give-back (nothing upstream yet) counts nothing
    await _take(lanes, other, _job(store, other), [1, 2])
    await lanes.release(other, f"{other}-p1", [1, 2], {}, now=time.time(), requeue=True)
    assert (await read_fleet(store, [], HealthConfig())).counts[abandoned_field(LANE)] == 2


async def test_a_line_a_worker_found_stopped_before_calling_it_does_not_wait_out_the_grace(store: Store) -> None:
    """The upstream side of a lane's cancel: lines claimed by a chunk (first try noted) wait out the
    grace, as a call of theirs may be in flight; one a worker found stopped before its call is stopped
    at once, so the cancelled upstream batch ends within seconds."""
    batch = await _batch(store, 3)
    await store.note_first_try(batch, {1: time.time(), 2: time.time(), 3: time.time()})
    await not_started(store, batch, 3)  # still in progress: nothing changes
    await request_stop(store, batch, Status.CANCELLED)
    await not_started(store, batch, 2)
    assert await advance(store, batch, grace_s=HOUR) == 1
    info = await store.info(batch)
    assert (info.status, info.cancelled, info.pending) == ("cancelling", 1, 2)
    assert await advance(store, batch, grace_s=0) == 2
    assert (await store.info(batch)).status == "cancelled"


# --- answers -------------------------------------------------------------------------------------------

async def test_write_results_counts_each_line_once_and_settles_its_reservation(store: Store) -> None:
    lanes, budget = LaneStore(store), Budget(store)
    batch = await _batch(store, 3, max_cost=D("1"))
    await _take(lanes, batch, _job(store, batch), [1, 2, 3])
    pid = f"{batch}-p1"
    for n in (1, 2, 3):
        assert await budget.reserve(batch, D("0.001"), token=f"lane:{pid}:{n}", lease_s=10 * HOUR)
    assert await budget.reserve(batch, D("0.001"), token=f"lane:{pid}:1", lease_s=10 * HOUR)  # kept, not doubled
    assert (await budget.info(batch)).reserved_usd == D("0.003")
    lease = await store.redis.zscore(store.keys.budget_leases(batch), f"lane:{pid}:1")
    assert lease is not None and lease > (time.time() + 9 * HOUR) * 1000

    assert await _answer(lanes, batch, pid, [1, 2], cost=pico(D("0.0004"))) == 2
    assert await _answer(lanes, batch, pid, [1, 2], cost=pico(D("0.0004"))) == 0  # a collect rerun counts nothing
    info = await budget.info(batch)
    assert (info.reserved_usd, info.spent_usd) == (D("0.001"), D("0.0008"))
    assert await lanes.held(batch) == {3: pid}

    assert await _answer(lanes, batch, pid, [3], cost=pico(D("0.0004"))) == 1
    info = await budget.info(batch)
    assert (info.reserved_usd, info.spent_usd) == (0, D("0.0012"))
    assert pico(info.spent_usd) == await _ledger_cost(store, batch)
    batch_info = await store.info(batch)
    assert (batch_info.status, batch_info.succeeded, batch_info.pending) == ("completed", 3, 0)
    assert await lanes.held(batch) == {}


async def test_a_line_released_then_answered_late_by_the_lane_counts_once_whoever_is_first(store: Store) -> None:
    lanes, budget = LaneStore(store), Budget(store)
    batch = await _batch(store, 2, max_cost=D("1"))
    await _take(lanes, batch, _job(store, batch), [1, 2])
    pid = f"{batch}-p1"
    for n in (1, 2):
        await budget.reserve(batch, D("0.001"), token=f"lane:{pid}:{n}", lease_s=HOUR)
    assert await lanes.release(batch, pid, [1, 2], {}, now=time.time(), requeue=True)
    assert (await budget.info(batch)).reserved_usd == 0
    # line 1: the synchronous provider answers first, the lane's late answer counts nothing
    await store.write_result(batch, 1, b"{}", True, {f"sync{SEP}m{SEP}cost": 700})
    # line 2: the lane's late answer is first, and its cost reaches the budget although it was released
    assert await _answer(lanes, batch, pid, [1, 2], cost=500) == 1
    assert await store.write_result(batch, 2, b"{}", True, {f"sync{SEP}m{SEP}cost": 700}) is False
    assert await _ledger_cost(store, batch) == 1200
    assert pico((await budget.info(batch)).spent_usd) == 500  # the sync write above had no reservation of its own
    assert (await store.info(batch)).status == "completed"


# --- release ---------------------------------------------------------------------------------------------

async def test_release_with_requeue_makes_a_chunk_and_job_the_sweeper_would_also_find(store: Store) -> None:
    lanes, budget = LaneStore(store), Budget(store)
    batch = await _batch(store, 4, max_cost=D("1"))
    job = _job(store, batch)
    await _take(lanes, batch, job, [1, 2, 3, 4])
    pid = f"{batch}-p1"
    await budget.reserve(batch, D("0.001"), token=f"lane:{pid}:2", lease_s=HOUR)
    await _answer(lanes, batch, pid, [4])
    attempt = {"provider": LANE, "status": None, "error": "upstream expired", "upstream_batch": "batch_up"}
    now = time.time()
    new = await lanes.release(batch, pid, [1, 2, 4], {2: [attempt]}, now=now, requeue=True)
    assert new is not None and new.startswith(f"{store.keys.prefix}{batch}:lane-p1.f")
    assert await _map(store, batch) == {new: [1, 2]}  # line 4 was answered, 3 stays with the parcel
    assert await lanes.held(batch) == {3: pid}
    assert await store.redis.zscore(store.keys.queue, new) is not None
    assert await store.redis.exists(job_key_prefix + new)
    assert (await budget.info(batch)).reserved_usd == 0
    claim = await store.claim(batch, [1, 2])
    assert claim.earlier == {2: [attempt]} and claim.first_tried == {1: now, 2: now}

    # the enqueue cut off: the sweeper puts the chunk back
    await store.redis.delete(job_key_prefix + new)
    await store.redis.zrem(store.keys.queue, new)
    assert await requeue_pending(store, batch) == 1
    assert await store.redis.zscore(store.keys.queue, new) is not None
    # lines it no longer holds are not released twice
    assert await lanes.release(batch, pid, [1, 2], {}, now=now, requeue=True) is None
    assert await lanes.release(batch, "other-p9", [3], {}, now=now, requeue=True) is None
    assert await lanes.held(batch) == {3: pid}


async def test_a_stop_skips_held_lines_until_a_release_without_requeue_then_stops_them(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 4)
    await _take(lanes, batch, _job(store, batch), [1, 2, 3])
    pid = f"{batch}-p1"
    await request_stop(store, batch, Status.CANCELLED)
    assert await advance(store, batch, grace_s=0) == 1  # line 4 only: 1-3 are the lane's
    assert (await store.info(batch)).status == "cancelling"
    await _answer(lanes, batch, pid, [1])  # the upstream answered one before its cancel
    attempt = {"provider": LANE, "status": None, "error": "upstream cancelled", "upstream_batch": "batch_up"}
    assert await lanes.release(batch, pid, [2, 3], {2: [attempt]}, now=time.time(), requeue=False) is None
    ((c0, four), (new, lines)) = sorted((await _map(store, batch)).items())
    assert (c0, four, lines) == (_job(store, batch), [4], [2, 3])
    assert await store.redis.zscore(store.keys.queue, new) is None  # a chunk, but no job: claims skip it anyway
    assert await requeue_pending(store, batch) == 1 and (await store.claim(batch, [2, 3])).jobs == []
    assert await store.redis.hmget(store.keys.first_try(batch), ["2", "3"]) == [None, None]  # type: ignore[misc]
    assert await advance(store, batch, grace_s=3600) == 2  # no call of theirs is in flight: no grace to wait out
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.cancelled) == ("cancelled", 1, 3)
    raw = await store.redis.hget(store.keys.results(batch), "2")  # type: ignore[misc]
    record = orjson.loads(raw[1:])["batchrelay"]
    assert record["attempts"][0]["upstream_batch"] == "batch_up" and record["error"] == "cancelled"


async def test_an_expiring_batch_waits_for_its_lanes_lines(store: Store) -> None:
    lanes = LaneStore(store)
    batch = await _batch(store, 2)
    await _take(lanes, batch, _job(store, batch), [1])
    await store.set_fields(batch, {"expires_at": str(time.time() - 1)})
    done = await tick(store, grace_s=0, retention_s=None)
    assert done["expired"] == 1 and done["stopped_lines"] == 1
    info = await store.info(batch)
    assert (info.status, info.pending) == ("expiring", 1)
    await lanes.release(batch, f"{batch}-p1", [1], {}, now=time.time(), requeue=False)
    await tick(store, grace_s=0, retention_s=None)
    info = await store.info(batch)
    assert (info.status, info.expired) == ("expired", 2)


# --- forgetting ------------------------------------------------------------------------------------------

async def test_a_forgotten_batch_leaves_no_lane_keys(store: Store) -> None:
    lanes = LaneStore(store)
    batch, other = await _batch(store, 3), await _batch(store, 1)
    await _take(lanes, batch, _job(store, batch), [1, 2, 3], max_lines=2)
    await _take(lanes, other, _job(store, other), [1])
    pid = f"{batch}-p1"
    await lanes.lease(pid, "w", 60)
    await _answer(lanes, batch, pid, [1, 2])
    await _answer(lanes, batch, f"{batch}-p2", [3])
    await lanes.finish(pid)
    assert (await store.info(batch)).status == "completed"
    assert store.keys.lane_held(batch) in store.keys.batch_keys(batch)
    assert store.keys.lane_gather(batch) in store.keys.batch_keys(batch)

    await tick(store, grace_s=0, retention_s=0, now=time.time() + 1)
    left = [k.decode() async for k in store.redis.scan_iter(match=f"{store.keys.prefix}*")]
    assert not [k for k in left if batch in k], left
    assert await lanes.due(time.time() + HOUR) == [f"{other}-p1"]  # the other batch's parcel stays
    assert await lanes.held(other) == {1: f"{other}-p1"}


def test_parcel_view_has_the_frozen_fields() -> None:
    assert list(ParcelView.__dataclass_fields__) == [
        "pid", "lane", "batch", "state", "n", "bytes", "deadline", "must_end_by", "first_at", "sealed_at", "file_id",
        "creating_at", "upstream_id", "upstream_status", "polls", "next_poll_s", "ended_at", "collected", "error",
        "error_status"]
