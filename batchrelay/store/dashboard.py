"""What the web dashboard (serve/dashboard/) reads from Redis, and the budget raise it offers.

The dashboard polls every ~2 s, so every read here is bounded: a page of batches (their ledgers in
one pipelined round trip), a batch's per-minute buckets (`Keys.minutes`: one field per minute it
ran), a sample of a batch's error records (`ERROR_SCAN` results scanned at most, `ERROR_SAMPLE`
error records kept), a random sample of recent result records for the providers' latency and last
errors (`RESULT_SAMPLE`), and the fleet's counters (small hashes). Nothing here walks a whole batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from batchrelay.money.ledger import SEP
from batchrelay.store.budget import Budget
from batchrelay.store.store import ERR, BatchInfo, Store

ERROR_SCAN = 5000  # results looked at, at most, for a batch's error sample
ERROR_SAMPLE = 200  # error records kept from them
RESULT_SAMPLE = 60  # result records drawn per batch for the providers' latency and last errors


@dataclass(frozen=True, slots=True)
class BatchRow:
    info: BatchInfo
    cost_pico: int  # the ledger's billed cost so far


def cost_of(ledger: dict[bytes, bytes]) -> int:
    """The billed cost (pico-dollars) in a ledger hash: its `... SEP cost` fields summed."""
    tail = (SEP + "cost").encode()
    return sum(int(v) for k, v in ledger.items() if k.endswith(tail))


async def batch_rows(store: Store, limit: int) -> list[BatchRow]:
    """The newest `limit` batches with their cost, in two round trips."""
    infos = await store.list_batches(limit)
    async with store.redis.pipeline(transaction=False) as pipe:
        for info in infos:
            pipe.hgetall(store.keys.ledger(info.id))
        ledgers = await pipe.execute()
    return [BatchRow(info, cost_of(ledger)) for info, ledger in zip(infos, ledgers, strict=True)]


async def minutes(store: Store, batch_id: str) -> dict[int, dict[str, int]]:
    """The batch's per-minute buckets: minute (unix time // 60) -> {count name or `cost`: n}."""
    raw: dict[bytes, bytes] = await store.redis.hgetall(store.keys.minutes(batch_id))  # type: ignore[misc]
    out: dict[int, dict[str, int]] = {}
    for k, v in raw.items():
        minute, _, what = k.decode().partition(SEP)
        out.setdefault(int(minute), {})[what] = int(v)
    return out


async def error_sample(store: Store, batch_id: str, *, scan: int = ERROR_SCAN, keep: int = ERROR_SAMPLE
                       ) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Up to `keep` of the batch's error records, (line, record), found among at most `scan` of its
    results; and whether the scan stopped before the end (the sample is then partial)."""
    found: list[tuple[int, dict[str, Any]]] = []
    seen = 0
    async for line, raw in store.redis.hscan_iter(store.keys.results(batch_id), count=500):
        seen += 1
        if raw[:1] == ERR and len(found) < keep:
            found.append((int(line), orjson.loads(raw[1:])))
        if seen >= scan or len(found) >= keep:
            return sorted(found, key=lambda x: x[0]), True
    return sorted(found, key=lambda x: x[0]), False


async def recent_records(store: Store, batch_ids: list[str], most: int = RESULT_SAMPLE) -> list[dict[str, Any]]:
    """A random sample of up to `most` result records of each of these batches (HRANDFIELD)."""
    if not batch_ids:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        for b in batch_ids:
            pipe.hrandfield(store.keys.results(b), most, withvalues=True)
        drawn = await pipe.execute()
    out: list[dict[str, Any]] = []
    for flat in drawn:
        for raw in (flat or [])[1::2]:
            out.append(orjson.loads(raw[1:]))
    return out


async def fleet_counts(store: Store) -> dict[str, int]:
    raw: dict[bytes, bytes] = await store.redis.hgetall(store.keys.fleet_counts)  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items()}


async def fleet_ledger(store: Store) -> dict[bytes, bytes]:
    raw: dict[bytes, bytes] = await store.redis.hgetall(store.keys.fleet_ledger)  # type: ignore[misc]
    return raw


async def in_flight(store: Store, names: list[str]) -> dict[str, int]:
    """Each provider's calls in flight holding a lease (only while its concurrency is limited: a
    `max_concurrency`, its slow start or after a 429; otherwise 0 is no news)."""
    now = time.time()
    async with store.redis.pipeline(transaction=False) as pipe:
        for n in names:
            pipe.zcount(store.keys.concurrency(n), now, "+inf")
        counts = await pipe.execute()
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


async def raise_budget(store: Store, batch_id: str, max_usd: Decimal) -> dict[str, Any]:
    """Set the batch's spending limit (as `batchrelay budget --max-cost`): lines waiting on a spent
    budget go back on the queue. BatchNotFound for an unknown batch."""
    budget = Budget(store)
    requeued = await budget.raise_and_requeue(batch_id, max_usd)
    return {"batch": batch_id, **(await budget.info(batch_id)).as_dict(), "requeued_chunks": requeued}


async def budget_of(store: Store, batch_id: str) -> dict[str, Any]:
    return (await Budget(store).info(batch_id)).as_dict()
