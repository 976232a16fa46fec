"""The CLI as a user meets it: clean errors, exit codes, JSON for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from batchrelay.sim.process import free_port

from .conftest import batchrelay, openai_line, write_config


def test_a_missing_input_file_is_a_usage_error_without_traceback(tmp_path: Path) -> None:
    proc = batchrelay("run", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[providers]]\nname = "x"\nbase_url = "http://127.0.0.1:1"\nauth = "basic"\n')
    proc = batchrelay("-c", str(cfg), "batches")
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr and "providers[0].auth" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unreachable_redis_is_a_clear_error_that_hides_the_password(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    proc = batchrelay("submit", str(src), env={"REDIS_URL": f"redis://me:s3cret-pw@127.0.0.1:{free_port()}/0"})
    assert proc.returncode == 1
    assert "cannot reach Redis at redis://me:***@127.0.0.1" in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_status_of_an_unknown_batch_says_so(redis_url: str, prefix: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [])
    proc = batchrelay("-c", str(cfg), "status", "batch_nope", env={"REDIS_URL": redis_url})
    assert proc.returncode == 2
    assert "no batch 'batch_nope'" in proc.stderr


def test_a_worker_without_providers_refuses_to_start(redis_url: str, prefix: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [])
    proc = batchrelay("-c", str(cfg), "worker", "--burst", env={"REDIS_URL": redis_url})
    assert proc.returncode == 2
    assert "no [[providers]] configured" in proc.stderr


def test_submit_status_and_batches_speak_json(redis_url: str, prefix: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n{broken\n")
    env = {"REDIS_URL": redis_url}
    sub = json.loads(batchrelay("-c", str(cfg), "submit", str(src), "--json", "--name", "nightly", env=env).stdout)
    assert (sub["lines"], sub["valid"], sub["invalid"]) == (2, 1, 1)
    status = json.loads(batchrelay("-c", str(cfg), "status", sub["id"], "--json", env=env).stdout)
    assert status["status"] == "in_progress"
    assert status["input_format"] == "openai"
    assert status["counts"] == {"total": 2, "done": 1, "succeeded": 0, "failed": 0, "invalid": 1, "cancelled": 0, "expired": 0, "pending": 1}
    listed = json.loads(batchrelay("-c", str(cfg), "batches", "--json", env=env).stdout)
    assert [(b["id"], b["name"]) for b in listed] == [(sub["id"], "nightly")]


def test_simulate_serves_a_provider_on_loopback() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "batchrelay", "simulate", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(100):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=2)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_malformed_redis_url_is_a_usage_error(tmp_path: Path) -> None:
    proc = batchrelay("batches", env={"REDIS_URL": "redis://me:pw@127.0.0.1:99999/0"})
    assert proc.returncode == 2
    assert "bad Redis URL" in proc.stderr and "Traceback" not in proc.stderr and "pw" not in proc.stderr


def test_run_refuses_an_unwritable_output_before_spending_anything(tmp_path: Path, redis_url: str,
                                                                   prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "no" / "such" / "dir.jsonl"),
                      env={"REDIS_URL": redis_url})
    assert proc.returncode == 2 and "cannot write" in proc.stderr
    listed = batchrelay("-c", str(cfg), "batches", "--json", env={"REDIS_URL": redis_url})
    assert json.loads(listed.stdout) == []  # nothing was submitted
