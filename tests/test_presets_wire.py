"""Each seed provider, configured by `preset` + `api_key_env` only (base URL pointed at the simulator),
gets exactly the documented method, path, auth header and body, and its answer is read right."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchrelay.sim.process import SimulatorProcess
from batchrelay.sim.state import shown

from .conftest import batchrelay

KEY = "sk-test-4f1c9e"

CHAT = {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0.2}
MESSAGES = {"model": "claude-3-5-sonnet-20240620", "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hello there."}]}

# preset -> (dialect, documented path, documented auth header, its value, the model the provider gets)
ROWS: list[tuple[str, str, str, str, str, str]] = [
    ("ttapi", "chat", "/v1/chat/completions", "tt-api-key", KEY, "gpt-4o"),
    ("ttapi", "messages", "/v1/messages", "tt-api-key", KEY, "claude-3-5-sonnet-20240620"),
    ("ttonkapi", "chat", "/v1/chat/completions", "authorization", f"Bearer {KEY}", "gpt-4o"),
    ("ttttt", "chat", "/v1/chat/completions", "authorization", f"Bearer {KEY}", "gpt-4o"),
    ("ttttt", "messages", "/v1/messages", "x-api-key", KEY, "claude-3-5-sonnet-20240620"),
    ("piapi", "chat", "/v1/chat/completions", "authorization", f"Bearer {KEY}", "gpt-4o"),
    ("ainow", "chat", "/chat/completions", "authorization", f"Bearer {KEY}", "GPT-4o"),
]
AUTH_HEADERS = {"authorization", "tt-api-key", "x-api-key"}


def _batch_line(body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": body}


def _run_one(tmp_path: Path, redis_url: str, prefix: str, preset: str, line: dict[str, Any],
             sim: str, extra: str = "") -> tuple[subprocess.CompletedProcess[str], list[dict], list[dict]]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[worker]\nbackoff = 0.01\n'
                   f'[[providers]]\npreset = "{preset}"\napi_key_env = "PRESET_TEST_KEY"\nbase_url = "{sim}"\n{extra}')
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(line) + b"\n")
    out = tmp_path / "out.jsonl"
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(out),
                      env={"REDIS_URL": redis_url, "PRESET_TEST_KEY": KEY})
    log = httpx.get(sim + "/_sim/log?full=1").json()
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()] if out.exists() else []
    return proc, log, rows


@pytest.mark.parametrize(("preset", "dialect", "path", "header", "value", "wire_model"), ROWS,
                         ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_a_job_reaches_the_provider_exactly_as_its_document_says(
        tmp_path: Path, redis_url: str, prefix: str, preset: str, dialect: str, path: str, header: str,
        value: str, wire_model: str) -> None:
    body = CHAT if dialect == "chat" else MESSAGES
    line = (_batch_line(body) if dialect == "chat"
            else {"custom_id": "x", "params": body})
    with SimulatorProcess({"preset": preset, "api_key": KEY}) as sim:
        proc, log, rows = _run_one(tmp_path, redis_url, prefix, preset, line, sim)
    assert proc.returncode == 0, proc.stderr
    (call,) = log
    assert (call["method"], call["path"], call["status"]) == ("POST", path, 200)
    assert call["headers"][header] == shown(header, value)  # the log shows the key redacted
    assert AUTH_HEADERS & set(call["headers"]) == {header}  # no other credential header goes out
    assert call["body"] == {**body, "model": wire_model}
    (row,) = rows
    meta = row["batchrelay"]
    assert meta["provider"] == preset and meta["provider_model"] == wire_model
    assert meta["usage"]["input_tokens"] > 0 and meta["usage"]["output_tokens"] > 0
    answer = row["response"]["body"] if dialect == "chat" else row["result"]["message"]
    assert answer["model"] == body["model"]  # the job's own name, whatever the provider calls it
    if dialect == "chat":
        assert answer["choices"][0]["message"]["content"]
        assert answer["usage"]["prompt_tokens"] == meta["usage"]["input_tokens"]
    else:
        assert answer["content"][0]["text"]
        assert answer["usage"]["input_tokens"] == meta["usage"]["input_tokens"]
    if preset == "ainow":
        assert Decimal(meta["cost"]["reported_usd"]) == Decimal(str(answer["total_tokens_cost"])) > 0
        assert meta["cost"]["source"] == "reported" and meta["cost"]["computed_usd"] is not None
        assert answer["input_tokens"] == meta["usage"]["input_tokens"]
    else:
        assert meta["cost"]["reported_usd"] is None


def test_a_wrong_key_gets_no_answer_and_no_retry(tmp_path: Path, redis_url: str, prefix: str) -> None:
    with SimulatorProcess({"preset": "ttapi", "api_key": "another-key"}) as sim:
        proc, log, _ = _run_one(tmp_path, redis_url, prefix, "ttapi",
                                _batch_line(CHAT), sim)
    assert proc.returncode == 3
    assert [c["status"] for c in log] == [401]
    err = orjson.loads((tmp_path / "out.errors.jsonl").read_bytes())
    assert err["response"]["status_code"] == 401
    assert KEY not in (tmp_path / "out.errors.jsonl").read_text()


def test_piapi_o1_models_get_the_system_prompt_folded_into_the_user_turn(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    body = {**CHAT, "model": "o1-mini"}
    with SimulatorProcess({"preset": "piapi", "api_key": KEY}) as sim:
        proc, log, rows = _run_one(tmp_path, redis_url, prefix, "piapi",
                                   _batch_line(body), sim)
    assert proc.returncode == 0, proc.stderr
    sent = log[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user"]
    assert sent[0]["content"] == "Be brief.\n\nWhat is the capital of France?"
    assert any("system" in n for n in rows[0]["batchrelay"]["notes"])


def test_ainow_maps_canonical_model_ids_there_and_back(tmp_path: Path, redis_url: str,
                                                                  prefix: str) -> None:
    body = {**CHAT, "model": "claude-3-5-sonnet-20240620"}
    with SimulatorProcess({"preset": "ainow", "api_key": KEY}) as sim:
        proc, log, rows = _run_one(tmp_path, redis_url, prefix, "ainow",
                                   _batch_line(body), sim)
    assert proc.returncode == 0, proc.stderr
    assert log[0]["body"]["model"] == "Claude 3.5 Sonnet"
    assert rows[0]["response"]["body"]["model"] == "claude-3-5-sonnet-20240620"
