"""A batch's spending limit in Redis: reserve before a call, settle after it, exact to the pico-dollar."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from typing import Any

import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.money.budget import OverBudget, Spend, Unpriced
from batchrelay.money.pricing import pico
from batchrelay.spec import BatchSpec
from batchrelay.store.budget import Budget
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.submit import new_batch_id
from batchrelay.wire.jobs import JobLine


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


async def test_a_reservation_past_the_limit_is_refused_and_the_batch_waits(store: Store) -> None:
    batch = await _batch(store, D("0.1"))
    b = Budget(store)
    assert await b.reserve(batch, D("0.06")) is not None
    assert await b.reserve(batch, D("0.05")) is None  # 0.11 > 0.1
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED
    info = await b.info(batch)
    assert (info.reserved_usd, info.spent_usd, info.remaining_usd) == (D("0.06"), 0, D("0.04"))  # refused: not held
    assert await b.reserve(batch, D("0.04")) is not None  # exactly up to the limit is allowed
    assert (await b.info(batch)).remaining_usd == 0
    assert await b.reserve(batch, D("0.000000000001")) is None  # not one pico-dollar more
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED
    assert (await store.claim(batch, [1, 2])).jobs == []  # an exhausted batch gives out no line


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
    tokens = await asyncio.gather(*(budgets[i % 5].reserve(batch, D("0.01")) for i in range(50)))
    granted = [t for t in tokens if t is not None]
    assert len(granted) == 25 and len(set(granted)) == 25
    info = await budgets[0].info(batch)
    assert (info.reserved_usd, info.remaining_usd) == (D("0.25"), 0)
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED
    assert await store.redis.zcard(store.keys.budget_leases(batch)) == 25


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
    with pytest.raises(OverBudget):
        await spend.reserve(PRICED, _body(max_tokens=10))
    assert await _status(store, batch) == Status.BUDGET_EXHAUSTED

    await spend.settle(held, D("0.000015"))  # what the call was billed
    await spend.settle(second, None)  # unknown cost: the reservation counts as spent
    info = await spend.budget.info(batch)
    assert (info.spent_usd, info.reserved_usd) == (D("0.000037"), 0)


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
