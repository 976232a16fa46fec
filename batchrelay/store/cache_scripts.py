"""The response cache's script wrappers (cache.py), kept apart from scripts.py for its size: `Scripts`
has them (it registers the scripts; these only call them by name)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from batchrelay.store.keys import Keys


class CacheScripts:
    """The cache's wrappers, a part of `Scripts`; times in ms."""

    _s: Mapping[str, Any]  # the registered scripts by name (scripts.Script)

    @staticmethod
    def _cache_keys(k: Keys) -> dict[str, str]:
        return {"cache_entries": k.cache_entries, "cache_index": k.cache_index, "cache_stats": k.cache_stats}

    async def cache_get(self, k: Keys, *, keys: list[str], now_ms: int, ttl_ms: int, count: bool) -> list[bytes | None]:
        """Each key's entry, or None."""
        got: list[bytes | None] = await self._s["cache_get"](self._cache_keys(k), {
            "keys": orjson.dumps(keys), "now_ms": now_ms, "ttl_ms": ttl_ms, "count": "1" if count else "0"})
        return got

    async def cache_put(self, k: Keys, *, key: str, value: bytes, now_ms: int, ttl_ms: int, max_bytes: int) -> int:
        """How many entries were dropped (expired, or evicted for room)."""
        return int(await self._s["cache_put"](self._cache_keys(k), {
            "key": key, "value": value, "now_ms": now_ms, "ttl_ms": ttl_ms, "max_bytes": max_bytes}))

    async def cache_prune(self, k: Keys, *, keys: list[str], now_ms: int, ttl_ms: int, max_bytes: int) -> int:
        return int(await self._s["cache_prune"](self._cache_keys(k), {
            "keys": orjson.dumps(keys), "now_ms": now_ms, "ttl_ms": ttl_ms, "max_bytes": max_bytes}))

    async def cache_lease(self, k: Keys, key: str, *, token: str, ms: int) -> bool:
        """Renew the lease for `ms` (0: give it up); False when `token` no longer held it."""
        return bool(await self._s["cache_lease"]({"cache_lease": k.cache_lease(key)}, {"token": token, "ms": ms}))
