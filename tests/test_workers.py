"""Separate worker processes share a batch: every line exactly once, even when one is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from batchrelay.sim.process import SimulatorProcess

from .conftest import results_of, status_of, submit_lines, write_config


def _worker(cfg: Path, redis_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--burst", "--quiet"],
                            env={**os.environ, "REDIS_URL": redis_url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _assert_exactly_once(rows: list[dict], n: int) -> None:
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
