"""Sending one request with httpx (MockTransport: unit tests of the client layer only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderTransportError,
)
from batchrelay.providers.client import send
from batchrelay.wire.reply import Usage

KEY = "sk-test-7f3a9c2e1b"
KEY_ENV = "BATCHRELAY_TEST_CLIENT_KEY"
BODY: dict[str, Any] = {"model": "gpt-4-turbo", "messages": [{"role": "user", "content": "Capital of France?"}]}
CHAT_REPLY: dict[str, Any] = {
    "id": "chatcmpl-018ff3a2", "object": "chat.completion", "model": "gpt-4-turbo",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 17, "total_tokens": 41,
              "prompt_tokens_details": {"cached_tokens": 8}},
}

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def provider(**overrides: Any) -> ProviderConfig:
    return ProviderConfig.model_validate(
        {"name": "ttonkapi", "base_url": "https://ttonkapi.test", "api_key_env": KEY_ENV, **overrides}
    )


async def call(handler: Handler, p: ProviderConfig | None = None, dialect: str = "chat",
               body: dict[str, Any] = BODY, timeout: float = 5) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await send(client, p or provider(), dialect, body, timeout=timeout)  # type: ignore[arg-type]


async def test_success_returns_the_body_usage_and_request_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=CHAT_REPLY, headers={"x-request-id": "req_abc"})

    reply = await call(handler, provider(models={"gpt-4-turbo": "GPT-4 Turbo"}))
    assert reply.body == CHAT_REPLY
    assert reply.usage == Usage(24, 17, 8)
    assert reply.request_id == "req_abc"
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://ttonkapi.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert orjson.loads(request.content)["model"] == "GPT-4 Turbo"


async def test_latency_is_the_time_the_provider_took_to_answer() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json=CHAT_REPLY)

    started = time.perf_counter()
    reply = await call(slow)
    elapsed_ms = (time.perf_counter() - started) * 1000
    # at least the provider's 50 ms, and no more than the whole call measured from outside
    assert 50 <= reply.latency_ms <= elapsed_ms


async def test_messages_dialect_reply_and_request_id_header() -> None:
    reply_body = {"id": "msg_01", "type": "message", "content": [{"type": "text", "text": "Paris."}],
                  "usage": {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 4}}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=reply_body, headers={"request-id": "req_anthropic"})

    p = provider(auth="x-api-key", endpoints={"messages": "/anthropic/v1/messages"})
    reply = await call(handler, p, "messages", {"model": "claude-3-5-haiku", "max_tokens": 10, **BODY})
    assert (reply.request_id, reply.usage) == ("req_anthropic", Usage(16, 3, 4))  # 12 + 4 read from cache
    assert seen[0].url.path == "/anthropic/v1/messages"
    assert seen[0].headers["x-api-key"] == KEY
    assert seen[0].headers["anthropic-version"] == "2023-06-01"


async def test_request_id_falls_back_to_the_reply_id() -> None:
    reply = await call(lambda request: httpx.Response(200, json=CHAT_REPLY))
    assert reply.request_id == "chatcmpl-018ff3a2"


@pytest.mark.parametrize("status", [400, 401, 402, 404, 429, 500, 503, 529])
async def test_error_status_raises_with_status_body_and_headers(status: int) -> None:
    body = {"error": {"message": "Rate limit exceeded", "type": "rate_limit_error"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"Retry-After": "7", "X-Request-Id": "req_err"})

    with pytest.raises(ProviderHTTPError) as exc:
        await call(handler)
    err = exc.value
    assert (err.provider, err.status) == ("ttonkapi", status)
    assert orjson.loads(err.body) == body
    assert err.headers["retry-after"] == "7"
    assert err.headers["x-request-id"] == "req_err"


async def test_huge_error_body_is_truncated() -> None:
    with pytest.raises(ProviderHTTPError) as exc:
        await call(lambda request: httpx.Response(502, content=b"x" * 100_000))
    assert 0 < len(exc.value.body) <= 4096


async def test_missing_api_key_variable_raises_without_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=CHAT_REPLY)

    with pytest.raises(ProviderError) as exc:
        await call(handler)
    assert KEY_ENV in str(exc.value)
    assert exc.value.status is None
    assert sent == []


async def test_provider_without_api_key_env_is_called_without_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=CHAT_REPLY)

    await call(handler, provider(api_key_env=None))
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    "content", [b"<html>oops</html>", b"", b'{"error": {"message": "upstream failed"}}', b'{"choices": []}'],
    ids=["html", "empty", "error-body", "no-choices"],
)
async def test_unusable_200_raises_bad_response_with_the_body(content: bytes) -> None:
    with pytest.raises(ProviderBadResponse) as exc:
        await call(lambda request: httpx.Response(200, content=content))
    assert exc.value.status == 200
    assert exc.value.body == content


async def test_connect_error_raises_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderTransportError) as exc:
        await call(handler)
    assert exc.value.status is None
    assert "ConnectError" in str(exc.value)


async def test_httpx_timeout_raises_provider_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with pytest.raises(ProviderTimeout):
        await call(handler)


async def test_slow_provider_raises_provider_timeout_after_the_call_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=CHAT_REPLY)

    with pytest.raises(ProviderTimeout, match="no answer within 0.05s"):
        await call(handler, timeout=0.05)


def _echo_key(request: httpx.Request) -> str:
    return f"Incorrect API key provided: {KEY}. Header was {request.headers.get('authorization')}"


@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(401, json={"error": {"message": _echo_key(r), "type": "authentication_error"}}),
        lambda r: httpx.Response(200, json={"error": {"message": _echo_key(r), "type": "authentication_error"}}),
        lambda r: httpx.Response(200, content=_echo_key(r).encode()),
        lambda r: httpx.Response(500, text=_echo_key(r), headers={"x-debug-auth": KEY}),
    ],
    ids=["401-echoing-key", "200-error-body-echoing-key", "200-non-json-echoing-key", "500-echoing-key"],
)
async def test_api_key_never_appears_in_the_message_of_a_raised_error(handler: Handler) -> None:
    with pytest.raises(ProviderError) as exc:
        await call(handler)
    assert KEY not in str(exc.value)
    assert KEY not in exc.value.reason
    assert KEY not in repr(exc.value)


async def test_api_key_never_appears_in_a_transport_error_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {request.headers['authorization']}", request=request)

    with pytest.raises(ProviderTransportError) as exc:
        await call(handler)
    assert KEY not in str(exc.value)


STREAM_BODY: dict[str, Any] = {**BODY, "stream": True}
CHAT_EVENTS = (
    ": keep-alive comment\n\n"
    "event: ping\n\n"                      # an event with no data: nothing to assemble
    "id: 1\n"
    'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Par"}}]}\n\n'
    'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"is."},"finish_reason":"stop"}]}\n\n'
    'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":24,"completion_tokens":3,"total_tokens":27}}\r\n\r\n'
    "data: [DONE]\n\n"
)


def _sse(text: str) -> Handler:
    return lambda request: httpx.Response(200, content=text.encode(),
                                          headers={"content-type": "text/event-stream; charset=utf-8"})


async def test_a_stream_is_read_event_by_event_into_one_reply() -> None:
    reply = await call(_sse(CHAT_EVENTS), body=STREAM_BODY)
    assert reply.body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                                      "finish_reason": "stop"}]
    assert reply.usage == Usage(24, 3, 0)


@pytest.mark.parametrize("text", [
    CHAT_EVENTS.removesuffix("data: [DONE]\n\n"),             # cut before the end marker
    CHAT_EVENTS.removesuffix("\n"),                            # the marker's event never closed by a blank line
    CHAT_EVENTS.replace('"content":"is."', '"content":"is.'),  # a broken event
], ids=["no-done", "unterminated-done", "broken-json"])
async def test_a_stream_cut_or_broken_is_a_bad_response(text: str) -> None:
    with pytest.raises(ProviderBadResponse, match="stream") as exc:
        await call(_sse(text), body=STREAM_BODY)
    assert exc.value.status == 200
