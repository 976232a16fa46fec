"""A lane's wire, as tables: custom ids, request lines, upstream batch objects (OpenAI's and Anthropic's,
in each status) and every form of result line both APIs write (serve's real records are read in
tests/test_lane_client.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchrelay.providers.lane_results import Answered, Errored, Unanswered, read
from batchrelay.providers.lane_wire import custom_id, parse_custom_id, request_line, upstream_state

BATCH = "batch_" + "0123456789abcdef01234567"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "ok"}],
           "usage": {"input_tokens": 3, "output_tokens": 1}}
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


@pytest.mark.parametrize("line", [0, 1, 7, 49_999, 10**9])
def test_a_custom_id_names_its_batch_and_line_and_is_legal_for_both_apis(line: int) -> None:
    cid = custom_id(BATCH, line)
    assert parse_custom_id(cid) == (BATCH, line)
    assert len(cid) <= 64 and all(c.isalnum() or c in "_-" for c in cid)


@pytest.mark.parametrize("cid", ["", "req-1", "batch_abc", "batch_abc-", "batch_abc-01", "batch_ABC-1",
                                 "batch_abc-1-2", "batch_abc-x", "other_abc-1", " batch_abc-1", "batch_abc--1"])
def test_a_custom_id_of_another_shape_is_not_ours(cid: str) -> None:
    assert parse_custom_id(cid) is None


def test_request_lines_of_both_kinds() -> None:
    raw = request_line("openai-batch", "c-1", "/v1/chat/completions", CHAT)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert orjson.loads(raw) == {"custom_id": "c-1", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
    raw = request_line("anthropic-batch", "c-2", "/v1/messages", {"model": "m", "max_tokens": 5})
    assert raw.endswith(b"\n") and orjson.loads(raw) == {"custom_id": "c-2", "params": {"model": "m", "max_tokens": 5}}
    with pytest.raises(ValueError):
        request_line("chat", "c", "/v1/chat/completions", CHAT)


def _openai(status: str, **more: Any) -> dict[str, Any]:
    return {"id": "batch_up", "object": "batch", "status": status, "created_at": 1_700_000_000,
            "request_counts": {"total": 10, "completed": 6, "failed": 1}, "output_file_id": None,
            "error_file_id": None, "metadata": {"batchrelay_parcel": "p1", "n": 3}, **more}


@pytest.mark.parametrize(("status", "ended"), [("validating", False), ("in_progress", False), ("finalizing", False),
                                               ("cancelling", False), ("completed", True), ("failed", True),
                                               ("expired", True), ("cancelled", True)])
def test_an_openai_batch_object_in_each_status(status: str, ended: bool) -> None:
    s = upstream_state("openai-batch", _openai(status))
    assert (s.id, s.status, s.ended) == ("batch_up", status, ended)
    assert (s.total, s.succeeded, s.failed) == (10, 6, 1)
    assert s.created_at == 1_700_000_000.0 and s.results_url is None
    assert s.metadata == {"batchrelay_parcel": "p1"}  # a value that is not a string is not kept


def test_an_ended_openai_batch_names_its_files_and_odd_fields_are_read_as_absent() -> None:
    s = upstream_state("openai-batch", _openai("completed", output_file_id="file-o", error_file_id="file-e"))
    assert (s.output_file_id, s.error_file_id) == ("file-o", "file-e")
    s = upstream_state("openai-batch", {"id": "b", "status": "in_progress", "request_counts": None,
                                        "metadata": None, "created_at": "soon"})
    assert (s.total, s.succeeded, s.failed, s.metadata, s.created_at) == (0, 0, 0, {}, None)
    with pytest.raises(ValueError):
        upstream_state("openai-batch", {"object": "batch"})


@pytest.mark.parametrize(("status", "ended"), [("in_progress", False), ("canceling", False), ("ended", True)])
def test_an_anthropic_message_batch_in_each_status(status: str, ended: bool) -> None:
    obj = {"id": "msgbatch_1", "type": "message_batch", "processing_status": status,
           "request_counts": {"processing": 2, "succeeded": 5, "errored": 1, "canceled": 1, "expired": 1},
           "created_at": "2024-08-20T18:37:24.100435Z", "ended_at": None,
           "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results" if ended else None}
    s = upstream_state("anthropic-batch", obj)
    assert (s.id, s.status, s.ended) == ("msgbatch_1", status, ended)
    assert (s.total, s.succeeded, s.failed) == (10, 5, 3)
    assert s.created_at == pytest.approx(1724179044.100435)
    assert (s.output_file_id, s.error_file_id, s.metadata) == (None, None, {})
    assert (s.results_url is not None) == ended


def _line(rec: dict[str, Any]) -> bytes:
    return orjson.dumps(rec)


OPENAI_LINES: list[tuple[str, dict[str, Any], Any]] = [
    ("answered", {"id": "r1", "custom_id": "c", "response": {"status_code": 200, "request_id": "q", "body": COMPLETION},
                  "error": None}, Answered("c", COMPLETION)),
    ("answered, with serve's extra object", {"custom_id": "c", "response": {"status_code": 200, "body": COMPLETION},
                                             "error": None, "batchrelay": {"line": 3, "cost": "0.1"}},
     Answered("c", COMPLETION)),
    ("a 400 in the error file", {"custom_id": "c", "response": {"status_code": 400, "body": {
        "error": {"message": "bad messages", "type": "invalid_request_error"}}},
        "error": {"code": "invalid_request", "message": "x"}},
     Errored("c", 400, {"error": {"message": "bad messages", "type": "invalid_request_error"}}, "bad messages")),
    ("a 500 without a body", {"custom_id": "c", "response": {"status_code": 500, "body": None}, "error": None},
     Errored("c", 500, None, "HTTP 500")),
    ("a 429 with serve's error code", {"custom_id": "c", "response": {"status_code": 429, "body": "slow down"},
                                       "error": {"code": "provider_error", "message": "rate limited"}},
     Errored("c", 429, "slow down", "rate limited")),
    ("expired", {"custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "m"}},
     Unanswered("c", "expired")),
    ("cancelled", {"custom_id": "c", "response": None, "error": {"code": "batch_cancelled", "message": "m"}},
     Unanswered("c", "canceled")),
    ("an input line the upstream could not read", {"custom_id": "c", "response": None,
                                                   "error": {"code": "invalid_input", "message": "not JSON"}},
     Errored("c", 400, {"code": "invalid_input", "message": "not JSON"}, "not JSON")),
    ("another error without a response", {"custom_id": "c", "response": None, "error": {"code": "server_error"}},
     Errored("c", None, {"code": "server_error"}, "upstream error server_error")),
    ("a 200 without a body", {"custom_id": "c", "response": {"status_code": 200, "body": None}},
     Errored("c", None, None, "a 200 without an answer body")),
]


@pytest.mark.parametrize(("rec", "want"), [(r, w) for _, r, w in OPENAI_LINES], ids=[n for n, _, _ in OPENAI_LINES])
def test_openai_output_and_error_file_lines(rec: dict[str, Any], want: Any) -> None:
    assert read("openai-batch", _line(rec)) == want
    assert read("openai-batch", _line(rec) + b"\n") == want


def _errored(kind: str, message: str = "m") -> dict[str, Any]:
    return {"custom_id": "c", "result": {"type": "errored", "error": {"type": "error",
                                                                      "error": {"type": kind, "message": message}}}}


ANTHROPIC_LINES: list[tuple[str, dict[str, Any], Any]] = [
    ("succeeded", {"custom_id": "c", "result": {"type": "succeeded", "message": MESSAGE}}, Answered("c", MESSAGE)),
    ("succeeded, with serve's extra object", {"custom_id": "c", "result": {"type": "succeeded", "message": MESSAGE},
                                              "batchrelay": {"line": 1}}, Answered("c", MESSAGE)),
    ("canceled", {"custom_id": "c", "result": {"type": "canceled"}}, Unanswered("c", "canceled")),
    ("expired", {"custom_id": "c", "result": {"type": "expired"}}, Unanswered("c", "expired")),
    ("errored without an envelope", {"custom_id": "c", "result": {"type": "errored", "error": {
        "type": "invalid_request_error", "message": "max_tokens: required"}}},
     Errored("c", 400, {"type": "invalid_request_error", "message": "max_tokens: required"}, "max_tokens: required")),
    ("errored without an error", {"custom_id": "c", "result": {"type": "errored"}},
     Errored("c", None, None, "upstream errored")),
    ("a result of an unknown type", {"custom_id": "c", "result": {"type": "surprise"}},
     Errored("c", None, None, "upstream surprise")),
]


@pytest.mark.parametrize(("rec", "want"), [(r, w) for _, r, w in ANTHROPIC_LINES],
                         ids=[n for n, _, _ in ANTHROPIC_LINES])
def test_anthropic_result_lines(rec: dict[str, Any], want: Any) -> None:
    assert read("anthropic-batch", _line(rec)) == want


@pytest.mark.parametrize(("kind", "status"), [("invalid_request_error", 400), ("authentication_error", 401),
                                              ("billing_error", 402), ("permission_error", 403),
                                              ("not_found_error", 404), ("request_too_large", 413),
                                              ("rate_limit_error", 429), ("api_error", 500),
                                              ("timeout_error", 504), ("overloaded_error", 529),
                                              ("brand_new_error", None)])
def test_an_anthropic_error_types_status(kind: str, status: int | None) -> None:
    got = read("anthropic-batch", _line(_errored(kind, "why")))
    assert got == Errored("c", status, {"type": "error", "error": {"type": kind, "message": "why"}}, "why")


@pytest.mark.parametrize("kind", ["openai-batch", "anthropic-batch"])
@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"custom_id": 5}', b'{"response": null}',
                                 b'{"custom_id": ""}'])
def test_a_line_that_is_no_result_line_names_no_line(kind: Any, raw: bytes) -> None:
    assert read(kind, raw) == Unanswered("", "unreadable")
