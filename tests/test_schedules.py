"""Deferred batches (`submit --at/--in`) and `[[schedules]]`: a scheduled batch never starts early,
and a schedule's tick runs once however many workers sweep it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from batchrelay.config.settings import ScheduleConfig, Settings
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.lifecycle import advance, request_stop, tick
from batchrelay.store.schedules import due, run_due_schedules, tick_of
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream

from .conftest import batchrelay, openai_line, status_of, wait_for, write_config


def _lines(n: int, tag: str = "") -> bytes:
    return b"".join(orjson.dumps({**openai_line(i), "custom_id": f"{tag}req-{i}"}) + b"\n" for i in range(1, n + 1))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _cron(expr: str) -> str:
    return ScheduleConfig(name="n", cron=expr, input="x", output_dir=Path("out")).cron


def _matches(expr: str, when: str) -> bool:
    return due(_cron(expr), tick_of(_at(when).timestamp()))


@pytest.mark.parametrize(("expr", "when", "hit"), [
    ("* * * * *", "2026-11-22T05:07", True),
    ("7 * * * *", "2026-11-22T05:07", True),
    ("8 * * * *", "2026-11-22T05:07", False),
    ("*/15 * * * *", "2026-11-22T05:45", True),
    ("*/15 * * * *", "2026-11-22T05:44", False),
    ("0-30/10 * * * *", "2026-11-22T05:20", True),
    ("0-30/10 * * * *", "2026-11-22T05:40", False),
    ("5/20 * * * *", "2026-11-22T05:45", True),
    ("1,2,3 4-6 * * *", "2026-11-22T06:02", True),
    ("1,2,3 4-6 * * *", "2026-11-22T07:02", False),
    ("0 0 1 * *", "2026-12-01T00:00", True),
    ("0 0 * 11 *", "2026-12-01T00:00", False),
    ("0 9 * * 1-5", "2026-11-23T09:00", True),   # a Monday
    ("0 9 * * 1-5", "2026-11-22T09:00", False),  # a Sunday
    ("0 9 * * 0", "2026-11-22T09:00", True),
    ("0 9 * * 7", "2026-11-22T09:00", True),     # 7 is Sunday too
    ("0 9 13 * 5", "2026-11-13T09:00", True),    # day and weekday both given: either matches
    ("0 9 13 * 5", "2026-11-20T09:00", True),    # a Friday
    ("0 9 13 * 5", "2026-11-19T09:00", False),
    ("0 9 * * MON-FRI", "2026-11-23T09:00", True),
    ("0 9 * * mon-fri", "2026-11-22T09:00", False),
    ("0 9 * * sun", "2026-11-22T09:00", True),
    ("0 9 * NOV,Dec *", "2026-11-22T09:00", True),
    ("0 9 * jan-oct *", "2026-11-22T09:00", False),
    ("@daily", "2026-11-22T00:00", True),
    ("@midnight", "2026-11-22T00:01", False),
    ("@hourly", "2026-11-22T05:00", True),
    ("@hourly", "2026-11-22T05:30", False),
    ("@weekly", "2026-11-22T00:00", True),    # a Sunday
    ("@weekly", "2026-11-23T00:00", False),
    ("@monthly", "2026-12-01T00:00", True),
    ("@yearly", "2027-01-01T00:00", True),
    ("@annually", "2026-12-01T00:00", False),
])
def test_cron_matches(expr: str, when: str, hit: bool) -> None:
    assert _matches(expr, when) is hit


# README "Deferred batches and schedules": five classic fields (`*`, lists, ranges, steps, names such as
# MON-FRI or JAN,JUL) or a macro, matched in UTC; each promise with a minute it hits and one it misses
@pytest.mark.parametrize(("expr", "hit", "miss"), [
    ("0 2 * * *", "2026-11-22T02:00", "2026-11-22T03:00"),               # the README's example
    ("* * * * *", "2026-11-22T05:07", None),
    ("0,30 * * * *", "2026-11-22T05:30", "2026-11-22T05:15"),            # a list
    ("0 9-17 * * *", "2026-11-22T17:00", "2026-11-22T18:00"),            # a range
    ("*/20 * * * *", "2026-11-22T05:40", "2026-11-22T05:50"),            # a step
    ("0 9 * * MON-FRI", "2026-11-27T09:00", "2026-11-28T09:00"),         # a Friday, a Saturday
    ("0 0 1 JAN,JUL *", "2026-07-01T00:00", "2026-06-01T00:00"),
    ("@hourly", "2026-11-22T06:00", "2026-11-22T06:01"),
    ("@daily", "2026-11-23T00:00", "2026-11-23T01:00"),
    ("@weekly", "2026-11-29T00:00", "2026-11-28T00:00"),                 # Sundays
    ("@monthly", "2026-11-01T00:00", "2026-11-02T00:00"),
    ("@yearly", "2027-01-01T00:00", "2027-02-01T00:00"),
])
def test_the_cron_strings_the_readme_promises(expr: str, hit: str, miss: str | None) -> None:
    assert _matches(expr, hit)
    assert miss is None or not _matches(expr, miss)


def test_a_cron_is_kept_as_its_five_fields() -> None:
    assert _cron("@weekly") == "0 0 * * 0"
    assert _cron("  0 9  * * mon-fri ") == "0 9 * * mon-fri"


@pytest.mark.parametrize("expr", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "*/0 * * * *", "a * * * *",
                                  "5-1 * * * *", "* * * 13 *", "* * * * 8", "0 9 * * MOO",
                                  "0 9 * JANUARY *", "@often", "@daily 5",
                                  "0 0 9 * * *",    # cronsim's leading seconds field: not ours
                                  "0 0 31 2 *"])    # never matches
def test_cron_rejects(expr: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        _cron(expr)


def test_a_bad_cron_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[schedules]]\nname = "n"\ncron = "* * *"\ninput = "x"\noutput_dir = "{tmp_path}"\n')
    proc = batchrelay("-c", str(cfg), "batches")
    assert proc.returncode != 0
    assert "needs 5 fields" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_deferred_batch_waits_scheduled_then_one_tick_starts_it(store: Store) -> None:
    start_at = time.time() + 3600
    batch = (await submit_stream(store, io.BytesIO(_lines(25)), BatchSpec(chunk_size=10, start_at=start_at),
                                 source="d")).batch_id
    info = await store.info(batch)
    assert (info.status, info.start_at) == ("scheduled", start_at)
    assert await store.redis.zcard(store.keys.queue) == 0  # nothing enqueued
    claim = await store.claim(batch, [1, 2])
    assert claim.jobs == []  # claims refuse a scheduled batch
    assert (await tick(store, grace_s=1, retention_s=None))["started"] == 0
    ticks = await asyncio.gather(*[tick(store, grace_s=1, retention_s=None, now=start_at + 1) for _ in range(5)])
    assert sum(t["started"] for t in ticks) == 1
    assert (await store.info(batch)).status == "in_progress"
    assert await store.redis.zcard(store.keys.queue) == 3


async def test_a_scheduled_batch_can_be_cancelled(store: Store) -> None:
    batch = (await submit_stream(store, io.BytesIO(_lines(5)), BatchSpec(start_at=time.time() + 3600),
                                 source="d")).batch_id
    assert await request_stop(store, batch, "cancelled") == "cancelling"
    assert await advance(store, batch, grace_s=1) == 5
    info = await store.info(batch)
    assert (info.status, info.cancelled) == ("cancelled", 5)
    assert (await tick(store, grace_s=1, retention_s=None, now=time.time() + 7200))["started"] == 0


def test_bad_submit_times_are_usage_errors(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(1))
    for args in (["--at", "tomorrow"], ["--at", "2026-11-22T05:00:00Z", "--in", "2h"], ["--in", "soon"]):
        proc = batchrelay("submit", str(src), *args, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def _schedule(tmp_path: Path, name: str = "nightly") -> ScheduleConfig:
    return ScheduleConfig(name=name, cron="* * * * *", input=str(tmp_path / "in" / "*.jsonl"),
                          output_dir=tmp_path / "out")


def _inputs(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(_lines(3, "a"))
    (tmp_path / "in" / "b.jsonl").write_bytes(_lines(4, "b"))
    (tmp_path / "in" / "notes.txt").write_text("not matched")


async def test_concurrent_sweeps_run_a_tick_once_and_a_file_once(store: Store, tmp_path: Path) -> None:
    _inputs(tmp_path)
    settings = Settings(redis={"prefix": store.keys.prefix}, schedules=[_schedule(tmp_path)])  # type: ignore[arg-type]
    now = time.time()
    runs = await asyncio.gather(*[run_due_schedules(store, settings, now) for _ in range(8)])
    assert sum(r["ticks"] for r in runs) == 1
    assert sum(r["submitted"] for r in runs) == 2
    # the next minute runs again, but the files were processed already
    again = await run_due_schedules(store, settings, now + 60)
    assert (again["ticks"], again["submitted"]) == (1, 0)
    names = sorted(b.name for b in await store.list_batches())
    assert names == ["nightly:a.jsonl", "nightly:b.jsonl"]
    # a file changed in place is a new input
    (tmp_path / "in" / "a.jsonl").write_bytes(_lines(5, "a"))
    assert (await run_due_schedules(store, settings, now + 120))["submitted"] == 1


async def test_a_sweep_hands_its_submits_off_and_a_cut_off_submit_is_tried_again(store: Store,
                                                                                  tmp_path: Path) -> None:
    """The workers' sweep has a timeout: a tick's submits run as tasks of their own instead of inside
    it, and one cancelled mid-way (its worker stopped) leaves its file for the next tick."""
    _inputs(tmp_path)
    settings = Settings(redis={"prefix": store.keys.prefix}, schedules=[_schedule(tmp_path)])  # type: ignore[arg-type]
    handed: list[Any] = []
    now = time.time()
    ran = await run_due_schedules(store, settings, now, background=handed.append)
    assert (ran["ticks"], ran["submitted"], len(handed)) == (1, 0, 1)
    assert await store.list_batches() == []  # the sweep returned before any submit ran
    task = asyncio.ensure_future(handed[0])
    await asyncio.sleep(0)
    task.cancel()  # the worker stops while the submit runs
    with pytest.raises(asyncio.CancelledError):
        await task
    ran = await run_due_schedules(store, settings, now + 60)
    assert ran["submitted"] == 2  # both files again: nothing was crossed off by the cut-off run
    ok = [b for b in await store.list_batches() if b.status != "failed"]
    assert sorted(b.name for b in ok) == ["nightly:a.jsonl", "nightly:b.jsonl"]


# the workers' BATCHRELAY_SCHEDULE_TICK_S: a schedule tick of 4 s instead of a minute, so they sweep every second
TICK_S = 4


def _worker(cfg: Path, redis_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--quiet"],
                            env={**os.environ, "REDIS_URL": redis_url, "BATCHRELAY_SCHEDULE_TICK_S": str(TICK_S)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


@pytest.mark.timeout(120)
def test_a_deferred_batch_does_not_start_before_its_time(tmp_path: Path, redis_url: str, prefix: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(20))
    with SimulatorProcess({"latency_ms": 5}) as base:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": base}])
        workers = [_worker(cfg, redis_url)]
        try:
            proc = batchrelay("-c", str(cfg), "submit", str(src), "--in", "6s", "--json",
                              env={"REDIS_URL": redis_url})
            assert proc.returncode == 0, proc.stderr
            sub = orjson.loads(proc.stdout)
            batch, start_at = sub["id"], sub["start_at"]
            assert status_of(cfg, redis_url, batch)["status"] == "scheduled"
            while time.time() < start_at - 0.3:
                assert SimulatorProcess.stats_of(base)["calls"] == 0
                time.sleep(0.5)
            wait_for(lambda: status_of(cfg, redis_url, batch)["status"] == "completed", 60, "the batch to complete")
            assert SimulatorProcess.stats_of(base)["calls"] == 20
        finally:
            _stop(workers)
    listed = batchrelay("-c", str(cfg), "batches", "--json", env={"REDIS_URL": redis_url})
    assert [b["start_at"] for b in orjson.loads(listed.stdout)] == [start_at]


@pytest.mark.timeout(120)
def test_three_workers_run_a_minutely_schedule_once_per_file(tmp_path: Path, redis_url: str, prefix: str) -> None:
    """Three long-running workers sweep a `* * * * *` schedule: each tick is run by one of them, each
    input file becomes one batch, a tick after the results were written submits nothing again, and the
    results land in output_dir. The workers' ticks are TICK_S seconds (BATCHRELAY_SCHEDULE_TICK_S)
    instead of a minute, so the ticks come within seconds rather than at minute boundaries."""
    _inputs(tmp_path)
    client = sync_redis.Redis.from_url(redis_url)

    def ticks() -> int:  # the ticks claimed (one key each, set NX by the worker that ran it)
        keys = client.scan_iter(match=f"{prefix}schedule:every-minute:*", count=1000)
        return sum(k.rsplit(b":", 1)[1].isdigit() for k in keys)

    with SimulatorProcess({"latency_ms": 5}) as base:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": base}])
        with cfg.open("a") as f:
            f.write(f'\n[[schedules]]\nname = "every-minute"\ncron = "* * * * *"\n'
                    f'input = "{tmp_path / "in" / "*.jsonl"}"\noutput_dir = "{tmp_path / "out"}"\n')
        workers = [_worker(cfg, redis_url) for _ in range(3)]
        out = tmp_path / "out"
        try:
            wait_for(lambda: (out / "a.results.jsonl").exists() and (out / "b.results.jsonl").exists(), 60,
                     "the schedule's results")
            seen = ticks()
            # two more ticks: both began after the results were written, with the files unchanged, and the
            # first one's (background) submits had a whole tick to run before the workers stop
            wait_for(lambda: ticks() >= seen + 2, 4 * TICK_S + 20, "two more ticks")
        finally:
            _stop(workers)
            client.close()
    listed = batchrelay("-c", str(cfg), "batches", "--json", env={"REDIS_URL": redis_url})
    ours = [b for b in orjson.loads(listed.stdout) if b["name"].startswith("every-minute:")]
    assert sorted(b["name"] for b in ours) == ["every-minute:a.jsonl", "every-minute:b.jsonl"]
    assert all(b["status"] == "completed" for b in ours)
    assert len((out / "a.results.jsonl").read_bytes().splitlines()) == 3
    assert len((out / "b.results.jsonl").read_bytes().splitlines()) == 4
    assert (out / "a.errors.jsonl").read_bytes() == b""


async def test_the_python_api_defers_a_batch(redis_url: str, prefix: str) -> None:
    from batchrelay.api import AsyncClient

    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    async with AsyncClient(redis_url, settings=Settings(redis={"prefix": prefix})) as client:  # type: ignore[arg-type]
        batch = await client.submit([openai_line(1)], start_at=when)
        status = await client.status(batch)
    assert (status["status"], status["start_at"]) == ("scheduled", when.timestamp())
