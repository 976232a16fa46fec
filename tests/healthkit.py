"""Helpers for the health tests: providers, a Health with no slow start, and acquire outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store.health import ROUND_GATHER_S, Health, Kind, Permit, Unavailable
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store

BURST = 32  # acquires sent at once while a slow-start round gathers

MODEL = "gpt-4o-mini"


def prov(name: str = "p", **fields: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": name, "base_url": f"http://{name}.invalid", **fields})


MADE: list[Health] = []  # by `health`, for `renewals_stopped`


def health(redis: Redis, prefix: str, **cfg: Any) -> Health:
    """No slow start unless a test asks for one: calls flow freely after the first answer."""
    made = Health(Store(redis, Keys(prefix)), HealthConfig(**{"concurrency_recovery_calls": 1, **cfg}))
    MADE.append(made)
    return made


@pytest.fixture(autouse=True)
async def renewals_stopped(redis: Redis) -> AsyncIterator[None]:
    """A test may end with calls in flight: their Health renews them no more once it is over, before its
    Redis client is closed (imported by the modules whose tests do)."""
    yield
    while MADE:
        await MADE.pop().close()


async def permit(h: Health, p: ProviderConfig, model: str = MODEL, tokens: int = 100) -> Permit:
    got = await h.acquire(p, model, tokens)
    assert isinstance(got, Permit), got
    return got


async def refused(h: Health, p: ProviderConfig, model: str = MODEL, tokens: int = 100) -> Unavailable:
    got = await h.acquire(p, model, tokens)
    assert isinstance(got, Unavailable), got
    return got


async def answered_well(h: Health, p: ProviderConfig, tokens: int = 100) -> Permit:
    """The provider's first call (a probe) succeeds, so calls flow freely afterwards."""
    probe = await permit(h, p, tokens=tokens)
    assert probe.probe
    await h.report(p, probe, MODEL, "success")
    return probe


async def round_of(h: Health, p: ProviderConfig) -> list[Permit]:
    """Every call the slow start's current round takes (the next acquire is refused: 'starting'), once
    they went."""
    # A round gathers for half the time since the last round went (at most ROUND_GATHER_S): wait that
    # long first, and ask in bursts, so a loaded machine's slow round trips never close it early.
    await asyncio.sleep(2 * ROUND_GATHER_S)
    took: list[Permit] = []
    while True:
        got = await asyncio.gather(*(h.acquire(p, MODEL, 100) for _ in range(BURST)))
        took += [g for g in got if isinstance(g, Permit)]
        refusals = [g for g in got if not isinstance(g, Permit)]
        if refusals:
            assert all(r.reason == "starting" for r in refusals), refusals
            break
    await asyncio.sleep(max(t.wait_s for t in took))  # as the relay does before sending
    return took


async def answer(h: Health, p: ProviderConfig, calls: list[Permit], kind: Kind = "success") -> None:
    for got in calls:
        await h.report(p, got, MODEL, kind)
