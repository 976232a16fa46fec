"""A batch's spending limit in Redis: reserve before a call, settle after it, exact to the pico-dollar."""

from __future__ import annotations

import asyncio
import io
import json
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay.config.settings import ProviderConfig, Settings, WorkerConfig
from batchrelay.money.budget import BudgetBusy, OverBudget, Refusal, Spend, Unpriced, most_it_may_cost
from batchrelay.money.pricing import pico
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.budget import Budget
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.submit import new_batch_id, submit_stream
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.runtime import Runtime

from .conftest import batchrelay, openai_line, worker_runtime, write_config
from .servekit import KEY, KEY_ENV, anthropic_request, serving


async def _batch(store: Store, max_cost: D | None, pending: int = 2) -> str:
    """A submitted batch, `in_progress` with `pending` lines waiting, and a limit of `max_cost` USD."""
    batch = new_batch_id()
    await store.create_batch(batch, BatchSpec(max_cost=max_cost), source="t")
    jobs = [JobLine(i, f"c{i}", "bare", "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            for i in range(1, pending + 1)]
    await store.add_lines(batch, jobs, [], [])
    await store.finish_submit(batch, {"total": pending, "max_line": pending})
    return batch


async def _status(store: Store, batch: str) -> str:
    return (await store.info(batch)).status


async def _raw(store: Store, batch: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = await store.redis.hgetall(store.keys.budget(batch))  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_reservations_within_the_limit_are_held_then_settled_into_spent(store: Store) -> None:
    batch = await _batch(store, D("1"))
    b = Budget(store)
    first, second = await b.reserve(batch, D("0.3")), await b.reserve(batch, D("0.2"))
    assert first is not None and second is not None and first != second
    info = await b.info(batch)
    assert (info.max_usd, info.spent_usd, info.reserved_usd, info.remaining_usd) == (D(1), 0, D("0.5"), D("0.5"))

    await b.settle(batch, first, D("0.3"))  # billed what it reserved
    info = await b.info(batch)
    assert (info.spent_usd, info.reserved_usd) == (D("0.3"), D("0.2"))

    await b.settle(batch, second, D("0.05"))  # billed less: the rest is free again
    info = await b.info(batch)
    assert (info.spent_usd, info.reserved_usd, info.remaining_usd) == (D("0.35"), 0, D("0.65"))
    assert not [k for k in await _raw(store, batch) if k.startswith("r:")]  # no reservation left behind
    assert await store.redis.zcard(store.keys.budget_leases(batch)) == 0
    assert info.as_dict() == {"max_usd": "1", "spent_usd": "0.35", "reserved_usd": "0", "remaining_usd": "0.65"}
    assert await _status(store, batch) == "in_progress"


async def test_settling_twice_counts_once(store: Store) -> None:
    batch = await _batch(store, D("1"))
    b = Budget(store)
    token = await b.reserve(batch, D("0.4"))
    other = await b.reserve(batch, D("0.1"))
    assert token is not None and other is not None
    await b.settle(batch, token, D("0.3"))
    await b.settle(batch, token, D("0.3"))  # a retry after a lost connection: neither spent nor `other` changes
    info = await b.info(batch)
    assert (info.spent_usd, info.reserved_usd) == (D("0.3"), D("0.1"))


async def test_a_reservation_that_fits_once_those_in_flight_settle_waits_and_the_batch_goes_on(
        store: Store) -> None:
    batch = await _batch(store, D("0.1"))
    b = Budget(store)
    assert await b.reserve(batch, D("0.06")) is not None
    assert await b.try_reserve(batch, D("0.05")) is Refusal.WAIT  # 0.06 + 0.05 > 0.1, but 0 + 0.05 is not
    assert await b.reserve(batch, D("0.05")) is None  # refused all the same
    assert await _status(store, batch) == "in_progress"
    info = await b.info(batch)
    assert (info.reserved_usd, info.spent_usd, info.remaining_usd) == (D("0.06"), 0, D("0.04"))  # refused: not held
    assert len([k for k in await _raw(store, batch) if k.startswith("r:")]) == 1
    assert await store.redis.zcard(store.keys.budget_leases(batch)) == 1
    assert await b.reserve(batch, D("0.04")) is not None  # exactly up to the limit is allowed
    assert (await b.info(batch)).remaining_usd == 0
    assert await b.try_reserve(batch, D("0.000000000001")) is Refusal.WAIT  # not one pico-dollar more, for now
    assert len((await store.claim(batch, [1, 2])).jobs) == 2  # the batch still gives out its lines


async def test_a_reservation_that_cannot_fit_whatever_those_in_flight_settle_at_exhausts_the_batch(
        store: Store) -> None:
    batch = await _batch(store, D("0.1"))
    b = Budget(store)
    token = await b.reserve(batch, D("0.08"))
    assert token is not None
    await b.settle(batch, token, D("0.06"))
    in_flight = await b.reserve(batch, D("0.03"))
    assert in_flight is not None
    assert await b.try_reserve(batch, D("0.05")) is Refusal.EXHAUSTED  # 0.06 spent + 0.05 > 0.1, even at 0 for 0.03
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED
    info = await b.info(batch)
    assert (info.reserved_usd, info.spent_usd, info.remaining_usd) == (D("0.03"), D("0.06"), D("0.01"))  # not held
    last = await b.reserve(batch, D("0.01"))  # exactly up to the limit is allowed
    assert last is not None
    assert await b.try_reserve(batch, D("0.000000000001")) is Refusal.WAIT  # either may settle below its amount
    await b.settle(batch, in_flight, D("0.03"))
    await b.settle(batch, last, D("0.01"))
    assert await b.try_reserve(batch, D("0.000000000001")) is Refusal.EXHAUSTED  # all of it spent
    assert (await store.claim(batch, [1, 2])).jobs == []  # an exhausted batch gives out no line


C = D("0.01")  # the table's unit: a cent


@pytest.mark.parametrize(("spent", "held", "amount", "outcome"), [
    (0, 0, 100, "reserved"),  # the whole limit, exactly
    (0, 0, 101, Refusal.EXHAUSTED),
    (40, 50, 10, "reserved"),  # 40 + 50 + 10 = 100
    (40, 50, 11, Refusal.WAIT),  # it fits once the 50 in flight settle below 49
    (40, 50, 60, Refusal.WAIT),  # ... settle at 0: 40 + 60 = 100
    (40, 50, 61, Refusal.EXHAUSTED),  # 40 + 61 > 100 whatever they settle at
    (0, 100, 100, Refusal.WAIT),
    (0, 100, 101, Refusal.EXHAUSTED),
    (100, 0, 0, "reserved"),  # a free call is never refused
    (100, 0, 1, Refusal.EXHAUSTED),
    (99, 1, 1, Refusal.WAIT),
])
async def test_a_reservation_is_held_or_waits_or_exhausts_the_batch(store: Store, spent: int, held: int, amount: int,
                                                                   outcome: str | Refusal) -> None:
    """budget_reserve.lua's three answers, for a limit of 100 (cents): reserved when spent + reserved +
    amount fits; wait when only spent + amount does; exhausted when not even that does."""
    batch = await _batch(store, 100 * C)
    b = Budget(store)
    if spent:
        token = await b.reserve(batch, spent * C)
        assert token is not None
        await b.settle(batch, token, spent * C)
    if held:
        assert await b.reserve(batch, held * C) is not None
    before = await _raw(store, batch)
    got = await b.try_reserve(batch, amount * C)
    info = await b.info(batch)
    assert info.spent_usd == spent * C
    if outcome == "reserved":
        assert isinstance(got, str) and info.reserved_usd == (held + amount) * C
        assert await _status(store, batch) == "in_progress"
        return
    assert got is outcome
    assert await _raw(store, batch) == before  # a refusal holds nothing
    assert await _status(store, batch) == ("in_progress" if outcome is Refusal.WAIT else Status.BUDGET_EXHAUSTED)


async def test_a_waiting_reservation_is_made_once_those_in_flight_settle_low_enough(store: Store) -> None:
    batch = await _batch(store, D("1"))
    b = Budget(store)
    first, second = await b.reserve(batch, D("0.5")), await b.reserve(batch, D("0.4"))
    assert first is not None and second is not None
    assert await b.try_reserve(batch, D("0.5")) is Refusal.WAIT
    await b.settle(batch, first, D("0.15"))  # answered far short of its max_tokens
    assert await b.try_reserve(batch, D("0.5")) is Refusal.WAIT  # 0.15 + 0.4 + 0.5 > 1: still waits
    await b.settle(batch, second, D("0.05"))
    assert isinstance(await b.try_reserve(batch, D("0.5")), str)
    assert await _status(store, batch) == "in_progress"


async def test_a_refusal_does_not_touch_a_batch_that_is_not_in_progress(store: Store) -> None:
    batch = await _batch(store, D("0.1"))
    await store.redis.hset(store.keys.meta(batch), "status", "cancelling")  # type: ignore[misc]
    assert await Budget(store).reserve(batch, D(1)) is None
    assert await _status(store, batch) == "cancelling"


async def test_a_batch_without_a_limit_always_reserves(store: Store) -> None:
    batch = await _batch(store, None)
    b = Budget(store)
    tokens = [await b.reserve(batch, D("1000000")) for _ in range(3)]
    assert all(t is not None for t in tokens)
    assert await _status(store, batch) == "in_progress"
    info = await b.info(batch)
    assert (info.max_usd, info.remaining_usd, info.reserved_usd) == (None, None, 0)
    assert info.as_dict()["max_usd"] is None and info.as_dict()["remaining_usd"] is None
    assert (await store.claim(batch, [1])).budgeted is False


@pytest.mark.parametrize(("amount", "picos"), [
    (D("0.0000005625"), 562_500),  # PiAPI's gpt-4o-mini for 1 token in, 1 out
    (D("0.000000000001"), 1),
    (D("0.0000000000015"), 2),  # half a pico-dollar: rounded half-even
    (D("0.0000000000025"), 2),
    (D("1234.567890123456"), 1_234_567_890_123_456),
])
async def test_amounts_are_kept_exactly_in_pico_dollars(store: Store, amount: D, picos: int) -> None:
    batch = await _batch(store, D("9000"))
    b = Budget(store)
    token = await b.reserve(batch, amount)
    assert token is not None
    raw = await _raw(store, batch)
    assert raw["reserved"] == raw[f"r:{token}"] == str(picos)  # an integer in Redis, never a float
    assert (await b.info(batch)).reserved_usd == D(picos) * D("1e-12")
    await b.settle(batch, token, amount)
    assert (await _raw(store, batch))["spent"] == str(picos)


async def test_the_sum_of_many_settles_is_spent_exactly(store: Store) -> None:
    batch = await _batch(store, D("1"))
    b = Budget(store)
    n, each = 1000, D("0.0000005625")

    async def one() -> None:
        token = await b.reserve(batch, D("0.000001"))
        assert token is not None
        await b.settle(batch, token, each)

    await asyncio.gather(*(one() for _ in range(n)))
    info = await b.info(batch)
    assert info.spent_usd == D("0.0005625") == n * each
    assert info.reserved_usd == 0


async def test_an_unsettled_reservation_lapses_after_its_lease(store: Store) -> None:
    batch = await _batch(store, D("0.01"))
    b = Budget(store, lease_s=0.05)
    lost = await b.reserve(batch, D("0.01"))  # its worker dies: it is never settled
    assert lost is not None
    assert await b.reserve(batch, D("0.01")) is None  # still held
    await asyncio.sleep(0.2)
    fresh = await b.reserve(batch, D("0.01"))
    assert fresh is not None  # the dead worker's reservation no longer counts
    info = await b.info(batch)
    assert (info.reserved_usd, info.spent_usd) == (D("0.01"), 0)
    assert f"r:{lost}" not in await _raw(store, batch)
    # a settle of the lapsed reservation (settled once already, as far as Redis can tell) changes nothing
    await b.settle(batch, lost, D("0.004"))
    info = await b.info(batch)
    assert (info.reserved_usd, info.spent_usd) == (D("0.01"), 0)


async def test_raising_the_limit_of_an_exhausted_batch_lets_its_waiting_lines_go_on(store: Store) -> None:
    batch = await _batch(store, D("0.1"))
    b = Budget(store)
    token = await b.reserve(batch, D("0.1"))
    assert token is not None
    await b.settle(batch, token, D("0.1"))
    assert await b.reserve(batch, D("0.05")) is None
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED

    assert await b.raise_limit(batch, D("0.25")) is True
    assert await _status(store, batch) == "in_progress"
    assert (await b.info(batch)).max_usd == D("0.25")
    meta_max = await store.redis.hget(store.keys.meta(batch), "max_cost")  # type: ignore[misc]
    assert int(meta_max) == pico(D("0.25"))
    assert await b.reserve(batch, D("0.05")) is not None
    assert len((await store.claim(batch, [1, 2])).jobs) == 2


async def test_raising_the_limit_of_an_exhausted_batch_with_nothing_pending_completes_it(store: Store) -> None:
    batch = await _batch(store, D("0.1"), pending=1)
    b = Budget(store)
    assert await b.reserve(batch, D("1")) is None
    # its last line got its answer elsewhere (e.g. a rerun of its chunk) while the batch was exhausted
    await store.redis.srem(store.keys.pending(batch), "1")  # type: ignore[misc]
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED

    assert await b.raise_limit(batch, D("2")) is False
    info = await store.info(batch)
    assert info.status == "completed" and info.finished_at is not None
    assert (await b.info(batch)).max_usd == D(2)


async def test_a_finished_result_completes_an_exhausted_batch(store: Store) -> None:
    batch = await _batch(store, D("0.1"), pending=1)
    assert await Budget(store).reserve(batch, D("1")) is None
    assert await store.write_result(batch, 1, b"{}", True)
    assert await _status(store, batch) == "completed"


@pytest.mark.parametrize("status", ["in_progress", "completed", "cancelled"])
async def test_raising_the_limit_of_a_batch_that_is_not_exhausted_only_sets_it(store: Store, status: str) -> None:
    batch = await _batch(store, D("0.1"))
    await store.redis.hset(store.keys.meta(batch), "status", status)  # type: ignore[misc]
    b = Budget(store)
    assert await b.raise_limit(batch, D("3.5")) is False
    assert await _status(store, batch) == status
    info = await b.info(batch)
    assert (info.max_usd, info.spent_usd) == (D("3.5"), 0)


async def test_a_limit_set_later_makes_the_batch_budgeted(store: Store) -> None:
    batch = await _batch(store, None)
    b = Budget(store)
    assert (await store.claim(batch, [1])).budgeted is False
    assert await b.raise_limit(batch, D("0.5")) is False
    assert (await store.claim(batch, [1])).budgeted is True
    assert await b.reserve(batch, D("0.6")) is None


async def test_a_first_limit_starts_from_what_the_batch_has_spent(store: Store) -> None:
    """Calls made before any limit took no reservation: the ledger says what they cost (found by a
    fresh-clone check: a limit set mid-run started from $0 and the batch spent twice the limit)."""
    batch = await _batch(store, None)
    sep = "\x1f"
    await store.redis.hset(store.keys.ledger(batch), mapping={  # type: ignore[misc]
        f"a{sep}m{sep}cost": 300 * 10**6, f"b{sep}m{sep}cost": 200 * 10**6, f"a{sep}m{sep}requests": 7})
    b = Budget(store)
    assert await b.raise_limit(batch, D("0.001")) is False
    info = await b.info(batch)
    assert (info.max_usd, info.spent_usd) == (D("0.001"), D("0.0005"))
    assert await b.reserve(batch, D("0.0006")) is None  # only $0.0005 is left
    assert await b.raise_limit(batch, D("0.002")) is True  # the batch waited on it; the count is kept
    assert (await b.info(batch)).spent_usd == D("0.0005")


async def test_concurrent_reservations_never_pass_the_limit(store: Store) -> None:
    batch = await _batch(store, D("0.25"))
    budgets = [Budget(store) for _ in range(5)]  # several workers' views of one budget
    got = await asyncio.gather(*(budgets[i % 5].try_reserve(batch, D("0.01")) for i in range(50)))
    granted = [t for t in got if isinstance(t, str)]
    assert len(granted) == 25 and len(set(granted)) == 25
    assert [t for t in got if not isinstance(t, str)] == [Refusal.WAIT] * 25  # each fits once others settle
    info = await budgets[0].info(batch)
    assert (info.reserved_usd, info.remaining_usd) == (D("0.25"), 0)
    assert await _status(store, batch) == "in_progress"
    assert await store.redis.zcard(store.keys.budget_leases(batch)) == 25
    await asyncio.gather(*(budgets[0].settle(batch, t, D("0.01")) for t in granted))
    assert await budgets[1].try_reserve(batch, D("0.01")) is Refusal.EXHAUSTED  # all 0.25 spent
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED


async def test_a_zero_reservation_settles_and_lapses_cleanly(store: Store) -> None:
    # a free model (input = output = 0 per 1M) reserves 0; its settle and its lapse must both work
    batch = await _batch(store, D("1"))
    b = Budget(store, lease_s=0.05)
    token = await b.reserve(batch, D(0))
    assert token is not None
    await b.settle(batch, token, D(0))
    assert await b.reserve(batch, D(0)) is not None  # and this one is never settled
    await asyncio.sleep(0.2)
    assert await b.reserve(batch, D("0.5")) is not None
    assert (await b.info(batch)).reserved_usd == D("0.5")


# Spend: what the relay sees. "hi" in one user message is 32 bytes of JSON: 8 + 4 = 12 input tokens.
PRICED = ProviderConfig(name="p", base_url="http://127.0.0.1:1", prices={"m": {"input": "1", "output": "1"}})
MINIMUM = ProviderConfig(name="q", base_url="http://127.0.0.1:1",
                         prices={"m": {"input": "1", "output": "1", "min_charge": "0.001"}})
UNPRICED = ProviderConfig(name="u", base_url="http://127.0.0.1:1")


def _body(model: str = "m", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


async def test_spend_reserves_the_most_a_call_may_cost_and_refuses_past_the_limit(store: Store) -> None:
    batch = await _batch(store, D("0.00005"))
    spend = Spend(Budget(store), batch)
    held = await spend.reserve(PRICED, _body(max_tokens=10))
    assert held.amount == D("0.000022")  # (12 input + 10 output) tokens at $1 per 1M
    second = await spend.reserve(PRICED, _body(max_tokens=10))
    with pytest.raises(BudgetBusy):  # 0.000066 > 0.00005, but it fits once the two in flight settle low
        await spend.reserve(PRICED, _body(max_tokens=10))
    assert await _status(store, batch) == "in_progress"

    await spend.settle(held, D("0.000015"))  # what the call was billed
    await spend.settle(second, None)  # unknown cost: the reservation counts as spent
    info = await spend.budget.info(batch)
    assert (info.spent_usd, info.reserved_usd) == (D("0.000037"), 0)
    with pytest.raises(OverBudget):  # 0.000037 + 0.000022 > 0.00005 with nothing in flight
        await spend.reserve(PRICED, _body(max_tokens=10))
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED


async def test_spend_reservations_use_the_default_max_tokens_and_the_minimum_charge(store: Store) -> None:
    batch = await _batch(store, D("10"))
    spend = Spend(Budget(store), batch, default_max_tokens=100)
    assert (await spend.reserve(PRICED, _body())).amount == D("0.000112")
    assert (await spend.reserve(MINIMUM, _body(max_tokens=10))).amount == D("0.001")
    mapped = PRICED.model_copy(update={"models": {"alias": "m"}})  # priced by the provider's own model name
    assert (await spend.reserve(mapped, _body("alias", max_tokens=10))).amount == D("0.000022")
    assert (await spend.budget.info(batch)).reserved_usd == D("0.001134")


async def test_spend_refuses_a_model_without_a_known_price(store: Store) -> None:
    batch = await _batch(store, D("10"))
    spend = Spend(Budget(store), batch)
    with pytest.raises(Unpriced, match="no-such-model-anywhere at u"):
        await spend.reserve(UNPRICED, _body("no-such-model-anywhere"))
    info = await spend.budget.info(batch)
    assert info.reserved_usd == 0 and await _status(store, batch) == "in_progress"  # nothing held, not exhausted


# --- waiting for the reservations in flight, in a worker and end to end -----------------------------

WORKER_MAX_TOKENS = WorkerConfig().default_max_tokens  # what a request without max_tokens reserves


async def _chunked_batch(store: Store, n: int, max_cost: D | None) -> tuple[str, list[int], str]:
    """A submitted batch of `n` OpenAI lines in one chunk: its id, the chunk's id and its lines."""
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    res = await submit_stream(store, src, BatchSpec(name="t", chunk_size=n, max_cost=max_cost), source="t")
    ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
    return res.batch_id, lines, cid


async def test_lines_the_reservations_in_flight_leave_no_room_for_wait_and_are_answered_once_by_another_worker(
        store: Store, slow: SimulatorProcess) -> None:
    """Found by a fresh-clone check: a line whose reservation did not fit beside those in flight made
    the batch budget_exhausted, though they settled far below their amounts."""
    sim = ProviderConfig(name="sim", base_url=slow.base_url)
    each = most_it_may_cost(sim, openai_line(1)["body"], WORKER_MAX_TOKENS)  # 4096 tokens out: ~$0.0025
    limit = each * D("2.5")  # two calls in flight at once, and every line's real cost many times over
    # no slow start: once it has answered, four lines go at once; and no wait in place (see below)
    fast_start = {"concurrency_recovery_calls": 1, "max_wait_s": 0}
    async with worker_runtime(store, slow.base_url, health=fast_start, concurrency=4) as rt:
        assert await rt.run_chunk(*await _chunked_batch(store, 1, None)) == 1  # its first answer (a probe)
        batch, lines, cid = await _chunked_batch(store, 4, limit)
        assert await rt.run_chunk(batch, lines, cid) == 2  # two answered; two wait, not failed, not parked
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == ("in_progress", 2, 2)
    ((again, waiting),) = (await store.chunk_map(batch)).items()  # back on the queue as a chunk of their own
    assert again != cid and len(waiting) == 2
    assert await store.redis.exists(f"arq:job:{again}") == 1  # its arq job, due shortly
    # never sent: their deadline to find a provider starts when they are (a cancel stops them at once)
    assert await store.redis.hmget(store.keys.first_try(batch), waiting) == [None, None]  # type: ignore[misc]
    # the worker that deferred them is gone: another one takes the chunk from the queue
    async with worker_runtime(store, slow.base_url, health=fast_start, concurrency=4) as rt:
        assert await rt.run_chunk(batch, waiting, again) == 2
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.failed) == ("completed", 4, 0)
    assert slow.stats()["calls"] == 1 + 4  # each line sent once
    records = [orjson.loads(raw) for ok, raw in [r async for r in store.iter_results(batch)] if ok]
    assert sorted(r["custom_id"] for r in records) == [f"req-{i}" for i in range(1, 5)]
    assert [len(r["batchrelay"]["attempts"]) for r in records] == [1] * 4  # the wait cost no attempt
    spent = (await Budget(store).info(batch)).spent_usd
    assert 0 < spent == sum(D(r["batchrelay"]["cost"]["usd"]) for r in records) <= limit


async def test_a_line_waits_in_place_for_the_reservations_in_flight_when_they_settle_soon(
        store: Store, slow: SimulatorProcess) -> None:
    """Within health's max_wait_s a line waits for room where it is, as it waits for a provider: a
    batch near its limit goes on at the pace of its calls, not of deferrals."""
    sim = ProviderConfig(name="sim", base_url=slow.base_url)
    limit = most_it_may_cost(sim, openai_line(1)["body"], WORKER_MAX_TOKENS) * D("2.5")  # two in flight
    async with worker_runtime(store, slow.base_url, health={"concurrency_recovery_calls": 1}, concurrency=4) as rt:
        assert await rt.run_chunk(*await _chunked_batch(store, 1, None)) == 1  # its first answer (a probe)
        batch, lines, cid = await _chunked_batch(store, 4, limit)
        assert await rt.run_chunk(batch, lines, cid) == 4  # two waited 0.3 s for the first two: none deferred
    info = await store.info(batch)
    assert (info.status, info.succeeded) == ("completed", 4)
    assert list(await store.chunk_map(batch)) == [cid]
    assert slow.stats()["calls"] == 1 + 4


async def test_a_chunk_with_lines_that_wait_and_lines_parked_by_an_exhausted_budget_loses_none(
        store: Store, slow: SimulatorProcess) -> None:
    """Found by the end-to-end check below: a chunk whose lines partly waited (deferred to a new chunk)
    and partly were parked by the budget running out dropped its own entry, and the parked lines were
    never run again, not even once the limit was raised."""
    sim = ProviderConfig(name="sim", base_url=slow.base_url)
    small = {**openai_line(1)["body"], "max_tokens": 100}
    limit = most_it_may_cost(sim, small, WORKER_MAX_TOKENS) * D("2.5")  # two small calls in flight at once
    big = {**openai_line(4)["body"], "max_tokens": 4000}
    assert most_it_may_cost(sim, big, WORKER_MAX_TOKENS) > limit  # more than the limit, whatever is spent
    src = io.BytesIO(b"".join(orjson.dumps({**openai_line(i), "body": small if i < 4 else big}) + b"\n"
                              for i in range(1, 5)))
    fast_start = {"concurrency_recovery_calls": 1, "max_wait_s": 0}  # as above: waiting lines are deferred
    async with worker_runtime(store, slow.base_url, health=fast_start, concurrency=4) as rt:
        assert await rt.run_chunk(*await _chunked_batch(store, 1, None)) == 1  # its first answer (a probe)
        res = await submit_stream(store, src, BatchSpec(name="t", chunk_size=4, max_cost=limit), source="t")
        batch = res.batch_id
        ((cid, lines),) = (await store.chunk_map(batch)).items()
        await rt.run_chunk(batch, lines, cid)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == (Status.BUDGET_EXHAUSTED, 2, 2)
    chunks = await store.chunk_map(batch)
    assert chunks[cid] == [4]  # the parked line stays its chunk's
    ((again, waiting),) = [(c, ls) for c, ls in chunks.items() if c != cid]
    assert len(waiting) == 1 and waiting[0] < 4  # the small line that waited: a chunk of its own

    await Budget(store).raise_and_requeue(batch, D("1"))  # (both chunks still have their arq jobs here)
    assert (await store.info(batch)).status == "in_progress"
    async with worker_runtime(store, slow.base_url, health=fast_start, concurrency=4) as rt:
        assert await rt.run_chunk(batch, waiting, again) == 1
        assert await rt.run_chunk(batch, [4], cid) == 1
    info = await store.info(batch)
    assert (info.status, info.succeeded) == ("completed", 4)
    assert slow.stats()["calls"] == 1 + 4  # each line sent once


PRICEY = 'prices.pricey = { input = "1000", output = "1000" }'  # $0.001 a token: a line costs cents


def _pricey_run(tmp_path: Path, prefix: str, sim: str, n: int) -> tuple[Path, Path, D]:
    """A config with the simulator as provider "sim" and a file of `n` lines of model "pricey" with
    max_tokens 40; and what one line's call reserves (all the same: "question 10".."question 99")."""
    cfg = write_config(tmp_path / "c.toml", prefix, [], concurrency=8, chunk_size=10)
    cfg.write_text(cfg.read_text() + f'\n[[providers]]\nname = "sim"\nbase_url = "{sim}"\n{PRICEY}\n')
    bodies = [{"model": "pricey", "max_tokens": 40, "messages": [{"role": "user", "content": f"question {i}"}]}
              for i in range(10, 10 + n)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                           "body": b}) + b"\n" for i, b in enumerate(bodies, 1)))
    provider = ProviderConfig(name="sim", base_url=sim, prices={"pricey": {"input": "1000", "output": "1000"}})
    (each,) = {most_it_may_cost(provider, b, WORKER_MAX_TOKENS) for b in bodies}
    return cfg, src, each


def _run(cfg: Path, src: Path, out: Path, redis_url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--json", *extra, env={"REDIS_URL": redis_url})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_a_run_whose_limit_covers_its_real_cost_and_one_reservation_completes(tmp_path: Path, redis_url: str,
                                                                               prefix: str) -> None:
    """The user's check: `run --max-cost` a little over what the run really costs answered 15 lines
    of 50 and stopped budget_exhausted, its reservations in flight (8 calls at max_tokens) holding
    the rest of the limit. A hard limit has to leave room for one call at its max_tokens, no more."""
    n = 40
    with SimulatorProcess({"latency_ms": 50}) as sim:
        cfg, src, each = _pricey_run(tmp_path, prefix, sim, n)
        code, free = _run(cfg, src, tmp_path / "free.jsonl", redis_url)  # what it really costs
        assert (code, free["status"]) == (0, "completed")
        real = D(free["cost"]["usd"])
        assert real > 10 * each  # every line costs about a third of its reservation: 8 in flight hold 2.5 lines' cost
        limit = real + each
        code, ran = _run(cfg, src, tmp_path / "out.jsonl", redis_url, "--max-cost", str(limit))
        calls = SimulatorProcess.stats_of(sim)["calls"]
    assert (code, ran["status"], ran["counts"]["succeeded"]) == (0, "completed", n), ran
    assert D(ran["cost"]["usd"]) == real <= limit  # the same answers, the same cost, under the limit
    assert D(ran["cost"]["budget"]["reserved_usd"]) == 0
    rows = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(1, n + 1)]
    assert all(len(r["batchrelay"]["attempts"]) == 1 for r in rows)  # waiting cost no attempt
    assert calls == 2 * n  # both runs sent each line once


def test_a_run_that_costs_more_than_its_limit_stops_within_it_and_finishes_once_raised(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    n = 40
    with SimulatorProcess({"latency_ms": 50}) as sim:
        cfg, src, each = _pricey_run(tmp_path, prefix, sim, n)
        limit = D("0.30")  # about 40 % of what the lines cost
        code, ran = _run(cfg, src, tmp_path / "out.jsonl", redis_url, "--max-cost", str(limit))
        assert (code, ran["status"]) == (4, "budget_exhausted"), ran
        spent, done = D(ran["cost"]["usd"]), ran["counts"]["done"]
        # it stopped only when the next line could not fit even with nothing in flight, and the calls
        # in flight then (reserved within the limit) took the spending no further than the limit
        assert limit - each < spent <= limit
        assert D(ran["cost"]["budget"]["spent_usd"]) == spent and D(ran["cost"]["budget"]["reserved_usd"]) == 0
        assert 0 < done < n and ran["counts"]["pending"] == n - done
        assert SimulatorProcess.stats_of(sim)["calls"] == done  # the waiting lines were never sent

        env = {"REDIS_URL": redis_url}
        raised = batchrelay("-c", str(cfg), "budget", ran["id"], "--max-cost", "10", "--json", env=env)
        assert raised.returncode == 0, raised.stderr
        finish = batchrelay("-c", str(cfg), "worker", "--burst", "--quiet", env=env)
        assert finish.returncode == 0, finish.stderr
        calls = SimulatorProcess.stats_of(sim)["calls"]
    st = json.loads(batchrelay("-c", str(cfg), "status", ran["id"], "--json", env=env).stdout)
    assert (st["status"], st["counts"]["succeeded"]) == ("completed", n)
    out = tmp_path / "all.jsonl"
    assert batchrelay("-c", str(cfg), "results", ran["id"], "-o", str(out), env=env).returncode == 0
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(1, n + 1)]  # none lost, none twice
    assert calls == n and st["cost"]["requests"] == n
    assert D(st["cost"]["usd"]) == sum(D(r["batchrelay"]["cost"]["usd"]) for r in rows)


# --- lanes: lines an official Batch API takes follow the same rule -----------------------------------

def _lane_settings(upstream: str, sim_url: str) -> Settings:
    lane = ProviderConfig.model_validate({
        "name": "lane", "kind": "anthropic-batch", "base_url": upstream, "api_key_env": KEY_ENV, "window_s": 30,
        "margin_s": 5, "gather_s": 0.2, "poll_min_s": 0.2, "poll_max_s": 1, "create_wait_s": 3, "cancel_wait_s": 5})
    return Settings(worker=WorkerConfig(call_timeout=5, backoff=0.01, concurrency=4), routing={"strategy": "cheapest"},
                    providers=(ProviderConfig(name="sim", base_url=sim_url), lane))


async def _lane_batch(store: Store, n: int, max_cost: D) -> tuple[str, list[int], str]:
    src = io.BytesIO(b"".join(orjson.dumps(anthropic_request(i)) + b"\n" for i in range(1, n + 1)))
    spec = BatchSpec(name="t", chunk_size=n, completion_window=120, max_cost=max_cost)
    res = await submit_stream(store, src, spec, source="t")
    ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
    return res.batch_id, lines, cid


def _lane_amount(settings: Settings) -> D:
    lane = next(p for p in settings.providers if p.name == "lane")
    (each,) = {most_it_may_cost(lane, anthropic_request(i)["params"], settings.worker.default_max_tokens)
               for i in range(1, 7)}
    return each


async def test_lane_lines_the_reservations_in_flight_leave_no_room_for_wait_in_the_lane_and_are_answered_once(
        tmp_path: Path, redis_url: str, prefix: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane holds its lines' reservations while its upstream batch runs: a line that did not fit
    beside them made the batch budget_exhausted (found by a fresh-clone check). It waits instead:
    unreserved in its parcel, left out of the upload if it still does not fit, then taken again."""
    monkeypatch.setenv(KEY_ENV, KEY)
    n = 6
    with SimulatorProcess({}) as sim_url, serving(tmp_path, redis_url, f"{prefix}up:") as api:
        settings = _lane_settings(api.base, sim_url)
        each = _lane_amount(settings)
        rt = Runtime.opened(settings, store)
        try:
            batch, lines, cid = await _lane_batch(store, n, each * D("3.5"))  # three lines' reservations at once
            assert await rt.run_chunk(batch, lines, cid) == 0  # the lane took them all
            info, budget = await store.info(batch), await Budget(store).info(batch)
            assert (info.status, budget.reserved_usd) == ("in_progress", 3 * each)  # three wait, unreserved
            assert rt.lanes is not None
            assert len(await rt.lanes.parcels.held(batch)) == n
            # the parcel goes up with the three reserved lines; the others come back as a chunk
            deadline = time.monotonic() + 60
            while (await store.info(batch)).pending:
                assert time.monotonic() < deadline, "the lane did not answer every line in time"
                await rt.lanes.poll_due()
                for c, ls in (await store.chunk_map(batch)).items():
                    await rt.run_chunk(batch, ls, c)  # as a worker would: the lane takes them again
                await asyncio.sleep(0.2)
        finally:
            await rt.close()
    info, budget = await store.info(batch), await Budget(store).info(batch)
    assert (info.status, info.succeeded, info.failed) == ("completed", n, 0)
    assert budget.reserved_usd == 0 and 0 < budget.spent_usd <= each * D("3.5")
    records = [orjson.loads(raw) async for _, raw in store.iter_results(batch)]
    assert sorted(r["batchrelay"]["line"] for r in records) == list(range(1, n + 1))  # each once
    assert all(r["batchrelay"]["provider"] == "lane" for r in records)


async def test_lane_lines_a_limit_cannot_cover_at_all_go_back_and_wait_with_the_exhausted_batch(
        redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with SimulatorProcess({}) as sim_url:
        settings = _lane_settings("http://127.0.0.1:9", sim_url)  # nothing is sent: no upstream needed
        each = _lane_amount(settings)
        rt = Runtime.opened(settings, store)
        try:
            batch, lines, cid = await _lane_batch(store, 3, each / 2)
            assert await rt.run_chunk(batch, lines, cid) == 0
            assert rt.lanes is not None and await rt.lanes.parcels.held(batch) == {}  # given back
        finally:
            await rt.close()
    info, budget = await store.info(batch), await Budget(store).info(batch)
    assert (info.status, info.pending, budget.reserved_usd) == (Status.BUDGET_EXHAUSTED, 3, 0)
    assert sorted(n for ls in (await store.chunk_map(batch)).values() for n in ls) == [1, 2, 3]  # none lost
