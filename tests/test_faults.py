"""Faults around a running batch (issue 6): a graceful SIGTERM, a Redis restart mid-batch."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from batchrelay.sim.process import SimulatorProcess, free_port

from .conftest import OwnRedis, batchrelay, openai_line, results_of, status_of, submit_lines, wait_for, write_config


def _worker(cfg: Path, redis_url: str, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", *extra]
    env = {**os.environ, "REDIS_URL": redis_url}
    if log is None:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out)


def test_sigterm_lets_calls_in_flight_finish_and_leaves_the_rest_queued(tmp_path: Path, redis_url: str,
                                                                        prefix: str) -> None:
    """A SIGTERMed worker waits for its calls in flight (slow ones, 1.5 s), records their answers and
    exits 0; the lines it never started stay queued, and a second worker finishes them (with quick
    answers) without calling any line twice."""
    n = 60
    with SimulatorProcess({"latency_ms": 1500}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}],
                           concurrency=4, chunk_size=10, call_timeout=10, job_timeout=30)
        batch = submit_lines(tmp_path, cfg, redis_url, n)
        w = _worker(cfg, redis_url, log=tmp_path / "worker.log")
        try:
            wait_for(lambda: SimulatorProcess.stats_of(sim)["calls"] >= 4, 30, "four calls in flight")
            time.sleep(0.3)
            started = time.monotonic()
            w.send_signal(signal.SIGTERM)
            assert w.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        stopped_in = time.monotonic() - started
        calls = SimulatorProcess.stats_of(sim)["calls"]
        status = status_of(cfg, redis_url, batch)
        # every call that was sent got its answer recorded: nothing was cut off and paid for in vain
        assert status["counts"]["succeeded"] == calls >= 4
        assert status["counts"]["pending"] == n - calls > 0
        assert stopped_in < 10  # it waited for ~1.5 s calls, not for the whole grace period
        # the lines it never started are queued for the next worker, without costing an arq try (quick
        # answers now: the slow ones were only there to have calls in flight at the SIGTERM)
        httpx.post(sim + "/_sim/config", json={"latency_ms": 5}, timeout=5).raise_for_status()
        finisher = _worker(cfg, redis_url, "--burst", "--quiet")
        assert finisher.wait(timeout=120) == 0
        total_calls = SimulatorProcess.stats_of(sim)["calls"]
    assert status_of(cfg, redis_url, batch)["status"] == "completed"
    rows = results_of(tmp_path, cfg, redis_url, batch)
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, n + 1))
    assert total_calls == n  # no line was called twice


def test_a_redis_restart_mid_batch_loses_nothing_and_workers_carry_on(tmp_path: Path, own_redis: OwnRedis,
                                                                       prefix: str) -> None:
    url, restart = own_redis.url, own_redis.restart
    n = 600
    with SimulatorProcess({"latency_ms": 150}) as sim:
        # 2 workers x 4 lines at a time at 150 ms a call: about 12 s of work, so the restart lands mid-batch
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}],
                           concurrency=4, chunk_size=10, call_timeout=5, job_timeout=20)
        batch = submit_lines(tmp_path, cfg, url, n)
        with _workers(cfg, url, 2, tmp_path) as workers:
            wait_for(lambda: status_of(cfg, url, batch)["counts"]["done"] >= n // 5, 60, "a fifth of the batch")
            restart(3.0)
            assert status_of(cfg, url, batch)["counts"]["done"] < n, "finished before the restart: proves nothing"
            assert all(w.poll() is None for w in workers), "a worker died with Redis away"
            for i, w in enumerate(workers):
                assert w.wait(timeout=180) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    status = status_of(cfg, url, batch)
    assert status["status"] == "completed" and status["counts"]["succeeded"] == n
    rows = results_of(tmp_path, cfg, url, batch)
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, n + 1))


@contextlib.contextmanager
def _workers(cfg: Path, url: str, n: int, logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Burst workers, killed on the way out if a test failed while they ran."""
    procs = [_worker(cfg, url, "--burst", log=logs / f"w{i}.log") for i in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_submit_against_an_unreachable_redis_fails_cleanly(tmp_path: Path, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    proc = batchrelay("-c", str(cfg), "submit", str(src), env={"REDIS_URL": f"redis://u:s3cret@127.0.0.1:{free_port()}/0"})
    assert proc.returncode != 0
    assert "cannot reach Redis" in proc.stderr and "Traceback" not in proc.stderr
    assert "s3cret" not in proc.stderr  # the password is masked


def test_cancel_lets_calls_in_flight_finish_marks_the_rest_and_retry_brings_them_back(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    """`cancel` while 1.2 s calls are in flight: their answers are kept, every other line is marked
    cancelled (exported as `batch_cancelled` errors), and `retry` queues exactly those again for a
    worker to finish (with quick answers): every line once, no line called twice."""
    n = 60
    with SimulatorProcess({"latency_ms": 1200}) as sim:
        # the cancel waits call_timeout + 5 s for the lines a worker took (the chunk's, not only the 4 calls
        # in flight): a 5 s timeout, ample for 1.2 s calls, keeps that wait short
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}],
                           concurrency=4, chunk_size=10, call_timeout=5, job_timeout=30)
        batch = submit_lines(tmp_path, cfg, redis_url, n)
        w = _worker(cfg, redis_url, "--quiet")
        try:
            wait_for(lambda: SimulatorProcess.stats_of(sim)["calls"] >= 4, 30, "four calls in flight")
            proc = batchrelay("-c", str(cfg), "cancel", batch, "--json", env={"REDIS_URL": redis_url})
            assert proc.returncode == 0, proc.stderr
            info = json.loads(proc.stdout)
            calls = SimulatorProcess.stats_of(sim)["calls"]
        finally:
            w.send_signal(signal.SIGTERM)
            w.wait(timeout=30)
        assert info["status"] == "cancelled"
        counts = info["counts"]
        # the calls in flight came back with their answers; nothing else was sent
        assert counts["succeeded"] == calls >= 4
        assert counts["cancelled"] == n - calls and counts["pending"] == 0
        out = tmp_path / "partial.jsonl"
        exported = batchrelay("-c", str(cfg), "results", batch, "-o", str(out), env={"REDIS_URL": redis_url})
        assert exported.returncode == 3  # not every line succeeded
        assert len(out.read_bytes().splitlines()) == calls
        errors = [orjson.loads(x) for x in out.with_suffix(".errors.jsonl").read_bytes().splitlines()]
        assert len(errors) == n - calls
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}

        again = batchrelay("-c", str(cfg), "retry", batch, "--json", env={"REDIS_URL": redis_url})
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["lines"] == n - calls
        assert status_of(cfg, redis_url, batch)["status"] == "in_progress"
        # quick answers now: the slow ones were only there to have calls in flight at the cancel
        httpx.post(sim + "/_sim/config", json={"latency_ms": 5}, timeout=5).raise_for_status()
        finisher = _worker(cfg, redis_url, "--burst", "--quiet")
        assert finisher.wait(timeout=120) == 0
        total_calls = SimulatorProcess.stats_of(sim)["calls"]
    status = status_of(cfg, redis_url, batch)
    assert status["status"] == "completed"
    assert status["counts"]["succeeded"] == n and status["counts"]["cancelled"] == 0
    rows = results_of(tmp_path, cfg, redis_url, batch)
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, n + 1))
    assert total_calls == n


def test_a_batch_past_its_completion_window_expires_and_retry_brings_its_lines_back(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    n = 40
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    with SimulatorProcess({"latency_ms": 1000}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}],
                           concurrency=2, chunk_size=4, call_timeout=3, job_timeout=10)
        proc = batchrelay("-c", str(cfg), "submit", str(src), "--completion-window", "4s", "--json",
                          env={"REDIS_URL": redis_url})
        assert proc.returncode == 0, proc.stderr
        batch = json.loads(proc.stdout)["id"]
        w = _worker(cfg, redis_url, "--quiet")
        try:
            wait_for(lambda: status_of(cfg, redis_url, batch)["status"] == "expired", 60, "the batch to expire")
            calls = SimulatorProcess.stats_of(sim)["calls"]
        finally:
            w.send_signal(signal.SIGTERM)
            w.wait(timeout=30)
        counts = status_of(cfg, redis_url, batch)["counts"]
        assert 0 < counts["succeeded"] <= calls < n  # answered until the window closed, not after
        assert counts["expired"] == n - counts["succeeded"] and counts["pending"] == 0
        out = tmp_path / "out.jsonl"
        batchrelay("-c", str(cfg), "results", batch, "-o", str(out), env={"REDIS_URL": redis_url})
        errors = [orjson.loads(x) for x in out.with_suffix(".errors.jsonl").read_bytes().splitlines()]
        assert {e["error"]["code"] for e in errors} == {"batch_expired"} and len(errors) == counts["expired"]

        again = batchrelay("-c", str(cfg), "retry", batch, "--json", env={"REDIS_URL": redis_url})
        assert json.loads(again.stdout)["lines"] == counts["expired"]
        # the retried lines get a fresh 4 s window: quick answers now, so they make it
        httpx.post(sim + "/_sim/config", json={"latency_ms": 5}, timeout=5).raise_for_status()
        finisher = _worker(cfg, redis_url, "--burst", "--quiet")
        assert finisher.wait(timeout=120) == 0
    status = status_of(cfg, redis_url, batch)
    assert status["status"] == "completed" and status["counts"]["succeeded"] == n
    rows = results_of(tmp_path, cfg, redis_url, batch)
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, n + 1))


def test_an_interrupted_run_past_its_deadline_expires_at_a_burst_workers_sweep(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    """Ctrl-C pauses a `run`'s batch; once its deadline has passed, a `worker --burst` (whose one sweep
    is all it gets) expires every line left, those the run had taken included (nothing is in flight
    in a paused batch: none waits out the grace), and the answers it got stay exportable."""
    n = 40
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    env = {**os.environ, "REDIS_URL": redis_url}
    with SimulatorProcess({"latency_ms": 1500}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}],
                           concurrency=4, chunk_size=5, call_timeout=30, job_timeout=60)
        run = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "run", str(src), "-o",
                                str(tmp_path / "out.jsonl"), "--deadline", "+6s"], env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: SimulatorProcess.stats_of(sim)["calls"] >= 3 or run.poll() is not None, 60, "the first calls")
        run.send_signal(signal.SIGINT)
        _out, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        batch = re.findall(r"batch_[0-9a-f]{24}", err)[0]
        st = status_of(cfg, redis_url, batch)
        assert st["status"] == "paused" and 0 < st["counts"]["pending"] < n and st["eta_s"] is None
        time.sleep(max(0.0, st["deadline"] - time.time() + 0.5))
        shown = batchrelay("-c", str(cfg), "status", batch, env={"REDIS_URL": redis_url}).stdout
        assert "past its deadline: the next sweep of a `batchrelay worker`" in shown and "ETA" not in shown

        assert _worker(cfg, redis_url, "--burst", "--quiet").wait(timeout=120) == 0
    st = status_of(cfg, redis_url, batch)
    assert (st["status"], st["counts"]["pending"]) == ("expired", 0), st
    assert st["counts"]["succeeded"] + st["counts"]["expired"] == n and st["counts"]["succeeded"] > 0
    out = tmp_path / "all.jsonl"
    exported = batchrelay("-c", str(cfg), "results", batch, "-o", str(out), env={"REDIS_URL": redis_url})
    assert exported.returncode == 3, exported.stderr  # expired lines are failures
    assert len(out.read_bytes().splitlines()) == st["counts"]["succeeded"]
    errors = [orjson.loads(x) for x in out.with_suffix(".errors.jsonl").read_bytes().splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"} and len(errors) == st["counts"]["expired"]
