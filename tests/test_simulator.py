from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from batchrelay.sim.answers import estimate_input_tokens, estimate_output_tokens, retry_headers
from batchrelay.sim.app import SimConfig, create_app
from batchrelay.sim.command import build_parser, config_from_args
from batchrelay.sim.faults import FaultState, SimOutcome, decide

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
MESSAGES_LIST = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
ANSWER = "Simulated answer to: What is the capital of France?"
CHAT_REQ: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES_LIST}
MSG_REQ: dict[str, Any] = {
    "model": "claude-3-5-haiku",
    "max_tokens": 100,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


def client_for(**fields: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(SimConfig(**fields))), base_url="http://sim")


@pytest.fixture
async def sim() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for() as client:
        yield client


async def test_same_request_gets_the_same_answer(sim: httpx.AsyncClient) -> None:
    first = (await sim.post(CHAT, json=CHAT_REQ)).json()
    second = (await sim.post(CHAT, json=CHAT_REQ)).json()
    assert first["choices"] == second["choices"]
    assert first["usage"] == second["usage"]
    assert first["id"] != second["id"]
    assert first["choices"][0]["message"]["content"] == ANSWER


async def test_usage_is_estimated_from_request_and_reply_bytes(sim: httpx.AsyncClient) -> None:
    body = (await sim.post(CHAT, json=CHAT_REQ)).json()
    reply = body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == math.ceil(len(orjson.dumps(MESSAGES_LIST)) / 4)
    assert usage["completion_tokens"] == math.ceil(len(reply.encode()) / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_chat_answer_has_the_openai_shape(sim: httpx.AsyncClient) -> None:
    r = await sim.post(CHAT, json=CHAT_REQ)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    int(body["id"].removeprefix("chatcmpl-"), 16)
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"


async def test_messages_answer_has_the_anthropic_shape_and_counts_the_system_prompt(
    sim: httpx.AsyncClient,
) -> None:
    body = (await sim.post(MESSAGES, json=MSG_REQ)).json()
    assert body["id"].startswith("msg_")
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-3-5-haiku"
    assert body["content"] == [{"type": "text", "text": ANSWER}]
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    size = len(orjson.dumps(MSG_REQ["messages"])) + len(orjson.dumps("Be brief."))
    assert body["usage"]["input_tokens"] == math.ceil(size / 4)
    assert body["usage"]["output_tokens"] == math.ceil(len(body["content"][0]["text"].encode()) / 4)


async def test_text_parts_of_the_last_user_message_are_joined(sim: httpx.AsyncClient) -> None:
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "look at"}, {"type": "image_url"},
                                     {"type": "text", "text": "this"}]},
    ]
    body = (await sim.post(CHAT, json={"model": "m", "messages": messages})).json()
    assert body["choices"][0]["message"]["content"] == "Simulated answer to: look at this"


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        (CHAT, {**CHAT_REQ, "max_tokens": 3}),
        (CHAT, {**CHAT_REQ, "max_completion_tokens": 3}),
        (MESSAGES, {**MSG_REQ, "max_tokens": 3}),
    ],
)
async def test_max_tokens_cuts_the_answer_and_says_so(
    sim: httpx.AsyncClient, path: str, request_body: dict[str, Any]
) -> None:
    body = (await sim.post(path, json=request_body)).json()
    if path == CHAT:
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 3
        assert body["choices"][0]["message"]["content"] == "Simulated an"
    else:
        assert body["stop_reason"] == "max_tokens"
        assert body["usage"]["output_tokens"] == 3
        assert body["content"][0]["text"] == "Simulated an"


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        (CHAT, {"messages": MESSAGES_LIST}),
        (CHAT, {"model": "m"}),
        (CHAT, {"model": "m", "messages": []}),
        (CHAT, {"model": 3, "messages": MESSAGES_LIST}),
        (CHAT, ["not", "an", "object"]),
        (MESSAGES, {"max_tokens": 10, "messages": MESSAGES_LIST}),
        (MESSAGES, {"model": "m", "max_tokens": 10}),
        (MESSAGES, {"model": "m", "messages": MESSAGES_LIST}),
        (MESSAGES, {"model": "m", "max_tokens": "10", "messages": MESSAGES_LIST}),
    ],
)
async def test_a_request_without_model_messages_or_max_tokens_is_a_400(
    sim: httpx.AsyncClient, path: str, request_body: Any
) -> None:
    r = await sim.post(path, json=request_body)
    assert r.status_code == 400
    if path == CHAT:
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert set(r.json()["error"]) == {"message", "type", "code"}
    else:
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "invalid_request_error"


async def test_a_body_that_is_not_json_is_a_400(sim: httpx.AsyncClient) -> None:
    r = await sim.post(CHAT, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"Authorization": "sk-right"}]
)
async def test_a_wrong_or_missing_key_is_a_401_in_the_dialects_envelope(headers: dict[str, str]) -> None:
    async with client_for(api_key="sk-right") as client:
        chat = await client.post(CHAT, json=CHAT_REQ, headers=headers)
        msg = await client.post(MESSAGES, json=MSG_REQ, headers=headers)
        models = await client.get("/v1/models", headers=headers)
    assert chat.status_code == msg.status_code == models.status_code == 401
    assert chat.json()["error"]["type"] == "authentication_error"
    assert msg.json()["type"] == "error"
    assert set(msg.json()["error"]) == {"type", "message"}
    assert msg.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer sk-right"}, {"x-api-key": "sk-right"}, {"TT-API-KEY": "sk-right"}]
)
async def test_each_of_the_three_key_headers_is_accepted(headers: dict[str, str]) -> None:
    async with client_for(api_key="sk-right") as client:
        assert (await client.post(CHAT, json=CHAT_REQ, headers=headers)).status_code == 200
        assert (await client.post(MESSAGES, json=MSG_REQ, headers=headers)).status_code == 200


async def test_script_statuses_are_answered_in_order_then_normal_answers() -> None:
    async with client_for(script=[429, 0, 503, 200, 500]) as client:
        statuses = [(await client.post(CHAT, json=CHAT_REQ)).status_code for _ in range(7)]
    assert statuses == [429, 200, 503, 200, 500, 200, 200]


async def test_fail_after_runs_out_of_quota_with_a_402_in_each_dialect() -> None:
    async with client_for(fail_after=2) as client:
        ok = [(await client.post(CHAT, json=CHAT_REQ)).status_code for _ in range(2)]
        chat = await client.post(CHAT, json=CHAT_REQ)
        msg = await client.post(MESSAGES, json=MSG_REQ)
    assert ok == [200, 200]
    assert chat.status_code == msg.status_code == 402
    assert chat.json()["error"]["type"] == chat.json()["error"]["code"] == "insufficient_quota"
    assert msg.json()["error"]["type"] == "billing_error"


async def test_a_429_carries_retry_after() -> None:
    async with client_for(fail_status=429, retry_after=2) as client:
        chat = await client.post(CHAT, json=CHAT_REQ)
        msg = await client.post(MESSAGES, json=MSG_REQ)
    assert chat.status_code == 429
    assert chat.headers["retry-after"] == "2"
    assert "retry-after-ms" not in chat.headers
    assert chat.json()["error"]["type"] == "rate_limit_error"
    assert msg.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, 1.5, {"retry-after": "2", "retry-after-ms": "1500"}),
        (503, 0.25, {"retry-after": "1", "retry-after-ms": "250"}),
        (529, 3.0, {"retry-after": "3"}),
        (500, 3.0, {}),
        (402, 3.0, {}),
        (429, None, {}),
    ],
)
def test_retry_after_is_whole_seconds_plus_milliseconds_when_fractional(
    status: int, retry_after: float | None, expected: dict[str, str]
) -> None:
    assert retry_headers(status, retry_after) == expected


@pytest.mark.parametrize(
    ("status", "chat_type", "messages_type"),
    [(404, "not_found", "not_found_error"), (500, "server_error", "api_error"),
     (502, "server_error", "api_error"), (529, "server_error", "overloaded_error"),
     (503, "server_error", "overloaded_error")],
)
async def test_each_status_gets_its_dialects_error_type(
    status: int, chat_type: str, messages_type: str
) -> None:
    async with client_for(fail_status=status) as client:
        chat = await client.post(CHAT, json=CHAT_REQ)
        msg = await client.post(MESSAGES, json=MSG_REQ)
    assert chat.status_code == msg.status_code == status
    assert chat.json()["error"]["type"] == chat_type
    assert msg.json()["error"]["type"] == messages_type


async def test_a_malformed_answer_is_a_200_whose_body_is_not_json() -> None:
    async with client_for(malformed_rate=1.0) as client:
        r = await client.post(CHAT, json=CHAT_REQ)
    assert r.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.content)


async def test_a_hanging_call_answers_normally_after_hang_seconds() -> None:
    async with client_for(hang_rate=1.0, hang_seconds=0.05) as client:
        start = time.monotonic()
        r = await client.post(CHAT, json=CHAT_REQ)
    assert time.monotonic() - start >= 0.05
    assert r.status_code == 200 and r.json()["choices"]


def test_random_faults_are_reproducible_and_about_the_configured_fraction() -> None:
    config = SimConfig(seed=7, fail_rate=0.2, malformed_rate=0.1, hang_rate=0.1)
    runs = []
    for _ in range(2):
        state = FaultState(seed=7)
        runs.append([decide(config, state) for _ in range(2000)])
    assert runs[0] == runs[1]
    kinds = [o.kind for o in runs[0]]
    assert 300 < kinds.count("error") < 500
    assert 120 < kinds.count("malformed") < 280
    assert 120 < kinds.count("hang") < 280
    assert all(o == SimOutcome("error", 500) for o in runs[0] if o.kind == "error")


def test_fail_after_counts_only_real_answers() -> None:
    config = SimConfig(fail_after=2, script=[500, 200, 429])
    state = FaultState()
    statuses = [decide(config, state).status for _ in range(5)]
    assert statuses == [500, 200, 429, 200, 402]


@pytest.mark.parametrize(
    ("messages", "system", "expected"),
    [
        ([{"role": "user", "content": "hi"}], None, math.ceil(len(b'[{"role":"user","content":"hi"}]') / 4)),
        ([], None, 1),
        # "é" is two bytes; "sys" serialises with its quotes.
        ([{"role": "user", "content": "é"}], "sys", math.ceil((32 + 5) / 4)),
    ],
)
def test_input_tokens_are_about_four_bytes_of_json_each(
    messages: list[Any], system: Any, expected: int
) -> None:
    assert estimate_input_tokens(messages, system) == expected


@pytest.mark.parametrize(("text", "expected"), [("", 1), ("abcd", 1), ("abcde", 2), ("ééé", 2)])
def test_output_tokens_are_about_four_bytes_each(text: str, expected: int) -> None:
    assert estimate_output_tokens(text) == expected


async def test_models_lists_the_simulated_model(sim: httpx.AsyncClient) -> None:
    r = await sim.get("/v1/models")
    assert r.json() == {
        "object": "list",
        "data": [{"id": "sim-1", "object": "model", "created": 0, "owned_by": "batchrelay-sim"}],
    }


async def test_config_update_merges_fields_and_reset_restarts_the_script() -> None:
    async with client_for(script=[429], latency_ms=0) as client:
        assert (await client.post(CHAT, json=CHAT_REQ)).status_code == 429
        r = await client.post("/_sim/config", json={"fail_status": 503})
        assert r.status_code == 200
        assert (await client.get("/_sim/config")).json()["script"] == [429]
        assert (await client.post(CHAT, json=CHAT_REQ)).status_code == 503

        await client.post("/_sim/config", json={"fail_status": None, "reset": True})
        assert (await client.post(CHAT, json=CHAT_REQ)).status_code == 429
        assert (await client.post(CHAT, json=CHAT_REQ)).status_code == 200

        bad = await client.post("/_sim/config", json={"fail_rat": 0.5})
        assert bad.status_code == 400
        assert "fail_rat" in bad.json()["error"]["message"]


async def test_the_log_says_when_each_answer_left_after_latency_ms() -> None:
    async with client_for(latency_ms=50, script=[429, 200]) as client:
        await client.post(CHAT, json=CHAT_REQ)
        await client.post(CHAT, json=CHAT_REQ)
        log = (await client.get("/_sim/log")).json()
    assert [e["status"] for e in log] == [429, 200]
    assert all(0.045 <= e["answered"] - e["t"] <= 0.5 for e in log), log  # a Retry-After is announced then


async def test_log_lists_every_provider_call_and_since_skips_earlier_ones() -> None:
    async with client_for(script=[429]) as client:
        before = time.time()
        await client.post(CHAT, json=CHAT_REQ)
        await client.post(MESSAGES, json=MSG_REQ)
        await client.post(CHAT, json={"messages": MESSAGES_LIST})
        await client.get("/_sim/stats")
        log = (await client.get("/_sim/log")).json()
        tail = (await client.get("/_sim/log", params={"since": 2})).json()
        stats = (await client.get("/_sim/stats")).json()
        await client.post("/_sim/reset")
        after_reset = (await client.get("/_sim/log")).json()
        reset_stats = (await client.get("/_sim/stats")).json()
        scripted_again = (await client.post(CHAT, json=CHAT_REQ)).status_code
    assert [(e["path"], e["model"], e["status"]) for e in log] == [
        (CHAT, "gpt-4o-mini", 429),
        (MESSAGES, "claude-3-5-haiku", 200),
        (CHAT, None, 400),
    ]
    assert all(before <= e["t"] <= time.time() for e in log)
    assert tail == log[2:]
    assert stats == {"calls": 3, "by_status": {"200": 1, "400": 1, "429": 1}}
    assert after_reset == []
    assert reset_stats == {"calls": 0, "by_status": {}}
    assert scripted_again == 429


# The known request's counts: 25 input tokens for CHAT_REQ, 18 for MSG_REQ (system included), and
# 13 output tokens for ANSWER.
CHAT_IN, MSG_IN, OUT = 25, 18, 13


def test_the_known_requests_token_counts() -> None:
    assert math.ceil(len(orjson.dumps(MESSAGES_LIST)) / 4) == CHAT_IN
    assert math.ceil((len(orjson.dumps(MSG_REQ["messages"])) + len(orjson.dumps("Be brief."))) / 4) == MSG_IN
    assert estimate_output_tokens(ANSWER) == OUT


async def test_cached_fraction_is_part_of_prompt_tokens_in_chat() -> None:
    async with client_for(cached_fraction=0.5) as client:
        usage = (await client.post(CHAT, json=CHAT_REQ)).json()["usage"]
    assert usage == {"prompt_tokens": CHAT_IN, "completion_tokens": OUT, "total_tokens": CHAT_IN + OUT,
                     "prompt_tokens_details": {"cached_tokens": 12}}  # floor(25 * 0.5)


async def test_a_preset_without_prompt_tokens_details_still_has_none_when_caching() -> None:
    async with client_for(preset="piapi", cached_fraction=0.5) as client:
        usage = (await client.post(CHAT, json=CHAT_REQ)).json()["usage"]
    assert usage == {"prompt_tokens": CHAT_IN, "completion_tokens": OUT, "total_tokens": CHAT_IN + OUT}


@pytest.mark.parametrize(
    ("cached_fraction", "cache_write_fraction", "expected"),
    [
        (0.0, 0.0, {"input_tokens": 18, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}),
        (0.5, 0.0, {"input_tokens": 9, "cache_read_input_tokens": 9, "cache_creation_input_tokens": 0}),
        # floor(18 * 0.5) = 9 read, floor(18 * 0.25) = 4 written, 18 - 9 - 4 = 5 left
        (0.5, 0.25, {"input_tokens": 5, "cache_read_input_tokens": 9, "cache_creation_input_tokens": 4}),
        (0.0, 1.0, {"input_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 18}),
        (0.3, 0.7, {"input_tokens": 1, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 12}),
    ],
)
async def test_messages_input_tokens_exclude_cache_reads_and_writes(
    cached_fraction: float, cache_write_fraction: float, expected: dict[str, int]
) -> None:
    async with client_for(cached_fraction=cached_fraction, cache_write_fraction=cache_write_fraction) as client:
        usage = (await client.post(MESSAGES, json=MSG_REQ)).json()["usage"]
    assert usage == {**expected, "output_tokens": OUT}


async def test_cache_write_fraction_does_not_touch_chat_and_caching_does_not_change_the_cost() -> None:
    async with client_for(cached_fraction=0.5, cache_write_fraction=0.5, credits=1.0) as client:
        usage = (await client.post(CHAT, json=CHAT_REQ)).json()["usage"]
        left = (await client.get("/_sim/config")).json()["credits"]
    assert usage["prompt_tokens"] == CHAT_IN
    assert usage["prompt_tokens_details"] == {"cached_tokens": 12}
    assert left == round(1.0 - (CHAT_IN * 1e-6 + OUT * 2e-6), 10)


async def test_a_preset_without_cache_fields_reports_all_input_tokens_as_input() -> None:
    async with client_for(preset="ttapi", cached_fraction=0.5, cache_write_fraction=0.25) as client:
        usage = (await client.post(MESSAGES, json=MSG_REQ)).json()["usage"]
    assert usage == {"input_tokens": MSG_IN, "output_tokens": OUT}


async def test_a_streamed_messages_answer_reports_the_cache_split() -> None:
    async with client_for(cached_fraction=0.5, cache_write_fraction=0.25) as client:
        r = await client.post(MESSAGES, json={**MSG_REQ, "stream": True})
    start = next(orjson.loads(line[6:]) for line in r.text.splitlines() if '"message_start"' in line
                 and line.startswith("data: "))
    assert start["message"]["usage"] == {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 9,
                                         "cache_creation_input_tokens": 4}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cached_fraction": 0.7, "cache_write_fraction": 0.4}, "cached_fraction + cache_write_fraction must be <= 1"),
        ({"fail_rate": 0.5, "junk_rate": 0.6}, "fail_rate + malformed_rate + hang_rate + junk_rate must be <= 1"),
        ({"malformed_rate": 0.5, "hang_rate": 0.3, "junk_rate": 0.3}, "junk_rate must be <= 1"),
        ({"cached_fraction": 1.5}, "cached_fraction"),
        ({"junk_rate": -0.1}, "junk_rate"),
    ],
)
async def test_fractions_over_one_are_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("+", r"\+")):
        SimConfig(**fields)
    async with client_for() as client:
        r = await client.post("/_sim/config", json=fields)
    assert r.status_code == 400
    assert message in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"cached_fraction": 0.7, "cache_write_fraction": 0.3},
        # 0.34 + 0.56 + 0.1 is 1.0000000000000002 in floats: still "exactly one"
        {"fail_rate": 0.34, "malformed_rate": 0.56, "hang_rate": 0.1},
        {"fail_rate": 0.1, "malformed_rate": 0.2, "hang_rate": 0.3, "junk_rate": 0.4},
    ],
)
async def test_fractions_summing_to_exactly_one_are_accepted(fields: dict[str, float]) -> None:
    assert SimConfig(**fields).model_dump(include=set(fields)) == fields
    async with client_for() as client:
        r = await client.post("/_sim/config", json=fields)
        config = (await client.get("/_sim/config")).json()
    assert r.status_code == 200
    assert {k: config[k] for k in fields} == fields


def test_rates_summing_to_one_leave_no_call_answered_normally() -> None:
    config = SimConfig(fail_rate=0.1, malformed_rate=0.2, hang_rate=0.3, junk_rate=0.4)
    state = FaultState()
    kinds = {decide(config, state).kind for _ in range(2000)}
    assert kinds == {"error", "malformed", "hang", "junk"}


async def test_a_junk_chat_answer_is_a_200_with_usage_and_no_choices() -> None:
    async with client_for(junk_rate=1.0, cached_fraction=0.5) as client:
        r = await client.post(CHAT, json=CHAT_REQ)
        short = (await client.get("/_sim/log")).json()
        full = (await client.get("/_sim/log", params={"full": "1"})).json()
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"] == []
    assert body["usage"] == {"prompt_tokens": CHAT_IN, "completion_tokens": OUT, "total_tokens": CHAT_IN + OUT,
                             "prompt_tokens_details": {"cached_tokens": 12}}
    assert [(e["status"], e["kind"]) for e in short] == [(200, "junk")]
    [entry] = full
    assert entry["kind"] == "junk" and entry["status"] == 200
    assert entry["body"] == CHAT_REQ
    assert entry["response"] == body


async def test_a_junk_messages_answer_is_a_200_with_usage_and_null_content() -> None:
    async with client_for(junk_rate=1.0) as client:
        r = await client.post(MESSAGES, json=MSG_REQ)
        [entry] = (await client.get("/_sim/log", params={"full": "1"})).json()
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("msg_") and body["type"] == "message" and body["model"] == "claude-3-5-haiku"
    assert body["content"] is None
    assert body["usage"] == {"input_tokens": MSG_IN, "output_tokens": OUT, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0}
    assert (entry["kind"], entry["response"]) == ("junk", body)


async def test_ainow_junk_keeps_its_top_level_tokens_and_costs() -> None:
    req = {"model": "GPT-4 Turbo", "messages": MESSAGES_LIST}
    async with client_for(preset="ainow", junk_rate=1.0) as client:
        body = (await client.post("/chat/completions", json=req)).json()
    assert body["choices"] == [] and "usage" not in body
    assert (body["input_tokens"], body["output_tokens"]) == (CHAT_IN, OUT)
    assert body["total_tokens_cost"] == round(CHAT_IN * 0.03 / 1000 + OUT * 0.06 / 1000, 10)


async def test_junk_is_billed_like_an_answer_and_counts_toward_fail_after() -> None:
    async with client_for(junk_rate=1.0, credits=1.0, fail_after=2) as client:
        statuses = [(await client.post(CHAT, json=CHAT_REQ)).status_code for _ in range(3)]
        left = (await client.get("/_sim/config")).json()["credits"]
    assert statuses == [200, 200, 402]
    assert left == round(1.0 - 2 * (CHAT_IN * 1e-6 + OUT * 2e-6), 10)


async def test_a_streaming_request_gets_junk_as_a_plain_json_body() -> None:
    async with client_for(junk_rate=1.0) as client:
        r = await client.post(CHAT, json={**CHAT_REQ, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["choices"] == [] and r.json()["usage"]["prompt_tokens"] == CHAT_IN


async def test_the_log_tells_answers_errors_malformed_and_junk_apart() -> None:
    async with client_for(script=[500]) as client:
        await client.post(CHAT, json=CHAT_REQ)
        await client.post(CHAT, json=CHAT_REQ)
        await client.post("/_sim/config", json={"malformed_rate": 1.0})
        await client.post(CHAT, json=CHAT_REQ)
        await client.post("/_sim/config", json={"malformed_rate": 0.0, "junk_rate": 1.0})
        await client.post(CHAT, json=CHAT_REQ)
        full = (await client.get("/_sim/log", params={"full": "1"})).json()
    assert [(e["status"], e["kind"]) for e in full] == [(500, "error"), (200, "answer"), (200, "malformed"),
                                                        (200, "junk")]
    assert full[0]["response"]["error"]["type"] == "server_error"
    assert full[1]["response"]["choices"][0]["message"]["content"] == ANSWER
    assert full[2]["response"] is None  # not JSON
    assert full[3]["response"]["choices"] == []


def test_junk_takes_its_share_of_the_seeded_draw_after_the_other_rates() -> None:
    config = SimConfig(seed=7, fail_rate=0.2, malformed_rate=0.1, hang_rate=0.1, junk_rate=0.3)
    state = FaultState(seed=7)
    outcomes = [decide(config, state) for _ in range(2000)]
    kinds = [o.kind for o in outcomes]
    assert 500 < kinds.count("junk") < 700
    assert all(o == SimOutcome("junk", 200) for o in outcomes if o.kind == "junk")
    assert state.successes == kinds.count("answer") + kinds.count("hang") + kinds.count("junk")
    # Junk comes last in the split, so adding it leaves every other call's fate as it was.
    before = [decide(SimConfig(seed=7, fail_rate=0.2, malformed_rate=0.1, hang_rate=0.1), s)
              for s in [FaultState(seed=7)] for _ in range(2000)]
    assert [o if o.kind != "junk" else SimOutcome("answer", 200) for o in outcomes] == before


def test_the_command_line_takes_the_cache_and_junk_fields() -> None:
    args = build_parser().parse_args(["--cached-fraction", "0.5", "--cache-write-fraction", "0.25", "--junk-rate", "0.1"])
    config = config_from_args(args)
    assert (config.cached_fraction, config.cache_write_fraction, config.junk_rate) == (0.5, 0.25, 0.1)
    with pytest.raises(ValidationError):
        config_from_args(build_parser().parse_args(["--cached-fraction", "0.6", "--cache-write-fraction", "0.6"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_real_server_answers_over_loopback() -> None:
    root = Path(__file__).resolve().parents[1]
    port = _free_port()
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrelay.sim", "--port", str(port), "--api-key", "k"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, "simulator exited early"
                try:
                    client.get("/_sim/stats")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            r = client.post(CHAT, json=CHAT_REQ, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == ANSWER
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    # uvicorn shuts down cleanly on SIGTERM and then re-raises it, so either code means a clean exit.
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Traceback" not in err, err.decode()


async def test_the_request_log_keeps_the_newest_log_limit_calls() -> None:
    async with client_for(log_limit=20) as client:
        for i in range(1, 31):
            body = {**CHAT_REQ, "messages": [{"role": "user", "content": f"call {i}"}]}
            assert (await client.post(CHAT, json=body)).status_code == 200
        stats = (await client.get("/_sim/stats")).json()
        assert stats == {"calls": 30, "by_status": {"200": 30}}  # counts never drop
        full = (await client.get("/_sim/log?full=1")).json()
        assert 20 <= len(full) < 30  # trimmed in steps to the newest 20
        assert full[-1]["body"]["messages"][0]["content"] == "call 30"
        first = int(full[0]["body"]["messages"][0]["content"].split()[1])
        assert first == 31 - len(full)
        # `since` counts the dropped calls too: call 26 on
        since = (await client.get("/_sim/log?since=25&full=1")).json()
        assert [e["body"]["messages"][0]["content"] for e in since] == [f"call {i}" for i in range(26, 31)]
        await client.post("/_sim/reset")
        assert (await client.get("/_sim/stats")).json()["calls"] == 0
    with pytest.raises(ValidationError):
        SimConfig(log_limit=0)
