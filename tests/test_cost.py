"""Cost accounting end to end (issue 5): every line's cost and the ledger, recomputed independently
from the usage in the simulators' own responses and the configured prices; minimum charges; cached
tokens; reported costs; the ledger after killed workers; budgets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchrelay.sim.process import SimulatorProcess

from .conftest import batchrelay, write_config

MILLION = D(1_000_000)
KEY = "sk-cost-test-91ab"

# USD per 1M tokens (and per call), as the config below states them
PRICES: dict[str, dict[str, dict[str, str]]] = {
    "cheap": {
        "gpt-4o-mini": {"input": "0.15", "output": "0.6", "cached_input": "0.075", "min_charge": "0.000013"},
        "claude-3-5-haiku-20241022": {"input": "0.8", "output": "4", "cached_input": "0.08", "cache_write": "1"},
    },
    "backup": {
        "gpt-4o-mini": {"input": "0.3", "output": "1.2", "per_request": "0.000001"},
        "claude-3-5-haiku-20241022": {"input": "1", "output": "5"},
    },
}


def _toml_prices(name: str) -> str:
    out = []
    for model, p in PRICES[name].items():
        fields = ", ".join(f'{k} = "{v}"' for k, v in p.items())
        out.append(f'prices."{model}" = {{ {fields} }}')
    return "\n".join(out)


def _config(path: Path, prefix: str, sims: dict[str, str], **worker: Any) -> Path:
    cfg = write_config(path, prefix, [], **worker)
    text = cfg.read_text()
    for priority, (name, base) in enumerate(sims.items(), start=1):
        text += f'\n[[providers]]\nname = "{name}"\nbase_url = "{base}"\npriority = {priority}\n{_toml_prices(name)}\n'
    cfg.write_text(text)
    return cfg


def _lines(n: int) -> bytes:
    """Chat and messages lines of varied length (so some pay the minimum charge and some do not)."""
    rows = []
    for i in range(1, n + 1):
        text = f"question {i}: " + "why " * (i % 7)
        if i % 3:
            rows.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}})
        else:
            rows.append({"custom_id": f"req-{i}", "params": {"model": "claude-3-5-haiku-20241022", "max_tokens": 64,
                                                             "messages": [{"role": "user", "content": text}]}})
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _line_of(request: dict[str, Any]) -> int:
    content = request["messages"][-1]["content"]
    return int(content.split(":")[0].split()[1])


def _recompute(provider: str, path: str, response: dict[str, Any]) -> D:
    """Independently of batchrelay: the provider's usage priced with the configured rates."""
    model = response["model"]
    p = {k: D(v) for k, v in PRICES[provider][model].items()}
    u = response["usage"]
    if path.endswith("/chat/completions"):
        total_in = u["prompt_tokens"]
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        written = 0
    else:  # Anthropic: input_tokens leaves out cache reads and writes
        cached, written = u.get("cache_read_input_tokens", 0), u.get("cache_creation_input_tokens", 0)
        total_in = u["input_tokens"] + cached + written
    plain = total_in - cached - written
    tokens = (plain * p["input"] + cached * p.get("cached_input", p["input"])
              + written * p.get("cache_write", p["input"]) + u["output_tokens" if "output_tokens" in u
                                                              else "completion_tokens"] * p["output"]) / MILLION
    return max(tokens + p.get("per_request", D(0)), p.get("min_charge", D(0)))


def _results(out: Path) -> list[dict[str, Any]]:
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()] if out.exists() else []
    errors = out.with_suffix(".errors.jsonl")
    if errors.exists():
        rows += [orjson.loads(x) for x in errors.read_bytes().splitlines()]
    return rows


def _cost_json(cfg: Path, redis_url: str, batch: str) -> dict[str, Any]:
    proc = batchrelay("-c", str(cfg), "cost", batch, "--json", env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_line_and_the_ledger_match_an_independent_recomputation(tmp_path: Path, redis_url: str,
                                                                       prefix: str) -> None:
    n = 240
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(n))
    # cheap: half its input from the cache, 25 % 503s; backup: cache writes on messages, and 10 % of its
    # 200s carry no answer but bill their usage anyway
    cheap = SimulatorProcess({"cached_fraction": 0.5, "fail_rate": 0.25, "fail_rate_status": 503, "seed": 7})
    backup = SimulatorProcess({"cache_write_fraction": 0.25, "junk_rate": 0.1, "seed": 11})
    with cheap, backup:
        cfg = _config(tmp_path / "c.toml", prefix, {"cheap": cheap.base_url, "backup": backup.base_url},
                      attempts_per_provider=1)
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--json", env={"REDIS_URL": redis_url})
        logs = {name: httpx.get(s.base_url + "/_sim/log?full=1").json() for name, s in (("cheap", cheap),
                                                                                  ("backup", backup))}
    assert proc.returncode in (0, 3), proc.stderr
    report = json.loads(proc.stdout)
    expected: dict[int, D] = {}
    kinds: Counter[str] = Counter()
    for provider, log in logs.items():
        for call in log:
            kinds[call["kind"]] += 1
            if call["status"] == 200:
                line = _line_of(call["body"])
                expected[line] = expected.get(line, D(0)) + _recompute(provider, call["path"], call["response"])
    assert kinds["junk"] > 0 and kinds["error"] > 0, kinds  # the run had billed failures and failovers
    rows = _results(out)
    assert len(rows) == n
    min_charged = 0
    for row in rows:
        meta = row["batchrelay"]
        assert D(meta["cost"]["usd"]) == expected.get(meta["line"], D(0)), meta
        min_charged += meta["cost"]["min_charge_applied"]
    assert 0 < min_charged < n  # some lines paid the minimum charge, some their tokens
    ledger = _cost_json(cfg, redis_url, report["id"])
    assert D(ledger["total"]["usd"]) == sum(expected.values()) == D(report["cost"]["usd"])
    for r in ledger["rows"]:  # and per provider
        mine = sum(_recompute(r["provider"], c["path"], c["response"]) for c in logs[r["provider"]]
                   if c["status"] == 200 and c["response"]["model"] == r["model"])
        assert D(r["cost_usd"]) == mine
        assert r["requests"] == sum(1 for c in logs[r["provider"]]
                                    if c["status"] == 200 and c["response"]["model"] == r["model"])
    assert sum(r["failed"] for r in ledger["rows"]) == kinds["junk"]


def _run_one_line_on_a_preset(tmp_path: Path, redis_url: str, prefix: str, preset: str,
                              line: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`run` of one line against a simulator of the preset's provider: its result and the simulator's call."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(line) + b"\n")
    with SimulatorProcess({"preset": preset, "api_key": KEY}) as sim:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[[providers]]\npreset = "{preset}"\napi_key_env = "COST_KEY"\n'
                       f'base_url = "{sim}"\n')
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url,
                                                                                 "COST_KEY": KEY})
        (call,) = httpx.get(sim + "/_sim/log?full=1").json()
    assert proc.returncode == 0, proc.stderr
    (row,) = _results(out)
    return row, call


def test_a_piapi_gizmo_line_of_ten_tokens_costs_the_minimum_charge(tmp_path: Path, redis_url: str,
                                                                    prefix: str) -> None:
    # [{"role":"user","content":"Hi"}] is 32 bytes: 8 input tokens at the simulator, plus 2 output
    line = {"custom_id": "g", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4-gizmo-g-abc123", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}}
    row, _call = _run_one_line_on_a_preset(tmp_path, redis_url, prefix, "piapi", line)
    cost = row["batchrelay"]["cost"]
    assert cost["tokens"]["input_tokens"] + cost["tokens"]["output_tokens"] == 10
    assert cost["usd"] == "0.005" and cost["min_charge_applied"] is True
    assert D(cost["computed_usd"]) == D("0.005")  # 10 tokens at $2.5 / $10 per 1M would be $0.000035


def test_an_ainow_line_shows_both_the_computed_and_the_reported_cost(tmp_path: Path, redis_url: str,
                                                                      prefix: str) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4-turbo", "messages": [{"role": "user", "content": "Tell me about tea."}]}}
    row, call = _run_one_line_on_a_preset(tmp_path, redis_url, prefix, "ainow", line)
    cost = row["batchrelay"]["cost"]
    answer = call["response"]
    # GPT-4 Turbo: $0.03 / $0.06 per 1K tokens, from its /models and the preset
    computed = (answer["input_tokens"] * D("0.03") + answer["output_tokens"] * D("0.06")) / 1000
    assert D(cost["computed_usd"]) == computed
    assert D(cost["reported_usd"]) == D(str(answer["total_tokens_cost"]))
    assert cost["source"] == "reported" and cost["usd"] == cost["reported_usd"]
    assert "discrepancy_pct" not in cost


def test_cached_tokens_are_priced_at_the_cached_rate_for_the_cached_part_only(tmp_path: Path, redis_url: str,
                                                                              prefix: str) -> None:
    line = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "question 1: " + "x" * 400}]}}
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(line) + b"\n")
    with SimulatorProcess({"cached_fraction": 0.75}) as sim:
        cfg = _config(tmp_path / "c.toml", prefix, {"cheap": sim})
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    (row,) = _results(out)
    t = row["batchrelay"]["cost"]["tokens"]
    assert t["cached_input_tokens"] == t["input_tokens"] * 3 // 4 > 0
    plain = t["input_tokens"] - t["cached_input_tokens"]
    expected = (plain * D("0.15") + t["cached_input_tokens"] * D("0.075") + t["output_tokens"] * D("0.6")) / MILLION
    assert D(row["batchrelay"]["cost"]["usd"]) == expected
    assert expected > D("0.000013")  # above the minimum charge: the rates, not the minimum, decide


def _worker(cfg: Path, redis_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--burst", "--quiet"],
                            env={**os.environ, "REDIS_URL": redis_url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _status(cfg: Path, redis_url: str, batch: str) -> dict[str, Any]:
    proc = batchrelay("-c", str(cfg), "status", batch, "--json", env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _submit(cfg: Path, redis_url: str, src: Path, *extra: str) -> str:
    proc = batchrelay("-c", str(cfg), "submit", str(src), *extra, env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _export(cfg: Path, redis_url: str, batch: str, out: Path) -> list[dict[str, Any]]:
    proc = batchrelay("-c", str(cfg), "results", batch, "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode in (0, 3), proc.stderr
    return _results(out)


def test_after_workers_are_killed_mid_batch_the_ledger_equals_the_sum_of_the_lines(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    n = 300
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(n))
    with SimulatorProcess({"latency_ms": 60, "cached_fraction": 0.3}) as sim:
        cfg = _config(tmp_path / "c.toml", prefix, {"cheap": sim}, concurrency=4, chunk_size=10,
                      call_timeout=2, job_timeout=4)
        batch = _submit(cfg, redis_url, src)
        victims = [_worker(cfg, redis_url), _worker(cfg, redis_url)]
        deadline = time.monotonic() + 60
        while _status(cfg, redis_url, batch)["counts"]["done"] < n // 4:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        victims[0].send_signal(signal.SIGKILL)
        while _status(cfg, redis_url, batch)["counts"]["done"] < n // 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        victims[1].send_signal(signal.SIGKILL)
        for v in victims:
            v.wait()
        assert _status(cfg, redis_url, batch)["counts"]["done"] < n, "finished before the kills: proves nothing"
        survivor = _worker(cfg, redis_url)
        assert survivor.wait(timeout=120) == 0
        calls = SimulatorProcess.stats_of(sim)["calls"]
    status = _status(cfg, redis_url, batch)
    assert status["status"] == "completed"
    rows = _export(cfg, redis_url, batch, tmp_path / "out.jsonl")
    assert sorted(r["custom_id"] for r in rows) == sorted(f"req-{i}" for i in range(1, n + 1))
    line_sum = sum(D(r["batchrelay"]["cost"]["usd"]) for r in rows)
    ledger = _cost_json(cfg, redis_url, batch)
    assert D(ledger["total"]["usd"]) == line_sum == D(status["cost"]["usd"])
    assert sum(r["requests"] for r in ledger["rows"]) == n  # every line billed once, however often it ran
    assert calls >= n


@pytest.mark.timeout(240)
def test_a_budget_stops_spending_waits_and_finishes_once_raised(tmp_path: Path, redis_url: str,
                                                                 prefix: str) -> None:
    n = 120
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({
        "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "pricey", "max_tokens": 40,
                                          "messages": [{"role": "user", "content": f"question {i}"}]}}) + b"\n"
        for i in range(1, n + 1)))
    with SimulatorProcess({"latency_ms": 20}) as sim:
        # $1,000 per 1M tokens: ~$0.03 a line, so $0.50 covers well under half of the batch
        cfg = write_config(tmp_path / "c.toml", prefix, [], concurrency=6, chunk_size=10)
        cfg.write_text(cfg.read_text() + f'\n[[providers]]\nname = "sim"\nbase_url = "{sim}"\n'
                       'prices.pricey = { input = "1000", output = "1000" }\n')
        batch = _submit(cfg, redis_url, src, "--max-cost", "0.50")
        assert _worker(cfg, redis_url).wait(timeout=120) == 0
        status = _status(cfg, redis_url, batch)
        assert status["status"] == "budget_exhausted"
        spent = D(status["cost"]["usd"])
        budget = status["cost"]["budget"]
        # each call reserved its most, (14 input tokens estimated + max_tokens 40) * $0.001 = $0.054, and
        # spends about a third of it: the limit holds with no overshoot, and the last refusal came when
        # the spent money plus at most 6 calls in flight came within one reservation of it
        assert D("0.50") - 7 * D("0.054") < spent <= D("0.50"), status
        assert D(budget["spent_usd"]) == spent and D(budget["reserved_usd"]) == 0
        done = status["counts"]["done"]
        assert 0 < done < n and status["counts"]["pending"] == n - done
        calls_before = SimulatorProcess.stats_of(sim)["calls"]
        assert calls_before == done  # the waiting lines were never sent

        raised = batchrelay("-c", str(cfg), "budget", batch, "--max-cost", "10", "--json",
                            env={"REDIS_URL": redis_url})
        assert raised.returncode == 0, raised.stderr
        assert json.loads(raised.stdout)["status"] == "in_progress"
        assert _worker(cfg, redis_url).wait(timeout=120) == 0
    status = _status(cfg, redis_url, batch)
    assert status["status"] == "completed" and status["counts"]["succeeded"] == n
    rows = _export(cfg, redis_url, batch, tmp_path / "out.jsonl")
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, n + 1))
    assert D(status["cost"]["usd"]) == sum(D(r["batchrelay"]["cost"]["usd"]) for r in rows)
    assert D(status["cost"]["budget"]["spent_usd"]) == D(status["cost"]["usd"])


def test_estimate_is_near_the_real_cost_of_a_run(tmp_path: Path, redis_url: str, prefix: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(90))
    with SimulatorProcess({}) as sim:
        cfg = _config(tmp_path / "c.toml", prefix, {"cheap": sim})
        est = batchrelay("-c", str(cfg), "estimate", str(src), "--json")
        assert est.returncode == 0, est.stderr
        out = tmp_path / "out.jsonl"
        run = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--json", env={"REDIS_URL": redis_url})
    assert run.returncode == 0, run.stderr
    expected = D(json.loads(est.stdout)["first_choice"]["expected_usd"])
    real = D(json.loads(run.stdout)["cost"]["usd"])
    assert abs(expected - real) / real <= D("0.30"), (expected, real)
    first = json.loads(est.stdout)["first_choice"]
    assert D(first["low_usd"]) <= real <= D(first["high_usd"])


def test_run_with_a_budget_too_small_stops_with_exit_4_and_says_how_to_go_on(tmp_path: Path, redis_url: str,
                                                                             prefix: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(_lines(30))
    with SimulatorProcess({}) as sim:
        cfg = _config(tmp_path / "c.toml", prefix, {"cheap": sim}, concurrency=2)
        out = tmp_path / "out.jsonl"
        # a chat line without max_tokens reserves 4,096 output tokens ($0.0025 here), a messages line $0.0003; a line
        # costs about $0.00003, so after a few lines no chat line fits, whatever the timing of the two slots
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--max-cost", "0.0026",
                          env={"REDIS_URL": redis_url})
        calls = SimulatorProcess.stats_of(sim)["calls"]
    assert proc.returncode == 4, proc.stderr
    assert "budget exhausted" in proc.stderr and "batchrelay budget batch_" in proc.stderr
    assert "Traceback" not in proc.stderr
    rows = _results(out)
    assert 0 < len(rows) == calls < 30  # what was answered is exported; the rest was never sent
    assert sum(D(r["batchrelay"]["cost"]["usd"]) for r in rows) <= D("0.0026")
