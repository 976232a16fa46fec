"""One result line of an upstream batch, read into what became of its request. Pure.

The lines are those of an OpenAI batch's output file and error file, or of an Anthropic Message
Batch's results. Each is one of:
- `Answered`: the request's answer body (a chat completion, a message), to be priced and written;
- `Errored`: the upstream called it and it failed; `status` is the HTTP status it failed with (from
  the line's `response.status_code`, or from Anthropic's error type), so `classify` can tell a bad
  request (written as rejected) from a transient failure (failed over);
- `Unanswered`: the upstream never ran it (the batch expired or was cancelled first): failed over.
Unknown keys are ignored (batchrelay's own `serve` adds a `batchrelay` object to each line). A line
that is not a result line at all (not JSON, no custom_id) is `Unanswered` with an empty custom_id:
it names no line of ours, so the caller ignores it, and a line of ours it stood for is missing from
the results and fails over like any other missing line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay.config.lanes import ProviderKind

# OpenAI error-file codes of lines the batch stopped before running them
OPENAI_STOPPED = {"batch_expired": "expired", "batch_cancelled": "canceled"}
# OpenAI error-file codes without a response that say the request itself is bad (serve's, for a line
# it could not read): a 400, as the upstream would have answered it
OPENAI_BAD_REQUEST = frozenset({"invalid_input", "invalid_request"})
# Anthropic's error types -> the HTTP status its API answers them with
ANTHROPIC_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}
MAX_MESSAGE = 500


@dataclass(frozen=True)
class Answered:
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Errored:
    custom_id: str
    status: int | None  # None: no HTTP status is known (classify then fails it over)
    body: Any  # the error as the upstream gave it (a response body, an error object)
    message: str


@dataclass(frozen=True)
class Unanswered:
    custom_id: str
    why: str  # expired / canceled / unreadable


Read = Answered | Errored | Unanswered


def _message(error: Any, default: str) -> str:
    """The error's own message (OpenAI and Anthropic put it under `message`, nested or not), short."""
    for _ in range(3):
        if not isinstance(error, dict):
            break
        if isinstance(error.get("message"), str) and error["message"]:
            return str(error["message"])[:MAX_MESSAGE]
        error = error.get("error")
    return default


def _openai(cid: str, rec: dict[str, Any]) -> Read:
    response, error = rec.get("response"), rec.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        if status == 200:
            if isinstance(body, dict):
                return Answered(cid, body)
            return Errored(cid, None, body, "a 200 without an answer body")
        return Errored(cid, status, body, _message(body, "") or _message(error, f"HTTP {status}"))
    code = error.get("code") if isinstance(error, dict) else None
    if code in OPENAI_STOPPED:
        return Unanswered(cid, OPENAI_STOPPED[code])
    status = 400 if code in OPENAI_BAD_REQUEST else None
    return Errored(cid, status, error, _message(error, f"upstream error {code or 'without a code'}"))


def _anthropic(cid: str, rec: dict[str, Any]) -> Read:
    result = rec.get("result")
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded" and isinstance(result, dict):
        message = result.get("message")
        if isinstance(message, dict):
            return Answered(cid, message)
        return Errored(cid, None, message, "succeeded without a message")
    if kind in ("canceled", "expired"):
        return Unanswered(cid, str(kind))
    error = result.get("error") if isinstance(result, dict) else None
    # {"type": "error", "error": {"type": "invalid_request_error", ...}} (the API's error envelope), or
    # the inner object alone
    inner = error.get("error") if isinstance(error, dict) and isinstance(error.get("error"), dict) else error
    etype = inner.get("type") if isinstance(inner, dict) else None
    status = ANTHROPIC_STATUS.get(etype) if isinstance(etype, str) else None
    return Errored(cid, status, error, _message(error, f"upstream {etype or kind or 'result without a type'}"))


def read(kind: ProviderKind, raw: bytes) -> Read:
    """What became of the request of one result line (`raw`, with or without its newline)."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Unanswered("", "unreadable")
    cid = rec.get("custom_id") if isinstance(rec, dict) else None
    if not isinstance(cid, str) or not cid:
        return Unanswered("", "unreadable")
    assert isinstance(rec, dict)
    if kind == "openai-batch":
        return _openai(cid, rec)
    if kind == "anthropic-batch":
        return _anthropic(cid, rec)
    raise ValueError(f"{kind!r} is not a batch kind")
