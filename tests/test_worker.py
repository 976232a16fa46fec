"""The worker: the chunk job (worker/runtime.py) run in the test's own event loop, and worker
processes (worker/worker.py) against a real Redis and the simulator over HTTP.

A chunk job answers each of its lines once (a rerun skips finished ones), writes a terminal error
record for a line that cannot succeed, sends a line no provider can take now back to the queue as
a chunk of its own due when a provider may take it, parks lines of a stopped or over-budget batch,
and, once draining (SIGTERM), sends its unstarted lines back due at once. Worker processes share a
batch: every line exactly once, even when one is SIGKILLed or stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from arq.worker import Retry
from redis.asyncio import Redis

from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.results.outcome import Attempt
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.keys import Keys
from batchrelay.store.lifecycle import request_stop
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.worker.relay import LineRelay
from batchrelay.worker.runtime import Runtime
from batchrelay.worker.worker import REDIS_RETRY_DEFER, run_chunk

from .conftest import openai_line, results_of, status_of, submit_lines, worker_runtime, write_config

MODEL = "gpt-4o-mini"
RuntimeOf = Callable[..., Awaitable[Runtime]]


# --- the chunk job, in-process ---------------------------------------------------------------------

async def _batch(store: Store, n: int, max_cost: Decimal | None = None) -> tuple[str, str, list[int]]:
    """A submitted batch of `n` lines in one chunk: its id, the chunk's id and its lines."""
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    res = await submit_stream(store, src, BatchSpec(name="t", chunk_size=n, max_cost=max_cost), source="t")
    ((cid, lines),) = (await store.chunk_map(res.batch_id)).items()
    return res.batch_id, cid, lines


@pytest.fixture
def slow_sim() -> Iterator[SimulatorProcess]:
    """Answers after 1 s: long enough to act while a chunk's first lines are at the provider."""
    sim = SimulatorProcess({"latency_ms": 1000})
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
async def rt_of(store: Store) -> AsyncIterator[RuntimeOf]:
    """`await rt_of(base_url, **worker)`: a Runtime whose provider "sim" is known good (no probe, no
    slow start), so its calls go out side by side from the start."""
    async with contextlib.AsyncExitStack() as opened:

        async def make(base_url: str, **worker: Any) -> Runtime:
            rt = await opened.enter_async_context(
                worker_runtime(store, base_url, health={"concurrency_recovery_calls": 1}, backoff=0.01, **worker))
            await rt.health.report(rt.providers[0], None, MODEL, "success")
            return rt

        yield make


async def _results(store: Store, batch: str) -> list[dict[str, Any]]:
    return [orjson.loads(rec) async for _, rec in store.iter_results(batch)]


async def _until_calls(base_url: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while SimulatorProcess.stats_of(base_url)["calls"] < n:
        assert time.monotonic() < deadline, f"the simulator never got {n} calls"
        await asyncio.sleep(0.05)


async def _requeued(store: Store, batch: str, old: str) -> tuple[str, list[int], float]:
    """The chunk job a chunk's leftover lines went back to the queue as: its id, lines, due (unix s)."""
    chunks = await store.chunk_map(batch)
    assert old not in chunks, "the old chunk id still owns lines the new one was given"
    ((cid, lines),) = chunks.items()
    score = await store.redis.zscore(store.keys.queue, cid)
    assert cid.startswith(old + ".d") and score is not None
    return cid, sorted(lines), score / 1000


async def test_a_chunk_answers_each_line_once_and_a_rerun_takes_only_those_still_pending(
    store: Store, simulator: SimulatorProcess, rt_of: RuntimeOf
) -> None:
    rt = await rt_of(simulator.base_url, concurrency=4)
    batch, cid, lines = await _batch(store, 6)
    assert await rt.run_chunk(batch, lines[:2], cid) == 2
    assert await rt.run_chunk(batch, lines, cid) == 4  # an arq rerun after the first run was cut off
    assert await rt.run_chunk(batch, lines, cid) == 0
    records = await _results(store, batch)
    assert sorted(r["batchrelay"]["line"] for r in records) == lines
    assert all(r["custom_id"] == f"req-{r['batchrelay']['line']}" and r["error"] is None for r in records)
    info = await store.info(batch)
    assert (info.status, info.succeeded, info.pending) == ("completed", 6, 0)
    assert simulator.stats()["calls"] == 6


async def test_a_line_a_provider_rejects_gets_its_error_record_at_once(
    store: Store, rt_of: RuntimeOf
) -> None:
    with SimulatorProcess({"fail_status": 400}) as base:
        rt = await rt_of(base, concurrency=2)
        batch, cid, lines = await _batch(store, 3)
        assert await rt.run_chunk(batch, lines, cid) == 3
        assert SimulatorProcess.stats_of(base)["calls"] == 3  # one call each: a bad request is not retried
    records = await _results(store, batch)
    assert {r["error"]["code"] for r in records} == {"invalid_request"}
    assert {r["response"]["status_code"] for r in records} == {400}
    info = await store.info(batch)
    assert (info.status, info.failed, info.pending) == ("completed", 3, 0)
    assert list(await store.chunk_map(batch)) == [cid]  # nothing went back to the queue


async def test_a_bug_inside_the_relay_fails_the_line_for_good_instead_of_retrying_it(
    store: Store, simulator: SimulatorProcess, rt_of: RuntimeOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: LineRelay) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(LineRelay, "run", broken)
    rt = await rt_of(simulator.base_url)
    batch, cid, lines = await _batch(store, 2)
    assert await rt.run_chunk(batch, lines, cid) == 2
    records = await _results(store, batch)
    assert [r["error"] for r in records] == [{"code": "provider_error", "message": "internal error: KeyError: 'boom'"}] * 2
    assert (await store.info(batch)).failed == 2


async def test_lines_no_provider_can_take_now_go_back_as_one_chunk_due_when_it_may(
    store: Store, rt_of: RuntimeOf
) -> None:
    with SimulatorProcess({"fail_status": 429, "retry_after": 30}) as base:
        rt = await rt_of(base, concurrency=4)
        batch, cid, lines = await _batch(store, 4)
        before = time.time()
        assert await rt.run_chunk(batch, lines, cid) == 0
        calls = SimulatorProcess.stats_of(base)["calls"]
    new, requeued, due = await _requeued(store, batch, cid)
    assert requeued == lines
    assert before + 25 <= due <= time.time() + 30  # the provider's Retry-After, not an arq retry
    info = await store.info(batch)
    assert (info.status, info.pending, info.done) == ("in_progress", 4, 0)
    # each line keeps the attempts it made (their cost too) for its next run
    claim = await store.claim(batch, lines)
    tried = [Attempt.from_dict(a) for line in lines for a in claim.earlier.get(line, [])]
    assert len(tried) == calls >= 1
    assert {(a.provider, a.status, a.action) for a in tried} == {("sim", 429, "failover")}


async def test_draining_sends_unstarted_lines_back_due_at_once_while_started_ones_finish(
    store: Store, slow_sim: SimulatorProcess, rt_of: RuntimeOf
) -> None:
    rt = await rt_of(slow_sim.base_url, concurrency=2)
    batch, cid, lines = await _batch(store, 6)
    chunk = asyncio.create_task(rt.run_chunk(batch, lines, cid))
    await _until_calls(slow_sim.base_url, 2)
    rt.draining = True  # what SIGTERM does (worker._graceful)
    assert await chunk == 2
    answered = sorted(r["batchrelay"]["line"] for r in await _results(store, batch))
    assert len(answered) == 2
    _, requeued, due = await _requeued(store, batch, cid)
    assert requeued == sorted(set(lines) - set(answered))
    assert due <= time.time()
    assert slow_sim.stats()["calls"] == 2


async def test_a_batch_cancelled_mid_chunk_parks_its_unstarted_lines_without_a_new_job(
    store: Store, rt_of: RuntimeOf
) -> None:
    with SimulatorProcess({"latency_ms": 1500}) as base:  # past the 1 s the stop check is cached
        rt = await rt_of(base, concurrency=2)
        batch, cid, lines = await _batch(store, 6)
        chunk = asyncio.create_task(rt.run_chunk(batch, lines, cid))
        await _until_calls(base, 2)
        await request_stop(store, batch, "cancelled")
        await chunk
        assert SimulatorProcess.stats_of(base)["calls"] == 2
    assert list(await store.chunk_map(batch)) == [cid]  # no new job: the cancel marks the rest
    info = await store.info(batch)
    assert (info.status, info.pending) == ("cancelling", 4)


async def test_over_budget_lines_wait_pending_until_the_limit_is_raised(
    store: Store, simulator: SimulatorProcess, rt_of: RuntimeOf
) -> None:
    rt = await rt_of(simulator.base_url, concurrency=2)
    batch, cid, lines = await _batch(store, 3, max_cost=Decimal("0.000001"))
    await rt.run_chunk(batch, lines, cid)
    assert simulator.stats()["calls"] == 0
    info = await store.info(batch)
    assert (info.status, info.pending) == (Status.BUDGET_EXHAUSTED, 3)
    assert list(await store.chunk_map(batch)) == [cid]  # parked: no job until the limit is raised
    assert rt.budget is not None
    assert await rt.budget.raise_limit(batch, Decimal("1"))
    assert await rt.run_chunk(batch, lines, cid) == 3
    info = await store.info(batch)
    assert (info.status, info.succeeded) == ("completed", 3)


async def test_lines_still_running_here_are_not_taken_again_by_a_rerun_of_their_chunk(
    store: Store, slow_sim: SimulatorProcess, rt_of: RuntimeOf
) -> None:
    rt = await rt_of(slow_sim.base_url, concurrency=4)
    batch, cid, lines = await _batch(store, 4)
    first = asyncio.create_task(rt.run_chunk(batch, lines, cid))
    await _until_calls(slow_sim.base_url, 4)
    assert await rt.run_chunk(batch, lines, cid) == 0  # e.g. arq's retry of a chunk past its deadline
    assert await first == 4
    assert slow_sim.stats()["calls"] == 4


async def test_a_chunk_past_its_deadline_asks_arq_to_retry_while_its_lines_finish_and_are_recorded(
    store: Store, slow_sim: SimulatorProcess, rt_of: RuntimeOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = await rt_of(slow_sim.base_url, concurrency=2)
    monkeypatch.setattr(Runtime, "chunk_deadline", 0.3)  # (job_timeout * 0.9 must stay above call_timeout)
    batch, cid, lines = await _batch(store, 2)
    with pytest.raises(Retry) as retry:
        await run_chunk({"runtime": rt, "job_id": cid}, batch, lines)
    assert retry.value.defer_score == 0
    assert rt.in_flight == {(batch, n) for n in lines}  # still at the provider: arq's retry skips them
    deadline = time.monotonic() + 10
    # the consumer lets go of a line just after its result is written: wait for both
    while (await store.info(batch)).succeeded < 2 or rt.in_flight:
        assert time.monotonic() < deadline, (rt.in_flight, await store.info(batch))
        await asyncio.sleep(0.05)
    assert slow_sim.stats()["calls"] == 2


async def test_a_chunk_whose_redis_is_unreachable_asks_arq_to_retry_it_soon() -> None:
    gone = Redis.from_url("redis://127.0.0.1:9", socket_connect_timeout=1)  # nothing listens there
    settings = Settings(providers=(ProviderConfig(name="sim", base_url="http://127.0.0.1:9"),))
    rt = Runtime.opened(settings, Store(gone, Keys("brtest-gone:")))
    try:
        with pytest.raises(Retry) as retry:
            await run_chunk({"runtime": rt, "job_id": "c0"}, "batch_x", [1])
        assert retry.value.defer_score == int(REDIS_RETRY_DEFER * 1000)
    finally:
        await rt.close()
        await gone.aclose()


# --- worker processes --------------------------------------------------------------------------------

def _worker(cfg: Path, redis_url: str, *, burst: bool = True) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", *(["--burst"] if burst else []),
                             "--quiet"],
                            env={**os.environ, "REDIS_URL": redis_url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _assert_exactly_once(rows: list[dict[str, Any]], n: int) -> None:
    counts = Counter(r["custom_id"] for r in rows)
    assert len(rows) == n
    assert set(counts) == {f"req-{i}" for i in range(1, n + 1)}
    assert max(counts.values()) == 1


def test_two_worker_processes_answer_every_line_exactly_once(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"latency_ms": 5}) as base:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": base}])
        batch = submit_lines(tmp_path, cfg, redis_url, 400)
        workers = [_worker(cfg, redis_url), _worker(cfg, redis_url)]
        for w in workers:
            assert w.wait(timeout=90) == 0
    status = status_of(cfg, redis_url, batch)
    assert status["status"] == "completed"
    assert status["counts"]["succeeded"] == 400
    _assert_exactly_once(results_of(tmp_path, cfg, redis_url, batch), 400)


def test_a_sigkilled_worker_loses_no_line_and_duplicates_none(tmp_path: Path, redis_url: str, prefix: str) -> None:
    n = 400
    with SimulatorProcess({"latency_ms": 60}) as base:
        # short job_timeout: arq reruns a dead worker's chunk job_timeout + 10 s after it started
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": base}],
                           concurrency=4, chunk_size=10, call_timeout=2, job_timeout=4)
        batch = submit_lines(tmp_path, cfg, redis_url, n)
        victim, survivor = _worker(cfg, redis_url), _worker(cfg, redis_url)
        deadline = time.monotonic() + 30
        while status_of(cfg, redis_url, batch)["counts"]["done"] < n // 4:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        done_at_kill = status_of(cfg, redis_url, batch)["counts"]["done"]
        assert done_at_kill < n, "the batch finished before the kill; the test proves nothing"
        restarted = _worker(cfg, redis_url)
        assert survivor.wait(timeout=90) == 0
        assert restarted.wait(timeout=90) == 0
        calls = SimulatorProcess.stats_of(base)["calls"]
    status = status_of(cfg, redis_url, batch)
    assert status["status"] == "completed"
    assert status["counts"]["succeeded"] == n
    _assert_exactly_once(results_of(tmp_path, cfg, redis_url, batch), n)
    # lines in flight in the killed worker may be called again, but never recorded twice
    assert n <= calls <= n + 4 * 3 * 10


def test_a_sigterm_lets_started_lines_finish_and_sends_the_rest_back_for_another_worker(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """A SIGTERMed worker finishes and records the lines it had started (1 s calls) and calls none it
    had not; a second worker takes the rest (with quick answers) and calls each of them once."""
    n = 40
    with SimulatorProcess({"latency_ms": 1000}) as base:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": base}],
                           health={"concurrency_recovery_calls": 1}, concurrency=4, chunk_size=20)
        batch = submit_lines(tmp_path, cfg, redis_url, n)
        worker = _worker(cfg, redis_url, burst=False)
        deadline = time.monotonic() + 30
        while SimulatorProcess.stats_of(base)["calls"] == 0:
            assert time.monotonic() < deadline, "the worker never called the provider"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 5 + 5  # call_timeout + the shutdown margin, at most
        calls_at_stop = SimulatorProcess.stats_of(base)["calls"]
        done_at_stop = status_of(cfg, redis_url, batch)["counts"]["done"]
        # every line it had started was answered and recorded; none it had not started was called
        assert 1 <= done_at_stop == calls_at_stop <= 4
        # quick answers now: the slow ones were only there to have calls in flight at the SIGTERM
        httpx.post(base + "/_sim/config", json={"latency_ms": 5}, timeout=5).raise_for_status()
        finisher = _worker(cfg, redis_url)
        assert finisher.wait(timeout=90) == 0
        calls = SimulatorProcess.stats_of(base)["calls"]
    status = status_of(cfg, redis_url, batch)
    assert status["status"] == "completed"
    assert status["counts"]["succeeded"] == n
    _assert_exactly_once(results_of(tmp_path, cfg, redis_url, batch), n)
    assert calls == n  # the lines sent back were called once, by the second worker
