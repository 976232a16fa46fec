"""Calls in flight per provider, shared by every worker: max_concurrency, the adaptive limit a 429
sets (AIMD), and the relay giving a counted slot back (the slow start: test_health_slowstart.py); against a
real redis-server."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from batchrelay.money.budget import Reservation, Spend
from batchrelay.store.budget import Budget
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store
from batchrelay.worker.relay import _Call, _report_and_settle

from .healthkit import (
    MODEL,
    answered_well,
    health,
    permit,
    prov,
    refused,
    renewals_stopped,  # noqa: F401  (stops what a test left renewing)
    )

# --- concurrency ---------------------------------------------------------------------------------

@pytest.mark.parametrize("outcome", ["success", "transient"])
async def test_max_concurrency_refuses_a_third_call_until_a_report_frees_a_lease(
    redis: Redis, prefix: str, outcome: str
) -> None:
    h, p = health(redis, prefix, breaker_min_calls=100), prov(max_concurrency=2)
    await answered_well(h, p)
    first, _second = await permit(h, p), await permit(h, p)
    assert first.lease
    assert (await refused(h, p)).reason == "concurrency"
    await h.report(p, first, MODEL, outcome)  # type: ignore[arg-type]
    await permit(h, p)
    assert (await refused(h, p)).reason == "concurrency"


async def test_a_lease_whose_holder_stopped_renewing_frees_itself_after_lease_s(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, lease_s=0.3), prov(max_concurrency=2)
    gone = health(redis, prefix, lease_s=0.3)  # a worker process that dies
    await answered_well(h, p)
    await permit(gone, p)
    await permit(gone, p)  # both its calls die without reporting
    await gone.close()
    assert (await refused(h, p)).reason == "concurrency"
    await asyncio.sleep(0.4)
    await permit(h, p)


# --- concurrency after a 429 (AIMD) --------------------------------------------------------------

async def test_after_a_429_one_call_at_a_time_for_every_worker_until_its_report(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, cooldown_s=0, breaker_min_calls=100), prov()
    other = health(redis, prefix, cooldown_s=0, breaker_min_calls=100)  # another worker process, same Redis
    await answered_well(h, p)
    free = [await permit(h, p) for _ in range(5)]  # no limit yet: nothing is counted
    assert not any(f.lease for f in free)
    await h.report(p, free[0], MODEL, "rate_limited", text="429")
    first = await permit(other, p)
    assert first.lease  # counted now
    assert (await refused(h, p)).reason == "concurrency"
    assert (await refused(other, p)).reason == "concurrency"
    await other.report(p, first, MODEL, "transient", text="500")  # frees the slot, adds none
    await permit(h, p)
    assert (await refused(h, p)).reason == "concurrency"


async def test_the_limit_grows_by_one_every_concurrency_recovery_calls_answers(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, cooldown_s=0, concurrency_recovery_calls=3), prov()
    await answered_well(h, p)
    for _ in range(2):  # the rest of its slow start
        await h.report(p, await permit(h, p), MODEL, "success")
    await h.report(p, None, MODEL, "rate_limited", text="429")
    for limit in (1, 2, 3):
        held = [await permit(h, p) for _ in range(limit)]
        assert (await refused(h, p)).reason == "concurrency", limit
        for got in held:
            await h.report(p, got, MODEL, "success")
        for _ in range(3 - limit):  # make up three answers at this limit
            await h.report(p, await permit(h, p), MODEL, "success")
    assert (await h.snapshot([p.name]))[p.name]["concurrency_limit"] == 4


async def test_a_429_halves_the_calls_in_flight_it_counted(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, cooldown_s=0, breaker_min_calls=100), prov(max_concurrency=8)
    await answered_well(h, p)
    flying = [await permit(h, p) for _ in range(6)]
    await h.report(p, flying[0], MODEL, "rate_limited", text="429")  # 6 in flight -> 3
    assert (await h.snapshot([p.name]))[p.name]["concurrency_limit"] == 3
    for got in flying[1:3]:  # 5 still in flight, then 3 (failures: no answers to grow the limit on)
        assert (await refused(h, p)).reason == "concurrency"
        await h.report(p, got, MODEL, "transient", text="500")
    assert (await refused(h, p)).reason == "concurrency"
    await h.report(p, flying[3], MODEL, "transient", text="500")
    await permit(h, p)


async def test_a_burst_of_429s_does_not_halve_the_limit_again_and_again(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, cooldown_s=0), prov(max_concurrency=8)
    await answered_well(h, p)
    flying = [await permit(h, p) for _ in range(8)]
    limits = []
    for got in flying[:3]:  # 8, 7, 6 in flight when each 429 comes back
        await h.report(p, got, MODEL, "rate_limited", text="429")
        limits.append((await h.snapshot([p.name]))[p.name]["concurrency_limit"])
    assert limits == [4, 3, 3]


async def test_the_limit_holds_until_rate_recovery_s_after_a_long_retry_after_ends(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, rate_recovery_s=0.3), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, "rate_limited", retry_after=0.5, text="429")
    assert (await refused(h, p)).reason == "cooling"
    await asyncio.sleep(0.6)  # the cooldown is over, and more than rate_recovery_s since the 429
    held = await permit(h, p)
    assert held.lease and (await refused(h, p)).reason == "concurrency"
    await asyncio.sleep(0.3)  # rate_recovery_s after the cooldown ended
    assert not (await permit(h, p)).lease


async def test_rate_recovery_s_without_a_429_lifts_the_limit(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, cooldown_s=0, rate_recovery_s=0.3), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, "rate_limited", text="429")
    held = await permit(h, p)
    assert (await refused(h, p)).reason == "concurrency"
    assert (await h.snapshot([p.name]))[p.name]["concurrency_limit"] == 1
    await asyncio.sleep(0.35)
    assert "concurrency_limit" not in (await h.snapshot([p.name]))[p.name]
    free = [await permit(h, p) for _ in range(3)]
    assert not any(f.lease for f in free)
    await h.report(p, held, MODEL, "success")  # a late report of a counted call is harmless
    await permit(h, p)


# --- the relay gives a counted slot back whatever happens to the budget ------------------------------

async def test_a_429_is_reported_and_its_slot_freed_even_when_settling_the_budget_fails(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, cooldown_s=0), prov(max_concurrency=2)
    await answered_well(h, p)
    got = await permit(h, p)
    assert got.lease
    unreachable = Redis.from_url("redis://127.0.0.1:9", socket_connect_timeout=1)  # nothing listens there
    spend = Spend(Budget(Store(unreachable, Keys(prefix))), "b1")
    call = _Call(p, "chat", {"model": MODEL}, got, spend, Reservation("t1", Decimal("0.01")))
    with pytest.raises(RedisConnectionError):
        await _report_and_settle(call, h, None, "rate_limited", retry_after=5.0, text="429")
    await unreachable.aclose()
    assert await redis.zcard(Keys(prefix).concurrency(p.name)) == 0
    assert (await refused(h, p)).reason == "cooling"
