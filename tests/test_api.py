"""The Python API (batchrelay.Client / AsyncClient) against a real Redis, the simulator and in-process workers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from batchrelay import AsyncClient, Client
from batchrelay.config.settings import ProviderConfig, RedisConfig, Settings, WorkerConfig
from batchrelay.errors import BatchNotFound, InputError
from batchrelay.sim.process import SimulatorProcess
from batchrelay.store.keys import Keys
from batchrelay.worker.worker import build_worker, run_worker

from .conftest import openai_line

FAST = {"concurrency": 8, "chunk_size": 10, "call_timeout": 5, "job_timeout": 20, "backoff": 0.01}


def _settings(prefix: str, base_url: str = "http://127.0.0.1:9", **worker: Any) -> Settings:
    return Settings(redis=RedisConfig(prefix=prefix), worker=WorkerConfig(**{**FAST, **worker}),
                    providers=(ProviderConfig(name="sim", base_url=base_url),))


async def _burst(settings: Settings, redis_url: str) -> None:
    await run_worker(build_worker(settings, redis_url, burst=True, handle_signals=False))


class _WorkerThread(threading.Thread):
    """A burst worker on an event loop of its own, beside a blocking Client."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.redis_url = settings, redis_url
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(_burst(self.settings, self.redis_url))
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e


def _mixed(n: int) -> list[dict[str, Any]]:
    """n lines in all three formats: OpenAI batch lines, Anthropic batch lines, bare bodies."""
    items: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        ask = [{"role": "user", "content": f"question {i}"}]
        if i % 3 == 0:
            items.append({"custom_id": f"req-{i}", "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 50,
                                                             "messages": ask}})
        elif i % 3 == 1:
            items.append(openai_line(i))
        else:
            items.append({"model": "gpt-4o-mini", "messages": ask})
    return items


def test_sync_client_submits_a_list_waits_and_reads_results_in_order(
        redis_url: str, prefix: str, simulator: SimulatorProcess) -> None:
    n = 25
    settings = _settings(prefix, simulator.base_url)
    with Client(redis_url, settings=settings) as client:
        batch = client.submit(_mixed(n), name="from-python")
        assert batch.startswith("batch_")
        queued = client.status(batch)
        assert (queued["name"], queued["counts"]["total"], queued["counts"]["pending"]) == ("from-python", n, n)

        worker = _WorkerThread(settings, redis_url)
        worker.start()
        status = client.wait(batch, timeout=90, poll=0.1)
        worker.join(timeout=60)
        assert worker.error is None and not worker.is_alive()

        assert status["status"] == "completed"
        assert status["counts"]["succeeded"] == n and status["counts"]["pending"] == 0
        assert status["cost"]["requests"] == n and Decimal(status["cost"]["usd"]) > 0
        assert client.status(batch)["cost"] == status["cost"]

        records = list(client.results(batch))
    assert [r["batchrelay"]["line"] for r in records] == list(range(1, n + 1))
    ids = [r["custom_id"] for r in records]
    assert ids == [f"req-{i}" if i % 3 != 2 else f"line-{i}" for i in range(1, n + 1)]
    assert records[2]["result"]["type"] == "succeeded"  # Anthropic lines answer in their own format
    assert records[0]["response"]["status_code"] == 200
    assert sum(Decimal(r["batchrelay"]["cost"]["usd"]) for r in records) == Decimal(status["cost"]["usd"])


async def test_async_client_submits_a_file_and_skips_errors_on_request(
        redis_url: str, prefix: str, simulator: SimulatorProcess, tmp_path: Path) -> None:
    n = 12
    src = tmp_path / "requests.jsonl"
    lines = [orjson.dumps(openai_line(i)) for i in range(1, n + 1)]
    lines.insert(4, b"{not json")  # line 5
    src.write_bytes(b"\n".join(lines) + b"\n")
    settings = _settings(prefix, simulator.base_url)
    async with AsyncClient(redis_url, settings=settings) as client:
        batch = await client.submit(src)
        worker = asyncio.create_task(_burst(settings, redis_url))
        status = await client.wait(batch, timeout=90, poll=0.1)
        await asyncio.wait_for(worker, 60)
        everything = [r async for r in client.results(batch)]
        successes = [r async for r in client.results(batch, errors=False)]
    assert status["status"] == "completed" and status["name"] == "requests.jsonl"
    assert status["counts"] == {"total": n + 1, "done": n + 1, "succeeded": n, "failed": 0, "invalid": 1,
                                "cancelled": 0, "expired": 0, "pending": 0}
    assert [r["batchrelay"]["line"] for r in everything] == list(range(1, n + 2))
    assert everything[4]["error"]["code"] == "invalid_input" and everything[4]["error"]["line"] == 5
    assert [r["custom_id"] for r in successes] == [f"req-{i}" for i in range(1, n + 1)]
    assert all(r["error"] is None for r in successes)


async def test_cancel_lets_calls_in_flight_finish_and_cancels_the_rest(redis_url: str, prefix: str) -> None:
    n = 30
    with SimulatorProcess({"latency_ms": 1500}) as base:
        settings = _settings(prefix, base, concurrency=2, chunk_size=5, call_timeout=3)
        async with AsyncClient(redis_url, settings=settings) as client:
            batch = await client.submit(openai_line(i) for i in range(1, n + 1))
            worker = asyncio.create_task(_burst(settings, redis_url))
            try:
                for _ in range(300):
                    if (await asyncio.to_thread(SimulatorProcess.stats_of, base))["calls"] >= 2:
                        break
                    await asyncio.sleep(0.05)
                status = await client.cancel(batch)
            finally:
                await asyncio.wait_for(worker, 60)
            after = await client.status(batch)
        calls = SimulatorProcess.stats_of(base)["calls"]
    counts = status["counts"]
    assert status["status"] == "cancelled" and counts["pending"] == 0
    assert counts["succeeded"] == calls >= 2  # the calls in flight came back with their answers
    assert counts["cancelled"] == n - calls > 0
    assert after["status"] == "cancelled" and after["counts"] == counts


def test_cancel_without_waiting_and_of_a_finished_batch(redis_url: str, prefix: str) -> None:
    with Client(redis_url, settings=_settings(prefix)) as client:
        batch = client.submit([openai_line(i) for i in range(1, 6)])
        status = client.cancel(batch, wait=False)  # no worker ever took a line: all stop at once
        assert status["status"] == "cancelled" and status["counts"]["cancelled"] == 5
        assert client.cancel(batch)["counts"] == status["counts"]
        errors = list(client.results(batch))
        assert {r["error"]["code"] for r in errors} == {"batch_cancelled"}
        assert list(client.results(batch, errors=False)) == []


def test_a_generator_of_20000_dicts_is_streamed_not_collected(redis_url: str, prefix: str) -> None:
    n, checked_at = 20_000, 15_000
    keys, seen = Keys(prefix), {"yielded": 0, "stored_before_end": 0}
    probe = sync_redis.Redis.from_url(redis_url)

    def lines() -> Iterator[dict[str, Any]]:
        for i in range(1, n + 1):
            if i == checked_at:
                # a list built first would have no line in Redis yet; a stream has written its first blocks
                batch = probe.zrange(keys.batches, 0, -1)[0].decode()
                seen["stored_before_end"] = probe.hlen(keys.lines(batch))
            seen["yielded"] = i
            yield {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}

    try:
        with Client(redis_url, settings=_settings(prefix, chunk_size=500)) as client:
            batch = client.submit(lines())
            status = client.status(batch)
    finally:
        probe.close()
    assert seen["yielded"] == n
    assert 0 < seen["stored_before_end"] < checked_at
    assert status["counts"]["total"] == n and status["counts"]["invalid"] == 0
    assert status["input_format"] == "bare"


def test_bad_items_become_error_records_with_their_line_numbers(redis_url: str, prefix: str) -> None:
    items: list[Any] = [
        openai_line(1),
        {"foo": 1},                                                      # no model or messages
        "not an object",
        openai_line(1),                                                  # custom_id repeated
        {**openai_line(5), "url": "/v1/embeddings"},                     # unsupported url
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    ]
    with Client(redis_url, settings=_settings(prefix)) as client:
        batch = client.submit(items)
        status = client.status(batch)
        errors = list(client.results(batch))
    assert status["counts"]["total"] == 6 and status["counts"]["invalid"] == 4 and status["counts"]["pending"] == 2
    assert [e["batchrelay"]["line"] for e in errors] == [2, 3, 4, 5]
    assert [e["error"]["line"] for e in errors] == [2, 3, 4, 5]
    messages = [e["error"]["message"] for e in errors]
    assert messages[0].startswith("line 2: ")
    assert "expected a JSON object, got str" in messages[1]
    assert "line 1" in messages[2]  # the duplicate names the first line with its custom_id
    assert "/v1/embeddings" in messages[3]


def test_an_item_that_is_not_json_stops_the_submit_with_its_number(redis_url: str, prefix: str) -> None:
    with Client(redis_url, settings=_settings(prefix)) as client, pytest.raises(InputError, match="item 2 "):
        client.submit([openai_line(1), {"model": "m", "messages": {1, 2}}])


def test_unknown_providers_and_bad_arguments_are_clean_errors(redis_url: str, prefix: str) -> None:
    with Client(redis_url, settings=_settings(prefix)) as client:
        with pytest.raises(InputError, match="unknown providers nope"):
            client.submit([openai_line(1)], providers=["sim", "nope"])
        with pytest.raises(InputError, match="endpoint"):
            client.submit([openai_line(1)], endpoint="embeddings")  # type: ignore[arg-type]
        with pytest.raises(InputError, match="max_cost"):
            client.submit([openai_line(1)], max_cost="lots")
        with pytest.raises(InputError, match="cannot read input file"):
            client.submit(Path("/nonexistent/requests.jsonl"))
        with pytest.raises(TypeError, match="iterable of dicts"):
            client.submit(b'{"model": "m"}')  # type: ignore[arg-type]
        with pytest.raises(InputError, match="webhook URL must be http"):
            client.submit([openai_line(1)], webhook="file:///etc/passwd")
        # nothing was queued by any of them
        assert client.submit([openai_line(1)], providers="sim", completion_window="1h")


def test_an_unknown_batch_id_is_batch_not_found(redis_url: str, prefix: str) -> None:
    with Client(redis_url, settings=_settings(prefix)) as client:
        for call in (client.status, client.wait, client.results, client.cancel, client.retry, client.cost,
                     client.budget):
            with pytest.raises(BatchNotFound):
                call("batch_doesnotexist")


async def test_async_unknown_batch_id_and_wait_timeout(redis_url: str, prefix: str) -> None:
    async with AsyncClient(redis_url, settings=_settings(prefix)) as client:
        with pytest.raises(BatchNotFound):
            [r async for r in client.results("batch_doesnotexist")]
        batch = await client.submit([openai_line(1)])
        with pytest.raises(TimeoutError, match="in_progress"):
            await client.wait(batch, timeout=0.3, poll=0.05)


async def test_the_blocking_client_refuses_to_run_inside_an_event_loop(redis_url: str, prefix: str) -> None:
    client = Client(redis_url, settings=_settings(prefix))
    with pytest.raises(RuntimeError, match="AsyncClient"):
        client.status("batch_doesnotexist")
    client.close()


def test_results_are_read_a_block_at_a_time_and_a_loop_may_stop_early(
        redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batchrelay.api.client.RESULTS_BLOCK", 3)
    with Client(redis_url, settings=_settings(prefix)) as client:
        batch = client.submit([openai_line(i) for i in range(1, 11)] + [{"bad": i} for i in range(10)])
        assert [r["batchrelay"]["line"] for r in client.results(batch)] == list(range(11, 21))
        client.cancel(batch, wait=False)
        assert [r["batchrelay"]["line"] for r in client.results(batch)] == list(range(1, 21))
        first = client.results(batch)
        assert next(first)["batchrelay"]["line"] == 1
        first.close()  # stopped early: its reader is closed on the client's loop
        partly = client.results(batch)
        assert [next(partly)["batchrelay"]["line"] for _ in range(4)] == [1, 2, 3, 4]
    del partly  # left open past close(): the loop's shutdown already closed its reader


def test_the_rest_of_the_api_lists_exports_prices_budgets_and_retries(
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    """batches, export, cost, budget, providers and retry: what the CLI's commands are built on."""
    with SimulatorProcess({"fail_rate": 1.0, "fail_status": 400}) as bad, SimulatorProcess({}) as good:
        failing = _settings(prefix, bad)
        with Client(redis_url, settings=failing) as client:
            batch = client.submit([openai_line(i) for i in range(1, 7)], name="api-rest", max_cost="1.5",
                                  webhook="http://127.0.0.1:9/hook")  # nothing listens there
            assert client.batches(5)[0]["id"] == batch
            seen: list[int] = []
            worker = _WorkerThread(failing, redis_url)
            worker.start()
            st = client.wait(batch, timeout=90, poll=0.05, on_update=lambda s: seen.append(s["counts"]["done"]))
            worker.join(timeout=60)
            assert st["status"] == "completed" and st["counts"]["failed"] == 6
            assert seen and seen[-1] == 6 and seen == sorted(seen)
            # a burst worker tries a finished batch's webhook once before it exits; retries wait for a worker
            assert client.status(batch)["webhook"] == {"url": "http://127.0.0.1:9/hook", "status": "retrying",
                                                       "attempts": 1, "last": "ConnectError"}
            written = client.export(batch, tmp_path / "out.jsonl")
            assert (written["results"], written["errors"]) == (0, 6)
            assert Path(written["errors_file"]).name == "out.errors.jsonl"
            assert len(Path(written["errors_file"]).read_bytes().splitlines()) == 6
            assert client.cost(batch)["total"]["requests"] == 0  # a 400 is not billed
            b = client.budget(batch)
            assert (b["max_usd"], b["spent_usd"], b["requeued_chunks"]) == ("1.5", "0", 0)
            assert client.budget(batch, "2")["max_usd"] == "2"
            assert set(client.providers()) == {"sim"}
        # the provider is fixed: the failed lines go again and succeed
        fixed = _settings(prefix, good)
        with Client(redis_url, settings=fixed) as client:
            again = client.retry(batch)
            assert (again["lines"], again["batch"]) == (6, batch)
            worker = _WorkerThread(fixed, redis_url)
            worker.start()
            st = client.wait(batch, timeout=90, poll=0.05)
            worker.join(timeout=60)
            assert (st["status"], st["counts"]["succeeded"]) == ("completed", 6)
            assert client.cost(batch)["rows"][0]["requests"] == 6
