"""Sending one request to one provider with httpx. The only IO in the provider layer.

The HTTP client never retries on its own (one retry layer: see `relay`); every failure becomes a
`ProviderError` carrying status, body and headers, never the API key.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import Dialect, ProviderConfig
from ..errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderTransportError,
)
from .dialects import Usage, build_request, parse_reply, usage_of

MAX_ERROR_BODY = 4096


def _redact(text: str, key: str | None) -> str:
    """Some resellers echo the key back in error text; our messages end up in logs and results."""
    return text.replace(key, "***") if key else text


def _error_body(content: bytes, key: str | None) -> bytes:
    return (content.replace(key.encode(), b"***") if key else content)[:MAX_ERROR_BODY]


@dataclass(frozen=True, slots=True)
class ProviderReply:
    body: dict[str, Any]
    usage: Usage
    latency_ms: float
    request_id: str | None


async def send(
    client: httpx.AsyncClient,
    provider: ProviderConfig,
    dialect: Dialect,
    body: dict[str, Any],
    *,
    timeout: float,
) -> ProviderReply:
    key = provider.api_key()
    if provider.api_key_env and not key:
        raise ProviderError(provider.name, f"API key variable {provider.api_key_env} is not set", status=None)
    req = build_request(provider, dialect, body, key)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            resp = await client.post(req.url, content=req.content, headers=req.headers)
    except TimeoutError:
        raise ProviderTimeout(provider.name, f"no answer within {timeout:g}s") from None
    except httpx.TimeoutException as e:
        raise ProviderTimeout(provider.name, f"timeout ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise ProviderTransportError(provider.name, _redact(f"{type(e).__name__}: {e}", key)) from None
    latency_ms = (time.perf_counter() - started) * 1000
    headers = dict(resp.headers)
    if resp.status_code != 200:
        raise ProviderHTTPError(
            provider.name, f"HTTP {resp.status_code}", status=resp.status_code,
            body=_error_body(resp.content, key), headers=headers,
        )
    try:
        answer = parse_reply(dialect, resp.content)
    except ValueError as e:
        raise ProviderBadResponse(
            provider.name, _redact(str(e), key), status=200, body=_error_body(resp.content, key), headers=headers
        ) from None
    request_id = headers.get("x-request-id") or headers.get("request-id") or answer.get("id")
    return ProviderReply(answer, usage_of(dialect, answer), latency_ms, request_id)
