"""Token estimates for a request before it is sent: for rate limits (tpm), budget reservations
and `batchrelay estimate`. An estimate, not a count: about 4 bytes per token of the compact JSON
of the messages (and system prompt), plus a few tokens of overhead per message."""

from __future__ import annotations

from typing import Any

import orjson

DEFAULT_MAX_OUTPUT = 1024  # a chat request without max_tokens: assume this much output at most


def input_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    size = len(orjson.dumps(messages)) + len(str(body.get("system", "")))
    return size // 4 + 4 * len(messages)


def max_output_tokens(body: dict[str, Any], default: int = DEFAULT_MAX_OUTPUT) -> int:
    """The request's own output cap (`max_tokens` or `max_completion_tokens`), else `default`."""
    out = body.get("max_tokens") or body.get("max_completion_tokens")
    return out if isinstance(out, int) and not isinstance(out, bool) and out > 0 else default


def estimate_tokens(body: dict[str, Any]) -> int:
    """Input estimate plus the most output the call may produce."""
    return input_tokens(body) + max_output_tokens(body)
