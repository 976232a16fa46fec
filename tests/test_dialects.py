"""Wire mapping per provider: URL, auth header, model name, usage and reply checks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.providers.dialects import build_request, parse_reply, usage_of
from batchrelay.wire.reply import Usage

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4-turbo", "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0.3,
}
MSG_BODY: dict[str, Any] = {
    "model": "claude-3-5-haiku", "max_tokens": 100, "system": "Be brief.",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


def provider(**overrides: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": "p", "base_url": "https://api.example.test", **overrides})


# -- build_request -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "dialect", "url"),
    [
        ({"base_url": "https://api.ttapi.io"}, "chat", "https://api.ttapi.io/v1/chat/completions"),
        ({"base_url": "https://api.ttapi.io/"}, "messages", "https://api.ttapi.io/v1/messages"),
        ({"base_url": "https://chatapi.ai-now.space", "endpoints": {"chat": "/chat/completions"}}, "chat",
         "https://chatapi.ai-now.space/chat/completions"),
        ({"base_url": "https://api.ttttt.ai", "endpoints": {"messages": "/anthropic/v1/messages"}}, "messages",
         "https://api.ttttt.ai/anthropic/v1/messages"),
        ({"base_url": "https://api.ttttt.ai", "endpoints": {"messages": "/anthropic/v1/messages"}}, "chat",
         "https://api.ttttt.ai/v1/chat/completions"),
    ],
    ids=["ttapi-chat", "trailing-slash", "ai-now-no-v1", "messages-override", "override-leaves-other-dialect"],
)
def test_request_goes_to_the_providers_path_for_the_dialect(overrides: dict[str, Any], dialect: str, url: str) -> None:
    body = CHAT_BODY if dialect == "chat" else MSG_BODY
    assert build_request(provider(**overrides), dialect, body, "K").url == url  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [("bearer", "Authorization", "Bearer K"), ("tt-api-key", "TT-API-KEY", "K"), ("x-api-key", "x-api-key", "K")],
)
def test_api_key_is_sent_in_the_providers_auth_style(auth: str, header: str, value: str) -> None:
    req = build_request(provider(auth=auth), "chat", CHAT_BODY, "K")
    assert req.headers[header] == value
    others = {"Authorization", "TT-API-KEY", "x-api-key"} - {header}
    assert not others & set(req.headers)


def test_no_auth_header_is_sent_without_a_key() -> None:
    req = build_request(provider(), "chat", CHAT_BODY, None)
    assert "Authorization" not in req.headers


def test_model_is_mapped_to_the_providers_name_and_the_rest_of_the_body_is_kept() -> None:
    req = build_request(provider(models={"gpt-4-turbo": "GPT-4 Turbo"}), "chat", CHAT_BODY, "K")
    assert orjson.loads(req.content) == {**CHAT_BODY, "model": "GPT-4 Turbo"}
    assert CHAT_BODY["model"] == "gpt-4-turbo"  # the job's own body is not modified


def test_unlisted_model_is_sent_as_is() -> None:
    req = build_request(provider(models={"other": "Other"}), "messages", MSG_BODY, "K")
    assert orjson.loads(req.content) == MSG_BODY


@pytest.mark.parametrize(("dialect", "body"), [("chat", CHAT_BODY), ("messages", MSG_BODY)])
def test_anthropic_version_header_is_added_only_for_the_messages_dialect(dialect: str, body: dict[str, Any]) -> None:
    headers = build_request(provider(), dialect, body, "K").headers  # type: ignore[arg-type]
    assert headers["content-type"] == "application/json"
    if dialect == "messages":
        assert headers["anthropic-version"] == "2023-06-01"
    else:
        assert "anthropic-version" not in headers


def test_configured_anthropic_version_is_used() -> None:
    headers = build_request(provider(anthropic_version="2024-10-22"), "messages", MSG_BODY, "K").headers
    assert headers["anthropic-version"] == "2024-10-22"


def test_extra_provider_headers_are_sent_but_cannot_replace_the_api_key() -> None:
    p = provider(headers={"X-Client": "batchrelay", "Authorization": "Bearer stale"})
    headers = build_request(p, "chat", CHAT_BODY, "K").headers
    assert headers["X-Client"] == "batchrelay"
    assert headers["Authorization"] == "Bearer K"


# -- usage_of ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "body", "usage"),
    [
        ("chat", {"usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28}}, Usage(19, 9)),
        ("chat", {"usage": {"prompt_tokens": 24, "completion_tokens": 17, "total_tokens": 41,
                            "prompt_tokens_details": {"cached_tokens": 16}}}, Usage(24, 17, 16)),
        ("chat", {"usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}}, Usage(5, 1)),
        ("messages", {"usage": {"input_tokens": 12, "output_tokens": 7}}, Usage(12, 7)),
        ("messages", {"usage": {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 100,
                                "cache_creation_input_tokens": 50}}, Usage(162, 7, 100, 50)),
        ("chat", {"usage": {"prompt_tokens": 30, "completion_tokens": 200,
                            "completion_tokens_details": {"reasoning_tokens": 150}}}, Usage(30, 200, 0, 0, 150)),
        ("chat", {}, Usage()),
        ("messages", {"usage": None}, Usage()),
        ("chat", {"usage": {"prompt_tokens": "19", "completion_tokens": -3, "prompt_tokens_details":
                            {"cached_tokens": True}}}, Usage()),
        ("messages", {"usage": {"input_tokens": 1.5, "output_tokens": None}}, Usage()),
    ],
    ids=["chat", "chat-cached", "chat-null-details", "messages", "messages-cache-read-and-write", "chat-reasoning", "chat-no-usage",
         "messages-null-usage", "chat-junk-numbers", "messages-junk-numbers"],
)
def test_usage_is_read_from_either_dialects_reply(dialect: str, body: dict[str, Any], usage: Usage) -> None:
    assert usage_of(dialect, body) == usage  # type: ignore[arg-type]


def test_usage_as_dict_names_every_counter() -> None:
    assert Usage(10, 2, 3, 4, 1).as_dict() == {
        "input_tokens": 10, "output_tokens": 2, "cached_input_tokens": 3, "cache_write_tokens": 4,
        "reasoning_tokens": 1,
    }
    assert Usage.from_dict(Usage(10, 2, 3, 4, 1).as_dict()) == Usage(10, 2, 3, 4, 1)
    assert Usage(10, 2, 3, 4).uncached_input_tokens == 3


# -- parse_reply -------------------------------------------------------------------------------

CHAT_REPLY = {
    "id": "chatcmpl-1", "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28},
}
MSG_REPLY = {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "Paris."}],
    "usage": {"input_tokens": 12, "output_tokens": 3},
}


@pytest.mark.parametrize(("dialect", "body"), [("chat", CHAT_REPLY), ("messages", MSG_REPLY)])
def test_usable_reply_is_returned_as_is(dialect: str, body: dict[str, Any]) -> None:
    assert parse_reply(dialect, orjson.dumps(body)) == body  # type: ignore[arg-type]


def test_reply_with_a_null_error_field_is_usable() -> None:
    assert parse_reply("chat", orjson.dumps({**CHAT_REPLY, "error": None}))["id"] == "chatcmpl-1"


@pytest.mark.parametrize(
    ("dialect", "raw", "reason"),
    [
        ("chat", b"<html>Bad Gateway</html>", "not JSON"),
        ("chat", b"", "not JSON"),
        ("messages", b"[]", "not a JSON object"),
        ("chat", b'"ok"', "not a JSON object"),
        ("chat", orjson.dumps({"error": {"message": "upstream failed", "type": "server_error"}}), "error body"),
        ("messages", orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
         "error body"),
        ("chat", orjson.dumps({"id": "x", "choices": []}), "without choices"),
        ("chat", orjson.dumps({"id": "x"}), "without choices"),
        ("chat", orjson.dumps({"id": "x", "choices": None}), "without choices"),
        ("messages", orjson.dumps({"id": "x", "type": "message"}), "without content"),
        ("messages", orjson.dumps({"id": "x", "content": "Paris."}), "without content"),
    ],
    ids=["html", "empty", "array", "string", "chat-error", "anthropic-error", "empty-choices", "no-choices",
         "null-choices", "no-content", "string-content"],
)
def test_unusable_200_is_rejected_with_the_reason(dialect: str, raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_reply(dialect, raw)  # type: ignore[arg-type]
