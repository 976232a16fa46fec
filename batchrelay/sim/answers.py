"""What a call the simulator answers gets back: the reply text, its token counts and cost, and the
bodies of answers and errors in each dialect's shape. Pure: `app.py` sends them, `faults.py` decides
which one a call gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay.sim.faults import SimDialect

# What a call costs the simulated balance at every preset that quotes no prices of its own (all but
# ai-now): USD per input token and per output token, i.e. $1 / $2 per million tokens.
FLAT_INPUT_USD = 1e-6
FLAT_OUTPUT_USD = 2e-6
# Statuses a provider sends Retry-After with; 529 is Anthropic's "overloaded".
RETRY_AFTER_STATUSES = frozenset({429, 503, 529})


def rate_tokens(dialect: SimDialect, body: dict[str, Any], answer: Answer) -> int:
    """What a call counts against tpm: its input estimate plus max_tokens, or the output if unset."""
    limit = max_tokens_of(dialect, body)
    return answer.input_tokens + (limit if _is_int(limit) else answer.output_tokens)


def flat_cost(answer: Answer) -> float:
    """USD a call spends from the balance at a provider that quotes no prices (all but ai-now)."""
    return answer.input_tokens * FLAT_INPUT_USD + answer.output_tokens * FLAT_OUTPUT_USD


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass, and `true` is not a token count


def invalid_reason(dialect: SimDialect, body: Any) -> str | None:
    """Why the body is not a request this dialect accepts, or None when it is."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required and must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required and must be a non-empty list"
    limit = max_tokens_of(dialect, body)
    if dialect == "messages" and "max_tokens" not in body:
        return "'max_tokens' is required"
    if limit is not None and (not _is_int(limit) or limit < 1):
        return "'max_tokens' must be a positive integer"
    return None


def max_tokens_of(dialect: SimDialect, body: dict[str, Any]) -> Any:
    if dialect == "chat" and "max_completion_tokens" in body:
        return body["max_completion_tokens"]
    return body.get("max_tokens")


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            return ""
    return ""


def reply_text(messages: list[Any], size: int = 0) -> str:
    """The answer depends only on the request, so reruns and failovers can be compared exactly;
    `size` > 0 pads it to about that many UTF-8 bytes (non-ASCII, as real answers often are)."""
    text = f"Simulated answer to: {last_user_text(messages)[:80]}"
    if size <= len(text.encode()):
        return text
    filler = f" Réponse simulée n° {len(messages)} — ответ, 答え, «{last_user_text(messages)[:40]}»."
    reps = (size - len(text.encode())) // max(1, len(filler.encode())) + 1
    return (text + filler * reps).encode()[:size].decode("utf-8", "ignore")


def estimate_input_tokens(messages: list[Any], system: Any = None) -> int:
    """About 4 bytes per token of the compact JSON (as orjson writes it) of messages and system."""
    size = len(orjson.dumps(messages))
    if system is not None:
        size += len(orjson.dumps(system))
    return max(1, math.ceil(size / 4))


def estimate_output_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode()) / 4))


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    input_tokens: int  # all of them, cached or not: what rate limits and costs count
    output_tokens: int
    truncated: bool
    cached_tokens: int = 0  # of input_tokens, read from the prompt cache
    cache_write_tokens: int = 0  # of input_tokens, written to the prompt cache (messages only)

    @property
    def uncached_tokens(self) -> int:
        """Anthropic's input_tokens: those neither read from nor written to the cache."""
        return max(0, self.input_tokens - self.cached_tokens - self.cache_write_tokens)


def plan_answer(
    dialect: SimDialect, body: dict[str, Any], cached_fraction: float = 0.0, cache_write_fraction: float = 0.0,
    answer_bytes: int = 0,
) -> Answer:
    """Reply text and usage for a valid request, cut to max_tokens like a real model would stop."""
    messages = body["messages"]
    text = reply_text(messages, answer_bytes)
    input_tokens = estimate_input_tokens(messages, body.get("system") if dialect == "messages" else None)
    cached = math.floor(input_tokens * cached_fraction)
    written = math.floor(input_tokens * cache_write_fraction) if dialect == "messages" else 0
    output_tokens = estimate_output_tokens(text)
    limit = max_tokens_of(dialect, body)
    if limit is not None and output_tokens > limit:
        # "ignore" drops a character split by the cut; the usage still says the model spent `limit`.
        text, output_tokens, truncated = text.encode()[: limit * 4].decode("utf-8", "ignore"), limit, True
    else:
        truncated = False
    return Answer(text, input_tokens, output_tokens, truncated, cached, written)


def chat_body(body: dict[str, Any], answer: Answer, number: int, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{number:016x}",
        "object": "chat.completion",
        "created": created,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "length" if answer.truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
        },
    }


def messages_body(body: dict[str, Any], answer: Answer, number: int) -> dict[str, Any]:
    return {
        "id": f"msg_{number:016x}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": "max_tokens" if answer.truncated else "end_turn",
        "stop_sequence": None,
        # The cache fields are sent by the real API as zeros too; parsers must cope with them.
        # input_tokens excludes both of them, as Anthropic counts it.
        "usage": {
            "input_tokens": answer.uncached_tokens,
            "output_tokens": answer.output_tokens,
            "cache_creation_input_tokens": answer.cache_write_tokens,
            "cache_read_input_tokens": answer.cached_tokens,
        },
    }


def answer_body(dialect: SimDialect, body: dict[str, Any], number: int, created: int) -> dict[str, Any]:
    answer = plan_answer(dialect, body)
    if dialect == "chat":
        return chat_body(body, answer, number, created)
    return messages_body(body, answer, number)


def junk(dialect: SimDialect, payload: dict[str, Any]) -> dict[str, Any]:
    """The rendered answer made useless but still billed: no choices (chat), null content (messages)."""
    if dialect == "chat":
        return {**payload, "choices": []}
    return {**payload, "content": None}


def malformed(raw: bytes) -> bytes:
    """A 200 cut off mid-body: any proper prefix of a JSON object is not valid JSON."""
    return raw[: max(1, len(raw) // 2)]


_CHAT_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
               403: "permission_error", 404: "not_found", 429: "rate_limit_error"}
_MESSAGES_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
                   529: "overloaded_error"}
# Keep billing words out of every message but the 402 one: classify.py reads them as "out of credit".
_MESSAGES = {400: "invalid request", 401: "invalid or missing API key",
             402: "insufficient quota: the credit balance is exhausted", 403: "permission denied",
             404: "model not found", 429: "rate limit reached for requests, slow down",
             503: "the service is overloaded, try again later", 529: "the service is overloaded"}


def error_type(dialect: SimDialect, status: int) -> str:
    if dialect == "chat":
        return _CHAT_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return _MESSAGES_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_message(status: int) -> str:
    fallback = "internal server error" if status >= 500 else "error"
    return f"simulated {status}: {_MESSAGES.get(status) or fallback}"


def error_body(dialect: SimDialect, status: int, message: str | None = None) -> dict[str, Any]:
    """The provider's error envelope: OpenAI's for the chat dialect, Anthropic's for messages."""
    kind, text = error_type(dialect, status), message or error_message(status)
    if dialect == "chat":
        return {"error": {"message": text, "type": kind, "code": kind}}
    return {"type": "error", "error": {"type": kind, "message": text}}


def retry_headers(status: int, retry_after: float | None) -> dict[str, str]:
    if retry_after is None or status not in RETRY_AFTER_STATUSES:
        return {}
    # Retry-After may only carry whole seconds, so round up and give the exact value in ms beside it.
    headers = {"retry-after": str(math.ceil(retry_after))}
    if retry_after != int(retry_after):
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    return headers
