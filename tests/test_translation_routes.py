"""A job only a provider of the other dialect can serve is translated there and back."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from batchrelay.sim.process import SimulatorProcess

from .conftest import batchrelay, write_config


def _anthropic_line(i: int) -> dict:
    return {"custom_id": f"a-{i}", "params": {
        "model": "claude-3-5-haiku-20241022", "max_tokens": 64, "system": "Be brief.",
        "stop_sequences": ["\n\n"],
        "messages": [{"role": "user", "content": f"question {i}"}]}}


def test_an_anthropic_batch_is_completed_by_a_chat_only_provider_when_the_messages_one_is_broke(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"fail_status": 402}) as broke, SimulatorProcess({}) as chat_only:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "anthropic-reseller", "base_url": broke, "dialects": ["messages"], "priority": 1},
            {"name": "openai-reseller", "base_url": chat_only, "dialects": ["chat"], "priority": 2}])
        src = tmp_path / "in.jsonl"
        src.write_bytes(b"".join(orjson.dumps(_anthropic_line(i)) + b"\n" for i in range(1, 21)))
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
        chat_calls = httpx.get(chat_only + "/_sim/log").json()
        broke_calls = SimulatorProcess.stats_of(broke)["calls"]
    assert proc.returncode == 0, proc.stderr
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"a-{i}" for i in range(1, 21)]
    for i, r in enumerate(rows, start=1):
        message = r["result"]["message"]
        assert r["result"]["type"] == "succeeded"
        assert (message["type"], message["role"], message["stop_reason"]) == ("message", "assistant", "end_turn")
        assert message["content"][0]["type"] == "text"
        assert message["content"][0]["text"].endswith(f"question {i}")
        assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] > 0
        assert r["batchrelay"]["translated"] == {"from": "messages", "to": "chat"}
    # one probe found the messages provider out of credit; it was benched for every other line
    assert broke_calls == 1
    assert sorted(len(r["batchrelay"]["attempts"]) for r in rows) == [1] * 19 + [2]
    assert {c["path"] for c in chat_calls} == {"/v1/chat/completions"}


def test_a_chat_job_is_served_by_a_messages_only_provider_and_answered_in_chat_shape(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({}) as messages_only:
        cfg = write_config(tmp_path / "c.toml", prefix, [
            {"name": "claude-only", "base_url": messages_only, "dialects": ["messages"]}], default_max_tokens=321)
        src = tmp_path / "in.jsonl"
        src.write_bytes(orjson.dumps({"model": "m", "messages": [{"role": "system", "content": "sys"},
                                                                  {"role": "user", "content": "hello"}]}) + b"\n")
        out = tmp_path / "out.jsonl"
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    (row,) = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    body = row["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].endswith("hello")
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] > 0
    assert row["batchrelay"]["translated"] == {"from": "chat", "to": "messages"}
    assert any("321" in n for n in row["batchrelay"]["notes"])  # messages needs max_tokens: the default was used
