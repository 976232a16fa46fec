"""Result records in the job's own batch format. Pure functions.

OpenAI-format input gets OpenAI batch output lines (`id`, `custom_id`, `response`, `error`);
Anthropic-format input gets Message Batches result lines (`custom_id`, `result`). Every record
carries a `batchrelay` object: line number, provider, provider model, attempts, usage and cost.
"""

from __future__ import annotations

from typing import Any

import orjson

from batchrelay.money.ledger import Billed, line_cost
from batchrelay.results.outcome import Attempt, Outcome, Result, billed_calls, trimmed
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import BadLine, JobLine


def _anthropic_shaped(fmt: str | None, dialect: Dialect) -> bool:
    # a line too broken to show its format follows the file's default dialect
    return fmt == "anthropic" or (fmt in ("bare", None) and dialect == "messages")


def _openai_id(batch_id: str, line: int) -> str:
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line}"


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}


def bad_line_record(batch_id: str, bad: BadLine, default_dialect: Dialect) -> bytes:
    message = f"line {bad.line}: {bad.reason}"
    meta = {"line": bad.line, "error": "invalid_input"}
    if _anthropic_shaped(bad.fmt, default_dialect):
        rec: dict[str, Any] = {
            "custom_id": bad.custom_id, "result": _anthropic_error("invalid_request_error", message),
        }
    else:
        rec = {
            "id": _openai_id(batch_id, bad.line), "custom_id": bad.custom_id, "response": None,
            "error": {"code": "invalid_input", "message": message, "line": bad.line},
        }
    rec["batchrelay"] = meta
    return orjson.dumps(rec)


def _meta(job: JobLine, attempts: list[Attempt], billed: list[Billed], out: Outcome | None = None) -> dict[str, Any]:
    """`out`: the line's outcome, None for a line its batch stopped (it has only its attempts)."""
    p = out.provider if out else None
    meta: dict[str, Any] = {
        "line": job.line,
        "provider": p.name if p else None,
        "provider_model": p.provider_model(str(job.body["model"])) if p else None,
        "attempts": [a.as_dict() for a in trimmed(attempts)],
        "usage": out.reply.usage.as_dict() if out and out.reply else None,
    }
    if out and out.wire_dialect:
        meta["translated"] = {"from": job.dialect, "to": out.wire_dialect}
    if out and out.notes:
        meta["notes"] = out.notes
    meta["cost"] = line_cost(billed)
    if job.body.get("stream"):
        meta["stream"] = True
    return meta


STOPPED_CODES = {"cancelled": ("batch_cancelled", "canceled"), "expired": ("batch_expired", "expired")}


def stopped_record(batch_id: str, job: JobLine, attempts: list[Attempt], final: str) -> bytes:
    """A line its batch stopped before it ran: `cancelled` or `expired` (Anthropic's `canceled` /
    `expired` result types; OpenAI's `batch_cancelled` / `batch_expired` error codes). `attempts`:
    those it made before (when it was deferred), with their cost."""
    code, anthropic_type = STOPPED_CODES[final]
    meta = _meta(job, attempts, billed_calls(attempts))
    meta["error"] = final
    if _anthropic_shaped(job.fmt, job.dialect):
        rec: dict[str, Any] = {"custom_id": job.custom_id, "result": {"type": anthropic_type}}
    else:
        rec = {"id": _openai_id(batch_id, job.line), "custom_id": job.custom_id, "response": None,
               "error": {"code": code, "message": f"the batch was {final} before this line was answered"}}
    rec["batchrelay"] = meta
    return orjson.dumps(rec)


NO_COST = line_cost([])  # a hit's: no call, 0 USD (only read: orjson writes it into each record)


def hit_record(batch_id: str, job: JobLine, body: dict[str, Any] | bytes, request_id: str | None,
               usage: dict[str, Any] | None, cache: dict[str, Any]) -> bytes:
    """The record of a line the response cache answered: the stored answer (a dict, or its JSON:
    put in as it is), no attempt, cost 0; `cache`: its `batchrelay.cache` ({"status": "hit", "from":
    ..., "saved_usd": ...})."""
    if isinstance(body, bytes):
        body = orjson.Fragment(body)  # type: ignore[assignment]
    meta: dict[str, Any] = {"line": job.line, "provider": None, "provider_model": None, "attempts": [],
                            "usage": usage, "cost": NO_COST, "cache": cache}
    if _anthropic_shaped(job.fmt, job.dialect):
        rec: dict[str, Any] = {"custom_id": job.custom_id, "result": {"type": "succeeded", "message": body}}
    else:
        rec = {"id": _openai_id(batch_id, job.line), "custom_id": job.custom_id,
               "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}
    rec["batchrelay"] = meta
    return orjson.dumps(rec)


def outcome_record(batch_id: str, job: JobLine, out: Outcome, billed: list[Billed] | None = None,
                   cache: dict[str, Any] | None = None) -> bytes:
    """The record of a line whose relay ended for good (ANSWERED, REJECTED or FAILED). `billed`: `out.billed`,
    when the caller has it already; `cache`: its `batchrelay.cache`, when its batch uses the cache."""
    meta = _meta(job, out.attempts, out.billed if billed is None else billed, out)
    if cache is not None:
        meta["cache"] = cache
    anthropic = _anthropic_shaped(job.fmt, job.dialect)
    if out.reply is not None:
        if anthropic:
            result = {"type": "succeeded", "message": out.reply.body}
            rec: dict[str, Any] = {"custom_id": job.custom_id, "result": result}
        else:
            rec = {
                "id": _openai_id(batch_id, job.line), "custom_id": job.custom_id,
                "response": {"status_code": 200, "request_id": out.reply.request_id, "body": out.reply.body},
                "error": None,
            }
    else:
        err = out.error
        status = err.status if err else None
        code = "invalid_request" if out.kind is Result.REJECTED else "provider_error"
        meta["error"] = code
        if anthropic:
            kind = "invalid_request_error" if code == "invalid_request" else "api_error"
            rec = {"custom_id": job.custom_id, "result": _anthropic_error(kind, out.message)}
        else:
            response = None
            if err is not None and status is not None:
                try:
                    body: Any = orjson.loads(err.body) if err.body else None
                except orjson.JSONDecodeError:
                    body = err.body[:500].decode("utf-8", "replace")
                response = {"status_code": status, "request_id": None, "body": body}
            rec = {
                "id": _openai_id(batch_id, job.line), "custom_id": job.custom_id, "response": response,
                "error": {"code": code, "message": out.message},
            }
    rec["batchrelay"] = meta
    return orjson.dumps(rec)
