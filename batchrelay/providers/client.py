"""Sending one request to one provider with httpx. The only IO in the provider layer.

The HTTP client never retries on its own (one retry layer: see `relay`); every failure becomes a
`ProviderError` carrying status, body and headers, never the API key.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderTransportError,
)
from batchrelay.providers.dialects import (
    WireRequest,
    build_request,
    check_reply,
    parse_reply,
    reported_cost,
    usage_of,
    with_standard_usage,
)
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.reply import ProviderReply, Usage
from batchrelay.wire.sse import assembler

MAX_ERROR_BODY = 4096


def _key_forms(key: str) -> list[str]:
    """The key as a provider may echo it: raw, and JSON-escaped the way some encoders write `/`."""
    forms = {key, key.replace("/", "\\/"), orjson.dumps(key).decode()[1:-1]}
    return sorted(forms, key=len, reverse=True)


def _redact(text: str, key: str | None) -> str:
    """Some resellers echo the key back in error text; our messages end up in logs and results."""
    if not key:
        return text
    for form in _key_forms(key):
        text = text.replace(form, "***")
    return text


def _scrub(value: Any, key: str) -> Any:
    if isinstance(value, str):
        return value.replace(key, "***")
    if isinstance(value, list):
        return [_scrub(v, key) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, key): _scrub(v, key) for k, v in value.items()}
    return value


def _error_body(content: bytes, key: str | None) -> bytes:
    """An error body to keep, without the key however it was encoded: JSON is decoded, scrubbed and
    written again (an escape such as `\\/` or `\\u0073` hides the key from a byte search)."""
    if key:
        try:
            decoded = orjson.loads(content)
        except orjson.JSONDecodeError:
            decoded = None
        scrubbed = _scrub(decoded, key)
        if scrubbed != decoded:  # the key hid behind an escape: keep the body as decoded and scrubbed
            content = orjson.dumps(scrubbed)
        content = _redact(content.decode("utf-8", "replace"), key).encode()
    return content[:MAX_ERROR_BODY]


def usable_key(provider: ProviderConfig) -> str | None:
    """The provider's key from the environment, or ProviderError (status None) naming the variable
    when it is unset or holds what an HTTP header cannot carry; the value is never shown."""
    key = provider.api_key()
    if provider.api_key_env and not key:
        raise ProviderError(provider.name, f"API key variable {provider.api_key_env} is not set", status=None)
    if key and not (key.isascii() and key.isprintable()):
        # an HTTP library would echo the bad header value, key and all, in its error message
        raise ProviderError(provider.name, f"API key variable {provider.api_key_env} holds characters "
                            "an HTTP header cannot carry", status=None)
    return key


async def send(
    client: httpx.AsyncClient,
    provider: ProviderConfig,
    dialect: Dialect,
    body: dict[str, Any],
    *,
    timeout: float,
) -> ProviderReply:
    key = usable_key(provider)
    req = build_request(provider, dialect, body, key)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            answer, headers = await (_stream(client, provider, dialect, req, key) if req.stream
                                     else _plain(client, provider, dialect, req, key))
    except TimeoutError:
        raise ProviderTimeout(provider.name, f"no answer within {timeout:g}s") from None
    except httpx.TimeoutException as e:
        raise ProviderTimeout(provider.name, f"timeout ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise ProviderTransportError(provider.name, _redact(f"{type(e).__name__}: {e}", key)) from None
    latency_ms = (time.perf_counter() - started) * 1000
    answer = with_standard_usage(dialect, answer, provider.variant)
    request_id = headers.get("x-request-id") or headers.get("request-id") or answer.get("id")
    return ProviderReply(answer, usage_of(dialect, answer, provider.variant), latency_ms, request_id,
                         reported_cost(answer, provider.variant), req.notes)


def _http_error(provider: ProviderConfig, resp: httpx.Response, content: bytes, key: str | None) -> ProviderHTTPError:
    return ProviderHTTPError(provider.name, f"HTTP {resp.status_code}", status=resp.status_code,
                             body=_error_body(content, key), headers=dict(resp.headers))


async def _plain(
    client: httpx.AsyncClient, provider: ProviderConfig, dialect: Dialect, req: WireRequest, key: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    resp = await client.post(req.url, content=req.content, headers=req.headers)
    headers = dict(resp.headers)
    if resp.status_code != 200:
        raise _http_error(provider, resp, resp.content, key)
    return _parsed(provider, dialect, resp.content, headers, key), headers


def _parsed(provider: ProviderConfig, dialect: Dialect, content: bytes, headers: dict[str, str],
            key: str | None) -> dict[str, Any]:
    try:
        return parse_reply(dialect, content)
    except ValueError as e:
        err = ProviderBadResponse(provider.name, _redact(str(e), key), status=200,
                                  body=_error_body(content, key), headers=headers)
        err.billed = billed_junk(provider, dialect, content)
        raise err from None


def billed_junk(provider: ProviderConfig, dialect: Dialect, content: bytes) -> tuple[Usage, Any] | None:
    """The usage (and reported cost) a 200 without a usable answer still bills, if it says so."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    usage = usage_of(dialect, body, provider.variant)
    return (usage, reported_cost(body, provider.variant)) if usage.billable else None


async def _stream(
    client: httpx.AsyncClient, provider: ProviderConfig, dialect: Dialect, req: WireRequest, key: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    async with client.stream("POST", req.url, content=req.content, headers=req.headers) as resp:
        headers = dict(resp.headers)
        if resp.status_code != 200:
            raise _http_error(provider, resp, await resp.aread(), key)
        if "text/event-stream" not in headers.get("content-type", "").partition(";")[0]:
            # some providers answer a stream request with a plain JSON body: accept that as it is
            return _parsed(provider, dialect, await resp.aread(), headers, key), headers
        parts = assembler(dialect, provider.variant)
        try:
            async for sse in EventSource(resp).aiter_sse():
                if sse.data:  # a bare `event:` or `id:` carries nothing to assemble
                    parts.feed(sse.event, sse.data)
            body = parts.body()
            check_reply(dialect, body)
        except ValueError as e:
            # a stream cut short says nothing reliable about what it billed: its usage comes last
            raise ProviderBadResponse(provider.name, _redact(f"stream: {e}", key), status=200,
                                      headers=headers) from None
        except httpx.RemoteProtocolError:
            raise ProviderBadResponse(provider.name, "stream cut off by the provider", status=200,
                                      headers=headers) from None
    return body, headers
