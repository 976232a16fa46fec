"""Result records in the job's own batch format (OpenAI batch output / Anthropic Message Batches)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import ProviderHTTPError, ProviderTimeout
from batchrelay.money.pricing import CallCost
from batchrelay.results.outcome import Attempt, Outcome, Result, trimmed
from batchrelay.results.records import bad_line_record, outcome_record, stopped_record
from batchrelay.wire.jobs import BadLine, JobLine
from batchrelay.wire.reply import ProviderReply, Usage

BATCH = "batch_abc123"
MESSAGES = [{"role": "user", "content": "Capital of France?"}]
CHAT_REPLY = {
    "id": "chatcmpl-1", "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 17, "prompt_tokens_details": {"cached_tokens": 8}},
}
MSG_REPLY = {
    "id": "msg_01", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "Paris."}],
    "usage": {"input_tokens": 12, "output_tokens": 3},
}
PIAPI = ProviderConfig(name="piapi", base_url="https://api.piapi.ai")
AINOW = ProviderConfig(name="ai-now", base_url="https://chatapi.ai-now.space", models={"gpt-4-turbo": "GPT-4 Turbo"})

CHAT_JOB = JobLine(3, "req-3", "openai", "chat", {"model": "gpt-4-turbo", "messages": MESSAGES})
ANTHROPIC_JOB = JobLine(4, "msg-4", "anthropic", "messages", {"model": "claude-3-5-haiku", "max_tokens": 10,
                                                            "messages": MESSAGES})
BARE_MESSAGES_JOB = JobLine(5, "line-5", "bare", "messages", ANTHROPIC_JOB.body)
BARE_CHAT_JOB = JobLine(6, "line-6", "bare", "chat", CHAT_JOB.body)


def record(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)  # type: ignore[no-any-return]


COST = CallCost(Decimal("0.00092"), None, "computed")


def success(body: dict[str, Any], usage: Usage, provider: ProviderConfig = AINOW) -> Outcome:
    served = Attempt(provider.name, 200, 420.06, model="GPT-4 Turbo", usage=usage, cost=COST)
    return Outcome(
        Result.ANSWERED,
        attempts=[Attempt("piapi", 503, 812.34, "retry", "HTTP 503"), served],
        reply=ProviderReply(body, usage, 420.06, "req_xyz"),
        provider=provider,
    )


def failure(*, rejected: bool) -> Outcome:
    body = orjson.dumps({"error": {"message": "messages.0.role: unknown role", "type": "invalid_request_error"}})
    err = ProviderHTTPError("piapi", "HTTP 400", status=400, body=body)
    if rejected:
        return Outcome(Result.REJECTED, [Attempt("piapi", 400, 95.0, "fail_line", "HTTP 400")], provider=PIAPI,
                       error=err, message="piapi rejected the request: HTTP 400")
    timeout = ProviderTimeout("ai-now", "no answer within 30s")
    return Outcome(Result.FAILED, [Attempt("ai-now", None, 30000.0, "retry", "no answer within 30s")], error=timeout,
                   message="every provider failed (ai-now: no answer within 30s)")


# -- successes ---------------------------------------------------------------------------------


def test_openai_success_record_has_the_openai_batch_output_shape() -> None:
    rec = record(outcome_record(BATCH, CHAT_JOB, success(CHAT_REPLY, Usage(24, 17, 8))))
    assert rec["id"] == "batch_req_abc123_3"
    assert rec["custom_id"] == "req-3"
    assert rec["response"] == {"status_code": 200, "request_id": "req_xyz", "body": CHAT_REPLY}
    assert rec["error"] is None
    assert rec["batchrelay"] == {
        "line": 3,
        "provider": "ai-now",
        "provider_model": "GPT-4 Turbo",
        "attempts": [
            {"provider": "piapi", "status": 503, "latency_ms": 812.3, "action": "retry", "error": "HTTP 503"},
            {"provider": "ai-now", "status": 200, "latency_ms": 420.1, "model": "GPT-4 Turbo",
             "usage": {"input_tokens": 24, "output_tokens": 17, "cached_input_tokens": 8, "cache_write_tokens": 0,
                       "reasoning_tokens": 0},
             "cost": {"usd": "0.00092", "source": "computed", "computed_usd": "0.00092", "reported_usd": None}},
        ],
        "usage": {"input_tokens": 24, "output_tokens": 17, "cached_input_tokens": 8, "cache_write_tokens": 0,
                  "reasoning_tokens": 0},
        "cost": {"usd": "0.00092", "calls": 1, "source": "computed", "computed_usd": "0.00092", "reported_usd": None,
                 "min_charge_applied": False,
                 "tokens": {"input_tokens": 24, "output_tokens": 17, "cached_input_tokens": 8, "cache_write_tokens": 0,
                            "reasoning_tokens": 0}},
    }


@pytest.mark.parametrize("job", [ANTHROPIC_JOB, BARE_MESSAGES_JOB], ids=["anthropic-line", "bare-messages-line"])
def test_anthropic_shaped_success_record_has_a_succeeded_result_with_the_message(job: JobLine) -> None:
    rec = record(outcome_record(BATCH, job, success(MSG_REPLY, Usage(12, 3), PIAPI)))
    assert rec["custom_id"] == job.custom_id
    assert rec["result"] == {"type": "succeeded", "message": MSG_REPLY}
    assert "response" not in rec
    assert rec["batchrelay"]["line"] == job.line
    assert rec["batchrelay"]["provider"] == "piapi"
    assert rec["batchrelay"]["provider_model"] == "claude-3-5-haiku"
    assert rec["batchrelay"]["usage"]["input_tokens"] == 12


def test_openai_line_asking_for_messages_still_gets_openai_shaped_output() -> None:
    job = JobLine(8, "req-8", "openai", "messages", ANTHROPIC_JOB.body)
    rec = record(outcome_record(BATCH, job, success(MSG_REPLY, Usage(12, 3), PIAPI)))
    assert rec["response"]["body"] == MSG_REPLY
    assert "result" not in rec


# -- failures ----------------------------------------------------------------------------------


def test_openai_rejected_request_record_carries_the_providers_answer() -> None:
    rec = record(outcome_record(BATCH, CHAT_JOB, failure(rejected=True)))
    assert rec["id"] == "batch_req_abc123_3"
    assert rec["custom_id"] == "req-3"
    assert rec["error"] == {"code": "invalid_request", "message": "piapi rejected the request: HTTP 400"}
    assert rec["response"]["status_code"] == 400
    assert rec["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert rec["batchrelay"]["error"] == "invalid_request"
    assert rec["batchrelay"]["usage"] is None
    assert rec["batchrelay"]["attempts"][0]["action"] == "fail_line"


def test_openai_record_after_every_provider_failed_has_no_response() -> None:
    rec = record(outcome_record(BATCH, BARE_CHAT_JOB, failure(rejected=False)))
    assert rec["custom_id"] == "line-6"
    assert rec["response"] is None
    assert rec["error"]["code"] == "provider_error"
    assert "every provider failed" in rec["error"]["message"]
    assert rec["batchrelay"]["provider"] is None
    assert rec["batchrelay"]["error"] == "provider_error"


def test_openai_failure_with_a_non_json_error_body_keeps_it_as_text() -> None:
    err = ProviderHTTPError("piapi", "HTTP 502", status=502, body=b"<html>502 Bad Gateway</html>")
    rec = record(outcome_record(BATCH, CHAT_JOB, Outcome(Result.FAILED, error=err, message="every provider failed")))
    assert rec["response"] == {"status_code": 502, "request_id": None, "body": "<html>502 Bad Gateway</html>"}


@pytest.mark.parametrize(
    ("rejected", "kind"), [(True, "invalid_request_error"), (False, "api_error")], ids=["rejected", "all-failed"]
)
def test_anthropic_failure_record_is_errored_with_the_error_type(rejected: bool, kind: str) -> None:
    out = failure(rejected=rejected)
    rec = record(outcome_record(BATCH, ANTHROPIC_JOB, out))
    assert rec["custom_id"] == "msg-4"
    assert rec["result"] == {"type": "errored", "error": {"type": "error", "error": {"type": kind,
                                                                                     "message": out.message}}}
    assert rec["batchrelay"]["line"] == 4


def test_no_provider_for_the_dialect_is_a_provider_error_record() -> None:
    out = Outcome(Result.FAILED, message="no configured provider serves the messages dialect")
    rec = record(outcome_record(BATCH, ANTHROPIC_JOB, out))
    assert rec["result"]["type"] == "errored"
    assert rec["result"]["error"]["error"]["message"] == out.message
    assert rec["batchrelay"]["attempts"] == []


# -- bad lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "default_dialect"),
    [
        (BadLine(7, "invalid JSON: unexpected end of data"), "chat"),
        (BadLine(7, "unsupported url '/v1/embeddings'", "req-7", "openai"), "messages"),
        (BadLine(7, "not a batch line or request body: model: Field required", None, "bare"), "chat"),
    ],
    ids=["unparsed-chat-default", "openai-line", "bare-chat"],
)
def test_openai_shaped_bad_line_record_carries_the_line_number(bad: BadLine, default_dialect: str) -> None:
    rec = record(bad_line_record(BATCH, bad, default_dialect))  # type: ignore[arg-type]
    assert rec["id"] == "batch_req_abc123_7"
    assert rec["custom_id"] == bad.custom_id
    assert rec["response"] is None
    assert rec["error"] == {"code": "invalid_input", "message": f"line 7: {bad.reason}", "line": 7}
    assert rec["batchrelay"] == {"line": 7, "error": "invalid_input"}


@pytest.mark.parametrize(
    ("bad", "default_dialect"),
    [
        (BadLine(9, "params.messages: Field required", "msg-9", "anthropic"), "chat"),
        (BadLine(9, "not a batch line or request body: messages: Field required", None, "bare"), "messages"),
        (BadLine(9, "invalid JSON: unexpected end of data"), "messages"),
    ],
    ids=["anthropic-line", "bare-messages", "unparsed-messages-default"],
)
def test_anthropic_shaped_bad_line_record_carries_the_line_number(bad: BadLine, default_dialect: str) -> None:
    rec = record(bad_line_record(BATCH, bad, default_dialect))  # type: ignore[arg-type]
    assert rec["custom_id"] == bad.custom_id
    assert rec["result"]["type"] == "errored"
    assert rec["result"]["error"]["error"] == {"type": "invalid_request_error", "message": f"line 9: {bad.reason}"}
    assert rec["batchrelay"] == {"line": 9, "error": "invalid_input"}


# -- stopped lines and the outcome itself ---------------------------------------------------------


@pytest.mark.parametrize(("job", "final", "shown"), [
    (CHAT_JOB, "cancelled", {"response": None, "error": {
        "code": "batch_cancelled", "message": "the batch was cancelled before this line was answered"}}),
    (ANTHROPIC_JOB, "expired", {"result": {"type": "expired"}}),
], ids=["openai-cancelled", "anthropic-expired"])
def test_a_stopped_line_record_keeps_the_attempts_and_cost_of_its_earlier_runs(
    job: JobLine, final: str, shown: dict[str, Any]
) -> None:
    billed_junk = Attempt("ai-now", 200, 50.0, "retry", "no usable answer", model="GPT-4 Turbo", usage=Usage(24, 17),
                      cost=COST)
    rec = record(stopped_record(BATCH, job, [Attempt("piapi", 429, 12.0, "failover", "HTTP 429"), billed_junk], final))
    assert {k: rec[k] for k in shown} == shown
    meta = rec["batchrelay"]
    assert (meta["line"], meta["provider"], meta["usage"], meta["error"]) == (job.line, None, None, final)
    assert [a["status"] for a in meta["attempts"]] == [429, 200]
    assert (meta["cost"]["usd"], meta["cost"]["calls"]) == ("0.00092", 1)


def test_a_line_retried_for_long_keeps_its_first_and_last_attempts_every_billed_one_and_a_count() -> None:
    tried = [Attempt("p", 503, 1.0, "retry", f"try {i}") for i in range(40)]
    tried[10] = Attempt("p", 200, 1.0, "retry", "no usable answer", model="m", usage=Usage(1, 1), cost=COST)
    kept = trimmed(tried)
    assert kept[:5] == tried[:5] and kept[-20:] == tried[-20:]
    assert kept[5] == Attempt("…", None, 0.0, error="14 more attempts not kept")
    assert kept[6] is tried[10]
    assert len(kept) == 27
    assert trimmed(tried[:26]) == tried[:26]  # short enough: all of them


@pytest.mark.parametrize("kind", list(Result))
def test_an_outcome_has_a_reply_exactly_when_it_is_answered(kind: Result) -> None:
    reply = ProviderReply(CHAT_REPLY, Usage(1, 1), 1.0, "r")
    good, bad = (reply, None) if kind is Result.ANSWERED else (None, reply)
    assert Outcome(kind, reply=good).ok is (kind is Result.ANSWERED)
    with pytest.raises(ValueError, match="ANSWERED exactly when it has a reply"):
        Outcome(kind, reply=bad)
