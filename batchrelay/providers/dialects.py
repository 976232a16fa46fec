"""Wire mapping for the two dialects, OpenAI chat and Anthropic messages, and the ai-now variant.

Pure functions only: what to send to one provider for one job, and what its answer means.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from batchrelay.config.settings import ProviderConfig
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.reply import Usage

AUTH_HEADERS = {"bearer": "Authorization", "tt-api-key": "TT-API-KEY", "x-api-key": "x-api-key"}
AINOW_COST_FIELDS = ("input_tokens_cost", "output_tokens_cost", "total_tokens_cost")


@dataclass(frozen=True, slots=True)
class WireRequest:
    url: str
    headers: dict[str, str]
    content: bytes
    stream: bool = False
    notes: list[str] = field(default_factory=list)


def auth_headers(provider: ProviderConfig, dialect: Dialect, key: str | None) -> dict[str, str]:
    if not key:
        return {}
    style = provider.auth_for(dialect)
    return {AUTH_HEADERS[style]: f"Bearer {key}" if style == "bearer" else key}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def fold_system(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """For models that reject the system role (PiAPI's o1): system text moves into the first user turn."""
    system = [_text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    if not system:
        return messages, []
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    prefix = "\n\n".join(s for s in system if s)
    for i, m in enumerate(rest):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                merged: Any = [{"type": "text", "text": prefix}, *content]
            else:
                merged = f"{prefix}\n\n{content}" if content else prefix
            rest = [*rest[:i], {**m, "content": merged}, *rest[i + 1:]]
            break
    else:
        rest = [{"role": "user", "content": prefix}, *rest]
    return rest, ["system prompt folded into the first user message: this model rejects the system role"]


def build_request(
    provider: ProviderConfig, dialect: Dialect, body: dict[str, Any], key: str | None
) -> WireRequest:
    """The HTTP request for one job at one provider: its path, auth style, model name and headers."""
    payload = dict(body)
    payload["model"] = model = provider.provider_model(str(body["model"]))
    notes: list[str] = []
    if dialect == "chat" and any(fnmatch.fnmatchcase(model, p) for p in provider.no_system_models):
        payload["messages"], notes = fold_system(list(payload["messages"]))
    stream = bool(payload.get("stream"))
    if stream and dialect == "chat" and provider.variant == "standard":
        # without it an OpenAI-style stream carries no usage, and the call could not be priced
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    headers = request_headers(provider, dialect, key, stream=stream)
    return WireRequest(provider.base_url + provider.path(dialect), headers, orjson.dumps(payload), stream, notes)


def request_headers(provider: ProviderConfig, dialect: Dialect, key: str | None, *, stream: bool = False
                    ) -> dict[str, str]:
    """The headers of a call in `dialect` to this provider: JSON, its own headers, its auth style."""
    headers = {"content-type": "application/json", **provider.headers, **auth_headers(provider, dialect, key)}
    if stream:
        headers["accept"] = "text/event-stream"
    if dialect == "messages" and provider.anthropic_version:
        headers.setdefault("anthropic-version", provider.anthropic_version)
    return headers


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _detail(u: dict[str, Any], group: str, name: str) -> int:
    details = u.get(group)
    return _int(details.get(name)) if isinstance(details, dict) else 0


def usage_of(dialect: Dialect, body: dict[str, Any], variant: str = "standard") -> Usage:
    """Chat's prompt_tokens already include its cached tokens; Anthropic's input_tokens leave out the
    tokens read from and written to the cache, so they are added back here."""
    if variant == "ainow":
        return Usage(_int(body.get("input_tokens")), _int(body.get("output_tokens")))
    u = body.get("usage")
    if not isinstance(u, dict):
        return Usage()
    if dialect == "chat":
        prompt, cached = _int(u.get("prompt_tokens")), _detail(u, "prompt_tokens_details", "cached_tokens")
        return Usage(prompt, _int(u.get("completion_tokens")), min(cached, prompt), 0,
                     _detail(u, "completion_tokens_details", "reasoning_tokens"))
    read, written = _int(u.get("cache_read_input_tokens")), _int(u.get("cache_creation_input_tokens"))
    return Usage(_int(u.get("input_tokens")) + read + written, _int(u.get("output_tokens")), read, written)


def reported_cost(body: dict[str, Any], variant: str) -> Decimal | None:
    """ai-now's own `total_tokens_cost` (USD) as a Decimal of the number's shortest repr (orjson has
    parsed it as a float; for the ≤ 15 significant digits these costs carry, that is the number sent)."""
    if variant != "ainow":
        return None
    value = body.get("total_tokens_cost")
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def with_standard_usage(dialect: Dialect, body: dict[str, Any], variant: str) -> dict[str, Any]:
    """ai-now answers without `usage`; results get one (its own top-level fields stay)."""
    if variant != "ainow" or dialect != "chat" or isinstance(body.get("usage"), dict):
        return body
    u = usage_of(dialect, body, variant)
    usage = {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
             "total_tokens": u.input_tokens + u.output_tokens}
    return {**body, "usage": usage}


def parse_reply(dialect: Dialect, raw: bytes) -> dict[str, Any]:
    """The answer body, or ValueError saying why a 200 is not a usable answer."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("200 with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("200 with a body that is not a JSON object")
    check_reply(dialect, body)
    return body


def check_reply(dialect: Dialect, body: dict[str, Any]) -> None:
    if "error" in body and body["error"]:
        raise ValueError(f"200 with an error body: {str(body['error'])[:200]}")
    if dialect == "chat":
        if not isinstance(body.get("choices"), list) or not body["choices"]:
            raise ValueError("200 without choices")
    elif not isinstance(body.get("content"), list):
        raise ValueError("200 without content")
