"""A batch's life after submit (store/lifecycle.py) on a real redis-server: cancel and expiry in two
phases, the sweep's housekeeping (start, expire, fail abandoned submits, forget), and retry."""

from __future__ import annotations

import io
import time
from decimal import Decimal as D

import orjson
import pytest

from batchrelay.errors import BatchNotFound
from batchrelay.money.ledger import increments
from batchrelay.money.pricing import CallCost
from batchrelay.results.outcome import Attempt, Outcome, Result
from batchrelay.results.records import outcome_record
from batchrelay.spec import BatchSpec
from batchrelay.store.lanes import LaneStore
from batchrelay.store.lifecycle import (
    STALE_SUBMIT_S,
    RetryRefused,
    advance,
    cancel,
    is_stopped,
    request_stop,
    retry,
    tick,
)
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.submit import new_batch_id, submit_stream
from batchrelay.wire.jobs import JobLine
from batchrelay.wire.reply import Usage

from .conftest import openai_line

GRACE = 60.0


async def _submitted(store: Store, n: int, bad: bytes = b"", queue: str | None = None, **kw: object) -> str:
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)) + bad)
    spec = BatchSpec(name="t", chunk_size=2, **kw)  # type: ignore[arg-type]
    return (await submit_stream(store, src, spec, source="t", queue=queue)).batch_id


async def _records(store: Store, batch: str) -> dict[int, dict[str, object]]:
    """line -> its result record's `batchrelay` object, for every line that has one."""
    out = {}
    async for _ok, raw in store.iter_results(batch):
        meta = orjson.loads(raw)["batchrelay"]
        out[meta["line"]] = meta
    return out


async def _pending(store: Store, batch: str) -> set[int]:
    return {int(x) for x in await store.redis.smembers(store.keys.pending(batch))}  # type: ignore[misc]


async def _queued(store: Store) -> set[str]:
    return {m.decode() for m in await store.redis.zrange(store.keys.queue, 0, -1)}


# --- cancel and expiry -----------------------------------------------------------------------------

async def test_cancelling_a_batch_nobody_works_on_stops_every_line_at_once(store: Store) -> None:
    batch = await _submitted(store, 5)
    info = await cancel(store, batch, GRACE, wait=False)
    assert (info.status, info.cancelled, info.pending, info.done) == ("cancelled", 5, 0, 5)
    assert info.finished_at is not None
    records = await _records(store, batch)
    assert sorted(records) == [1, 2, 3, 4, 5] and {r["error"] for r in records.values()} == {"cancelled"}


async def _taken(store: Store, batch: str, lines: list[int]) -> None:
    """What a worker does with lines it sends: claims them and notes their first try."""
    claim = await store.claim(batch, lines)
    await store.note_first_try(batch, {n: claim.first_tried[n] for n in claim.fresh})


async def test_a_line_in_flight_gets_its_grace_and_its_real_answer_ends_the_stop(store: Store) -> None:
    batch = await _submitted(store, 3)
    await _taken(store, batch, [1])  # a worker took line 1: it has a first-try time now
    assert await request_stop(store, batch, "cancelled") == "cancelling"
    assert await advance(store, batch, GRACE) == 2  # lines 2 and 3 never started
    info = await store.info(batch)
    assert (info.status, info.cancelled, await _pending(store, batch)) == ("cancelling", 2, {1})
    assert (await store.claim(batch, [1])).jobs == []  # no worker takes more of a batch being stopped

    await store.write_result(batch, 1, b'{"batchrelay":{"line":1}}', True)  # the call in flight comes back
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.cancelled) == ("cancelled", 1, 2)


async def test_a_line_in_flight_past_its_grace_is_stopped_too(store: Store) -> None:
    batch = await _submitted(store, 2)
    await _taken(store, batch, [1, 2])
    await request_stop(store, batch, "cancelled")
    assert await advance(store, batch, GRACE) == 0
    assert await advance(store, batch, GRACE, now=time.time() + GRACE + 1) == 2
    info = await store.info(batch)
    assert (info.status, info.cancelled) == ("cancelled", 2)


async def test_a_bounded_step_stops_at_most_so_many_lines_and_the_next_steps_go_on(store: Store) -> None:
    batch = await _submitted(store, 7)
    await _taken(store, batch, [1])  # in flight: looked at, not stopped
    await request_stop(store, batch, "cancelled")
    assert await advance(store, batch, GRACE, most=3) <= 3
    info = await store.info(batch)
    assert info.status == "cancelling" and info.cancelled + info.pending == 7 and info.pending >= 4
    while await advance(store, batch, GRACE, most=3):
        pass
    assert await _pending(store, batch) == {1}
    assert await advance(store, batch, GRACE, now=time.time() + GRACE + 1, most=3) == 1
    info = await store.info(batch)
    assert (info.status, info.cancelled) == ("cancelled", 7)


async def test_a_stop_with_no_line_left_to_end_it_ends_at_the_next_step(store: Store) -> None:
    batch = new_batch_id()
    await store.create_batch(batch, BatchSpec(name="t"), source="t")  # `validating`: no line written yet
    assert await request_stop(store, batch, "cancelled") == "cancelling"
    assert await advance(store, batch, GRACE) == 0
    assert (await store.info(batch)).status == "cancelled"


async def test_stopping_a_finished_batch_changes_nothing_and_an_unknown_one_is_not_found(store: Store) -> None:
    batch = await _submitted(store, 0, bad=b"{\"oops\": 1}\n")  # one invalid line: finished at once
    assert (await store.info(batch)).status == "completed"
    assert await request_stop(store, batch, "cancelled") == "completed"
    assert await advance(store, batch, GRACE) == 0
    assert (await store.info(batch)).status == "completed"
    with pytest.raises(BatchNotFound):
        await request_stop(store, "batch_nope", "cancelled")


async def test_a_batch_past_its_window_expires_at_the_sweep(store: Store) -> None:
    batch = await _submitted(store, 3, completion_window=60)
    info = await store.info(batch)
    assert info.expires_at is not None
    done = await tick(store, grace_s=GRACE, retention_s=None, now=info.expires_at + 1)
    assert (done["expired"], done["stopped_lines"]) == (1, 3)
    info = await store.info(batch)
    assert (info.status, info.expired, info.pending) == ("expired", 3, 0)
    assert {r["error"] for r in (await _records(store, batch)).values()} == {"expired"}


async def test_a_worker_finds_a_batch_past_its_window_stopped_and_marks_it_expiring(store: Store) -> None:
    batch = await _submitted(store, 2, completion_window=3600)
    assert await is_stopped(store, batch) is False
    await store.set_fields(batch, {"expires_at": str(time.time() - 1)})
    assert await is_stopped(store, batch) is True
    assert (await store.info(batch)).status == "expiring"
    assert await is_stopped(store, "batch_forgotten") is False


async def _paused_after_a_try(store: Store, *, lane: bool = False) -> str:
    """A batch whose `run` was interrupted: it had tried lines 1 and 2 (line 1 answered), and with
    `lane` given line 4 to a lane's parcel (`{batch}-p1`), then paused it."""
    batch = await _submitted(store, 4, queue=f"{store.keys.queue}:run:abc", completion_window=3600)
    await _taken(store, batch, [1, 2])
    if lane:
        now = time.time()
        assert await LaneStore(store).take("lane", batch, f"{store.keys.prefix}{batch}:c1", [(4, f"{batch}-4", 100)],
                                           deadline=now + 3600, must_end_by=now + 3000, max_lines=10,
                                           max_bytes=10_000, gather_s=0, now=now) == [4]
    await store.write_result(batch, 1, b'{"batchrelay":{"line":1}}', True)
    assert await store.scripts.pause(store.keys, batch, time.time()) == "paused"
    return batch


async def test_a_paused_batch_past_its_deadline_expires_every_line_at_the_sweep(store: Store) -> None:
    # nothing is in flight in a paused batch: line 2, tried by its run, does not wait out the grace
    batch = await _paused_after_a_try(store)
    await store.set_fields(batch, {"expires_at": str(time.time() - 1)})
    done = await tick(store, grace_s=GRACE, retention_s=None)
    assert (done["expired"], done["stopped_lines"]) == (1, 3)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.expired, info.pending) == ("expired", 1, 3, 0)
    assert info.finished_at is not None
    assert {n: r.get("error") for n, r in (await _records(store, batch)).items()} == {
        1: None, 2: "expired", 3: "expired", 4: "expired"}


async def test_a_paused_batch_past_its_deadline_leaves_its_lane_lines_to_the_shared_queues_workers(
        store: Store) -> None:
    # line 4 is in a lane's parcel: it waits until the lane lets go of it, and the paused run's queue is
    # gone, so the batch moves to the shared queue, whose workers (burst ones too) move the parcel on
    batch, lanes, now = await _paused_after_a_try(store, lane=True), LaneStore(store), time.time()
    pid = f"{batch}-p1"
    assert await lanes.due(now + 1, queue=store.keys.queue) == []  # the run's parcel, while it is paused
    await store.set_fields(batch, {"expires_at": str(time.time() - 1)})
    assert (await tick(store, grace_s=GRACE, retention_s=None))["stopped_lines"] == 2
    info = await store.info(batch)
    assert (info.status, info.expired, await _pending(store, batch)) == ("expiring", 2, {4})
    assert (info.queue, await lanes.due(now + 1, queue=store.keys.queue)) == (store.keys.queue, [pid])

    await lanes.release(batch, pid, [4], {}, now=time.time(), requeue=False)  # its upstream batch was cancelled
    assert (await tick(store, grace_s=GRACE, retention_s=None))["stopped_lines"] == 1
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.expired, info.pending) == ("expired", 1, 3, 0)


async def test_cancelling_a_paused_batch_stops_its_lines_at_once(store: Store) -> None:
    batch = await _paused_after_a_try(store)
    info = await cancel(store, batch, GRACE, wait=False)
    assert (info.status, info.succeeded, info.cancelled, info.pending) == ("cancelled", 1, 3, 0)


@pytest.mark.parametrize("status", [Status.CANCELLING, Status.BUDGET_EXHAUSTED, Status.SCHEDULED])
async def test_a_stopped_waiting_or_unstarted_batch_takes_no_work(store: Store, status: Status) -> None:
    batch = await _submitted(store, 2)
    await store.set_fields(batch, {"status": status})
    assert await is_stopped(store, batch) is True
    assert (await store.claim(batch, [1, 2])).jobs == []


# --- the sweep's housekeeping -----------------------------------------------------------------------

async def test_the_sweep_starts_a_deferred_batch_when_it_is_due_and_enqueues_its_chunks(store: Store) -> None:
    start_at = time.time() + 3600
    batch = await _submitted(store, 3, start_at=start_at)
    assert (await store.info(batch)).status == "scheduled"
    assert await _queued(store) == set()
    assert (await tick(store, grace_s=GRACE, retention_s=None, now=start_at - 1))["started"] == 0
    assert (await tick(store, grace_s=GRACE, retention_s=None, now=start_at + 1))["started"] == 1
    assert (await store.info(batch)).status == "in_progress"
    assert await _queued(store) == {f"{store.keys.prefix}{batch}:c0", f"{store.keys.prefix}{batch}:c1"}


async def test_the_sweep_fails_a_submit_that_never_finished(store: Store) -> None:
    batch = new_batch_id()
    await store.create_batch(batch, BatchSpec(name="t"), source="t")
    created = (await store.info(batch)).created_at
    assert (await tick(store, grace_s=GRACE, retention_s=None, now=created + 60))["abandoned_submits"] == 0
    assert (await tick(store, grace_s=GRACE, retention_s=None,
                       now=created + STALE_SUBMIT_S + 1))["abandoned_submits"] == 1
    assert (await store.info(batch)).status == "failed"


async def test_the_sweep_forgets_finished_batches_past_the_retention_only(store: Store) -> None:
    old, running = await _submitted(store, 0, bad=b"{\"x\": 1}\n"), await _submitted(store, 1)
    finished_at = (await store.info(old)).finished_at
    assert finished_at is not None
    assert (await tick(store, grace_s=GRACE, retention_s=100, now=finished_at + 50))["forgotten"] == 0
    assert (await tick(store, grace_s=GRACE, retention_s=100, now=finished_at + 101))["forgotten"] == 1
    with pytest.raises(BatchNotFound):
        await store.info(old)
    assert not [k for k in store.keys.batch_keys(old) if await store.redis.exists(k)]
    assert [b.id for b in await store.list_batches()] == [running]


# --- retry ---------------------------------------------------------------------------------------------

def _failed_after_a_billed_call(batch: str, line: int) -> tuple[bytes, dict[str, int]]:
    """A provider_error record whose one attempt was billed, and the ledger increments it carried."""
    job = JobLine(line, f"req-{line}", "openai", "chat", {"model": "m", "messages": []})
    billed = Attempt("p", 500, 10.0, model="m", usage=Usage(100, 5), cost=CallCost(D("0.001"), None, "computed"))
    out = Outcome(Result.FAILED, attempts=[billed], message="provider failed")
    return outcome_record(batch, job, out), increments(out.billed)


async def test_retry_puts_failed_and_cancelled_lines_back_and_gives_back_their_cost(store: Store) -> None:
    batch = await _submitted(store, 4, bad=b"not json\n")  # line 5 is invalid input: retrying cannot fix it
    await store.write_result(batch, 1, b'{"batchrelay":{"line":1}}', True)
    record, ledger = _failed_after_a_billed_call(batch, 2)
    await store.write_result(batch, 2, record, False, ledger)
    assert await store.ledger(batch) != {}
    await cancel(store, batch, GRACE, wait=False)  # lines 3 and 4
    await store.redis.delete(store.keys.queue)  # the submit's chunk jobs, long since run

    done = await retry(store, batch, chunk_size=2)

    assert (done.lines, done.chunks, done.queue) == (3, 2, store.keys.queue)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.failed, info.cancelled, info.invalid) == ("in_progress", 1, 0, 0, 1)
    assert await _pending(store, batch) == {2, 3, 4}
    assert sorted(await _records(store, batch)) == [1, 5]
    assert {int(v) for v in (await store.ledger(batch)).values()} == {0}  # the cost waits with the line
    kept = orjson.loads(await store.redis.hget(store.keys.attempts(batch), "2"))  # type: ignore[misc]
    assert [a["provider"] for a in kept] == ["p"]  # and so does its billed attempt
    chunks = await store.chunk_map(batch)
    first, second = chunks[f"{store.keys.prefix}{batch}:r1-0"], chunks[f"{store.keys.prefix}{batch}:r1-1"]  # chunk_size 2, in the order found
    assert (len(first), len(second), sorted(first + second)) == (2, 1, [2, 3, 4])
    assert await _queued(store) == {f"{store.keys.prefix}{batch}:r1-0", f"{store.keys.prefix}{batch}:r1-1"}


async def test_only_an_ended_batch_can_be_retried(store: Store) -> None:
    batch = await _submitted(store, 1)
    with pytest.raises(RetryRefused, match="in_progress"):
        await retry(store, batch, chunk_size=2)
    await store.mark_failed(batch, "submit never finished")
    with pytest.raises(RetryRefused, match="failed"):
        await retry(store, batch, chunk_size=2)


async def test_retrying_a_batch_of_an_ended_run_moves_it_to_the_shared_queue(store: Store) -> None:
    batch = await _submitted(store, 1, queue=f"{store.keys.queue}:run:abc")
    await cancel(store, batch, GRACE, wait=False)
    done = await retry(store, batch, chunk_size=2)
    assert done.queue == store.keys.queue == (await store.info(batch)).queue
    assert await _queued(store) == {f"{store.keys.prefix}{batch}:r1-0"}


async def test_a_retried_batch_gets_a_new_window_but_never_past_its_deadline(store: Store) -> None:
    deadline = time.time() + 600
    batch = await _submitted(store, 2, completion_window=3600, deadline=deadline)
    assert (await store.info(batch)).expires_at == pytest.approx(deadline)  # the earlier of the two
    await cancel(store, batch, GRACE, wait=False)
    await store.redis.delete(store.keys.queue)
    await retry(store, batch, chunk_size=2)
    assert (await store.info(batch)).expires_at == pytest.approx(deadline)
