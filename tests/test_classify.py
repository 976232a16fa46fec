"""What batchrelay does after a failed call (the README's failover table), with the providers' own error bodies."""

from __future__ import annotations

import orjson
import pytest

from batchrelay.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderTransportError,
)
from batchrelay.providers.classify import Action, classify, retry_after_seconds


def http(status: int, body: object = b"", headers: dict[str, str] | None = None) -> ProviderHTTPError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return ProviderHTTPError("p", f"HTTP {status}", status=status, body=raw, headers=headers)


def openai_error(message: str, type_: str, code: object = None) -> dict[str, object]:
    """ttonkapi's typed errors and ttttt.ai's envelope: {"error": {"message", "type", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_error(type_: str, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": type_, "message": message}}


@pytest.mark.parametrize(
    ("err", "action"),
    [
        # ttonkapi (001): 400 invalid_request_error, 401 authentication_error, 402 insufficient_quota,
        # 429 rate_limit_error, 500 server_error
        (http(400, openai_error("Invalid request parameters", "invalid_request_error")), Action.FAIL_LINE),
        (http(401, openai_error("Invalid or missing API key", "authentication_error")), Action.DISABLE),
        (http(402, openai_error("Not enough balance", "insufficient_quota")), Action.BENCH),
        (http(429, openai_error("Rate limit exceeded", "rate_limit_error")), Action.FAILOVER),
        (http(500, openai_error("Internal server error", "server_error")), Action.RETRY),
        # a 429 that is really billing (OpenAI-style insufficient_quota) must not be retried as a rate limit
        (http(429, openai_error("You exceeded your current quota", "insufficient_quota", "insufficient_quota")),
         Action.BENCH),
        (http(402, b"Payment Required"), Action.BENCH),
        # on a 429 only insufficient_quota is billing; a per-minute quota is a rate limit
        (http(429, openai_error("Quota exceeded for requests per minute, retry in 20s", "rate_limit_error")),
         Action.FAILOVER),
        # ttttt.ai (002) envelope
        (http(404, openai_error("model 'gpt-x' not found", "not_found", 404)), Action.COOL_MODEL),
        (http(400, openai_error("This model's maximum context length is 128000 tokens. However, your messages "
                                "resulted in 190000 tokens.", "invalid_request_error", "context_length_exceeded")),
         Action.FAILOVER),
        (http(403, openai_error("Your account quota is exhausted", "forbidden", 403)), Action.BENCH),
        (http(403, openai_error("Access denied for this key", "permission_denied", 403)), Action.DISABLE),
        # Anthropic-style bodies (TTAPI / ttttt.ai /v1/messages)
        (http(529, anthropic_error("overloaded_error", "Overloaded")), Action.RETRY),
        (http(400, anthropic_error("invalid_request_error", "Your credit balance is too low to access the "
                                   "Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.")),
         Action.BENCH),
        (http(400, anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")),
         Action.FAILOVER),
        (http(400, anthropic_error("invalid_request_error", "max_tokens: Field required")), Action.FAIL_LINE),
        (http(401, anthropic_error("authentication_error", "invalid x-api-key")), Action.DISABLE),
        (http(403, anthropic_error("permission_error", "Your API key does not have permission")), Action.DISABLE),
        (http(404, anthropic_error("not_found_error", "model: claude-9")), Action.COOL_MODEL),
        (http(413, anthropic_error("request_too_large", "Request exceeds the maximum allowed size")),
         Action.FAIL_LINE),
        (http(429, anthropic_error("rate_limit_error", "Number of request tokens has exceeded your per-minute "
                                   "rate limit")), Action.FAILOVER),
        (http(422, openai_error("messages.0.role: unknown role 'robot'", "invalid_request_error")), Action.FAIL_LINE),
        # gateways in front of the resellers
        (http(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"), Action.RETRY),
        (http(503, b""), Action.RETRY),
        (http(504, b"upstream request timeout"), Action.RETRY),
        (http(408, b""), Action.RETRY),
        (http(409, openai_error("Conflict, please retry", "conflict")), Action.RETRY),
        (http(418, b""), Action.FAILOVER),
        # no usable HTTP answer at all
        (ProviderTransportError("p", "ConnectError: connection refused"), Action.RETRY),
        (ProviderTimeout("p", "no answer within 30s"), Action.RETRY),
        (ProviderBadResponse("p", "200 with a body that is not JSON", status=200, body=b"<html>"), Action.RETRY),
        (ProviderBadResponse("p", "200 with an error body", status=200,
                             body=orjson.dumps(openai_error("upstream failed", "server_error"))), Action.RETRY),
        (ProviderError("p", "API key variable TTAPI_KEY is not set"), Action.FAILOVER),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_failed_call_is_classified_into_the_documented_action(err: ProviderError, action: Action) -> None:
    assert classify(err) is action


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "4"}, 4.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_the_failed_response(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(http(429, openai_error("slow down", "rate_limit_error"), headers)) == seconds


def test_retry_after_is_none_for_a_call_without_a_response() -> None:
    assert retry_after_seconds(ProviderTimeout("p", "no answer")) is None
