"""A new provider's slow start (health.py): calls in flight double with each round of answers (1, 2, 4,
8, ...) until its first 429, max_concurrency or concurrency_recovery_calls answers; against a real
redis-server."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from .healthkit import (
    MODEL,
    answer,
    answered_well,
    health,
    permit,
    prov,
    refused,
    renewals_stopped,  # noqa: F401  (stops what a test left renewing)
    round_of,
)


async def test_the_slow_start_doubles_the_calls_in_flight_with_each_round_of_answers(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, concurrency_recovery_calls=20), prov()
    await answered_well(h, p)  # the probe: a round of one, answer 1 of 20
    for size in (2, 4, 8):  # answers 2-3, 4-7, 8-15
        took = await round_of(h, p)
        assert len(took) == size and all(t.lease for t in took)
        assert (await h.snapshot([p.name]))[p.name]["concurrency_limit"] == size
        await answer(h, p, took)
    last = await round_of(h, p)
    assert len(last) == 16
    await answer(h, p, last[:5])  # answer 20 of 20: the slow start is over
    free = [await permit(h, p) for _ in range(40)]
    assert not any(f.lease for f in free)
    assert "concurrency_limit" not in (await h.snapshot([p.name]))[p.name]


async def test_the_calls_of_a_round_go_out_together_and_a_round_gone_takes_no_more(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, concurrency_recovery_calls=20), prov()
    await answered_well(h, p)
    await answer(h, p, await round_of(h, p))  # the next round takes four
    first = await permit(h, p)
    assert first.wait_s > 0  # it waits for the others to gather
    second = await permit(h, p)
    go = time.time() + second.wait_s
    assert abs(go - (time.time() + first.wait_s)) < 0.05
    await asyncio.sleep(first.wait_s + 0.05)  # the round went out with two of its four calls
    assert (await refused(h, p)).reason == "starting"
    await answer(h, p, [first, second])
    assert len(await round_of(h, p)) == 6  # the next round: four and its two answers


async def test_the_next_round_waits_for_every_answer_and_grows_by_the_successes_only(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, concurrency_recovery_calls=20, breaker_min_calls=100), prov()
    await answered_well(h, p)
    await answer(h, p, await round_of(h, p))
    took = await round_of(h, p)
    assert len(took) == 4
    await answer(h, p, took[:2])
    await answer(h, p, took[2:3], "transient")
    assert (await refused(h, p)).reason == "starting"  # one of its calls is still out
    await answer(h, p, took[3:])
    assert len(await round_of(h, p)) == 7


async def test_the_slow_start_ends_at_max_concurrency(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, concurrency_recovery_calls=20), prov(max_concurrency=5)
    await answered_well(h, p)
    for size in (2, 4):
        took = await round_of(h, p)
        assert len(took) == size
        await answer(h, p, took)
    held = [await permit(h, p) for _ in range(5)]  # then max_concurrency alone: no rounds
    assert (await refused(h, p)).reason == "concurrency"
    await answer(h, p, held[:1])
    await permit(h, p)  # a freed slot is taken again at once


async def test_a_round_whose_holder_stopped_renewing_lets_the_next_round_go_once_its_lease_lapses(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, concurrency_recovery_calls=20, lease_s=0.3), prov()
    gone = health(redis, prefix, concurrency_recovery_calls=20, lease_s=0.3)  # a worker that is killed
    await answered_well(h, p)
    mine, lost = await permit(h, p), await permit(gone, p)
    await gone.close()  # it renews no more
    await asyncio.sleep(mine.wait_s)  # the round went
    await answer(h, p, [mine])
    assert (await refused(h, p)).reason == "starting"
    await asyncio.sleep(0.4)
    assert len(await round_of(h, p)) == 3  # its lease lapsed; the answer that came grew the round
    assert lost.lease


async def test_the_slow_start_counts_the_first_answer_once_with_max_concurrency_too(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, concurrency_recovery_calls=3), prov(max_concurrency=4)
    await answered_well(h, p)  # 1 of 3
    await answer(h, p, await round_of(h, p))  # 2 and 3 of 3
    assert len([await permit(h, p) for _ in range(4)]) == 4  # then max_concurrency alone
    assert (await refused(h, p)).reason == "concurrency"


async def test_a_429_in_the_slow_start_keeps_it_at_one_call(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, cooldown_s=0, concurrency_recovery_calls=2), prov()
    await answered_well(h, p)
    await h.report(p, await permit(h, p), MODEL, "rate_limited", text="429")
    for _ in range(2):  # no longer a slow start: two answers give a second slot, not freedom
        got = await permit(h, p)
        assert (await refused(h, p)).reason == "concurrency"
        await h.report(p, got, MODEL, "success")
    assert [bool((await permit(h, p)).lease) for _ in range(2)] == [True, True]
    assert (await refused(h, p)).reason == "concurrency"


async def test_a_provider_whose_first_answer_is_a_429_gets_no_slow_start_that_would_end_in_freedom(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, cooldown_s=0, concurrency_recovery_calls=2), prov()
    probe = await permit(h, p)
    await h.report(p, probe, MODEL, "rate_limited", text="429")
    for why in ("probing", "concurrency"):  # two answers: a second slot, not the end of a slow start
        got = await permit(h, p)
        assert (await refused(h, p)).reason == why
        await h.report(p, got, MODEL, "success")
    assert [bool((await permit(h, p)).lease) for _ in range(2)] == [True, True]
    assert (await refused(h, p)).reason == "concurrency"


async def test_a_429_in_a_round_leaves_one_call_in_flight_whatever_the_round_had_out(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, cooldown_s=0, concurrency_recovery_calls=20), prov()
    await answered_well(h, p)
    await answer(h, p, await round_of(h, p))
    took = await round_of(h, p)
    assert len(took) == 4
    await answer(h, p, took[:1], "rate_limited")  # three calls of its round still out
    assert (await h.snapshot([p.name]))[p.name]["concurrency_limit"] == 1
    for got in took[1:]:
        assert (await refused(h, p)).reason == "concurrency"
        await answer(h, p, [got])
    await permit(h, p)
    assert (await refused(h, p)).reason == "concurrency"
