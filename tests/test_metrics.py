"""Prometheus metrics after a real run with failover: `serve`'s /metrics (the fleet, from Redis) and a
worker's own metrics port, both scraped over HTTP and read with prometheus_client's own parser, agree
exactly with the batch's counts, its ledger and the attempts in its result records."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, WorkerConfig
from batchrelay.money.ledger import SEP, rows
from batchrelay.procs import stop_all
from batchrelay.results.outcome import Attempt
from batchrelay.results.tally import OUTCOMES, outcome_of
from batchrelay.sim.process import SimulatorProcess, free_port
from batchrelay.spec import BatchSpec
from batchrelay.store.fleet import read_fleet
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream
from batchrelay.worker.metrics import REGISTRY, serve_metrics
from batchrelay.worker.worker import _until_redis_answers

from .conftest import openai_line, wait_for, write_config
from .servekit import KEY, KEY_ENV, serving

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
MODEL = "gpt-4o-mini"


def scrape(url: str, key: str | None = None) -> tuple[Samples, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    text = r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}, text


def by(samples: Samples, name: str, *label: str) -> dict[tuple[str, ...], float]:
    """The samples of one name, keyed by the values of `label` (those with any other label value dropped)."""
    return {tuple(dict(labels)[x] for x in label): v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[tuple[str, str, Path, dict[str, str]]]:
    """serve (/metrics behind a key) and one worker with its metrics port, in front of two providers:
    `flaky` (priority 1) answers two 503s, an answer, a 429, a 500, an answer, then a 402 (benched from
    then on), and `good` the rest."""
    flaky = SimulatorProcess({"script": [503, 503, 200, 429, 500, 200, 402], "latency_ms": 5})
    good = SimulatorProcess({"latency_ms": 5})
    procs: list[subprocess.Popen[bytes]] = []
    with flaky as flaky_url, good as good_url:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "flaky", "base_url": flaky_url, "priority": 1},
                                                          {"name": "good", "base_url": good_url, "priority": 2}],
                           health={"cooldown_s": 0.1}, concurrency=8, chunk_size=10, call_timeout=5)
        with cfg.open("a") as f:
            f.write(f'\n[serve]\napi_keys_env = ["{KEY_ENV}"]\nfiles_dir = "{tmp_path / "files"}"\n')
        env = {**os.environ, "REDIS_URL": redis_url, KEY_ENV: KEY}
        serve_port, worker_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "batchrelay", "-c", str(cfg)]
        try:
            procs.append(subprocess.Popen([*cmd, "serve", "--port", str(serve_port)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen([*cmd, "worker", "--quiet", "--metrics-port", str(worker_port)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            serve_url, worker_url = f"http://127.0.0.1:{serve_port}/metrics", f"http://127.0.0.1:{worker_port}/metrics"

            def up(url: str) -> bool:
                assert all(p.poll() is None for p in procs), "serve or the worker ended"
                try:
                    return httpx.get(url, timeout=1).status_code in (200, 401)
                except httpx.HTTPError:
                    return False

            wait_for(lambda: up(serve_url) and up(worker_url), 30, "serve and the worker's metrics to answer")
            yield serve_url, worker_url, cfg, env
        finally:
            stop_all(procs, grace=10)


async def test_metrics_agree_exactly_with_the_batch_after_a_run_with_failover(
    fleet: tuple[str, str, Path, dict[str, str]], store: Store
) -> None:
    serve_url, worker_url, _cfg, _env = fleet
    source = b"".join(orjson.dumps(openai_line(i, MODEL)) + b"\n" for i in range(1, 41)) + b"{not json\n"
    sub = await submit_stream(store, io.BytesIO(source), BatchSpec(), source="in.jsonl")
    batch = sub.batch_id

    for _ in range(600):
        if (await store.info(batch)).finished:
            break
        await asyncio.sleep(0.1)
    info = await store.info(batch)
    assert info.status == "completed" and info.invalid == 1 and info.succeeded + info.failed == 40

    attempts = [Attempt.from_dict(a) async for ok, rec in store.iter_results(batch)
                for a in orjson.loads(rec).get("batchrelay", {}).get("attempts", [])]
    assert [a.status for a in attempts if a.provider == "flaky"].count(402) == 1, "flaky was benched"
    assert {outcome_of(a) for a in attempts} >= {"ok", "transient", "rate_limited", "billing"}
    ledger = rows(await store.ledger(batch))

    fleet_samples, text = scrape(serve_url, KEY)
    lines = by(fleet_samples, "batchrelay_lines_total", "status")
    assert lines == {("succeeded",): info.succeeded, ("failed",): info.failed, ("invalid",): 1,
                     ("cancelled",): 0, ("expired",): 0}
    assert fleet_samples[("batchrelay_lines_pending", ())] == 0
    assert by(fleet_samples, "batchrelay_batches", "status")[("completed",)] == 1
    calls = {k: v for k, v in by(fleet_samples, "batchrelay_provider_calls_total", "provider", "model", "outcome")
             .items() if v}
    assert calls == dict(Counter((a.provider, MODEL, outcome_of(a)) for a in attempts))
    assert set(OUTCOMES) <= {o for (_, _, o) in by(fleet_samples, "batchrelay_provider_calls_total",
                                                    "provider", "model", "outcome")}
    assert by(fleet_samples, "batchrelay_spend_usd_total", "provider", "model") == {
        (r.provider, r.model): float(r.cost) for r in ledger}
    assert sum(by(fleet_samples, "batchrelay_spend_usd_total", "provider", "model").values()) > 0
    tokens = by(fleet_samples, "batchrelay_tokens_total", "provider", "model", "kind")
    assert tokens == {(r.provider, r.model, kind): r[kind] for r in ledger
                      for kind in ("input", "cached", "cache_write", "output", "reasoning")}
    states = by(fleet_samples, "batchrelay_provider_state", "provider", "state")
    assert states[("flaky", "benched")] == 1 and states[("good", "ok")] == 1
    assert sum(v for (p, _), v in states.items() if p == "flaky") == 1
    assert batch not in text, "no batch id in any label"

    mine, text = scrape(worker_url)
    done_lines = by(mine, "batchrelay_worker_lines_total", "status")
    assert done_lines[("succeeded",)] == info.succeeded and done_lines[("failed",)] == info.failed
    durations = by(mine, "batchrelay_provider_call_duration_seconds_count", "provider")
    assert durations == {(p,): n for p, n in Counter(a.provider for a in attempts).items()}
    assert by(mine, "batchrelay_worker_chunk_jobs_total", "outcome")[("done",)] >= 1
    assert mine[("batchrelay_worker_lines_in_flight", ())] == 0
    assert ("batchrelay_worker_redis_reconnects_total", ()) in mine
    assert ("process_cpu_seconds_total", ()) in mine and any(n == "python_info" for n, _ in mine)
    assert batch not in text


def test_metrics_need_a_client_key(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, worker=False) as api:
        assert httpx.get(api.base + "/metrics").status_code == 401
        assert httpx.get(api.base + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        samples, _ = scrape(api.base + "/metrics", KEY)
    assert by(samples, "batchrelay_provider_state", "provider", "state")[("sim", "untried")] == 1


def test_metrics_are_open_with_metrics_public(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with serving(tmp_path, redis_url, prefix, serve_extra="metrics_public = true", worker=False) as api:
        samples, _ = scrape(api.base + "/metrics")
        assert httpx.get(api.base + "/v1/batches").status_code == 401, "only /metrics is open"
        assert httpx.post(api.base + "/metrics").status_code == 401
    assert ("batchrelay_lines_pending", ()) in samples


async def test_invalid_lines_are_counted_for_the_fleet_when_they_are_written(store: Store) -> None:
    source = b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 6)) + b"{bad\n[]\n"
    await submit_stream(store, io.BytesIO(source), BatchSpec(), source="x.jsonl")
    await submit_stream(store, io.BytesIO(source[:source.index(b"[]")]), BatchSpec(), source="y.jsonl")
    assert int(await store.redis.hget(store.keys.fleet_counts, f"lines{SEP}invalid")) == 3  # type: ignore[misc]


async def test_a_fleet_read_counts_batches_by_status_and_pending_lines_a_block_at_a_time(store: Store) -> None:
    ids = []
    for n in range(5):
        source = b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 2))
        ids.append((await submit_stream(store, io.BytesIO(source), BatchSpec(), source=f"{n}.jsonl")).batch_id)
    await store.redis.hset(store.keys.meta(ids[0]), "status", "completed")  # type: ignore[misc]
    got = await read_fleet(store, ["a"], HealthConfig(), block=2)
    assert got.batches == {"completed": 1, "in_progress": 4}
    assert got.pending == 2 + 3 + 4 + 5
    assert got.queued == 5  # each batch's one chunk job, on the shared queue (no worker runs here)
    assert got.providers["a"]["state"] == "untried"


async def test_a_worker_counts_the_redis_outages_it_waited_out(redis: Redis) -> None:
    """worker.py's wait for Redis ends when it answers again: that is one reconnect."""
    before = REGISTRY.get_sample_value("batchrelay_worker_redis_reconnects_total") or 0
    arq_worker = SimpleNamespace(_pool=redis, pool=redis, burst=False)  # what the wait reads of arq's Worker
    await _until_redis_answers(arq_worker, [0])  # type: ignore[arg-type]
    assert REGISTRY.get_sample_value("batchrelay_worker_redis_reconnects_total") == before + 1


def test_a_worker_metrics_port_already_taken_is_a_warning_not_the_end_of_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = WorkerConfig(metrics_port=free_port())
    assert serve_metrics(WorkerConfig(), {}) is None, "no port: no server"
    first = serve_metrics(cfg, {})
    assert first is not None
    try:
        samples, _ = scrape(f"http://127.0.0.1:{cfg.metrics_port}/metrics")
        assert samples[("batchrelay_worker_lines_in_flight", ())] == 0  # no runtime yet
        with caplog.at_level(logging.WARNING, "batchrelay.worker.metrics"):
            assert serve_metrics(cfg, {}) is None
        assert f"cannot listen on 127.0.0.1:{cfg.metrics_port}" in caplog.text
    finally:
        first.close()
    again = serve_metrics(cfg, {})  # closed means closed: its port and its collector are free again
    assert again is not None
    again.close()
