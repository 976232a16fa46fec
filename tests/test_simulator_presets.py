"""The simulator as each seed provider (the README's Presets table), streaming, credits, rate limits, full log."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from batchrelay.sim.app import SimConfig, create_app
from batchrelay.sim.command import build_parser, config_from_args
from batchrelay.sim.faults import RATE_WINDOW, RateWindow
from batchrelay.sim.presets import AINOW_PRICES, PROVIDERS
from batchrelay.sim.state import redacted, shown

KEY = "sk-sim"
USER = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Simulated answer to: What is the capital of France?"
ALL_PATHS = {"/v1/chat/completions", "/v1/messages", "/v1/models", "/chat/completions", "/models",
             "/credits", "/tokens", "/moderate"}


def client_for(**fields: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(SimConfig(**fields))), base_url="http://sim")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tt_key(key: str) -> dict[str, str]:
    return {"TT-API-KEY": key}


def x_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@dataclass
class PresetCase:
    """One seed provider as its document describes it: paths, key headers, a model, usage keys."""

    preset: str | None
    chat: str
    chat_auth: Any
    messages: str | None
    messages_auth: Any
    model: str
    wrong_header: dict[str, str]  # the right key in a header this provider does not read
    usage_keys: set[str] | None  # chat usage keys; None = no usage (ai-now)
    served: set[str]


CASES = [
    PresetCase("ttapi", "/v1/chat/completions", tt_key, "/v1/messages", tt_key, "gpt-4o", bearer(KEY),
        {"prompt_tokens", "completion_tokens", "total_tokens"}, {"/v1/chat/completions", "/v1/messages"}),
    PresetCase("ttonkapi", "/v1/chat/completions", bearer, None, None, "qwen-plus", tt_key(KEY),
        {"prompt_tokens", "completion_tokens", "total_tokens"}, {"/v1/chat/completions", "/v1/models"}),
    PresetCase("ttttt", "/v1/chat/completions", bearer, "/v1/messages", x_key, "gpt-5.5", x_key(KEY),
        {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"},
        {"/v1/chat/completions", "/v1/messages", "/v1/models"}),
    PresetCase("piapi", "/v1/chat/completions", bearer, None, None, "gpt-4o-mini", x_key(KEY),
        {"prompt_tokens", "completion_tokens", "total_tokens"}, {"/v1/chat/completions"}),
    PresetCase("ainow", "/chat/completions", bearer, None, None, "GPT-4 Turbo", x_key(KEY), None,
        {"/chat/completions", "/models", "/credits", "/tokens", "/moderate"}),
]
IDS = [r.preset or "generic" for r in CASES]


def chat_req(row: PresetCase, **extra: Any) -> dict[str, Any]:
    return {"model": row.model, "messages": USER, **extra}


def msg_req(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-3-5-sonnet-20240620", "max_tokens": 1024, "messages": USER, **extra}


def assert_envelope(preset: str | None, dialect: str, body: Any, status: int, kind: str) -> None:
    if dialect == "messages" and preset != "ttttt":
        assert body["type"] == "error"
        assert body["error"]["type"] == kind
        return
    assert set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["type"] == kind
    # ttttt's document shows the HTTP status as the code; OpenAI's style repeats the type.
    assert body["error"]["code"] == (status if preset == "ttttt" else kind)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((event, "\n".join(data)))
    return events


def test_every_preset_has_a_table() -> None:
    assert set(PROVIDERS) == {None, "ttapi", "ttonkapi", "ttttt", "piapi", "ainow"}


@pytest.mark.parametrize("row", CASES, ids=IDS)
async def test_the_documented_path_and_key_header_answer_in_the_documented_shape(row: PresetCase) -> None:
    async with client_for(preset=row.preset, api_key=KEY) as client:
        r = await client.post(row.chat, json=chat_req(row), headers=row.chat_auth(KEY))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == row.model
        assert body["choices"][0]["message"] == {"role": "assistant", "content": ANSWER}
        if row.usage_keys is None:
            assert "usage" not in body
            for k in ("input_tokens", "output_tokens", "input_tokens_cost", "output_tokens_cost",
                      "total_tokens_cost", "total_time_taken", "tokens_per_second"):
                assert isinstance(body[k], int | float), k
        else:
            assert set(body["usage"]) == row.usage_keys
        if row.messages is not None:
            r = await client.post(row.messages, json=msg_req(), headers=row.messages_auth(KEY))
            assert r.status_code == 200, r.text
            assert r.json()["content"] == [{"type": "text", "text": ANSWER}]
            usage = set(r.json()["usage"])
            # TTAPI's example usage has only the two counts.
            assert usage >= {"input_tokens", "output_tokens"}
            assert (usage == {"input_tokens", "output_tokens"}) == (row.preset == "ttapi")


@pytest.mark.parametrize("row", CASES, ids=IDS)
async def test_a_missing_wrong_or_misplaced_key_is_a_401_in_the_providers_envelope(row: PresetCase) -> None:
    async with client_for(preset=row.preset, api_key=KEY) as client:
        for headers in ({}, row.chat_auth("wrong"), row.wrong_header):
            r = await client.post(row.chat, json=chat_req(row), headers=headers)
            assert r.status_code == 401, headers
            assert_envelope(row.preset, "chat", r.json(), 401, "authentication_error")
        if row.messages is not None:
            for headers in ({}, row.messages_auth("wrong"), row.chat_auth(KEY) if row.preset == "ttttt" else bearer(KEY)):
                r = await client.post(row.messages, json=msg_req(), headers=headers)
                assert r.status_code == 401, headers
                assert_envelope(row.preset, "messages", r.json(), 401, "authentication_error")


@pytest.mark.parametrize("row", CASES, ids=IDS)
async def test_only_the_providers_own_paths_exist(row: PresetCase) -> None:
    async with client_for(preset=row.preset) as client:
        for path in sorted(ALL_PATHS - row.served):
            r = await client.post(path, json=chat_req(row))
            assert r.status_code == 404, path
            assert_envelope(row.preset, "chat", r.json(), 404, "not_found")
        log = (await client.get("/_sim/log")).json()
    # A misrouted call shows in the log, so a client test can see where it went.
    assert [e["path"] for e in log] == sorted(ALL_PATHS - row.served)


async def test_ttonkapi_lists_its_documented_models_and_types_its_errors() -> None:
    async with client_for(preset="ttonkapi", api_key=KEY) as client:
        models = (await client.get("/v1/models", headers=bearer(KEY))).json()
        await client.post("/_sim/config", json={"script": [402, 429, 500]})
        errors = [(await client.post("/v1/chat/completions", json={"model": "qwen-max", "messages": USER},
                                     headers=bearer(KEY))) for _ in range(3)]
        bad = await client.post("/v1/chat/completions", json={"model": "qwen-max"}, headers=bearer(KEY))
    assert [m["id"] for m in models["data"]] == ["qwen-turbo", "qwen-plus", "qwen-max", "deepseek-chat",
                                                 "deepseek-reasoner"]
    assert models["data"][0] == {"id": "qwen-turbo", "object": "model", "created": 1711353600, "owned_by": "qwen"}
    assert [r.json()["error"]["type"] for r in [*errors, bad]] == [
        "insufficient_quota", "rate_limit_error", "server_error", "invalid_request_error"]


@pytest.mark.parametrize(
    ("model", "system", "status"),
    [("o1-mini", True, 400), ("o1-preview", True, 400), ("o1-mini-2024-09-12", True, 400),
     ("o1-mini", False, 200), ("gpt-4o", True, 200)],
)
async def test_piapi_o1_models_reject_the_system_role(model: str, system: bool, status: int) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *USER] if system else USER
    async with client_for(preset="piapi") as client:
        r = await client.post("/v1/chat/completions", json={"model": model, "messages": messages})
    assert r.status_code == status
    if status == 400:
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "system" in r.json()["error"]["message"]


async def test_ainow_models_credits_tokens_and_moderation() -> None:
    async with client_for(preset="ainow", api_key=KEY, credits=5.0) as client:
        h = bearer(KEY)
        models = (await client.get("/models", headers=h)).json()
        assert (await client.get("/models")).status_code == 401
        credits = (await client.get("/credits", headers=h)).json()
        tokens = (await client.post("/tokens", json={"text": "abcdefghi"}, headers=h)).json()
        bad_tokens = await client.post("/tokens", json={"txt": "a"}, headers=h)
        moderated = (await client.post("/moderate", json={"input": "hello"}, headers=h)).json()
        unknown = await client.post("/chat/completions", json={"model": "gpt-4-turbo", "messages": USER}, headers=h)
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["Claude 3.5 Sonnet"] == {"id": "Claude 3.5 Sonnet", "inputCost": 0.002, "outputCost": 0.003}
    assert by_id["GPT-4 Turbo"] == {"id": "GPT-4 Turbo", "inputCost": 0.03, "outputCost": 0.06}
    assert {"GPT-4o", "Deepseek Chat", "Llama 3.1 405b", "Command-R Plus Online"} <= set(by_id)
    assert credits == {"credits": 5.0}
    assert tokens == {"tokens": 3}  # the usage estimator: ceil(9 bytes / 4)
    assert bad_tokens.status_code == 400
    [result] = moderated["results"]
    assert result["flagged"] is False
    assert result["categories"]["hate"] is False and result["category_scores"]["hate"] == 0.0
    assert unknown.status_code == 404
    assert "gpt-4-turbo" in unknown.json()["error"]["message"]


async def test_ainow_costs_are_its_per_thousand_token_prices() -> None:
    async with client_for(preset="ainow") as client:
        body = (await client.post("/chat/completions", json={"model": "GPT-4 Turbo", "messages": USER})).json()
    in_price, out_price = AINOW_PRICES["GPT-4 Turbo"]
    assert body["input_tokens"] == math.ceil(len(orjson.dumps(USER)) / 4)
    assert body["input_tokens_cost"] == pytest.approx(body["input_tokens"] * in_price / 1000)
    assert body["output_tokens_cost"] == pytest.approx(body["output_tokens"] * out_price / 1000)
    assert body["total_tokens_cost"] == pytest.approx(body["input_tokens_cost"] + body["output_tokens_cost"])


STREAM_ROWS = [(r.preset, r.chat, r.model, "chat") for r in CASES] + [
    (None, "/v1/chat/completions", "m", "chat"), (None, "/v1/messages", "m", "messages"),
    ("ttapi", "/v1/messages", "m", "messages"), ("ttttt", "/v1/messages", "m", "messages"),
]


@pytest.mark.parametrize(("preset", "path", "model", "dialect"), STREAM_ROWS)
async def test_a_stream_concatenates_to_the_plain_answer_with_the_same_usage(
    preset: str | None, path: str, model: str, dialect: str
) -> None:
    req: dict[str, Any] = {"model": model, "messages": USER}
    if dialect == "messages":
        req["max_tokens"] = 100
    async with client_for(preset=preset) as client:
        plain = (await client.post(path, json=req)).json()
        r = await client.post(path, json={**req, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    if dialect == "messages":
        names = [e for e, _ in events]
        assert names[:2] == ["message_start", "content_block_start"]
        assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        assert names.count("content_block_delta") >= 3
        data = [orjson.loads(d) for _, d in events]
        text = "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta")
        assert text == plain["content"][0]["text"] == ANSWER
        assert data[0]["message"]["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
        assert data[-2]["usage"]["output_tokens"] == plain["usage"]["output_tokens"]
        assert data[-2]["delta"]["stop_reason"] == plain["stop_reason"]
        return
    assert all(e is None for e, _ in events)
    if preset == "ainow":
        assert events[-1][1] != "[DONE]"
        *chunks, tail = [orjson.loads(d) for _, d in events]
        costs = {k: v for k, v in plain.items() if k.endswith(("_tokens", "_cost"))}
        assert {k: tail[k] for k in costs} == costs
        assert set(tail) == set(costs) | {"total_time_taken", "tokens_per_second", "time_to_first_data"}
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        assert events[-1][1] == "[DONE]"
        chunks = [orjson.loads(d) for _, d in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1] == {**chunks[-1], "choices": [], "usage": plain["usage"]}
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        chunks = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"] == ANSWER
    assert len(chunks) >= 4


async def test_without_include_usage_a_chat_stream_has_no_usage_chunk() -> None:
    async with client_for() as client:
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True})
    events = sse_events(r.text)
    assert events[-1][1] == "[DONE]"
    assert all("usage" not in orjson.loads(d) for _, d in events[:-1])


@pytest.mark.parametrize(
    ("preset", "path", "extra", "end"),
    [(None, "/v1/chat/completions", {}, "[DONE]"), (None, "/v1/messages", {"max_tokens": 50}, "message_stop"),
     ("ainow", "/chat/completions", {}, "total_tokens_cost")],
)
async def test_a_truncated_stream_stops_half_way_without_its_end_marker(
    preset: str | None, path: str, extra: dict[str, Any], end: str
) -> None:
    model = "GPT-4o" if preset else "m"
    req = {"model": model, "messages": USER, **extra}
    async with client_for(preset=preset, truncate_rate=1.0) as client:
        cut = await client.post(path, json={**req, "stream": True})
        plain = await client.post(path, json=req)
    async with client_for(preset=preset) as client:
        whole = await client.post(path, json={**req, "stream": True})
    assert cut.status_code == 200 and plain.status_code == 200
    assert end in whole.text and end not in cut.text
    assert 0 < len(sse_events(cut.text)) < len(sse_events(whole.text))
    plain.json()  # a plain answer is not cut


async def test_a_malformed_stream_has_a_data_line_that_is_not_json() -> None:
    async with client_for(malformed_rate=1.0) as client:
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True})
    bad = []
    for _, data in sse_events(r.text):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            bad.append(data)
    assert bad and bad != ["[DONE]"]


@pytest.mark.parametrize(
    ("preset", "path", "model", "kind"),
    [(None, "/v1/chat/completions", "m", "insufficient_quota"),
     ("ttonkapi", "/v1/chat/completions", "qwen-plus", "insufficient_quota"),
     ("ttapi", "/v1/messages", "claude-3-5-sonnet-20240620", "billing_error"),
     ("ainow", "/chat/completions", "GPT-4 Turbo", "insufficient_quota")],
)
async def test_spending_the_credits_turns_every_call_into_a_402(
    preset: str | None, path: str, model: str, kind: str
) -> None:
    req = {"model": model, "messages": USER, "max_tokens": 100}
    async with client_for(preset=preset, credits=1e-9) as client:
        first = await client.post(path, json=req)
        second = await client.post(path, json=req)
        stream = await client.post(path, json={**req, "stream": True})
        balance = (await client.get("/_sim/config")).json()["credits"]
        await client.post("/_sim/config", json={"credits": 1.0})
        topped_up = await client.post(path, json=req)
    assert first.status_code == 200
    assert second.status_code == stream.status_code == 402
    assert_envelope(preset, "messages" if "messages" in path else "chat", second.json(), 402, kind)
    assert balance < 0
    assert topped_up.status_code == 200


@pytest.mark.parametrize("preset", [None, "ainow"])
async def test_each_answer_spends_its_cost_from_the_balance(preset: str | None) -> None:
    path, model = ("/chat/completions", "Claude 3.5 Sonnet") if preset else ("/v1/chat/completions", "m")
    async with client_for(preset=preset, credits=2.0) as client:
        bodies = [(await client.post(path, json={"model": model, "messages": USER})).json() for _ in range(3)]
        left = (await client.get("/_sim/config")).json()["credits"]
        reported = (await client.get("/credits")).json() if preset else None
        await client.post("/_sim/reset")
        restored = (await client.get("/_sim/config")).json()["credits"]
    if preset:
        spent = sum(b["total_tokens_cost"] for b in bodies)
        assert reported == {"credits": left}
    else:  # the flat rate: $1 per million input tokens, $2 per million output tokens
        spent = sum(b["usage"]["prompt_tokens"] * 1e-6 + b["usage"]["completion_tokens"] * 2e-6 for b in bodies)
    assert left == pytest.approx(2.0 - spent, abs=1e-9)
    assert restored == 2.0


@pytest.mark.parametrize(("preset", "path", "model"), [(None, "/v1/messages", "m"),
                                                       ("ttttt", "/v1/chat/completions", "gpt-5.5")])
async def test_over_rpm_a_call_is_a_429_with_retry_after(preset: str | None, path: str, model: str) -> None:
    req = {"model": model, "messages": USER, "max_tokens": 10}
    async with client_for(preset=preset, rpm=2) as client:
        statuses = [(await client.post(path, json=req)).status_code for _ in range(2)]
        limited = await client.post(path, json=req)
        log = (await client.get("/_sim/log")).json()
    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    dialect = "messages" if path.endswith("messages") else "chat"
    assert_envelope(preset, dialect, limited.json(), 429, "rate_limit_error")
    assert [e["status"] for e in log] == [200, 200, 429]


async def test_over_tpm_a_call_is_a_429_counting_input_plus_max_tokens() -> None:
    req = {"model": "m", "messages": USER, "max_tokens": 100}
    tokens = math.ceil(len(orjson.dumps(USER)) / 4) + 100
    async with client_for(tpm=2 * tokens) as client:
        ok = [(await client.post("/v1/chat/completions", json=req)).status_code for _ in range(2)]
        limited = await client.post("/v1/chat/completions", json=req)
    assert ok == [200, 200]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("calls", "now", "tokens", "rpm", "tpm", "expected"),
    [
        ([], 0.0, 10, 1, None, 0.0),
        ([(0.0, 10)], 30.0, 10, 1, None, 30.0),  # the one call leaves the window at t=60
        ([(0.0, 10)], 60.0, 10, 1, None, 0.0),
        ([(0.0, 10), (10.0, 10)], 20.0, 10, 2, None, 40.0),
        ([(0.0, 50), (10.0, 40)], 20.0, 30, None, 100, 40.0),  # 120 > 100 until the first 50 leave
        ([(0.0, 50), (10.0, 40)], 20.0, 70, None, 100, 50.0),  # both must leave
        ([], 0.0, 101, None, 100, RATE_WINDOW),  # larger than tpm on its own
    ],
)
def test_the_rate_window_says_when_a_call_would_fit(
    calls: list[tuple[float, int]], now: float, tokens: int, rpm: int | None, tpm: int | None, expected: float
) -> None:
    window = RateWindow()
    for t, n in calls:
        assert window.admit(t, n, None, None) == 0.0
    assert window.admit(now, tokens, rpm, tpm) == pytest.approx(expected)
    assert len(window.calls) == len([c for c in calls if c[0] > now - RATE_WINDOW]) + (expected == 0.0)


async def test_the_full_log_shows_method_key_headers_and_body() -> None:
    req = {"model": "claude-3-5-sonnet-20240620", "max_tokens": 10, "messages": USER}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "x-trace": "t1", "user-agent": "ua"}
    async with client_for(preset="ttttt", api_key=KEY) as client:
        await client.post("/v1/messages", json=req, headers=headers)
        await client.post("/v1/chat/completions", content=b"{oops", headers={"Authorization": "Bearer nope"})
        full = (await client.get("/_sim/log", params={"full": "1"})).json()
        short = (await client.get("/_sim/log")).json()
    first, second = full
    assert first["method"] == "POST" and first["path"] == "/v1/messages" and first["status"] == 200
    assert first["headers"] == {"x-api-key": redacted(KEY), "anthropic-version": "2023-06-01", "x-trace": "t1",
                                "content-type": "application/json"}
    assert first["body"] == req
    assert first["kind"] == "answer" and first["response"]["content"][0]["text"] == "Simulated answer to: What is the capital"
    assert second["status"] == 401 and second["body"] is None
    assert second["kind"] == "error" and second["response"]["error"]["type"] == "authentication_error"
    assert second["headers"]["authorization"] == f"Bearer {redacted('nope')}"
    assert [set(e) for e in short] == [{"t", "answered", "path", "model", "status", "kind"}] * 2
    assert all(e["t"] <= e["answered"] for e in short)  # arrived, then answered (and logged when)


LONG_KEY = "sk-proj-" + "A1b2C3d4" * 6 + "wxyz"


@pytest.mark.parametrize(("name", "value", "logged"), [
    ("authorization", f"Bearer {LONG_KEY}", f"Bearer ***wxyz sha256:{redacted(LONG_KEY)[-8:]}"),
    ("authorization", "Basic dXNlcjpwYXNz", "Basic " + redacted("dXNlcjpwYXNz")),
    ("authorization", LONG_KEY, redacted(LONG_KEY)),  # no scheme
    ("x-api-key", LONG_KEY, redacted(LONG_KEY)),
    ("tt-api-key", "short", redacted("short")),
    ("api-key", LONG_KEY, redacted(LONG_KEY)),
    ("x-goog-api-key", LONG_KEY, redacted(LONG_KEY)),
    ("x-auth-token", LONG_KEY, redacted(LONG_KEY)),
    ("x-trace", "t1", "t1"),
    ("content-type", "application/json", "application/json"),
    ("anthropic-version", "2023-06-01", "2023-06-01"),
])
def test_the_log_shows_a_key_header_redacted(name: str, value: str, logged: str) -> None:
    assert shown(name, value) == logged


def test_a_redacted_key_keeps_the_last_four_of_a_long_key_and_a_fingerprint() -> None:
    assert redacted(LONG_KEY).startswith("***wxyz sha256:") and len(redacted(LONG_KEY)) == len("***wxyz sha256:") + 8
    assert redacted("sk-short-key") == redacted("sk-short-key") and redacted("sk-short-key").startswith("*** sha256:")
    assert redacted(LONG_KEY) != redacted(LONG_KEY[:-5] + "Xwxyz")  # same last four, told apart


async def test_the_full_log_and_the_config_never_show_the_key() -> None:
    async with client_for(api_key=LONG_KEY) as client:
        for headers in (bearer(LONG_KEY), x_key(LONG_KEY), tt_key(LONG_KEY), {"api-key": LONG_KEY},
                        {"x-custom-token": LONG_KEY}, bearer(LONG_KEY[:-1])):
            await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}, headers=headers)
        full = await client.get("/_sim/log", params={"full": "1"})
        config = await client.get("/_sim/config")
    assert full.status_code == 200 and len(full.json()) == 6
    for body in (full.text, config.text):
        assert LONG_KEY[:12] not in body and LONG_KEY[-12:] not in body, body
    assert [e["status"] for e in full.json()] == [200, 200, 200, 401, 401, 401]  # (it reads the first three)
    assert [e["headers"].get("authorization") for e in full.json()][::5] == [
        f"Bearer {redacted(LONG_KEY)}", f"Bearer {redacted(LONG_KEY[:-1])}"]
    assert config.json()["api_key"] == redacted(LONG_KEY)


async def test_the_preset_can_change_while_running() -> None:
    async with client_for() as client:
        assert (await client.post("/chat/completions", json={"model": "GPT-4o", "messages": USER})).status_code == 404
        r = await client.post("/_sim/config", json={"preset": "ainow"})
        assert r.json()["preset"] == "ainow"
        assert (await client.post("/chat/completions", json={"model": "GPT-4o", "messages": USER})).status_code == 200
        assert (await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})).status_code == 404
        assert (await client.post("/_sim/config", json={"preset": "nope"})).status_code == 400


def test_the_command_line_takes_the_new_fields() -> None:
    args = build_parser().parse_args(["--preset", "ainow", "--credits", "2.5", "--rpm", "60", "--tpm", "10000",
                                 "--truncate-rate", "0.2", "--config-json", '{"seed": 3, "rpm": 5}'])
    config = config_from_args(args)
    assert (config.preset, config.credits, config.rpm, config.tpm, config.truncate_rate, config.seed) == (
        "ainow", 2.5, 60, 10000, 0.2, 3)
    from_json = config_from_args(build_parser().parse_args(["--config-json", '{"preset": "piapi", "credits": 1}']))
    assert from_json.preset == "piapi" and from_json.credits == 1.0
