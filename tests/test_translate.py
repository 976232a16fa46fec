"""Translating requests and replies between the chat and messages dialects (batchrelay.wire.translate)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrelay.wire.translate import (
    chat_to_messages_request,
    chat_to_messages_response,
    messages_to_chat_request,
    messages_to_chat_response,
    translate_request,
    translate_response,
)

Body = dict[str, Any]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def vandalise(value: Any) -> None:
    """Change every object and list inside `value`, to expose any the translation shares with its input."""
    if isinstance(value, dict):
        for item in list(value.values()):
            vandalise(item)
        value["vandalised"] = True
    elif isinstance(value, list):
        for item in list(value):
            vandalise(item)
        value.append("vandalised")


def has_note(notes: list[str], *words: str) -> bool:
    return any(all(word in note for word in words) for note in notes)


# -- normalisers: what "equivalent" means for a round trip ----------------------------------------


def _parts(content: Any) -> list[Body]:
    """String content and a list of one text part say the same thing; null and "" say nothing."""
    if content is None or content == "":
        return []
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def norm_chat(body: Body, *, default_max_tokens: int | None = None) -> Body:
    body = copy.deepcopy(body)
    if "max_completion_tokens" in body:
        body["max_tokens"] = body.pop("max_completion_tokens")
    if default_max_tokens is not None:
        body.setdefault("max_tokens", default_max_tokens)
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    if body.get("tool_choice") == "auto":  # the default whenever tools are given
        del body["tool_choice"]
    if body.get("parallel_tool_calls") is True:  # the default
        del body["parallel_tool_calls"]
    for tool in body.get("tools", []):
        tool["function"].setdefault("parameters", {"type": "object", "properties": {}})
    for message in body["messages"]:
        if message["role"] == "developer":
            message["role"] = "system"
        if message["role"] == "tool":  # tool results travel back as one string
            message["content"] = "\n\n".join(p["text"] for p in _parts(message["content"]))
        else:
            message["content"] = _parts(message.get("content"))
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return body


def norm_messages(body: Body) -> Body:
    body = copy.deepcopy(body)
    if "system" in body:
        body["system"] = _parts(body["system"])
    for message in body["messages"]:
        message["content"] = _parts(message["content"])
        for block in message["content"]:
            if block["type"] == "tool_result" and isinstance(block.get("content"), list):
                block["content"] = "\n\n".join(b["text"] for b in block["content"])
    return body


def canon_chat_reply(body: Body) -> Body:
    choice = body["choices"][0]
    usage = body["usage"]
    return {
        "id": body["id"], "model": body["model"], "content": choice["message"].get("content") or None,
        "tool_calls": [
            (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"].get("tool_calls") or []
        ],
        "finish_reason": choice["finish_reason"],
        "usage": (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
                  (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)),
    }


def canon_message_reply(body: Body) -> Body:
    usage = body["usage"]
    return {
        "id": body["id"], "model": body["model"], "content": body["content"], "stop_reason": body["stop_reason"],
        "usage": (usage["input_tokens"], usage["output_tokens"], usage.get("cache_read_input_tokens") or 0,
                  usage.get("cache_creation_input_tokens") or 0),
    }


# -- request round trips ------------------------------------------------------------------------

CHAT_TOOL_EXCHANGE: Body = {
    "model": "gpt-4o-mini", "max_tokens": 300,
    "tools": [
        {"type": "function",
         "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER_SCHEMA}},
        {"type": "function", "function": {"name": "clock"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "parallel_tool_calls": False,
    "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
        {"role": "assistant", "content": "Paris 18C, Rome 24C."},
        {"role": "user", "content": "Thanks"},
    ],
}

CHAT_ROUND_TRIPS: dict[str, Body] = {
    "plain text": {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]},
    "system prompt": {"model": "m", "max_tokens": 50, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    "system prompt as parts": {"model": "m", "max_tokens": 50, "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
        {"role": "user", "content": "Hi"}]},
    "multi-turn history": {"model": "m", "max_tokens": 50, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "How"}, {"type": "text", "text": " are you?"}]},
        {"role": "assistant", "content": "Fine."}, {"role": "user", "content": "Good."}]},
    "tool exchange": CHAT_TOOL_EXCHANGE,
    "tool choice required": {**CHAT_TOOL_EXCHANGE, "tool_choice": "required", "parallel_tool_calls": True},
    "tool choice none": {**CHAT_TOOL_EXCHANGE, "tool_choice": "none", "parallel_tool_calls": True},
    "parallel off alone": {**{k: v for k, v in CHAT_TOOL_EXCHANGE.items() if k != "tool_choice"}},
    "images": {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "https://example.test/a.jpg"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]}]},
    "sampling": {"model": "m", "max_completion_tokens": 64, "temperature": 0.4, "top_p": 0.9,
                 "stop": ["\n\n", "END"], "stream": True, "user": "u-42",
                 "messages": [{"role": "user", "content": "Go"}]},
    "stop string": {"model": "m", "max_tokens": 8, "stop": "END", "messages": [{"role": "user", "content": "Go"}]},
}


@pytest.mark.parametrize("body", CHAT_ROUND_TRIPS.values(), ids=CHAT_ROUND_TRIPS.keys())
def test_chat_request_survives_a_round_trip_through_messages_exactly(body: Body) -> None:
    messages, notes_there = chat_to_messages_request(body)
    back, notes_back = messages_to_chat_request(messages)
    assert norm_chat(back) == norm_chat(body)
    assert notes_there == [] and notes_back == []


MESSAGES_TOOL_EXCHANGE: Body = {
    "model": "claude-haiku-4-5", "max_tokens": 300, "system": "Use tools.",
    "tools": [{"name": "weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ],
}

MESSAGES_ROUND_TRIPS: dict[str, Body] = {
    "plain text": {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]},
    "system string": {"model": "m", "max_tokens": 50, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Hi"}]},
    "system blocks": {"model": "m", "max_tokens": 50,
                      "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                      "messages": [{"role": "user", "content": "Hi"}]},
    "multi-turn history": {"model": "m", "max_tokens": 50, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": "How are you?"}]},
    "tool exchange": MESSAGES_TOOL_EXCHANGE,
    "tool choice auto": {**MESSAGES_TOOL_EXCHANGE, "tool_choice": {"type": "auto"}},
    "tool choice named": {**MESSAGES_TOOL_EXCHANGE, "tool_choice": {"type": "tool", "name": "weather"}},
    "tool choice none": {**MESSAGES_TOOL_EXCHANGE, "tool_choice": {"type": "none"}},
    "images": {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.test/a.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "Compare"},
    ]}]},
    "sampling": {"model": "m", "max_tokens": 64, "temperature": 0.4, "top_p": 0.9, "stop_sequences": ["END"],
                 "stream": False, "metadata": {"user_id": "u-42"}, "messages": [{"role": "user", "content": "Go"}]},
}


@pytest.mark.parametrize("body", MESSAGES_ROUND_TRIPS.values(), ids=MESSAGES_ROUND_TRIPS.keys())
def test_messages_request_survives_a_round_trip_through_chat_exactly(body: Body) -> None:
    chat, notes_there = messages_to_chat_request(body)
    back, notes_back = chat_to_messages_request(chat)
    assert norm_messages(back) == norm_messages(body)
    assert notes_there == [] and notes_back == []


# -- chat -> messages requests, field by field ----------------------------------------------------


def test_tool_exchange_becomes_tool_use_and_one_user_turn_of_tool_results() -> None:
    out, notes = chat_to_messages_request(CHAT_TOOL_EXCHANGE)
    assert notes == []
    assert out == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
            ]},
            {"role": "assistant", "content": "Paris 18C, Rome 24C."},
            {"role": "user", "content": "Thanks"},
        ],
        "max_tokens": 300,
        "tools": [
            {"name": "weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA},
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
    }


def test_system_and_developer_messages_join_into_the_system_prompt_with_a_blank_line() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "system", "content": "One."},
        {"role": "developer", "content": [{"type": "text", "text": "Two"}, {"type": "text", "text": "."}]},
        {"role": "user", "content": "Hi"},
    ]}
    out, notes = chat_to_messages_request(body)
    assert out["system"] == "One.\n\nTwo."
    assert out["messages"] == [{"role": "user", "content": "Hi"}]
    assert notes == []


def test_a_system_message_inside_the_conversation_is_moved_with_a_note() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "system", "content": "Late rule."}]}
    out, notes = chat_to_messages_request(body)
    assert out["system"] == "Late rule." and has_note(notes, "system", "moved")


def test_consecutive_same_role_messages_merge_into_one_turn() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"},
    ]}
    out, notes = chat_to_messages_request(body)
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
    ]
    assert notes == []


@pytest.mark.parametrize(
    ("image_url", "source", "note"),
    [
        ({"url": "https://x.test/a.jpg"}, {"type": "url", "url": "https://x.test/a.jpg"}, None),
        ("https://x.test/a.jpg", {"type": "url", "url": "https://x.test/a.jpg"}, None),
        ({"url": f"data:image/png;base64,{PNG}"}, {"type": "base64", "media_type": "image/png", "data": PNG}, None),
        ({"url": "data:image/webp;name=a.webp;base64,QUJD"},
         {"type": "base64", "media_type": "image/webp", "data": "QUJD"}, None),
        ({"url": "https://x.test/a.jpg", "detail": "auto"}, {"type": "url", "url": "https://x.test/a.jpg"}, None),
        ({"url": "https://x.test/a.jpg", "detail": "high"}, {"type": "url", "url": "https://x.test/a.jpg"}, "detail"),
        ({"url": "data:image/svg+xml,<svg/>"}, {"type": "url", "url": "data:image/svg+xml,<svg/>"}, "base64"),
    ],
    ids=["url", "bare-string-url", "data-uri", "data-uri-with-params", "detail-auto", "detail-high", "not-base64"],
)
def test_image_parts_become_image_blocks(image_url: Any, source: Body, note: str | None) -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": image_url}]}]}
    out, notes = chat_to_messages_request(body)
    assert out["messages"][0]["content"] == [{"type": "image", "source": source}]
    assert has_note(notes, note) if note else notes == []


@pytest.mark.parametrize(
    ("chat_choice", "parallel", "messages_choice"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)
def test_tool_choice_and_parallel_tool_calls_map_to_messages_tool_choice(
    chat_choice: Any, parallel: bool | None, messages_choice: Body | None
) -> None:
    body: Body = {"model": "m", "max_tokens": 9, "tools": CHAT_TOOL_EXCHANGE["tools"],
                  "messages": [{"role": "user", "content": "Hi"}]}
    if chat_choice is not None:
        body["tool_choice"] = chat_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out, notes = chat_to_messages_request(body)
    assert out.get("tool_choice") == messages_choice
    assert notes == []
    back, _ = messages_to_chat_request(out)
    assert back.get("parallel_tool_calls", True) == (parallel is not False or chat_choice == "none")


@pytest.mark.parametrize(
    ("arguments", "tool_input", "lossy"),
    [
        ('{"city": "Paris"}', {"city": "Paris"}, False),
        ("", {}, False),
        ('{"city": "Par', {"_raw_arguments": '{"city": "Par'}, True),
        ("[1, 2]", {"_raw_arguments": "[1, 2]"}, True),
    ],
    ids=["json-object", "empty", "truncated-json", "json-but-not-an-object"],
)
def test_tool_call_arguments_become_an_input_object(arguments: str, tool_input: Body, lossy: bool) -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]}
    out, notes = chat_to_messages_request(body)
    assert out["messages"][0]["content"] == [{"type": "tool_use", "id": "call_9", "name": "f", "input": tool_input}]
    assert has_note(notes, "call_9", "_raw_arguments") is lossy
    if lossy:  # the broken text comes back verbatim
        back, _ = messages_to_chat_request(out)
        assert back["messages"][0]["tool_calls"][0]["function"]["arguments"] == arguments


@pytest.mark.parametrize(
    ("fields", "max_tokens", "noted"),
    [
        ({"max_tokens": 100}, 100, False),
        ({"max_completion_tokens": 200}, 200, False),
        ({"max_tokens": 100, "max_completion_tokens": 200}, 200, False),
        ({}, 4096, True),
    ],
    ids=["max_tokens", "max_completion_tokens", "both-newer-wins", "neither-default"],
)
def test_max_tokens_is_always_set_because_messages_requires_it(fields: Body, max_tokens: int, noted: bool) -> None:
    out, notes = chat_to_messages_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields})
    assert out["max_tokens"] == max_tokens
    assert has_note(notes, "max_tokens", "4096") is noted


def test_the_default_max_tokens_can_be_chosen_by_the_caller() -> None:
    out, notes = translate_request({"model": "m", "messages": []}, "chat", "messages", default_max_tokens=77)
    assert out["max_tokens"] == 77 and has_note(notes, "77")


@pytest.mark.parametrize(
    ("temperature", "sent", "noted"), [(0, 0, False), (0.7, 0.7, False), (1, 1, False), (1.5, 1, True), (2, 1, True)]
)
def test_temperature_above_one_is_clamped_with_a_note(temperature: float, sent: float, noted: bool) -> None:
    out, notes = chat_to_messages_request(
        {"model": "m", "max_tokens": 9, "temperature": temperature, "messages": [{"role": "user", "content": "Hi"}]})
    assert out["temperature"] == sent
    assert has_note(notes, "temperature") is noted


def test_stop_user_top_p_and_stream_carry_over() -> None:
    body = {"model": "m", "max_tokens": 9, "stop": "END", "user": "u-1", "top_p": 0.5, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    out, notes = chat_to_messages_request(body)
    carried = (out["stop_sequences"], out["metadata"], out["top_p"], out["stream"])
    assert carried == (["END"], {"user_id": "u-1"}, 0.5, True)
    assert notes == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 3), ("response_format", {"type": "json_object"}), ("seed", 7), ("logprobs", True), ("top_logprobs", 5),
        ("presence_penalty", 0.5), ("frequency_penalty", -0.2), ("logit_bias", {"50256": -100}),
        ("stream_options", {"include_usage": True}), ("reasoning_effort", "low"),
    ],
)
def test_chat_fields_with_no_messages_equivalent_are_dropped_with_a_note(field: str, value: Any) -> None:
    out, notes = chat_to_messages_request(
        {"model": "m", "max_tokens": 9, field: value, "messages": [{"role": "user", "content": "Hi"}]})
    assert field not in out
    assert has_note(notes, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 1), ("logprobs", False), ("presence_penalty", 0), ("response_format", {"type": "text"}), ("seed", None)],
)
def test_chat_fields_left_at_their_default_are_dropped_without_a_note(field: str, value: Any) -> None:
    out, notes = chat_to_messages_request(
        {"model": "m", "max_tokens": 9, field: value, "messages": [{"role": "user", "content": "Hi"}]})
    assert field not in out and notes == []


def test_message_details_with_no_messages_equivalent_are_noted() -> None:
    body = {"model": "m", "max_tokens": 9, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": WEATHER_SCHEMA, "strict": True}}],
        "messages": [{"role": "user", "name": "ann", "content": [{"type": "input_audio", "input_audio": {}}]},
                     {"role": "function", "name": "f", "content": "old"}]}
    _, notes = chat_to_messages_request(body)
    for words in (("'name'",), ("input_audio",), ("strict",), ("'function'",), ("no content",)):
        assert has_note(notes, *words), words


# -- messages -> chat requests, field by field ----------------------------------------------------


def test_tool_results_become_tool_messages_placed_before_the_users_words() -> None:
    out, notes = messages_to_chat_request(MESSAGES_TOOL_EXCHANGE)
    assert notes == []
    assert out == {
        "model": "claude-haiku-4-5",
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
        ],
        "max_tokens": 300,
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather now", "parameters": WEATHER_SCHEMA}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }


def test_an_assistant_turn_of_only_tool_use_has_null_content() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}
    out, _ = messages_to_chat_request(body)
    assert out["messages"] == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


def test_tool_result_text_blocks_become_one_string_and_is_error_is_noted() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "is_error": True,
         "content": [{"type": "text", "text": "boom"}, {"type": "text", "text": "trace"}]}]}]}
    out, notes = messages_to_chat_request(body)
    assert out["messages"] == [{"role": "tool", "tool_call_id": "t", "content": "boom\n\ntrace"}]
    assert has_note(notes, "is_error")


def test_cache_control_is_noted_once_however_often_it_appears() -> None:
    cached = {"type": "ephemeral"}
    body = {"model": "m", "max_tokens": 9,
            "system": [{"type": "text", "text": "Long rules", "cache_control": cached}],
            "tools": [{"name": "f", "input_schema": WEATHER_SCHEMA, "cache_control": cached}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": cached}]}]}
    out, notes = messages_to_chat_request(body)
    assert [n for n in notes if "cache_control" in n] == [notes[0]] and len(notes) == 1
    assert out["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Long rules"}]}
    assert "cache_control" not in json.dumps(out)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("top_k", 40, ("top_k",)),
        ("thinking", {"type": "enabled", "budget_tokens": 2000}, ("thinking",)),
        ("metadata", {"user_id": "u", "tenant": "t"}, ("metadata.tenant",)),
        ("tools", [{"type": "web_search_20250305", "name": "web_search"}], ("web_search_20250305",)),
        ("stop_sequences", ["a", "b", "c", "d", "e"], ("at most 4",)),
    ],
)
def test_messages_fields_with_no_chat_equivalent_are_noted(field: str, value: Any, words: tuple[str, ...]) -> None:
    _, notes = messages_to_chat_request(
        {"model": "m", "max_tokens": 9, field: value, "messages": [{"role": "user", "content": "Hi"}]})
    assert has_note(notes, *words)


def test_thinking_and_unknown_blocks_in_the_history_are_dropped_with_notes() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
                                     {"type": "text", "text": "Summarise"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                          {"type": "text", "text": "Done"}]},
    ]}
    out, notes = messages_to_chat_request(body)
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Summarise"}]},
                               {"role": "assistant", "content": [{"type": "text", "text": "Done"}]}]
    assert has_note(notes, "thinking") and has_note(notes, "document")


def test_images_inside_a_tool_result_are_dropped_with_a_note() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [image, {"type": "text", "text": "chart"}]}]}]}
    out, notes = messages_to_chat_request(body)
    assert out["messages"] == [{"role": "tool", "tool_call_id": "t", "content": "chart"}]
    assert has_note(notes, "image", "tool_result")


# -- the rules both directions share -------------------------------------------------------------


@pytest.mark.parametrize(
    ("translate", "body"),
    [(chat_to_messages_request, b) for b in CHAT_ROUND_TRIPS.values()]
    + [(messages_to_chat_request, b) for b in MESSAGES_ROUND_TRIPS.values()],
)
def test_translating_never_mutates_or_shares_the_input(translate: Any, body: Body) -> None:
    snapshot = copy.deepcopy(body)
    out, _ = translate(body)
    assert body == snapshot
    vandalise(out)  # a caller editing the translation must not reach back into the job
    assert body == snapshot


@pytest.mark.parametrize("body", [{"model": "m"}, {"messages": "Hi"}, {"messages": ["Hi"]}, []])
@pytest.mark.parametrize("translate", [chat_to_messages_request, messages_to_chat_request])
def test_a_body_without_a_list_of_messages_is_refused(translate: Any, body: Any) -> None:
    with pytest.raises(ValueError, match="messages"):
        translate(body)


def test_same_dialect_translation_is_the_identity() -> None:
    body: Body = {"model": "m", "messages": []}
    out, notes = translate_request(body, "chat", "chat")
    assert out is body and notes == []
    out, notes = translate_response(body, "messages", "messages")
    assert out is body and notes == []


def test_dispatch_picks_the_direction_from_source_and_target() -> None:
    chat = CHAT_ROUND_TRIPS["plain text"]
    assert translate_request(chat, "chat", "messages") == chat_to_messages_request(chat)
    msg = MESSAGES_ROUND_TRIPS["plain text"]
    assert translate_request(msg, "messages", "chat") == messages_to_chat_request(msg)
    assert translate_response(CHAT_REPLY, "chat", "messages") == chat_to_messages_response(CHAT_REPLY)
    assert translate_response(MESSAGE_REPLY, "messages", "chat") == messages_to_chat_response(MESSAGE_REPLY)
    with pytest.raises(ValueError):
        translate_request(chat, "chat", "responses")  # type: ignore[arg-type]


# -- replies --------------------------------------------------------------------------------------

CHAT_REPLY: Body = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": "Let me check.", "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230,
              "prompt_tokens_details": {"cached_tokens": 1024}},
}
MESSAGE_REPLY: Body = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 176, "output_tokens": 30, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 1024},
}


def chat_reply(content: Any = "Hi", finish: str | None = "stop", usage: Body | None = None, **extra: Any) -> Body:
    return {"id": "c", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}, **extra}


def message_reply(content: list[Body] | None = None, stop: str | None = "end_turn", usage: Body | None = None,
                  **extra: Any) -> Body:
    return {"id": "msg", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "Hi"}] if content is None else content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 2}, **extra}


def chat_usage(prompt: int, completion: int, *, cached: int) -> Body:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def messages_usage(uncached: int, output: int, *, read: int) -> Body:
    return {"input_tokens": uncached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": read,
            "output_tokens": output}


def test_chat_reply_becomes_a_message_with_tool_use_and_split_usage() -> None:
    out, notes = chat_to_messages_response(CHAT_REPLY)
    assert notes == []
    assert out == {
        "id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
        "content": [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 176, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024,
                  "output_tokens": 30},
    }


def test_message_reply_becomes_a_chat_completion_with_cached_tokens_inside_prompt_tokens() -> None:
    out, notes = messages_to_chat_response({**MESSAGE_REPLY, "created": 1_700_000_000})
    assert notes == []
    assert out == {
        "id": "msg_1", "object": "chat.completion", "created": 1_700_000_000, "model": "claude-haiku-4-5",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "tool_calls": [{
                "id": "toolu_1", "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230,
                  "prompt_tokens_details": {"cached_tokens": 1024}},
    }


@pytest.mark.parametrize("reply", [CHAT_REPLY, chat_reply(None, "length"), chat_reply("No.", "content_filter")])
def test_chat_reply_survives_a_round_trip_through_messages(reply: Body) -> None:
    message, notes_there = chat_to_messages_response(reply)
    back, notes_back = messages_to_chat_response(message)
    assert canon_chat_reply(back) == canon_chat_reply(reply)
    assert notes_there == [] and notes_back == []


@pytest.mark.parametrize("reply", [MESSAGE_REPLY, message_reply([], "max_tokens"), message_reply(stop="refusal")])
def test_message_reply_survives_a_round_trip_through_chat(reply: Body) -> None:
    completion, notes_there = messages_to_chat_response(reply)
    back, notes_back = chat_to_messages_response(completion)
    assert canon_message_reply(back) == canon_message_reply(reply)
    assert notes_there == [] and notes_back == []


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_finish_reason_and_stop_reason_map_both_ways(finish: str, stop: str) -> None:
    message, notes = chat_to_messages_response(chat_reply(finish=finish))
    assert message["stop_reason"] == stop and notes == []
    completion, notes = messages_to_chat_response(message_reply(stop=stop))
    assert completion["choices"][0]["finish_reason"] == finish and notes == []


@pytest.mark.parametrize(
    ("stop", "finish", "noted"), [("stop_sequence", "stop", False), ("pause_turn", "stop", True), ("odd", "stop", True)]
)
def test_stop_reasons_chat_cannot_tell_apart_become_stop(stop: str, finish: str, noted: bool) -> None:
    completion, notes = messages_to_chat_response(message_reply(stop=stop, stop_sequence="###"))
    assert completion["choices"][0]["finish_reason"] == finish
    assert has_note(notes, stop) is noted


def test_an_unknown_finish_reason_becomes_end_turn_with_a_note() -> None:
    message, notes = chat_to_messages_response(chat_reply(finish="function_call"))
    assert message["stop_reason"] == "end_turn" and has_note(notes, "function_call")


def test_a_chat_reply_with_no_text_has_no_text_block() -> None:
    message, _ = chat_to_messages_response(chat_reply(None))
    assert message["content"] == []


def test_several_text_blocks_are_concatenated_as_written() -> None:
    completion, notes = messages_to_chat_response(
        message_reply([{"type": "text", "text": "Paris is "}, {"type": "text", "text": "in France."}]))
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Paris is in France."}
    assert notes == []


@pytest.mark.parametrize(
    ("usage", "expected", "noted"),
    [
        ({"input_tokens": 10, "output_tokens": 2}, chat_usage(10, 2, cached=0), False),
        ({"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 90, "cache_creation_input_tokens": None},
         chat_usage(100, 2, cached=90), False),
        ({"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 50},
         chat_usage(150, 2, cached=90), True),
    ],
    ids=["no-cache", "cache-read", "cache-write"],
)
def test_messages_usage_becomes_chat_usage_with_cache_tokens_inside_prompt(
    usage: Body, expected: Body, noted: bool
) -> None:
    completion, notes = messages_to_chat_response(message_reply(usage=usage))
    assert completion["usage"] == expected
    assert has_note(notes, "cache-write") is noted


@pytest.mark.parametrize(
    ("usage", "expected", "noted"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}, messages_usage(10, 2, read=0), False),
        ({"prompt_tokens": 100, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 90}},
         messages_usage(10, 2, read=90), False),
        ({"prompt_tokens": 100, "completion_tokens": 2, "prompt_cache_hit_tokens": 64},
         messages_usage(36, 2, read=64), False),
        ({"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 20}},
         messages_usage(0, 2, read=10), True),
    ],
    ids=["no-cache", "cached", "deepseek-style-cache-hits", "impossible-cache-count"],
)
def test_chat_usage_becomes_messages_usage_with_cache_reads_apart(usage: Body, expected: Body, noted: bool) -> None:
    message, notes = chat_to_messages_response(chat_reply(usage=usage))
    assert message["usage"] == expected
    assert has_note(notes, "cached_tokens") is noted


def test_a_reply_without_usage_reports_zero_tokens_with_a_note() -> None:
    message, notes = chat_to_messages_response({**chat_reply(), "usage": None})
    assert message["usage"]["input_tokens"] == 0 and has_note(notes, "usage")
    completion, notes = messages_to_chat_response({**message_reply(), "usage": None})
    assert completion["usage"]["prompt_tokens"] == 0 and has_note(notes, "usage")


def test_created_comes_from_the_input_or_is_zero() -> None:
    assert messages_to_chat_response(message_reply(created=123))[0]["created"] == 123
    assert messages_to_chat_response(message_reply())[0]["created"] == 0


def test_thinking_blocks_in_a_reply_are_dropped_with_a_note() -> None:
    completion, notes = messages_to_chat_response(message_reply(
        [{"type": "thinking", "thinking": "Let me see", "signature": "sig"}, {"type": "text", "text": "42"}]))
    assert completion["choices"][0]["message"]["content"] == "42"
    assert has_note(notes, "thinking")


def test_only_the_first_of_several_chat_choices_is_kept_with_a_note() -> None:
    reply = chat_reply("first")
    reply["choices"].append({"index": 1, "finish_reason": "stop", "message": {"role": "assistant", "content": "2nd"}})
    message, notes = chat_to_messages_response(reply)
    assert message["content"] == [{"type": "text", "text": "first"}]
    assert has_note(notes, "2 choices")


def test_broken_tool_arguments_in_a_reply_are_kept_raw_and_come_back_verbatim() -> None:
    reply = copy.deepcopy(CHAT_REPLY)
    reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    message, notes = chat_to_messages_response(reply)
    assert message["content"][1]["input"] == {"_raw_arguments": '{"city": '}
    assert has_note(notes, "call_1")
    back, _ = messages_to_chat_response(message)
    assert back["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": '


@pytest.mark.parametrize(
    ("translate", "body"),
    [(chat_to_messages_response, {"error": {"message": "x"}}), (messages_to_chat_response, {"type": "error"})],
)
def test_a_body_that_is_not_a_reply_is_refused(translate: Any, body: Body) -> None:
    with pytest.raises(ValueError):
        translate(body)


@pytest.mark.parametrize(
    ("translate", "body"),
    [(chat_to_messages_response, CHAT_REPLY), (messages_to_chat_response, MESSAGE_REPLY)],
)
def test_translating_a_reply_never_mutates_or_shares_it(translate: Any, body: Body) -> None:
    snapshot = copy.deepcopy(body)
    out, _ = translate(body)
    assert body == snapshot
    vandalise(out)
    assert body == snapshot


# -- property: text conversations round-trip exactly ----------------------------------------------

TEXT = st.text(max_size=30)
CONTENT = st.one_of(TEXT, st.lists(TEXT.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=3))


@st.composite
def chat_text_requests(draw: st.DrawFn) -> Body:
    messages: list[Body] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(CONTENT)})
    for i in range(draw(st.integers(min_value=1, max_value=6))):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": draw(CONTENT)})
    body: Body = {"model": draw(st.sampled_from(["gpt-4o-mini", "claude-haiku-4-5"])), "messages": messages}
    if draw(st.booleans()):
        body["stop"] = draw(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4)))
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(min_value=0, max_value=1))
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(min_value=1, max_value=200_000))
    return body


@given(chat_text_requests())
def test_any_text_conversation_round_trips_exactly_and_nothing_is_mutated(body: Body) -> None:
    snapshot = copy.deepcopy(body)
    messages, notes_there = chat_to_messages_request(body)
    messages_snapshot = copy.deepcopy(messages)
    back, notes_back = messages_to_chat_request(messages)
    assert body == snapshot and messages == messages_snapshot
    assert norm_chat(back) == norm_chat(body, default_max_tokens=4096)
    assert notes_back == []
    assert notes_there == ([] if "max_tokens" in body else [notes_there[0]])
