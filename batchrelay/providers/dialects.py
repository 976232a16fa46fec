"""Wire mapping for the two dialects, OpenAI chat and Anthropic messages. Pure functions only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Dialect, ProviderConfig

AUTH_HEADERS = {"bearer": "Authorization", "tt-api-key": "TT-API-KEY", "x-api-key": "x-api-key"}


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }


@dataclass(frozen=True, slots=True)
class WireRequest:
    url: str
    headers: dict[str, str]
    content: bytes


def auth_headers(provider: ProviderConfig, key: str | None) -> dict[str, str]:
    if not key:
        return {}
    name = AUTH_HEADERS[provider.auth]
    return {name: f"Bearer {key}" if provider.auth == "bearer" else key}


def build_request(provider: ProviderConfig, dialect: Dialect, body: dict[str, Any], key: str | None) -> WireRequest:
    """The HTTP request for one job at one provider: its path, auth style, model name and headers."""
    payload = dict(body)
    payload["model"] = provider.provider_model(str(body["model"]))
    headers = {"content-type": "application/json", **provider.headers, **auth_headers(provider, key)}
    if dialect == "messages":
        headers.setdefault("anthropic-version", provider.anthropic_version)
    return WireRequest(provider.base_url + provider.path(dialect), headers, orjson.dumps(payload))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def usage_of(dialect: Dialect, body: dict[str, Any]) -> Usage:
    u = body.get("usage")
    if not isinstance(u, dict):
        return Usage()
    if dialect == "chat":
        details = u.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), cached)
    return Usage(
        _int(u.get("input_tokens")),
        _int(u.get("output_tokens")),
        _int(u.get("cache_read_input_tokens")),
        _int(u.get("cache_creation_input_tokens")),
    )


def parse_reply(dialect: Dialect, raw: bytes) -> dict[str, Any]:
    """The answer body, or ValueError saying why a 200 is not a usable answer."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("200 with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("200 with a body that is not a JSON object")
    if "error" in body and body["error"]:
        raise ValueError(f"200 with an error body: {str(body['error'])[:200]}")
    if dialect == "chat":
        if not isinstance(body.get("choices"), list) or not body["choices"]:
            raise ValueError("200 without choices")
    elif not isinstance(body.get("content"), list):
        raise ValueError("200 without content")
    return body
