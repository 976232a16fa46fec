"""Failover with health shared by every worker: benches, disables, cooldowns, outages, pacing, routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from batchrelay.sim.process import SimulatorProcess

from .conftest import batchrelay, openai_line, write_config


def _src(tmp_path: Path, n: int, model: str = "gpt-4o-mini") -> Path:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i, model)) + b"\n" for i in range(1, n + 1)))
    return src


def _rows(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_a_provider_answering_401_gets_no_second_call(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"api_key": "right"}) as locked, SimulatorProcess({}) as open_:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "locked", "base_url": locked, "api_key_env": "LOCKED_KEY", "priority": 1},
            {"name": "open", "base_url": open_, "priority": 2}])
        proc = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 100)), "-o", str(tmp_path / "o.jsonl"),
                          env={"REDIS_URL": redis_url, "LOCKED_KEY": "wrong"})
        locked_calls = SimulatorProcess.stats_of(locked)["calls"]
    assert proc.returncode == 0, proc.stderr
    assert locked_calls == 1
    assert {r["batchrelay"]["provider"] for r in _rows(tmp_path / "o.jsonl")} == {"open"}


def test_no_call_is_sent_to_a_provider_inside_its_retry_after_window(tmp_path: Path, redis_url: str,
                                                                     prefix: str) -> None:
    with SimulatorProcess({"script": [429], "retry_after": 1, "latency_ms": 5}) as limited, \
            SimulatorProcess({"latency_ms": 100}) as other:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "limited", "base_url": limited, "priority": 1},
                                                          {"name": "other", "base_url": other, "priority": 2}])
        proc = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 150)), "-o", str(tmp_path / "o.jsonl"),
                          env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    calls = sorted((a["started_at"], a["latency_ms"], a["status"]) for r in _rows(tmp_path / "o.jsonl")
                   for a in r["batchrelay"]["attempts"] if a["provider"] == "limited")
    (t429, ms, _), *later = calls
    assert calls[0][2] == 429 and later, "the provider should be used again once its window is over"
    window_end = t429 + ms / 1000 + 1.0
    assert all(started >= window_end - 0.01 for started, _, _ in later)


def test_a_provider_429ing_at_random_gets_no_call_inside_any_window_it_announced(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """Calls in flight adapt (health.py): from B's first answer on, one call at a time, so a 429's
    report frees the next slot only once the cooldown is shared."""
    b_cfg = {"fail_rate": 0.3, "fail_rate_status": 429, "retry_after": 1, "latency_ms": 10, "seed": 5}
    with SimulatorProcess(b_cfg) as b, SimulatorProcess({"latency_ms": 10}) as c:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "B", "base_url": b, "priority": 1},
                                                          {"name": "C", "base_url": c, "priority": 2}])
        proc = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 600)), "-o", str(tmp_path / "o.jsonl"),
                          "--workers", "2", env={"REDIS_URL": redis_url})
        log = httpx.get(b + "/_sim/log").json()
    assert proc.returncode == 0, proc.stderr
    announced = [e["answered"] for e in log if e["status"] == 429]
    assert len(announced) >= 2, log
    inside = [e["t"] for e in log if any(a < e["t"] <= a + 1 for a in announced)]
    assert inside == []
    served = {r["batchrelay"]["provider"] for r in _rows(tmp_path / "o.jsonl")}
    assert served == {"B", "C"}


def test_an_outage_of_every_provider_delays_lines_but_fails_none(tmp_path: Path, redis_url: str,
                                                                 prefix: str) -> None:
    with SimulatorProcess({"fail_status": 503}) as a, SimulatorProcess({"fail_status": 502}) as b:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "a", "base_url": a, "priority": 1},
                                                          {"name": "b", "base_url": b, "priority": 2}],
                           health={"breaker_open_s": 0.5, "max_wait_s": 1})
        run = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "run", str(_src(tmp_path, 60)),
                                "-o", str(tmp_path / "o.jsonl"), "--json"],
                               env={**os.environ, "REDIS_URL": redis_url}, stdout=subprocess.PIPE, text=True)
        time.sleep(4)
        for base in (a, b):
            httpx.post(base + "/_sim/config", json={"fail_status": None}).raise_for_status()
        out, _ = run.communicate(timeout=90)
    assert run.returncode == 0
    summary = json.loads(out)
    assert summary["counts"]["succeeded"] == 60 and summary["counts"]["failed"] == 0
    waited = [r for r in _rows(tmp_path / "o.jsonl") if any(x["status"] in (502, 503) for x in r["batchrelay"]["attempts"])]
    assert waited, "the outage should have touched some lines"


def test_rpm_is_paced_across_the_batch_without_a_single_429(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"rpm": 600}) as paced:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "paced", "base_url": paced, "rpm": 600}])
        proc = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 60)), "-o", str(tmp_path / "o.jsonl"),
                          env={"REDIS_URL": redis_url})
        log = httpx.get(paced + "/_sim/log").json()
    assert proc.returncode == 0, proc.stderr
    assert [c["status"] for c in log].count(429) == 0
    times = sorted(c["t"] for c in log)
    rate_per_min = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert 560 <= rate_per_min <= 606


def test_the_batch_allow_list_and_model_routes_choose_the_providers(tmp_path: Path, redis_url: str,
                                                                    prefix: str) -> None:
    with SimulatorProcess({}) as a, SimulatorProcess({}) as b, SimulatorProcess({}) as c:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "a", "base_url": a, "priority": 1}, {"name": "b", "base_url": b, "priority": 2},
            {"name": "c", "base_url": c, "priority": 3}],
            routing='[routing]\nroutes = { "claude-*" = ["c"] }')
        env = {"REDIS_URL": redis_url}
        allowed = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 10)), "-o", str(tmp_path / "o1.jsonl"),
                             "--providers", "b,c", env=env)
        routed = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 10, "claude-3-5-haiku")), "-o",
                            str(tmp_path / "o2.jsonl"), env=env)
        unknown = batchrelay("-c", str(cfg), "submit", str(_src(tmp_path, 1)), "--providers", "zz", env=env)
    assert allowed.returncode == 0 and routed.returncode == 0, allowed.stderr + routed.stderr
    assert {r["batchrelay"]["provider"] for r in _rows(tmp_path / "o1.jsonl")} == {"b"}
    assert {r["batchrelay"]["provider"] for r in _rows(tmp_path / "o2.jsonl")} == {"c"}
    assert unknown.returncode == 2 and "unknown providers zz" in unknown.stderr


def test_a_benched_provider_shows_in_status_and_check_puts_it_back(tmp_path: Path, redis_url: str,
                                                                    prefix: str) -> None:
    with SimulatorProcess({"fail_status": 402}) as broke, SimulatorProcess({}) as good:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "broke", "base_url": broke, "priority": 1, "models_path": "/v1/models"},
            {"name": "good", "base_url": good, "priority": 2}])
        env = {"REDIS_URL": redis_url}
        run = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 5)), "-o", str(tmp_path / "o.jsonl"), "--json",
                         env=env)
        batch = json.loads(run.stdout)["id"]
        status = json.loads(batchrelay("-c", str(cfg), "status", batch, "--json", env=env).stdout)
        httpx.post(broke + "/_sim/config", json={"fail_status": None}).raise_for_status()
        check = batchrelay("-c", str(cfg), "providers", "check", env=env)
        after = {p["name"]: p for p in json.loads(batchrelay("-c", str(cfg), "providers", "--json", env=env).stdout)}
    assert status["providers"]["broke"]["state"] == "benched"
    assert status["providers"]["broke"]["for_s"] > 800
    assert "402" in status["providers"]["broke"]["last"]
    assert check.returncode == 0 and "bench/disable lifted" in check.stdout
    assert after["broke"]["health"]["state"] != "benched"


def test_a_line_no_provider_can_take_fails_at_once_instead_of_looping(tmp_path: Path, redis_url: str,
                                                                      prefix: str) -> None:
    """A chat line whose tools cannot be translated is final; the provider whose key variable nobody
    set is left out before the run, with a warning naming it."""
    with SimulatorProcess({}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "claude-only", "base_url": sim, "dialects": ["messages"], "priority": 1},
            {"name": "keyless", "base_url": sim, "api_key_env": "NOBODY_SET_THIS", "priority": 2}])
        src = tmp_path / "in.jsonl"
        src.write_bytes(orjson.dumps({"model": "m", "tools": "x", "messages": [{"role": "user", "content": "hi"}]})
                        + b"\n")
        started = time.monotonic()
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "o.jsonl"), env={"REDIS_URL": redis_url})
        took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert took < 30
    (err,) = _rows(tmp_path / "o.errors.jsonl")
    assert "cannot translate" in err["error"]["message"] and "keyless" not in err["error"]["message"]
    assert "keyless needs NOBODY_SET_THIS" in proc.stderr


def test_a_key_with_a_stray_carriage_return_still_works_and_a_broken_one_never_leaks(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"api_key": "sk-good"}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": sim, "api_key_env": "P_KEY"}])
        ok = batchrelay("-c", str(cfg), "run", str(_src(tmp_path, 3)), "-o", str(tmp_path / "ok.jsonl"),
                        env={"REDIS_URL": redis_url, "P_KEY": "sk-good\r"})
        cfg2 = write_config(tmp_path / "c2.toml", prefix + "2:", [{"name": "q", "base_url": sim, "api_key_env": "Q_KEY"}])
        bad = batchrelay("-c", str(cfg2), "run", str(_src(tmp_path, 1)), "-o", str(tmp_path / "bad.jsonl"),
                         env={"REDIS_URL": redis_url, "Q_KEY": "sk-se\x01cret-9"})
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 3
    written = (tmp_path / "bad.errors.jsonl").read_text() + bad.stdout + bad.stderr
    assert "cret-9" not in written and "Q_KEY holds characters" in written
