"""Helpers for the health tests: providers, a Health with no slow start, and acquire outcomes."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store.health import Health, Permit, Unavailable
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store

MODEL = "gpt-4o-mini"


def prov(name: str = "p", **fields: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": name, "base_url": f"http://{name}.invalid", **fields})


def health(redis: Redis, prefix: str, **cfg: Any) -> Health:
    """No slow start unless a test asks for one: calls flow freely after the first answer."""
    return Health(Store(redis, Keys(prefix)), HealthConfig(**{"concurrency_recovery_calls": 1, **cfg}))


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
