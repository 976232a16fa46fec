"""Provider health and rate limits shared by every worker, against a real redis-server (README: "Shared health")."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from typing import Any

import pytest
from redis.asyncio import Redis

from batchrelay.config.settings import ProviderConfig
from batchrelay.money.tokens import estimate_tokens
from batchrelay.store.health import Health, Permit
from batchrelay.store.keys import Keys

from .healthkit import (
    MODEL,
    answered_well,
    health,
    permit,
    prov,
    refused,
    renewals_stopped,  # noqa: F401  (stops what a test left renewing)
)

RPM600 = 60 / (600 * 0.99)  # seconds between calls at rpm=600 and the default 0.99 headroom


async def timed_acquire(h: Health, p: ProviderConfig, tokens: int = 100) -> float:
    """When the slot this acquire reserved starts (now + wait_s). A call in flight that is being
    counted (after a 429) answers at once, so it does not hold the next acquire back."""
    now = time.time()
    got = await permit(h, p, tokens=tokens)
    if got.lease:
        await h.report(p, got, MODEL, "success")
    return now + got.wait_s


async def dump(redis: Redis, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(match=prefix + "*"):
        kind = (await redis.type(key)).decode()
        out[key.decode()] = (await redis.hgetall(key) if kind == "hash"  # type: ignore[misc]
                             else await redis.zrange(key, 0, -1, withscores=True))
    return out


# --- probing a provider that never answered well -------------------------------------------------

async def test_a_provider_that_never_answered_well_gets_one_probe_at_a_time(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix), prov()
    probe = await permit(h, p)
    assert probe.probe
    busy = await refused(h, p)
    assert busy.reason == "probing" and 0 < busy.wait_s < 1
    await h.report(p, probe, MODEL, "success")
    first, second = await permit(h, p), await permit(h, p)  # calls now flow freely
    assert not first.probe and not second.probe


async def test_a_failed_probe_lets_the_next_caller_probe_again(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, breaker_min_calls=100), prov()
    probe = await permit(h, p)
    await h.report(p, probe, MODEL, "transient", text="502 bad gateway")
    again = await permit(h, p)
    assert again.probe
    assert (await refused(h, p)).reason == "probing"


async def test_a_probe_whose_caller_vanished_is_given_to_another_caller_after_probe_s(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, probe_s=0.3), prov()
    await permit(h, p)  # never reported
    assert (await refused(h, p)).reason == "probing"
    await asyncio.sleep(0.4)
    assert (await permit(h, p)).probe


async def test_reporting_an_ordinary_success_without_a_lease_writes_nothing(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix), prov()
    await answered_well(h, p)
    ordinary = await permit(h, p)
    assert not ordinary.probe and not ordinary.lease
    before = await dump(redis, prefix)
    await h.report(p, ordinary, MODEL, "success")
    assert await dump(redis, prefix) == before


# --- billing, auth, 429, 404 ---------------------------------------------------------------------

async def test_a_billing_error_benches_the_provider_for_every_caller_until_cleared(
    redis: Redis, prefix: str, redis_url: str
) -> None:
    h, p = health(redis, prefix, bench_s=900), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, "billing", text="402 insufficient balance")
    other_client = Redis.from_url(redis_url)  # another worker: its own connection, same prefix
    try:
        other = health(other_client, prefix, bench_s=900)
        benched = await refused(other, p)
        assert benched.reason == "benched" and 895 <= benched.wait_s <= 900
        assert (await refused(other, p, model="another-model")).reason == "benched"  # the whole provider
        await other.clear(p.name)
    finally:
        await other_client.aclose()
    assert isinstance(await h.acquire(p, MODEL, 100), Permit)


async def test_an_auth_error_disables_the_provider_until_cleared(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, disable_s=3600), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, "auth", text="401 invalid key")
    disabled = await refused(h, p)
    assert disabled.reason == "disabled" and 3590 <= disabled.wait_s <= 3600
    await h.clear(p.name)
    await permit(h, p)


@pytest.mark.parametrize(("retry_after", "cool_for"), [
    (7.0, 7.0),  # Retry-After honoured
    (None, 5.0),  # no Retry-After: cooldown_s
])
async def test_a_429_cools_the_provider_for_retry_after_or_cooldown_s(
    redis: Redis, prefix: str, retry_after: float | None, cool_for: float
) -> None:
    h, p = health(redis, prefix, cooldown_s=5), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, "rate_limited", retry_after=retry_after, text="429")
    cooling = await refused(h, p)
    assert cooling.reason == "cooling"
    assert cool_for - 0.5 <= cooling.wait_s <= cool_for


async def test_a_cooldown_ends_by_itself(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, "rate_limited", retry_after=0.3)
    assert (await refused(h, p)).reason == "cooling"
    await asyncio.sleep(0.4)
    await permit(h, p)


async def test_a_404_cools_only_that_model_at_that_provider(redis: Redis, prefix: str) -> None:
    h, p, q = health(redis, prefix, model_cooldown_s=600), prov("p"), prov("q")
    await answered_well(h, p)
    await answered_well(h, q)
    await h.report(p, None, "missing-model", "model", text="404 model not found")
    cooling = await refused(h, p, model="missing-model")
    assert cooling.reason == "model_until" and 595 <= cooling.wait_s <= 600
    await permit(h, p, model=MODEL)  # other models at p still go
    await permit(h, q, model="missing-model")  # and the model still goes elsewhere


@pytest.mark.parametrize(("first", "then", "reason", "at_least"), [
    ({"kind": "billing"}, {"kind": "rate_limited", "retry_after": 2}, "benched", 890),
    ({"kind": "rate_limited", "retry_after": 30}, {"kind": "rate_limited", "retry_after": 2}, "cooling", 25),
    ({"kind": "rate_limited", "retry_after": 30}, {"kind": "rate_limited"}, "cooling", 25),
])
async def test_a_later_shorter_cooldown_never_shortens_a_longer_one(
    redis: Redis, prefix: str, first: dict[str, Any], then: dict[str, Any], reason: str, at_least: float
) -> None:
    h, p = health(redis, prefix, bench_s=900, cooldown_s=5), prov()
    await answered_well(h, p)
    await h.report(p, None, MODEL, **first)
    await h.report(p, None, MODEL, **then)
    still = await refused(h, p)
    assert still.reason == reason and still.wait_s >= at_least


# --- the circuit breaker -------------------------------------------------------------------------

BREAKER = {"breaker_min_calls": 4, "breaker_error_rate": 0.5, "breaker_open_s": 0.3}


async def fail(h: Health, p: ProviderConfig, got: Permit) -> None:
    await h.report(p, got, MODEL, "transient", text="503 overloaded")


async def test_a_few_failures_among_many_calls_do_not_open_the_breaker(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, **BREAKER), prov()
    await answered_well(h, p)
    calls = [await permit(h, p) for _ in range(5)]  # 6 calls in the window with the probe
    for got in calls[:2]:
        await fail(h, p, got)  # 2 of 6 failed: below 50%
    await permit(h, p)


async def test_the_breaker_opens_after_enough_failures_and_closes_after_a_good_probe(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, **BREAKER), prov()
    await answered_well(h, p)  # call 1
    for _ in range(2):  # calls 2 and 3 fail: below breaker_min_calls, still closed
        await fail(h, p, await permit(h, p))
    await fail(h, p, await permit(h, p))  # call 4 fails: 3 of 4
    opened = await refused(h, p)
    assert opened.reason == "breaker open" and 0.1 <= opened.wait_s <= 0.3
    assert (await h.snapshot([p.name]))[p.name]["state"] == "breaker open"

    await asyncio.sleep(0.35)  # half-open: one probe at a time
    assert (await h.snapshot([p.name]))[p.name]["state"] == "half-open"
    probe = await permit(h, p)
    assert probe.probe
    assert (await refused(h, p)).reason == "probing"
    await fail(h, p, probe)  # a failed probe opens it again at once
    assert (await refused(h, p)).reason == "breaker open"

    await asyncio.sleep(0.35)
    probe = await permit(h, p)
    assert probe.probe
    await h.report(p, probe, MODEL, "success")
    first, second = await permit(h, p), await permit(h, p)
    assert not first.probe and not second.probe
    assert (await h.snapshot([p.name]))[p.name]["state"] == "ok"


# --- pacing --------------------------------------------------------------------------------------

async def test_calls_are_paced_60_over_rpm_apart_at_the_headroom(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix), prov(rpm=600)
    await answered_well(h, p)  # reserved the slot at once
    starts = [await timed_acquire(h, p) for _ in range(5)]
    gaps = [b - a for a, b in pairwise(starts)]
    assert all(RPM600 * 0.9 <= g <= RPM600 * 1.1 for g in gaps), gaps


async def test_each_acquire_waits_one_more_interval(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix), prov(rpm=600)
    await answered_well(h, p)
    waits = [(await permit(h, p)).wait_s for _ in range(4)]
    for n, wait in enumerate(waits, start=1):
        assert n * RPM600 - 0.05 <= wait <= n * RPM600 + 0.005, waits


async def test_an_acquire_that_would_wait_past_max_wait_is_refused_and_takes_no_slot(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, max_wait_s=0.5), prov(rpm=60, max_concurrency=10)
    await answered_well(h, p)  # next slot is 60/(60*0.99) = 1.01 s away
    first = await refused(h, p)
    assert first.reason == "rate" and 0.6 <= first.wait_s <= 1.02
    second = await refused(h, p)  # the refused call reserved nothing: the wait did not grow
    assert second.reason == "rate" and second.wait_s <= first.wait_s
    assert await redis.zcard(Keys(prefix).concurrency(p.name)) == 0


async def test_tokens_per_minute_pace_calls_by_their_token_estimate(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix), prov(tpm=6000)
    big = 60 * 60 / (6000 * 0.99)  # 60 tokens: 0.606 s of the budget
    small = 6 * 60 / (6000 * 0.99)
    started = time.time()
    await answered_well(h, p, tokens=60)
    a = await timed_acquire(h, p, tokens=6)
    b = await timed_acquire(h, p, tokens=60)
    c = await timed_acquire(h, p, tokens=6)
    assert big - 0.005 <= a - started <= big + 0.1  # after the probe's 60 tokens
    assert small * 0.9 <= b - a <= small * 1.1
    assert big * 0.95 <= c - b <= big * 1.05


async def test_a_429_halves_the_pace_which_recovers_linearly_over_rate_recovery_s(
    redis: Redis, prefix: str
) -> None:
    h, p = health(redis, prefix, cooldown_s=0, rate_recovery_s=1.0), prov(rpm=600)
    await answered_well(h, p)
    a = await timed_acquire(h, p)
    b = await timed_acquire(h, p)
    assert RPM600 * 0.9 <= b - a <= RPM600 * 1.1
    await h.report(p, None, MODEL, "rate_limited", text="429")
    reported = time.time()
    c = await timed_acquire(h, p)  # spaced by the factor before the 429
    d = await timed_acquire(h, p)
    assert 1.8 * RPM600 <= d - c <= 2.02 * RPM600  # half pace: double spacing

    await asyncio.sleep(0.5)  # halfway through the recovery: about 3/4 pace
    halfway = time.time() - reported
    e = await timed_acquire(h, p)
    f = await timed_acquire(h, p)
    factor = 0.5 + halfway / 2  # from 1/2 to 1 over 1 s
    assert RPM600 / factor * 0.9 <= f - e <= RPM600 / factor * 1.1
    assert 1.1 * RPM600 <= f - e <= 1.5 * RPM600

    await asyncio.sleep(max(0.0, 1.05 - (time.time() - reported)))  # recovered
    g = await timed_acquire(h, p)
    i = await timed_acquire(h, p)
    assert RPM600 * 0.9 <= i - g <= RPM600 * 1.1


# --- what people see -----------------------------------------------------------------------------

async def test_snapshot_describes_each_providers_state_for_people(redis: Redis, prefix: str) -> None:
    h = health(redis, prefix, bench_s=900, model_cooldown_s=600)
    benched, cooling, fine = prov("benched"), prov("cooling"), prov("fine")
    for p in (benched, cooling, fine):
        await answered_well(h, p)
    await h.report(benched, None, MODEL, "billing", text="402 insufficient balance")
    await h.report(cooling, None, "old-model", "model", text="404 model not found")
    await h.report(cooling, None, "older-model", "model", text="404 model not found")

    snap = await h.snapshot(["benched", "cooling", "untried", "fine"])
    assert snap["benched"]["state"] == "benched"
    assert 895 <= snap["benched"]["for_s"] <= 900
    assert snap["benched"]["last"] == "402 insufficient balance"
    assert snap["cooling"]["state"] == "ok"
    assert snap["cooling"]["cooling_models"] == ["old-model", "older-model"]
    assert snap["untried"] == {"state": "untried", "last": None}
    assert snap["fine"] == {"state": "ok", "last": None}


# --- token estimates -----------------------------------------------------------------------------

def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def test_estimate_tokens_grows_with_the_messages() -> None:
    short, long = estimate_tokens(chat("hi", max_tokens=10)), estimate_tokens(chat("hi " * 4000, max_tokens=10))
    assert long - short >= 2500  # 12,000 more characters is about 3,000 more tokens


@pytest.mark.parametrize(("extra", "output_budget"), [
    ({"max_tokens": 10}, 10),
    ({"max_tokens": 5000}, 5000),
    ({"max_completion_tokens": 300}, 300),
    ({}, 1024),  # not set: assume 1,024
])
def test_estimate_tokens_includes_the_output_budget(extra: dict[str, Any], output_budget: int) -> None:
    one = estimate_tokens(chat("hello there", max_tokens=1))
    assert estimate_tokens(chat("hello there", **extra)) - one == output_budget - 1
