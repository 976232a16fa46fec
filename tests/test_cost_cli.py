"""Money on the command line: `estimate`, `cost`, `budget`, and `--max-cost` / `--require-prices`."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from batchrelay.sim.process import SimulatorProcess, free_port

from .conftest import batchrelay, openai_line, write_config

PRICED = ('prices."gpt-4o-mini" = { input = "0.15", output = "0.6", min_charge = "0.00002" }\n'
          'prices."house-*" = { input = "1", output = "2" }\n')
UNKNOWN = "no-such-model-anywhere"
HOUSE = "house-model"  # priced at `sim` by its config only: no official price anywhere


def _config(tmp_path: Path, prefix: str, base_url: str = "http://127.0.0.1:9", *, unpriced: bool = False) -> Path:
    """A provider `sim` with prices for gpt-4o-mini and house-*, and with `unpriced` a failover `bare` with no
    prices of its own (official prices only: it knows gpt-4o-mini, not house-model)."""
    providers = [{"name": "sim", "base_url": base_url, "priority": 1}]
    cfg = write_config(tmp_path / "c.toml", prefix, providers)
    text = cfg.read_text() + PRICED
    if unpriced:
        text += f'\n[[providers]]\nname = "bare"\nbase_url = "{base_url}"\npriority = 2\n'
    cfg.write_text(text)
    return cfg


def _input(tmp_path: Path, models: list[str]) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i, m)) + b"\n" for i, m in enumerate(models, start=1)))
    return src


def _batches(cfg: Path, redis_url: str) -> list[dict[str, Any]]:
    proc = batchrelay("-c", str(cfg), "batches", "--json", env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _keys(redis_url: str, prefix: str) -> list[bytes]:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


def _clean_usage_error(proc: Any) -> list[str]:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("command", ["submit", "run"])
@pytest.mark.parametrize("flags", [["--require-prices"], ["--max-cost", "1"]], ids=["require-prices", "max-cost"])
def test_a_model_without_a_known_price_is_refused_before_anything_is_submitted(
        tmp_path: Path, redis_url: str, prefix: str, command: str, flags: list[str]) -> None:
    cfg = _config(tmp_path, prefix)
    src = _input(tmp_path, ["gpt-4o-mini", UNKNOWN, "gpt-4o-mini"])
    extra = ["-o", str(tmp_path / "out.jsonl")] if command == "run" else []
    proc = batchrelay("-c", str(cfg), command, str(src), *extra, *flags, env={"REDIS_URL": redis_url})
    (message,) = _clean_usage_error(proc)
    assert message.startswith("Error: no known price for ")
    assert f"{UNKNOWN} at sim" in message and "gpt-4o-mini" not in message
    assert proc.stdout == ""
    assert _batches(cfg, redis_url) == []
    assert _keys(redis_url, prefix) == []  # not even an empty batch record
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unpriced_failover_provider_is_named_too(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = _config(tmp_path, prefix, unpriced=True)
    src = _input(tmp_path, ["gpt-4o-mini", HOUSE])
    proc = batchrelay("-c", str(cfg), "submit", str(src), "--require-prices", env={"REDIS_URL": redis_url})
    (message,) = _clean_usage_error(proc)
    assert f"{HOUSE} at bare" in message and "at sim" not in message and "gpt-4o-mini" not in message
    assert _batches(cfg, redis_url) == []
    # leaving the unpriced provider out is the way through
    ok = batchrelay("-c", str(cfg), "submit", str(src), "--require-prices", "--providers", "sim", "--json",
                    env={"REDIS_URL": redis_url})
    assert ok.returncode == 0, ok.stderr
    assert [b["id"] for b in _batches(cfg, redis_url)] == [json.loads(ok.stdout)["id"]]


def test_without_the_flags_an_unpriced_model_is_submitted(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = _config(tmp_path, prefix)
    proc = batchrelay("-c", str(cfg), "submit", str(_input(tmp_path, [UNKNOWN])), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    assert [b["id"] for b in _batches(cfg, redis_url)] == [proc.stdout.strip()]


@pytest.mark.parametrize(("amount", "why"), [
    ("0", "must be more than 0"),
    ("-1", "must be more than 0"),
    ("abc", "is not an amount in USD"),
    ("", "is not an amount in USD"),
    ("nan", "must be more than 0"),
    ("inf", "must be more than 0"),
    ("0.0000000000001", "must be more than 0"),  # under one pico-dollar: a limit of 0
])
def test_max_cost_must_be_a_positive_amount(tmp_path: Path, redis_url: str, prefix: str, amount: str,
                                           why: str) -> None:
    cfg = _config(tmp_path, prefix)
    proc = batchrelay("-c", str(cfg), "submit", str(_input(tmp_path, ["gpt-4o-mini"])), "--max-cost", amount,
                      env={"REDIS_URL": redis_url})
    lines = _clean_usage_error(proc)
    assert "Invalid value for '--max-cost'" in lines[-1] and why in lines[-1]
    assert _batches(cfg, redis_url) == []


def test_submit_with_a_budget_then_budget_and_cost_show_it(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = _config(tmp_path, prefix)
    env = {"REDIS_URL": redis_url}
    sub = batchrelay("-c", str(cfg), "submit", str(_input(tmp_path, ["gpt-4o-mini"] * 3)), "--max-cost", "$0.50",
                     "--json", env=env)
    assert sub.returncode == 0, sub.stderr
    batch = json.loads(sub.stdout)["id"]

    shown = batchrelay("-c", str(cfg), "budget", batch, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"batch": batch, "status": "in_progress", "max_usd": "0.5", "spent_usd": "0",
                                        "reserved_usd": "0", "remaining_usd": "0.5", "requeued_chunks": 0}
    text = batchrelay("-c", str(cfg), "budget", batch, env=env)
    assert text.returncode == 0 and "budget $0.5: $0 spent, $0 reserved, $0.5 left" in text.stdout

    raised = batchrelay("-c", str(cfg), "budget", batch, "--max-cost", "10", "--json", env=env)
    assert raised.returncode == 0, raised.stderr
    d = json.loads(raised.stdout)
    assert (d["status"], d["max_usd"], d["remaining_usd"], d["requeued_chunks"]) == ("in_progress", "10", "10", 0)

    cost = batchrelay("-c", str(cfg), "cost", batch, "--json", env=env)
    assert cost.returncode == 0, cost.stderr
    c = json.loads(cost.stdout)
    assert c["rows"] == [] and c["total"]["usd"] == "0" and c["total"]["requests"] == 0
    assert c["total"]["budget"]["max_usd"] == "10"


def test_budget_of_a_batch_without_one_says_so(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = _config(tmp_path, prefix)
    env = {"REDIS_URL": redis_url}
    batch = batchrelay("-c", str(cfg), "submit", str(_input(tmp_path, ["gpt-4o-mini"])), env=env).stdout.strip()
    shown = batchrelay("-c", str(cfg), "budget", batch, env=env)
    assert shown.returncode == 0 and "no budget" in shown.stdout
    d = json.loads(batchrelay("-c", str(cfg), "budget", batch, "--json", env=env).stdout)
    assert d["max_usd"] is None and d["remaining_usd"] is None
    assert "budget" not in json.loads(batchrelay("-c", str(cfg), "cost", batch, "--json", env=env).stdout)["total"]


@pytest.mark.parametrize("args", [["cost", "batch_nope", "--json"], ["budget", "batch_nope", "--json"],
                                  ["budget", "batch_nope", "--max-cost", "1", "--json"], ["cost", "batch_nope"]])
def test_cost_and_budget_of_an_unknown_batch_say_so(tmp_path: Path, redis_url: str, prefix: str,
                                                     args: list[str]) -> None:
    cfg = _config(tmp_path, prefix)
    proc = batchrelay("-c", str(cfg), *args, env={"REDIS_URL": redis_url})
    assert _clean_usage_error(proc) == ["Error: no batch 'batch_nope' in this Redis (see `batchrelay batches`)"]
    assert proc.stdout == ""
    assert _keys(redis_url, prefix) == []  # raising the limit of nothing creates nothing


def test_estimate_needs_no_redis(tmp_path: Path, prefix: str) -> None:
    cfg = _config(tmp_path, prefix, unpriced=True)
    src = _input(tmp_path, [HOUSE] * 4)
    with src.open("ab") as f:
        f.write(b"{broken\n")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    proc = batchrelay("-c", str(cfg), "estimate", str(src), "--json", "--output-tokens", "20",
                      env={"REDIS_URL": closed})
    assert proc.returncode == 0, proc.stderr
    est = json.loads(proc.stdout)
    assert (est["lines"], est["invalid"], est["unserved"]) == (4, 1, {})
    assert [(r["provider"], r["first_choice"], r["price_source"]) for r in est["rows"]] == [
        ("sim", True, "config"), ("bare", False, "unknown")]
    sim = est["rows"][0]
    assert (sim["lines"], sim["input_tokens"], sim["expected_output_tokens"]) == (4, 4 * 14, 80)
    assert D(sim["expected_usd"]) == 4 * (14 * D(1) + 20 * D(2)) / 1_000_000
    assert est["first_choice"] == {"low_usd": sim["low_usd"], "expected_usd": sim["expected_usd"],
                                   "high_usd": sim["high_usd"]}
    assert D(sim["low_usd"]) <= D(sim["expected_usd"]) <= D(sim["high_usd"])
    assert est["unpriced"] == [{"model": HOUSE, "provider": "bare"}]


def test_estimate_as_text_warns_of_unknown_prices(tmp_path: Path, prefix: str) -> None:
    cfg = _config(tmp_path, prefix, unpriced=True)
    proc = batchrelay("-c", str(cfg), "estimate", str(_input(tmp_path, [HOUSE])),
                      env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert proc.returncode == 0, proc.stderr
    assert "1 lines (0 invalid)" in proc.stdout
    assert f"warning: no known price for {HOUSE} at bare" in proc.stderr


def test_estimate_without_providers_prices_the_builtin_simulator(tmp_path: Path, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [])
    src = _input(tmp_path, ["gpt-4o-mini"])
    proc = batchrelay("-c", str(cfg), "estimate", str(src), "--json", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["rows"]
    assert (row["provider"], row["price_source"]) == ("simulator", "genai-prices")
    assert proc.stderr == ""  # --json: nothing but the JSON
    text = batchrelay("-c", str(cfg), "estimate", str(src), env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert text.returncode == 0 and "no providers configured" in text.stderr


def test_estimate_with_an_unknown_provider_is_a_usage_error(tmp_path: Path, prefix: str) -> None:
    cfg = _config(tmp_path, prefix)
    proc = batchrelay("-c", str(cfg), "estimate", str(_input(tmp_path, ["gpt-4o-mini"])), "--providers", "nope")
    (message,) = _clean_usage_error(proc)[-1:]
    assert "unknown providers nope" in message


@pytest.mark.parametrize("max_cost", [None, "10"], ids=["no-budget", "budget"])
def test_status_cost_and_the_result_lines_agree_after_a_run(tmp_path: Path, redis_url: str, prefix: str,
                                                            max_cost: str | None) -> None:
    env = {"REDIS_URL": redis_url}
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i, "gpt-4o-mini") | {"body": {
        "model": "gpt-4o-mini", "max_tokens": 64,
        "messages": [{"role": "user", "content": f"question {i}: " + "why " * (i * 7)}]}}) + b"\n"
        for i in range(1, 13)) + b"{broken\n")
    with SimulatorProcess({}) as base:
        cfg = _config(tmp_path, prefix, base)
        out = tmp_path / "out.jsonl"
        budget = ["--max-cost", max_cost] if max_cost else []
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), "--json", *budget, env=env)
        calls = SimulatorProcess.stats_of(base)["calls"]
    assert proc.returncode == 3, proc.stderr  # the broken line
    report = json.loads(proc.stdout)
    batch = report["id"]
    assert report["counts"]["succeeded"] == 12 and calls == 12

    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    lines += [orjson.loads(x) for x in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()]
    costs = [row["batchrelay"]["cost"] for row in lines if "cost" in row["batchrelay"]]
    assert len(costs) == 12 and all(c["usd"] is not None for c in costs)
    line_sum = sum(D(c["usd"]) for c in costs)
    assert line_sum > 0
    assert any(c["min_charge_applied"] for c in costs) and not all(c["min_charge_applied"] for c in costs)

    status = batchrelay("-c", str(cfg), "status", batch, "--json", env=env)
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)["cost"]
    cost = batchrelay("-c", str(cfg), "cost", batch, "--json", env=env)
    assert cost.returncode == 0, cost.stderr
    c = json.loads(cost.stdout)
    assert D(s["usd"]) == D(c["total"]["usd"]) == line_sum == D(report["cost"]["usd"])
    assert s["requests"] == c["total"]["requests"] == 12 and s["unpriced_calls"] == 0
    (row,) = c["rows"]
    assert (row["provider"], row["model"], row["requests"], row["failed"]) == ("sim", "gpt-4o-mini", 12, 0)
    assert D(row["cost_usd"]) == line_sum
    assert row["input"] == sum(x["tokens"]["input_tokens"] for x in costs)
    assert row["output"] == sum(x["tokens"]["output_tokens"] for x in costs)
    if max_cost:
        b = s["budget"]
        assert D(b["spent_usd"]) == line_sum and D(b["reserved_usd"]) == 0
        assert D(b["remaining_usd"]) == D(max_cost) - line_sum and b == c["total"]["budget"]
    else:
        assert "budget" not in s
