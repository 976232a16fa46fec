"""The response cache (issue 15, item 2): the request key, the store (TTL, size cap, stats, clear),
lines answered from it (no call, cost 0, the ledger's hits and saved USD, no budget charge) and
single flight (identical requests sent once, in one process and across worker processes, one of
them SIGKILLed mid-call). Real Redis, the simulator over HTTP, its calls counted."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from batchrelay.config.cache import CacheConfig
from batchrelay.config.settings import HealthConfig, ProviderConfig, Settings, WorkerConfig
from batchrelay.money.ledger import CACHE
from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.budget import Budget
from batchrelay.store.cache import CachedAnswer, ResponseCache
from batchrelay.store.keys import Keys
from batchrelay.store.spending import cost_summary, ledger_of, status_object
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.cache_key import cache_key
from batchrelay.worker.runtime import Runtime

from .conftest import OwnRedis, batchrelay, openai_line, wait_for

MODEL = "gpt-4o-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


# --- the key: a pure function ---------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "same"), [
    (BODY, {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": MODEL}, True),  # key order
    (BODY, {**BODY, "stream": True, "stream_options": {"include_usage": True}}, True),  # streaming flags
    (BODY, {**BODY, "model": "gpt-4o"}, False),
    (BODY, {**BODY, "temperature": 1}, False),
    (BODY, {**BODY, "messages": [{"role": "user", "content": "hi!"}]}, False),
])
def test_the_key_ignores_key_order_and_streaming_flags_but_not_what_changes_the_answer(
        a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    assert (cache_key("chat", a) == cache_key("chat", b)) is same


def test_the_key_depends_on_the_dialect_and_is_a_sha256() -> None:
    assert cache_key("chat", BODY) != cache_key("messages", BODY)
    assert len(cache_key("chat", BODY)) == 64 and int(cache_key("chat", BODY), 16) >= 0


# --- helpers -----------------------------------------------------------------------------------------

def _settings(base_url: str, prefix: str = "batchrelay:", **cache: Any) -> Settings:
    return Settings(worker=WorkerConfig(call_timeout=5, backoff=0.01, concurrency=4),
                    health=HealthConfig(concurrency_recovery_calls=1),
                    cache=CacheConfig(**{"lease_s": 2, **cache}),
                    providers=(ProviderConfig(name="sim", base_url=base_url),))


@contextlib.asynccontextmanager
async def _runtime(store: Store, base_url: str, **cache: Any) -> AsyncIterator[Runtime]:
    rt = Runtime.opened(_settings(base_url, **cache), store)
    await rt.health.report(rt.providers[0], None, MODEL, "success")  # known good: no probe
    try:
        yield rt
    finally:
        await rt.close()


def _src(lines: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO(b"".join(orjson.dumps(x) + b"\n" for x in lines))


async def _run(store: Store, rt: Runtime, lines: list[dict[str, Any]], *, cache: bool = True,
               max_cost: str | None = None) -> str:
    """A batch of these lines in one chunk, run to the end in this process; its id."""
    spec = BatchSpec(name="t", chunk_size=len(lines), cache=cache,
                     max_cost=Decimal(max_cost) if max_cost else None)
    res = await submit_stream(store, _src(lines), spec, source="t")
    ((cid, ns),) = (await store.chunk_map(res.batch_id)).items()
    await rt.run_chunk(res.batch_id, ns, cid)
    return res.batch_id


async def _records(store: Store, batch: str) -> list[dict[str, Any]]:
    return [orjson.loads(rec) async for _, rec in store.iter_results(batch)]


def _calls(base: str) -> int:
    return int(SimulatorProcess.stats_of(base)["calls"])


# --- hits and misses --------------------------------------------------------------------------------

async def test_a_rerun_with_the_cache_is_answered_without_a_provider_call_and_costs_nothing(
        store: Store, simulator: SimulatorProcess) -> None:
    lines = [openai_line(i) for i in range(1, 7)]
    async with _runtime(store, simulator.base_url) as rt:
        first = await _run(store, rt, lines)
        assert simulator.stats()["calls"] == 6
        again = await _run(store, rt, [{**x, "custom_id": f"other-{i}"} for i, x in enumerate(lines)])
    assert simulator.stats()["calls"] == 6  # not one more
    before = {r["batchrelay"]["line"]: r for r in await _records(store, first)}
    assert all(r["batchrelay"]["cache"] == {"status": "miss"} for r in before.values())
    for r in await _records(store, again):
        line = r["batchrelay"]["line"]
        c = r["batchrelay"]["cache"]
        assert c["status"] == "hit" and c["from"]["batch"] == first and c["from"]["line"] == line
        assert c["from"]["provider"] == "sim" and c["saved_usd"] == before[line]["batchrelay"]["cost"]["usd"]
        assert r["response"]["body"] == before[line]["response"]["body"] and r["custom_id"].startswith("other-")
        assert r["batchrelay"]["cost"]["usd"] == "0" and r["batchrelay"]["attempts"] == []
    info = await store.info(again)
    assert (info.status, info.succeeded) == ("completed", 6)
    rs, t, budget = await ledger_of(store, again)
    assert [(r.provider, r.model, r["cache_hits"], r["requests"]) for r in rs] == [(CACHE, MODEL, 6, 0)]
    saved = sum(Decimal(r["batchrelay"]["cost"]["usd"]) for r in before.values())
    summary = cost_summary(t, budget)
    assert summary["usd"] == "0" and summary["cache_hits"] == 6 and Decimal(summary["saved_usd"]) == saved
    assert (await status_object(store, info))["cost"] == summary  # what status --json and the webhook show
    # the first batch's ledger is the sum of its lines, as always
    _, t1, _ = await ledger_of(store, first)
    assert t1.cost == saved and t1["cache_hits"] == 0
    stats = await ResponseCache(store, CacheConfig()).stats()
    assert (stats.entries, stats.hits, stats.misses, stats.saved_usd) == (6, 6, 6, saved)


async def test_identical_lines_in_one_batch_are_sent_once(store: Store) -> None:
    with SimulatorProcess({"latency_ms": 300}) as base:
        async with _runtime(store, base) as rt:
            batch = await _run(store, rt, [{**openai_line(1), "custom_id": f"c{i}"} for i in range(8)])
        assert _calls(base) == 1
    recs = await _records(store, batch)
    assert len(recs) == 8 and sorted(r["batchrelay"]["cache"]["status"] for r in recs) == ["hit"] * 7 + ["miss"]
    assert len({orjson.dumps(r["response"]["body"]) for r in recs}) == 1


async def test_with_the_cache_off_nothing_is_looked_up_or_stored(store: Store, simulator: SimulatorProcess) -> None:
    async with _runtime(store, simulator.base_url) as rt:
        await _run(store, rt, [openai_line(1), {**openai_line(1), "custom_id": "again"}], cache=False)
        batch = await _run(store, rt, [openai_line(1)], cache=False)
    assert simulator.stats()["calls"] == 3
    assert "cache" not in (await _records(store, batch))[0]["batchrelay"]
    s = await ResponseCache(store, CacheConfig()).stats()
    assert (s.entries, s.hits, s.misses) == (0, 0, 0)
    assert await store.redis.exists(store.keys.cache_entries, store.keys.cache_index) == 0


async def test_a_failed_call_stores_nothing(store: Store) -> None:
    with SimulatorProcess({"fail_status": 400}) as base:
        async with _runtime(store, base) as rt:
            await _run(store, rt, [openai_line(1)])
            await _run(store, rt, [openai_line(1)])
        assert _calls(base) == 2
    assert (await ResponseCache(store, CacheConfig()).stats()).entries == 0


async def test_a_budget_is_never_charged_for_a_hit(store: Store, simulator: SimulatorProcess) -> None:
    async with _runtime(store, simulator.base_url) as rt:
        await _run(store, rt, [openai_line(i) for i in range(1, 4)])
        batch = await _run(store, rt, [openai_line(i) for i in range(1, 4)], max_cost="0.000001")
    assert simulator.stats()["calls"] == 3
    info = await Budget(store).info(batch)
    assert (info.spent_usd, info.reserved_usd) == (0, 0)
    assert (await store.info(batch)).status == "completed"


# --- the store: TTL, size cap, clear --------------------------------------------------------------

def _answer(n: int, model: str = MODEL, size: int = 10) -> CachedAnswer:
    body = {"id": f"a{n}", "choices": [{"message": {"content": os.urandom(size).hex()}}]}
    return CachedAnswer(body, model, None, "batch_x", n, "sim", time.time(), "0.0001")


async def test_an_answer_past_its_ttl_is_gone(store: Store, simulator: SimulatorProcess) -> None:
    async with _runtime(store, simulator.base_url, ttl=1) as rt:
        await _run(store, rt, [openai_line(1)])
        await asyncio.sleep(1.2)
        batch = await _run(store, rt, [openai_line(1)])
    assert simulator.stats()["calls"] == 2
    assert (await _records(store, batch))[0]["batchrelay"]["cache"] == {"status": "miss"}


async def test_over_max_mb_the_oldest_answers_are_evicted_first(store: Store) -> None:
    cache = ResponseCache(store, CacheConfig(max_mb=0.01))  # 10,485 bytes
    # the index is by put time in ms: puts within one ms tie and go by key, so the keys sort as they were put
    # (k9 outlived k10-k14 in one CI run with "k{n}" keys)
    for n in range(40):
        await cache.put(f"k{n:02}", _answer(n, size=200))  # random: ~420 bytes each, compressed
    s = await cache.stats()
    assert 0 < s.bytes <= CacheConfig(max_mb=0.01).max_bytes and 10 < s.entries < 40 and s.evicted == 40 - s.entries
    assert await cache.get("k00") is None and await cache.get("k39") is not None
    kept = [n for n in range(40) if await cache.get(f"k{n:02}", count=False) is not None]
    assert kept == list(range(40 - s.entries, 40))  # the newest stayed
    assert s.bytes == sum([await store.redis.hstrlen(store.keys.cache_entries, f"k{n:02}") for n in kept])


async def test_clear_by_age_and_by_model(store: Store) -> None:
    cache = ResponseCache(store, CacheConfig())
    await cache.put("old", _answer(1))
    await store.redis.zadd(store.keys.cache_index, {"old": (time.time() - 3 * 86400) * 1000})
    await cache.put("a", _answer(2, model="m-a"))
    await cache.put("b", _answer(3, model="m-b"))
    assert await cache.clear(older_than_s=2 * 86400) == 1
    assert await cache.clear(model="m-a") == 1
    assert [await cache.get(k, count=False) is not None for k in ("old", "a", "b")] == [False, False, True]
    assert await cache.clear() == 1
    s = await cache.stats()
    assert (s.entries, s.bytes) == (0, 0)


def test_cache_stats_and_clear_on_the_command_line(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[cache]\nenabled = true\nttl = "2d"\n')
    env = {"REDIS_URL": redis_url}

    async def seed() -> None:
        from redis.asyncio import Redis

        from batchrelay.store.keys import Keys
        async with Store(Redis.from_url(redis_url), Keys(prefix)) as s:
            await ResponseCache(s, CacheConfig()).put("k", _answer(1))
    asyncio.run(seed())
    proc = batchrelay("-c", str(cfg), "cache", "stats", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["entries"] == 1 and st["bytes"] > 0 and st["hit_rate"] is None
    text = batchrelay("-c", str(cfg), "cache", "stats", env=env).stdout
    assert "1 entries" in text and "hit rate n/a" in text
    proc = batchrelay("-c", str(cfg), "cache", "clear", "--older-than", "1d", "--json", env=env)
    assert json.loads(proc.stdout) == {"dropped": 0}
    proc = batchrelay("-c", str(cfg), "cache", "clear", "--model", MODEL, env=env)
    assert proc.returncode == 0 and "dropped 1" in proc.stdout


# --- single flight across worker processes ------------------------------------------------------------

WORKER = """
import asyncio, sys
from redis.asyncio import Redis
from batchrelay.config.settings import load_settings
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store
from batchrelay.worker.runtime import Runtime

async def main(batch, cid, lines):
    settings = load_settings(sys.argv[1])
    async with Store(Redis.from_url(sys.argv[2]), Keys(settings.redis.prefix)) as store:
        rt = Runtime.opened(settings, store)
        try:
            await rt.health.report(rt.providers[0], None, "gpt-4o-mini", "success")
            print(await rt.run_chunk(batch, lines, cid), flush=True)
        finally:
            await rt.close()

asyncio.run(main(sys.argv[3], sys.argv[4], [int(n) for n in sys.argv[5].split(",")]))
"""


@pytest.mark.timeout(90)
async def test_a_waiter_in_another_process_takes_over_when_the_lease_holder_is_killed_mid_call(
        tmp_path: Path, redis_url: str, prefix: str, store: Store) -> None:
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    with SimulatorProcess({"latency_ms": 3000}) as base:
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"redis": {"prefix": prefix}, "cache": {"lease_s": 2},
                                   "worker": {"call_timeout": 10, "concurrency": 2},
                                   "providers": [{"name": "sim", "base_url": base}]}))

        async def batch() -> tuple[str, str, str]:
            res = await submit_stream(store, _src([openai_line(1)]), BatchSpec(name="t", cache=True), source="t")
            ((cid, ns),) = (await store.chunk_map(res.batch_id)).items()
            return res.batch_id, cid, ",".join(map(str, ns))

        def worker(b: tuple[str, str, str]) -> subprocess.Popen[bytes]:
            with (tmp_path / f"w{len(procs)}.log").open("wb") as log:
                return subprocess.Popen([sys.executable, str(script), str(cfg), redis_url, *b], cwd=tmp_path,
                                        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())

        procs: list[subprocess.Popen[bytes]] = []

        b1, b2 = await batch(), await batch()
        procs.append(worker(b1))
        try:
            await asyncio.to_thread(wait_for, lambda: _calls(base) == 1, 20, "the first call")
            procs.append(worker(b2))
            await asyncio.sleep(2.0)
            assert _calls(base) == 1, "the second process sent the request while the first had it in flight"
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            await asyncio.to_thread(procs[1].wait, timeout=40)
            assert procs[1].returncode == 0, (tmp_path / "w1.log").read_text(errors="replace")[-2000:]
            assert _calls(base) == 2  # the lease lapsed; the waiter took over and sent it once
            (r2,) = await _records(store, b2[0])
            assert r2["batchrelay"]["cache"] == {"status": "miss"} and r2["error"] is None
            # the killed worker's line, run again (arq would), is a hit on the survivor's answer
            procs.append(worker(b1))
            await asyncio.to_thread(procs[2].wait, timeout=40)
            (r1,) = await _records(store, b1[0])
            assert r1["batchrelay"]["cache"]["status"] == "hit" and r1["batchrelay"]["cache"]["from"]["batch"] == b2[0]
            assert _calls(base) == 2
        finally:
            stop_all(procs, grace=2)


# --- options ------------------------------------------------------------------------------------------

def test_a_batch_uses_the_cache_as_asked_else_as_the_config_says() -> None:
    on, off = Settings(cache=CacheConfig(enabled=True)), Settings()
    assert BatchSpec.of(on).cache and not BatchSpec.of(off).cache
    assert not BatchSpec.of(on, cache=False).cache and BatchSpec.of(off, cache=True).cache
    assert not BatchSpec.of(on, BatchSpec(cache=False)).cache
    assert CacheConfig(ttl="7d").ttl == 7 * 86400 and CacheConfig(ttl=60).ttl == 60
    with pytest.raises(ValueError, match="duration"):
        CacheConfig(ttl="soon")


# --- end to end: run, status, cost, the Python API -----------------------------------------------------

def test_run_twice_with_cache_makes_no_provider_call_the_second_time_and_says_what_it_saved(
        tmp_path: Path, redis_url: str, prefix: str, simulator: SimulatorProcess) -> None:
    from .conftest import write_config

    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 31)))
    env = {"REDIS_URL": redis_url}
    runs = []
    for n in (1, 2):
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / f"o{n}.jsonl"), "--cache", "--json",
                          "--new", env=env)  # --new: not the first run's batch printed again (resume)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout))
    assert simulator.stats()["calls"] == 30
    first, second = runs
    assert second["cost"]["usd"] == "0" and second["cost"]["cache_hits"] == 30
    assert second["cost"]["saved_usd"] == first["cost"]["usd"] and first["cost"]["cache_hits"] == 0
    st = json.loads(batchrelay("-c", str(cfg), "status", second["id"], "--json", env=env).stdout)
    assert st["cost"]["cache_hits"] == 30  # the object the webhook POSTs (status_object)
    text = batchrelay("-c", str(cfg), "cost", second["id"], env=env).stdout
    assert "30 lines answered from the cache" in text
    rows1 = [orjson.loads(x) for x in (tmp_path / "o1.jsonl").read_bytes().splitlines()]
    rows2 = [orjson.loads(x) for x in (tmp_path / "o2.jsonl").read_bytes().splitlines()]
    assert [r["response"]["body"] for r in rows1] == [r["response"]["body"] for r in rows2]
    text = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "o4.jsonl"), "--cache", "--new",
                      env=env).stdout
    assert f"30 lines answered from the cache, saving ${first['cost']['usd']}" in text
    # --no-cache: sent again
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "o3.jsonl"), "--no-cache", "--new",
                      env=env)
    assert proc.returncode == 0, proc.stderr
    assert simulator.stats()["calls"] == 60


def test_the_python_api_takes_cache(tmp_path: Path, redis_url: str, prefix: str) -> None:
    from batchrelay.api import Client

    settings = Settings.model_validate({"redis": {"url": redis_url, "prefix": prefix}})
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    with Client(settings=settings) as client:
        on, off = client.submit(src, cache=True), client.submit(src)

    async def flags() -> list[bool]:
        from redis.asyncio import Redis

        from batchrelay.store.keys import Keys
        async with Store(Redis.from_url(redis_url), Keys(prefix)) as s:
            return [(await s.claim(b, [1])).cached for b in (on, off)]
    assert asyncio.run(flags()) == [True, False]


# --- the entry format and the hits' write ------------------------------------------------------------

def test_an_entry_keeps_its_body_as_json_and_older_entries_still_decode() -> None:
    a = _answer(7)
    back = CachedAnswer.decode(a.encode())
    assert back.body == orjson.dumps(a.body) and back.model == MODEL and back.line == 7 and back.usd == "0.0001"
    assert CachedAnswer.decode(back.encode()) == back  # read back and stored again: the same bytes of body
    v1 = zlib.compress(orjson.dumps({"v": 1, "body": a.body, "model": MODEL, "usage": None, "batch": "batch_x",
                                     "line": 7, "provider": "sim", "at": a.at, "usd": "0.0001"}))
    assert CachedAnswer.decode(v1) == a


async def test_hits_are_written_once_also_after_redis_lost_its_scripts(own_redis: OwnRedis) -> None:
    client = Redis.from_url(own_redis.url)
    store = Store(client, Keys("t:"))
    cache = ResponseCache(store, CacheConfig())

    def hit(line: int) -> tuple[int, bytes, dict[str, int], Decimal]:
        return line, orjson.dumps({"line": line}), {f"{CACHE}\x1f{MODEL}\x1fcache_hits": 1}, Decimal("0.25")

    try:
        assert await cache.write_hits("batch_x", [hit(1)]) == 1
        own_redis.restart(0)  # AOF keeps the data; every script is gone
        await client.connection_pool.disconnect()
        assert await client.script_exists(store.scripts._s["results_write"]._script.sha) == [False]
        assert await cache.write_hits("batch_x", [hit(1), hit(2)]) == 1  # line 1 had its result already
        assert (await cache.stats()).saved_usd == Decimal("0.75")  # counted once per write, also the one redone
        assert await client.hlen(store.keys.results("batch_x")) == 2
    finally:
        await client.aclose()
