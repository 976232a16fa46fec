"""The lease on a counted call in flight (health.py): short, renewed by its live holder, so a slot whose
holder is gone (killed mid-call) frees within seconds; against a real redis-server and a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from batchrelay.store.health import Unavailable

from .healthkit import (
    MODEL,
    answered_well,
    health,
    permit,
    prov,
    refused,
    renewals_stopped,  # noqa: F401  (stops what a test left renewing)
)

ROOT = Path(__file__).resolve().parent.parent
A_FEW_SECONDS = 8.0

# A worker process that takes the provider's only slot and then hangs in its call until it is killed.
HOLDER = """
import asyncio, sys
from redis.asyncio import Redis
from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store.health import Health, Permit
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store

async def main() -> None:
    h = Health(Store(Redis.from_url(sys.argv[1]), Keys(sys.argv[2])), HealthConfig())
    p = ProviderConfig(name="p", base_url="http://p.invalid", max_concurrency=1)
    got = await h.acquire(p, "gpt-4o-mini", 100)
    print("held" if isinstance(got, Permit) and got.lease else f"not held: {got}", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_slot_whose_holder_was_killed_mid_call_frees_within_seconds(
    redis: Redis, redis_url: str, prefix: str
) -> None:
    h, p = health(redis, prefix), prov(max_concurrency=1)  # the default lease
    await answered_well(h, p)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url, prefix], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None
        assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "held"
        await asyncio.sleep(1.5)  # its calls in flight are renewed while it lives
        assert (await refused(h, p)).reason == "concurrency"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    killed = time.monotonic()
    while isinstance(await h.acquire(p, MODEL, 100), Unavailable):
        assert time.monotonic() - killed < A_FEW_SECONDS, "the dead holder's slot is still taken"
        await asyncio.sleep(0.2)


async def test_a_live_call_longer_than_its_lease_keeps_its_slot(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, lease_s=0.5), prov(max_concurrency=1)
    other = health(redis, prefix, lease_s=0.5)  # another worker process
    await answered_well(h, p)
    held = await permit(h, p)
    assert held.lease
    for _ in range(4):  # two seconds: four leases long
        await asyncio.sleep(0.5)
        assert (await refused(other, p)).reason == "concurrency"
    await h.report(p, held, MODEL, "success")
    await permit(other, p)


async def test_a_lease_given_back_is_not_renewed_back_into_its_slot(redis: Redis, prefix: str) -> None:
    h, p = health(redis, prefix, lease_s=0.25), prov(max_concurrency=2)
    await answered_well(h, p)
    kept, given_back = await permit(h, p), await permit(h, p)
    await h.release(given_back)
    await asyncio.sleep(0.6)  # several renewal rounds of the lease still held
    members = await redis.zrange(h.keys.concurrency(p.name), 0, -1)
    assert members == [kept.lease.encode()]
    await h.report(p, kept, MODEL, "success")
    assert await redis.zcard(h.keys.concurrency(p.name)) == 0
