"""The response cache in Redis: successful answers by request key (wire/cache_key.py), all under
the prefix.

`cache:entries` maps a key to its entry, compressed (zlib of JSON): the answer body in the job's
own dialect, its usage, where it came from (batch, line, provider, when) and what it cost (USD as
the exact decimal string of the money code; None when unpriced). `cache:index` scores each key by
when it was stored: entries past the TTL count as absent and are dropped, and while the stored bytes
(`cache:stats` keeps them) are over `max_mb` the oldest go first. Each change is one Lua script
(lua/cache_*.lua). No secret is in a key (a hash of the request) or a value (the answer).

Single flight: the worker that misses takes `cache:lease:KEY` (SET NX PX) and renews it while its
call runs; workers with the same key wait for the answer, and take the lease over once it lapses
(its holder died).
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from batchrelay.config.cache import CacheConfig
from batchrelay.money.pricing import pico, usd
from batchrelay.store.store import OK, Store

FORMAT = 2  # 1: one JSON object; 2: the object without its body, a newline, then the body's JSON
CLEAR_BLOCK = 1000


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One stored answer: `body` in the job's dialect (a dict; read back, its JSON as bytes, put in a
    record as it is without parsing it), `usage` as the record had it, and its origin."""

    body: dict[str, Any] | bytes
    model: str  # the job's model name
    usage: dict[str, Any] | None
    batch: str
    line: int
    provider: str
    at: float
    usd: str | None  # what the call cost; None: unknown price
    request_id: str | None = None

    def encode(self) -> bytes:
        body = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        head = orjson.dumps({
            "v": FORMAT, "model": self.model, "usage": self.usage, "batch": self.batch, "line": self.line,
            "provider": self.provider, "at": self.at, "usd": self.usd, "request_id": self.request_id})
        return zlib.compress(head + b"\n" + body, 6)

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer:
        head, newline, body = zlib.decompress(raw).partition(b"\n")  # compact JSON has no raw newline
        d = orjson.loads(head)
        return cls(body if newline else d["body"], d["model"], d.get("usage"), d["batch"], d["line"], d["provider"],
                   d["at"], d.get("usd"), d.get("request_id"))

    @property
    def origin(self) -> dict[str, Any]:
        return {"batch": self.batch, "line": self.line, "provider": self.provider, "at": self.at}


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    saved_usd: Decimal
    stored: int
    evicted: int

    @property
    def hit_rate(self) -> float | None:
        asked = self.hits + self.misses
        return self.hits / asked if asked else None

    def as_dict(self) -> dict[str, Any]:
        rate = self.hit_rate
        return {"entries": self.entries, "bytes": self.bytes, "mb": round(self.bytes / 1048576, 3),
                "hits": self.hits, "misses": self.misses, "hit_rate": None if rate is None else round(rate, 4),
                "saved_usd": format(self.saved_usd.normalize(), "f"), "stored": self.stored, "evicted": self.evicted}


class ResponseCache:
    """The store's response cache under `cfg` ([cache]: ttl, max_mb, lease_s)."""

    def __init__(self, store: Store, cfg: CacheConfig) -> None:
        self.store, self.cfg = store, cfg
        self.ttl_ms, self.lease_ms = int(cfg.ttl * 1000), int(cfg.lease_s * 1000)

    async def get(self, key: str, *, count: bool = True) -> CachedAnswer | None:
        """The stored answer, or None; `count`: the lookup counts as a hit or a miss."""
        s = self.store
        (raw,) = await s.scripts.cache_get(s.keys, keys=[key], now_ms=int(time.time() * 1000), ttl_ms=self.ttl_ms,
                                           count=count)
        return None if raw is None else CachedAnswer.decode(raw)

    async def get_many(self, keys: list[str]) -> list[CachedAnswer | None]:
        """`get` of each key (each counts as a hit or a miss), in one call."""
        s = self.store
        raws = await s.scripts.cache_get(s.keys, keys=keys, now_ms=int(time.time() * 1000), ttl_ms=self.ttl_ms,
                                         count=True)
        return [None if raw is None else CachedAnswer.decode(raw) for raw in raws]

    async def put(self, key: str, answer: CachedAnswer) -> int:
        """Store a successful answer; how many old entries were dropped to keep to the TTL and cap."""
        s = self.store
        return await s.scripts.cache_put(s.keys, key=key, value=answer.encode(), now_ms=int(time.time() * 1000),
                                         ttl_ms=self.ttl_ms, max_bytes=self.cfg.max_bytes)

    async def write_hits(self, batch_id: str, hits: list[tuple[int, bytes, dict[str, int], Decimal]]) -> int:
        """Lines' results from hits, (line, record, ledger, saved USD): the same exactly-once write as
        any answer (one script call for all), and the saved USD in the cache's stats, in one round
        trip; how many were new."""
        s, now = self.store, time.time()
        lines: list[tuple[int, bytes, str, dict[str, int], dict[str, int]]] = [
            (line, OK + record, "succeeded", ledger, {}) for line, record, ledger, _ in hits]
        saved = sum((h[3] for h in hits), Decimal(0))

        async def queue(pipe: Pipeline, again: bool) -> None:
            await s.scripts.write_results(s.keys, batch_id, now=now, pipe=pipe, lines=lines)
            if saved and not again:
                pipe.hincrby(s.keys.cache_stats, "saved", pico(saved))
        return int((await s.acked_write(queue))[0])  # and waits for replicas ([redis] min_replicas_ack)

    async def lease(self, key: str) -> str | None:
        """The single-flight lease for `key` (its token), or None while another worker holds it."""
        token = uuid.uuid4().hex
        ok = await self.store.redis.set(self.store.keys.cache_lease(key), token, nx=True, px=self.lease_ms)
        return token if ok else None

    async def renew(self, key: str, token: str) -> bool:
        return await self.store.scripts.cache_lease(self.store.keys, key, token=token, ms=self.lease_ms)

    async def release(self, key: str, token: str) -> None:
        await self.store.scripts.cache_lease(self.store.keys, key, token=token, ms=0)

    async def stats(self) -> CacheStats:
        """Counts after dropping what expired."""
        await self._prune([])
        raw: dict[bytes, bytes] = await self.store.redis.hgetall(self.store.keys.cache_stats)  # type: ignore[misc]
        n = {k.decode(): int(v) for k, v in raw.items()}
        return CacheStats(n.get("entries", 0), n.get("bytes", 0), n.get("hits", 0), n.get("misses", 0),
                          usd(n.get("saved", 0)), n.get("stored", 0), n.get("evicted", 0))

    async def clear(self, *, older_than_s: float | None = None, model: str | None = None) -> int:
        """Drop entries (all; stored more than `older_than_s` ago; of the job model `model`); how many."""
        s, r = self.store, self.store.redis
        upto = "+inf" if older_than_s is None else (time.time() - older_than_s) * 1000
        keys = [k.decode() for k in await r.zrangebyscore(s.keys.cache_index, "-inf", upto)]
        if model is not None and keys:
            chosen = []
            for start in range(0, len(keys), CLEAR_BLOCK):
                block = keys[start:start + CLEAR_BLOCK]
                raws = await r.hmget(s.keys.cache_entries, block)  # type: ignore[misc]
                chosen += [k for k, raw in zip(block, raws, strict=True)
                           if raw is not None and CachedAnswer.decode(raw).model == model]
            keys = chosen
        dropped = 0
        for start in range(0, len(keys), CLEAR_BLOCK):
            dropped += await self._prune(keys[start:start + CLEAR_BLOCK])
        return dropped

    async def _prune(self, keys: list[str]) -> int:
        s = self.store
        return await s.scripts.cache_prune(s.keys, keys=keys, now_ms=int(time.time() * 1000), ttl_ms=self.ttl_ms,
                                           max_bytes=self.cfg.max_bytes)
