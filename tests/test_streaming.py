"""`"stream": true` lines: assembled into the same result bodies as plain calls; cut streams retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay.sim.process import SimulatorProcess

from .conftest import batchrelay, write_config

VOLATILE = ("id", "created")


def _lines(dialect: str, stream: bool) -> list[dict[str, Any]]:
    out = []
    for i in range(1, 6):
        body: dict[str, Any] = {"model": "m", "max_tokens": 200,
                                "messages": [{"role": "user", "content": f"Tell me about item {i}, please."}]}
        if stream:
            body["stream"] = True
        out.append({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                   if dialect == "chat" else {"custom_id": f"c{i}", "params": body})
    return out


def _run(tmp_path: Path, name: str, cfg: Path, redis_url: str, lines: list[dict[str, Any]],
         env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return [orjson.loads(x) for x in out.read_bytes().splitlines()]


def _body(row: dict[str, Any]) -> dict[str, Any]:
    body = row["response"]["body"] if "response" in row else row["result"]["message"]
    return {k: v for k, v in body.items() if k not in VOLATILE}


@pytest.mark.parametrize("dialect", ["chat", "messages"])
def test_streamed_lines_get_the_same_result_bodies_as_plain_ones(tmp_path: Path, redis_url: str, prefix: str,
                                                                 dialect: str) -> None:
    with SimulatorProcess({}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim}])
        plain = _run(tmp_path, "plain", cfg, redis_url, _lines(dialect, stream=False))
        streamed = _run(tmp_path, "streamed", cfg, redis_url, _lines(dialect, stream=True))
    assert [_body(r) for r in streamed] == [_body(r) for r in plain]
    assert all(r["batchrelay"]["stream"] is True for r in streamed)
    assert [r["batchrelay"]["usage"] for r in streamed] == [r["batchrelay"]["usage"] for r in plain]


def test_an_ainow_stream_yields_its_tokens_and_reported_cost_from_the_last_line(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"preset": "ainow", "api_key": "k"}) as sim:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[[providers]]\npreset = "ainow"\napi_key_env = "AK"\n'
                       f'base_url = "{sim}"\n')
        line = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Write about the sea."}]}
        (row,) = _run(tmp_path, "s", cfg, redis_url, [line], env={"AK": "k"})
    body = row["response"]["body"]
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] == body["input_tokens"] == row["batchrelay"]["usage"]["input_tokens"]
    assert float(row["batchrelay"]["cost"]["reported_usd"]) == body["total_tokens_cost"] > 0


@pytest.mark.parametrize("dialect", ["chat", "messages"])
def test_a_truncated_stream_is_retried_and_never_recorded_as_an_answer(tmp_path: Path, redis_url: str, prefix: str,
                                                                       dialect: str) -> None:
    with SimulatorProcess({"truncate_rate": 1.0}) as cut, SimulatorProcess({}) as whole:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "cut", "base_url": cut, "priority": 1},
                                                          {"name": "whole", "base_url": whole, "priority": 2}])
        rows = _run(tmp_path, "s", cfg, redis_url, _lines(dialect, stream=True)[:1])
    (row,) = rows
    steps = [(a["provider"], a["status"], a.get("action")) for a in row["batchrelay"]["attempts"]]
    assert steps == [("cut", 200, "retry"), ("cut", 200, "retry"), ("whole", 200, None)]
    assert "stream" in row["batchrelay"]["attempts"][0]["error"]
    assert row["batchrelay"]["provider"] == "whole"
