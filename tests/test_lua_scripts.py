"""Every Lua script (batchrelay/store/lua), called through its wrapper in store/scripts.py on a real
redis-server, with its state set up and read back directly: what each one promises the code above it."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import pytest
from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, ProviderConfig
from batchrelay.store import scripts as scripts_module
from batchrelay.store.keys import Keys
from batchrelay.store.scripts import SCRIPTS, Scripts, load
from batchrelay.store.status import Status
from batchrelay.store.store import Store

B = "batch_t"


async def _hash(redis: Redis, key: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = await redis.hgetall(key)  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()}


async def _given(store: Store, status: Status, pending: tuple[int, ...] = (), **fields: Any) -> None:
    """Batch B with this status, these lines pending and these meta fields."""
    await store.redis.hset(store.keys.meta(B), mapping={"status": status, **fields})  # type: ignore[misc]
    if pending:
        await store.redis.sadd(store.keys.pending(B), *pending)  # type: ignore[misc]


async def _meta(store: Store) -> dict[str, str]:
    return await _hash(store.redis, store.keys.meta(B))


# --- loading and registering -------------------------------------------------------------------------

def test_every_lua_file_is_a_script_with_a_wrapper_or_an_included_fragment() -> None:
    names = {p.name for p in files("batchrelay.store").joinpath("lua").iterdir() if p.name.endswith(".lua")}
    assert {f"{n}.lua" for n in SCRIPTS} == {n for n in names if not n.startswith("_")}
    for n in SCRIPTS:
        assert f'"{n}"' in (files("batchrelay.store") / "scripts.py").read_text(), f"{n} has no wrapper"
    fragments = {n[1:-4] for n in names if n.startswith("_")}
    included = {m for n in SCRIPTS for m in re.findall(r"^--#include (\w+)$", scripts_module._read(n), re.M)}
    assert included == fragments  # each fragment is used, and each include exists


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_loads_with_its_header_fragments_and_status_names(name: str) -> None:
    lua = load(name)
    assert lua.keys and lua.argv
    assert set(lua.keys) <= {a for a in dir(Keys) if not a.startswith("_")}, "KEYS are named as Keys names them"
    assert "--#include" not in lua.text and "STATUS." not in lua.text
    assert lua.text.count("KEYS[") and "redis.call(" in lua.text


def test_a_script_naming_an_unknown_status_fails_to_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scripts_module, "_read", lambda name: "-- KEYS: meta\n-- ARGV: now\nreturn STATUS.finished")
    load.cache_clear()
    try:
        with pytest.raises(ValueError, match="unknown batch status: STATUS.finished"):
            load("result_write")
    finally:
        monkeypatch.undo()
        load.cache_clear()


def test_status_names_come_from_the_enum() -> None:
    text = load("result_write").text
    assert f"'{Status.BUDGET_EXHAUSTED}'" in text and f"'{Status.COMPLETED}'" in text


async def test_scripts_are_registered_once_per_client(redis_url: str) -> None:
    a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        assert Scripts.of(a) is Scripts.of(a) is Store(a, Keys("x:")).scripts is Store(a, Keys("y:")).scripts
        assert Scripts.of(b) is not Scripts.of(a)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_wrapper_passing_the_wrong_names_is_refused(store: Store) -> None:
    with pytest.raises(TypeError, match=r"stop_finish.lua takes KEYS \('meta',\)"):
        await store.scripts._s["stop_finish"]({"meta": "k"}, {"interim": "a", "now": 1})


# --- the batch record ----------------------------------------------------------------------------------

async def test_result_write_records_a_line_once_with_its_count_and_ledger(store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.IN_PROGRESS, (1, 2), succeeded=0)
    await store.redis.hset(k.attempts(B), "1", "[]")  # type: ignore[misc]
    write: dict[str, Any] = {"line": 1, "count": "succeeded", "now": 5.0, "ledger": {"p|m|requests": 1, "p|m|cost": 10**15}}
    assert await s.write_result(k, B, record=b"1first", **write) is True
    assert await s.write_result(k, B, record=b"1again", **write) is False  # a rerun changes nothing
    assert await _hash(store.redis, k.results(B)) == {"1": "1first"}
    assert await store.redis.smembers(k.pending(B)) == {b"2"}  # type: ignore[misc]
    assert await store.redis.hlen(k.attempts(B)) == 0  # type: ignore[misc]
    assert await _hash(store.redis, k.ledger(B)) == {"p|m|requests": "1", "p|m|cost": str(10**15)}
    meta = await _meta(store)
    assert (meta["succeeded"], meta["status"]) == ("1", "in_progress")


@pytest.mark.parametrize(("before", "after"), [
    (Status.IN_PROGRESS, Status.COMPLETED), (Status.BUDGET_EXHAUSTED, Status.COMPLETED),
    (Status.CANCELLING, Status.CANCELLED), (Status.EXPIRING, Status.EXPIRED),
    (Status.VALIDATING, Status.VALIDATING),  # a submit still writing lines is ended by submit_finish
])
async def test_result_write_of_the_last_line_ends_the_batch(store: Store, before: Status, after: Status) -> None:
    await _given(store, before, (7,))
    assert await store.scripts.write_result(store.keys, B, line=7, record=b"0{}", count="failed", now=42.5,
                                            ledger={})
    meta = await _meta(store)
    assert (meta["status"], meta["failed"], meta.get("finished_at")) == (
        after, "1", None if after == before else "42.5")


async def test_result_write_queued_on_a_pipeline_answers_through_it(store: Store) -> None:
    await _given(store, Status.IN_PROGRESS, (1, 2))
    async with store.redis.pipeline(transaction=False) as pipe:
        for line in (1, 1, 2):
            await store.scripts.write_result(store.keys, B, line=line, record=b"1{}", count="succeeded", now=1.0,
                                             ledger={}, pipe=pipe)
        assert await pipe.execute() == [1, 0, 1]
    assert (await _meta(store))["status"] == "completed"


async def test_a_result_adds_to_the_fleets_ledger_and_counts_and_the_batchs_minute(store: Store) -> None:
    k, s, sep = store.keys, store.scripts, "\x1f"
    await _given(store, Status.IN_PROGRESS, (1, 2, 3))
    ledger = {f"p{sep}m{sep}requests": 2, f"p{sep}m{sep}cost": 7 * 10**12}
    calls = {f"calls{sep}p{sep}m{sep}ok": 1, f"calls{sep}p{sep}m{sep}transient": 1}
    assert await s.write_result(k, B, line=1, record=b"1{}", count="succeeded", now=120.5, ledger=ledger, tally=calls)
    assert not await s.write_result(k, B, line=1, record=b"1{}", count="succeeded", now=121.0, ledger=ledger,
                                    tally=calls)  # a rerun adds nothing anywhere
    assert await s.write_results(k, B, now=185.0, lines=[(2, b"0{}", "cancelled", {}, {})]) == 1
    assert await _hash(store.redis, k.fleet_ledger) == {f"p{sep}m{sep}requests": "2", f"p{sep}m{sep}cost": str(7 * 10**12)}
    assert await _hash(store.redis, k.fleet_counts) == {
        f"lines{sep}succeeded": "1", f"lines{sep}cancelled": "1", f"calls{sep}p{sep}m{sep}ok": "1",
        f"calls{sep}p{sep}m{sep}transient": "1", f"spend{sep}0{sep}p": str(7 * 10**12)}
    assert await _hash(store.redis, k.minutes(B)) == {
        f"2{sep}succeeded": "1", f"2{sep}cost": str(7 * 10**12), f"3{sep}cancelled": "1"}
    await store.redis.delete(k.fleet_ledger, k.fleet_counts)


async def test_results_write_writes_several_lines_as_result_write_does_each(store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.IN_PROGRESS, (1, 2, 3), succeeded=0)
    await store.redis.hset(k.attempts(B), "2", "[]")  # type: ignore[misc]
    hit = {"cache|m|cache_hits": 1, "cache|m|saved": 10**12}
    lines = [(1, b"1one", "succeeded", hit, {}), (2, b"1two", "succeeded", {}, {}), (1, b"1again", "succeeded", hit, {})]
    assert await s.write_results(k, B, now=9.0, lines=lines) == 2  # the second write of line 1 changes nothing
    assert await _hash(store.redis, k.results(B)) == {"1": "1one", "2": "1two"}
    assert await store.redis.smembers(k.pending(B)) == {b"3"}  # type: ignore[misc]
    assert await store.redis.hlen(k.attempts(B)) == 0  # type: ignore[misc]
    assert await _hash(store.redis, k.ledger(B)) == {"cache|m|cache_hits": "1", "cache|m|saved": str(10**12)}
    meta = await _meta(store)
    assert (meta["succeeded"], meta["status"], meta.get("finished_at")) == ("2", "in_progress", None)
    assert await s.write_results(k, B, now=10.5, lines=[(3, b"0x", "failed", {}, {})]) == 1
    meta = await _meta(store)
    assert (meta["failed"], meta["status"], meta["finished_at"]) == ("1", "completed", "10.5")
    assert await s.write_results(k, B, now=11.0, lines=[(3, b"1late", "succeeded", hit, {})]) == 0
    assert (await _meta(store))["finished_at"] == "10.5"


@pytest.mark.parametrize(("pending", "start_at", "status"), [
    ((1,), None, Status.IN_PROGRESS), ((1,), 2e9, Status.SCHEDULED), ((), None, Status.COMPLETED)])
async def test_submit_finish_writes_the_counts_and_starts_the_batch(
    store: Store, pending: tuple[int, ...], start_at: float | None, status: Status
) -> None:
    await _given(store, Status.VALIDATING, pending)
    got = await store.scripts.finish_submit(store.keys, B, now=9.0, start_at=start_at,
                                            counts={"total": 3, "input_format": "openai"})
    meta = await _meta(store)
    assert got == meta["status"] == status
    assert (meta["total"], meta["input_format"]) == ("3", "openai")
    assert meta.get("start_at") == (None if start_at is None else repr(start_at))
    assert meta.get("finished_at") == ("9.0" if status == Status.COMPLETED else None)


async def test_submit_finish_leaves_a_batch_stopped_meanwhile_as_it_is(store: Store) -> None:
    await _given(store, Status.CANCELLING, (1,))
    assert await store.scripts.finish_submit(store.keys, B, now=9.0, start_at=None, counts={"total": 1}) == ""
    meta = await _meta(store)
    assert (meta["status"], meta["total"]) == ("cancelling", "1")  # its counts are still right


async def test_submit_claim_ids_reports_each_taken_id_with_the_line_that_took_it(store: Store) -> None:
    k, s = store.keys, store.scripts
    assert await s.claim_custom_ids(k, B, ["a", "b", "a"], [1, 2, 3]) == {2: 1}  # a repeat within the block
    assert await s.claim_custom_ids(k, B, ["c", "b"], [4, 5]) == {1: 2}  # and one from an earlier block
    assert await _hash(store.redis, k.custom_ids(B)) == {"a": "1", "b": "2", "c": "4"}
    many = [f"id{i}" for i in range(2500)]  # past the 1000 ids one HMGET/HSET takes
    assert await s.claim_custom_ids(k, B, [*many, "id0"], list(range(10, 2511))) == {2500: 10}
    assert await store.redis.hlen(k.custom_ids(B)) == 2503  # type: ignore[misc]


async def test_batch_start_due_moves_a_due_scheduled_batch_once(store: Store) -> None:
    await _given(store, Status.SCHEDULED, start_at=100.0)
    assert await store.scripts.start_due(store.keys, B, 99.0) is False  # not due yet
    assert await store.scripts.start_due(store.keys, B, 100.5) is True
    assert await store.scripts.start_due(store.keys, B, 101.0) is False  # one caller moves it
    meta = await _meta(store)
    assert (meta["status"], meta["started_at"]) == ("in_progress", "100.5")


# --- stopping and retrying -----------------------------------------------------------------------------

@pytest.mark.parametrize("status", [Status.VALIDATING, Status.SCHEDULED, Status.IN_PROGRESS, Status.BUDGET_EXHAUSTED])
async def test_stop_request_marks_a_running_batch(store: Store, status: Status) -> None:
    await _given(store, status)
    assert await store.scripts.request_stop(store.keys, B, Status.CANCELLING, 12.5) == "cancelling"
    meta = await _meta(store)
    assert (meta["status"], meta["stop_at"]) == ("cancelling", "12.5")


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRING])
async def test_stop_request_leaves_a_finished_or_stopping_batch_alone(store: Store, status: Status) -> None:
    await _given(store, status)
    assert await store.scripts.request_stop(store.keys, B, Status.CANCELLING, 12.5) == status
    assert await _meta(store) == {"status": status}


async def test_stop_request_of_an_unknown_batch_answers_none(store: Store) -> None:
    assert await store.scripts.request_stop(store.keys, B, Status.EXPIRING, 1.0) is None
    assert await store.redis.exists(store.keys.meta(B)) == 0


async def test_stop_finish_ends_only_a_batch_still_being_stopped(store: Store) -> None:
    await _given(store, Status.EXPIRING)
    await store.scripts.finish_stop(store.keys, B, Status.EXPIRING, Status.EXPIRED, 3.0)
    assert await _meta(store) == {"status": "expired", "finished_at": "3.0"}
    await store.scripts.finish_stop(store.keys, B, Status.EXPIRING, Status.EXPIRED, 4.0)  # once
    assert (await _meta(store))["finished_at"] == "3.0"


async def test_a_batch_keeps_the_size_of_its_records_of_each_kind_as_they_are_written_and_reopened(
        store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.IN_PROGRESS, (1, 2, 3), ok_bytes=0, error_bytes=0)
    for line, record in ((1, b"1abcd"), (2, b"0xyz"), (2, b"0a longer rerun"), (3, b"1ef")):
        await s.write_result(k, B, line=line, record=record, count="succeeded", now=1.0, ledger={})
    meta = await _meta(store)
    assert (meta["ok_bytes"], meta["error_bytes"]) == ("8", "4")  # each record as exported: its JSON and "\n"
    await s.reopen_line(k, B, line=2, record=b"0xyz", count="failed", attempts="", ledger={})
    assert (await _meta(store))["error_bytes"] == "0"

    await store.redis.delete(k.meta(B), k.pending(B), k.results(B))
    await _given(store, Status.IN_PROGRESS, (1,))  # made before sizes were kept: none is started half way
    await s.write_result(k, B, line=1, record=b"1abc", count="succeeded", now=1.0, ledger={})
    assert not {"ok_bytes", "error_bytes"} & set(await _meta(store))


async def test_retry_reopen_line_puts_a_line_back_with_its_attempts_and_gives_back_its_cost(store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.COMPLETED, failed=2)
    await store.redis.hset(k.results(B), mapping={"1": "0old", "2": "0other"})  # type: ignore[misc]
    await store.redis.hset(k.first_try(B), "1", "5.0")  # type: ignore[misc]
    await store.redis.hset(k.ledger(B), mapping={"p|m|cost": "30"})  # type: ignore[misc]
    assert await s.reopen_line(k, B, line=1, record=b"0changed", count="failed", attempts="[]",
                               ledger={"p|m|cost": 30}) is False  # read before it changed: nothing done
    assert await s.reopen_line(k, B, line=1, record=b"0old", count="failed", attempts='[{"provider":"p"}]',
                               ledger={"p|m|cost": 30}) is True
    assert await _hash(store.redis, k.results(B)) == {"2": "0other"}
    assert await store.redis.smembers(k.pending(B)) == {b"1"}  # type: ignore[misc]
    assert await _hash(store.redis, k.attempts(B)) == {"1": '[{"provider":"p"}]'}
    assert await store.redis.hlen(k.first_try(B)) == 0  # type: ignore[misc]  # its deadline starts afresh
    assert await _hash(store.redis, k.ledger(B)) == {"p|m|cost": "0"}
    assert (await _meta(store))["failed"] == "1"
    await s.reopen_line(k, B, line=2, record=b"0other", count="failed", attempts="", ledger={})
    assert await store.redis.hexists(k.attempts(B), "2") == 0  # type: ignore[misc]  # no attempts: none kept


# --- spending limits -----------------------------------------------------------------------------------

async def test_budget_reserve_holds_what_the_limit_covers_and_exhausts_the_batch_past_it(store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.IN_PROGRESS)
    assert await s.reserve(k, B, token="free", amount=10**20, now_ms=0, lease_ms=1000) == 1  # no limit set
    assert await store.redis.exists(k.budget(B), k.budget_leases(B)) == 0
    await store.redis.hset(k.budget(B), mapping={"max": "100", "spent": "40"})  # type: ignore[misc]
    assert await s.reserve(k, B, token="t1", amount=50, now_ms=1000, lease_ms=500) == 1
    budget = await _hash(store.redis, k.budget(B))
    assert (budget["reserved"], budget["r:t1"]) == ("50", "50")
    assert await store.redis.zscore(k.budget_leases(B), "t1") == 1500
    assert await s.reserve(k, B, token="t2", amount=11, now_ms=1200, lease_ms=500) == 0  # 40 + 50 + 11 > 100: wait
    assert (await _meta(store))["status"] == "in_progress"  # 40 + 11 fits once t1 settles
    assert await s.reserve(k, B, token="t3", amount=60, now_ms=1600, lease_ms=500) == 1  # t1 has lapsed
    assert (await _hash(store.redis, k.budget(B)))["reserved"] == "60"
    assert await s.reserve(k, B, token="t4", amount=61, now_ms=1600, lease_ms=500) == -1  # 40 + 61 > 100
    assert (await _meta(store))["status"] == "budget_exhausted"


@pytest.mark.parametrize("status", [Status.CANCELLING, Status.SCHEDULED])
async def test_budget_reserve_refused_changes_no_other_status(store: Store, status: Status) -> None:
    await _given(store, status)
    await store.redis.hset(store.keys.budget(B), "max", "1")  # type: ignore[misc]
    assert await store.scripts.reserve(store.keys, B, token="t", amount=2, now_ms=0, lease_ms=1) == -1
    assert (await _meta(store))["status"] == status


async def test_budget_settle_moves_a_reservation_into_spent_once(store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.IN_PROGRESS)
    await store.redis.hset(k.budget(B), "max", "100")  # type: ignore[misc]
    await s.reserve(k, B, token="t", amount=30, now_ms=0, lease_ms=10**9)
    assert await s.settle(k, B, token="t", billed=12) is True
    assert await s.settle(k, B, token="t", billed=12) is False  # a repeat after a lost answer
    assert await _hash(store.redis, k.budget(B)) == {"max": "100", "reserved": "0", "spent": "12"}
    assert await store.redis.zcard(k.budget_leases(B)) == 0


async def test_budget_purge_gives_back_only_lapsed_reservations(store: Store) -> None:
    k, s = store.keys, store.scripts
    await _given(store, Status.IN_PROGRESS)
    await store.redis.hset(k.budget(B), "max", "100")  # type: ignore[misc]
    await s.reserve(k, B, token="old", amount=10, now_ms=0, lease_ms=100)
    await s.reserve(k, B, token="new", amount=20, now_ms=0, lease_ms=1000)
    await s.drop_lapsed(k, B, 500)
    assert await _hash(store.redis, k.budget(B)) == {"max": "100", "reserved": "20", "r:new": "20"}
    assert await store.redis.zrange(k.budget_leases(B), 0, -1) == [b"new"]


@pytest.mark.parametrize(("status", "pending", "goes_on", "after"), [
    (Status.BUDGET_EXHAUSTED, (1,), True, Status.IN_PROGRESS),
    (Status.BUDGET_EXHAUSTED, (), False, Status.COMPLETED),
    (Status.IN_PROGRESS, (1,), False, Status.IN_PROGRESS),
    (Status.CANCELLING, (1,), False, Status.CANCELLING),
])
async def test_budget_raise_sets_the_limit_and_lets_a_waiting_batch_go_on(
    store: Store, status: Status, pending: tuple[int, ...], goes_on: bool, after: Status
) -> None:
    await _given(store, status, pending)
    assert await store.scripts.raise_limit(store.keys, B, max_pico=500, now=8.0) is goes_on
    meta = await _meta(store)
    assert (meta["status"], meta["max_cost"]) == (after, "500")
    assert (await _hash(store.redis, store.keys.budget(B)))["max"] == "500"
    assert ("finished_at" in meta) == (after == Status.COMPLETED and status != after)


# --- provider health -----------------------------------------------------------------------------------

P = ProviderConfig(name="p", base_url="http://p.invalid", max_concurrency=1)
CFG = HealthConfig(concurrency_recovery_calls=1, probe_s=30, disable_s=600)


async def test_health_acquire_gives_an_untried_provider_one_probe_with_a_lease(store: Store) -> None:
    k, s = store.keys, store.scripts
    ok, wait, why, leased = await s.acquire(k, P, CFG, model="m", tokens=10, now=100.0, lease="L1")
    assert (ok, wait, why, leased) == (True, 0.0, "probe", True)
    assert await store.redis.zscore(k.concurrency("p"), "L1") == 100.0 + CFG.lease_s
    assert (await _hash(store.redis, k.health))["p:probe_until"] == "130"
    assert (await _hash(store.redis, k.breaker))["p:calls"] == "1"
    assert await s.acquire(k, P, CFG, model="m", tokens=10, now=101.0, lease="L2") == (False, 0.05, "probing", False)


async def test_health_report_frees_the_lease_and_a_success_opens_the_provider(store: Store) -> None:
    k, s = store.keys, store.scripts
    await s.acquire(k, P, CFG, model="m", tokens=10, now=100.0, lease="L1")
    await s.report(k, "p", CFG, model="m", now=101.0, kind="success", retry_after=0, lease="L1", text="")
    assert await store.redis.zcard(k.concurrency("p")) == 0
    health = await _hash(store.redis, k.health)
    assert (health["p:ok"], health["p:probe_until"]) == ("1", "0")
    assert await s.acquire(k, P, CFG, model="m", tokens=10, now=102.0, lease="L2") == (True, 0.0, "ok", True)
    assert await s.acquire(k, P, CFG, model="m", tokens=10, now=102.0, lease="L3") == (
        False, 0.05, "concurrency", False)  # max_concurrency 1: L2 holds the slot


@pytest.mark.parametrize(("kind", "field", "seconds", "reason"), [
    ("auth", "disabled_until", 600, "disabled"), ("billing", "bench_until", HealthConfig().bench_s, "bench_until"),
    ("rate_limited", "cool_until", 7, "cool_until")])
async def test_health_report_of_a_failure_blocks_the_provider(
    store: Store, kind: str, field: str, seconds: float, reason: str
) -> None:
    k, s = store.keys, store.scripts
    await s.report(k, "p", CFG, model="m", now=100.0, kind=kind, retry_after=7 if kind == "rate_limited" else 0,
                   lease="", text="HTTP 4xx")
    health = await _hash(store.redis, k.health)
    assert (float(health[f"p:{field}"]), health["p:last"]) == (100.0 + seconds, "HTTP 4xx")
    ok, wait, why, _ = await s.acquire(k, P, CFG, model="m", tokens=1, now=101.0, lease="L")
    assert (ok, wait, why) == (False, seconds - 1, reason)


async def test_health_report_of_a_404_cools_only_that_model(store: Store) -> None:
    k, s = store.keys, store.scripts
    await s.report(k, "p", CFG, model="gone", now=100.0, kind="model", retry_after=0, lease="", text="404")
    assert (await s.acquire(k, P, CFG, model="gone", tokens=1, now=101.0, lease="L"))[2] == "model_until"
    assert (await s.acquire(k, P, CFG, model="here", tokens=1, now=101.0, lease="L"))[0] is True


# --- the webhook outbox --------------------------------------------------------------------------------

async def test_webhook_claim_moves_an_entry_only_from_the_score_it_was_read_with(store: Store) -> None:
    k, s = store.keys, store.scripts
    await store.redis.zadd(k.webhooks, {B: 10.5})
    assert await s.claim_webhook(k, B, seen=10.0, score=99.0) is False  # read before another worker moved it
    assert await s.claim_webhook(k, B, seen=10.5, score=99.0) is True
    assert await s.claim_webhook(k, B, seen=10.5, score=120.0) is False  # the same attempt, once
    assert await store.redis.zscore(k.webhooks, B) == 99.0
    assert await s.claim_webhook(k, "batch_gone", seen=0.0, score=5.0) is False
    assert await store.redis.zscore(k.webhooks, "batch_gone") is None
