"""The whole fleet at a glance, read from Redis for `serve`'s /metrics (serve/metrics.py).

Counters come from the fleet hashes (`fleet:counts`, `fleet:ledger`, `cache:stats`), which only ever
grow: a batch that is forgotten (retention, `delete`) takes its own counts and ledger with it, the
fleet's stay. Gauges (batches by status, lines pending, queued jobs, provider health) are what the
store holds now.

A read is bounded however many batches there are: the fleet hashes and the health hash in one round
trip, then the batch index a block at a time, each block's statuses (and the pending count of its
unfinished batches) in one pipelined round trip: with 10,000 batches about 20 round trips, no SCAN
and no batch's lines or results read.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchrelay.config.settings import HealthConfig
from batchrelay.store.health import describe
from batchrelay.store.lane_status import open_parcels
from batchrelay.store.status import FINISHED
from batchrelay.store.store import Store

BLOCK = 1000  # batches per round trip


@dataclass(frozen=True, slots=True)
class Fleet:
    """One read of the fleet: the counter hashes as they are (field -> integer), and the gauges."""

    counts: dict[str, int] = field(default_factory=dict)  # fleet:counts (`lines SEP status`, `calls SEP ...`)
    ledger: dict[bytes, bytes] = field(default_factory=dict)  # fleet:ledger, as money/ledger.rows reads it
    cache: dict[str, int] = field(default_factory=dict)  # cache:stats
    batches: dict[str, int] = field(default_factory=dict)  # status -> how many batches have it
    pending: int = 0  # lines without a result, over the unfinished batches
    queued: int = 0  # jobs on the arq queues of the unfinished batches (and the shared one)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> health.describe
    lanes: dict[str, dict[str, int]] = field(default_factory=dict)  # lane -> state -> parcels not collected yet


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


async def read_fleet(store: Store, providers: list[str], health: HealthConfig, *, block: int = BLOCK) -> Fleet:
    """The fleet now; `providers`: the configured names whose health is described."""
    k, r = store.keys, store.redis
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(k.fleet_counts)
        pipe.hgetall(k.fleet_ledger)
        pipe.hgetall(k.cache_stats)
        pipe.hgetall(k.health)
        counts, ledger, cache, raw_health = await pipe.execute()
    statuses: Counter[str] = Counter()
    pending = 0
    queues = {k.queue}
    start = 0
    while True:
        ids = [b.decode() for b in await r.zrange(k.batches, start, start + block - 1)]
        if not ids:
            break
        start += len(ids)
        async with r.pipeline(transaction=False) as pipe:
            for b in ids:
                pipe.hmget(k.meta(b), ["status", "queue"])
            metas = await pipe.execute()
        open_ = []
        for b, (status, queue) in zip(ids, metas, strict=True):
            if status is None:
                continue  # forgotten between the index and its meta
            statuses[status.decode()] += 1
            if status.decode() not in FINISHED:
                open_.append(b)
                if queue:
                    queues.add(queue.decode())
        if open_:
            async with r.pipeline(transaction=False) as pipe:
                for b in open_:
                    pipe.scard(k.pending(b))
                pending += sum(await pipe.execute())
        if len(ids) < block:
            break
    async with r.pipeline(transaction=False) as pipe:
        for q in sorted(queues):
            pipe.zcard(q)
        queued = sum(await pipe.execute())
    now = time.time()
    text = {f.decode(): v.decode() for f, v in raw_health.items()}
    return Fleet(_ints(counts), ledger, _ints(cache), dict(statuses), pending, queued,
                 {n: describe(n, text, now, health.rate_recovery_s) for n in providers}, await open_parcels(store))
