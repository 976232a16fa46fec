"""The pure parts of `serve`: page sizes, orders and cursors (listing.py), OpenAI's expiry policies
(expiry.py), the endpoint check of an OpenAI batch's lines (endpoint_check.py), which output
files a finished batch has (openai_files.outputs_of) and the error answers for unknown routes and
server faults in each API's shape (app.py)."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from batchrelay.serve.app import server_fault, unknown_route
from batchrelay.serve.endpoint_check import MAX_NAMED, endpoint_errors
from batchrelay.serve.expiry import MAX_S, MIN_S, expired, expires_at, form_policy, policy_seconds
from batchrelay.serve.listing import descending, page_after, page_size
from batchrelay.serve.openai_files import outputs_of
from batchrelay.serve.params import BadParam

from .conftest import openai_line


@pytest.mark.parametrize(("raw", "expected"), [(None, 20), ("1", 1), ("100", 100), ("0", "limit"), ("101", "limit"),
                                               ("-3", "limit"), ("ten", "limit"), ("", "limit"), ("2.5", "limit")])
def test_a_page_size_is_within_the_apis_bounds(raw: str | None, expected: int | str) -> None:
    if isinstance(expected, int):
        assert page_size(raw, default=20, most=100) == expected
    else:
        with pytest.raises(BadParam) as e:
            page_size(raw, default=20, most=100)
        assert e.value.param == expected


@pytest.mark.parametrize(("raw", "expected"), [(None, True), ("desc", True), ("asc", False), ("ASC", None),
                                               ("", None), ("newest", None)])
def test_an_order_is_asc_or_desc(raw: str | None, expected: bool | None) -> None:
    if expected is None:
        with pytest.raises(BadParam, match="order"):
            descending(raw)
    else:
        assert descending(raw) is expected


ITEMS = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(("after", "limit", "page", "more"), [
    (None, 2, ["a", "b"], True), (None, 5, ITEMS, False), (None, 9, ITEMS, False), ("b", 2, ["c", "d"], True),
    ("c", 2, ["d", "e"], False), ("e", 3, [], False), ("a", 1, ["b"], True),
])
def test_a_page_is_the_items_after_its_cursor(after: str | None, limit: int, page: list[str], more: bool) -> None:
    assert page_after(ITEMS, str, after, limit) == (page, more)


def test_a_cursor_that_names_no_item_is_refused_rather_than_starting_over() -> None:
    with pytest.raises(BadParam) as e:
        page_after(ITEMS, str, "zz", 2)
    assert e.value.param == "after"
    assert page_after([], str, None, 3) == ([], False)


@pytest.mark.parametrize(("policy", "seconds"), [
    ({"anchor": "created_at", "seconds": MIN_S}, MIN_S), ({"anchor": "created_at", "seconds": MAX_S}, MAX_S),
    ({"anchor": "created_at", "seconds": MIN_S - 1}, None), ({"anchor": "created_at", "seconds": MAX_S + 1}, None),
    ({"anchor": "completed_at", "seconds": MIN_S}, None), ({"seconds": MIN_S}, None), ({"anchor": "created_at"}, None),
    ({"anchor": "created_at", "seconds": 7200, "extra": 1}, None), ({"anchor": "created_at", "seconds": "7200"}, None),
    ({"anchor": "created_at", "seconds": 7200.0}, None), ({"anchor": "created_at", "seconds": True}, None),
    ("24h", None), (7200, None), ([], None),
])
def test_an_expiry_policy_is_honoured_or_refused_by_name(policy: Any, seconds: int | None) -> None:
    if seconds is not None:
        assert policy_seconds(policy, "output_expires_after") == seconds
    else:
        with pytest.raises(BadParam) as e:
            policy_seconds(policy, "output_expires_after")
        assert e.value.param == "output_expires_after" and "output_expires_after" in str(e.value)


@pytest.mark.parametrize(("fields", "policy"), [
    ({"purpose": "batch"}, None),
    ({"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
     {"anchor": "created_at", "seconds": 3600}),
    ({"expires_after[seconds]": "soon"}, {"seconds": "soon"}),
    ({"expires_after": "3600"}, "3600"),
])
def test_an_expiry_policy_sent_as_form_fields(fields: dict[str, str], policy: Any) -> None:
    assert form_policy(fields, "expires_after") == policy


def test_a_file_expires_at_its_time() -> None:
    assert expires_at(100.0, None) is None and expires_at(100.0, "") is None
    assert expires_at(100.0, "3600") == 3700.0 and expires_at(100.0, 60) == 160.0
    assert not expired(None, 1e12) and not expired(3700.0, 3699.9) and expired(3700.0, 3700.0)


def _lines(*items: Any) -> io.BytesIO:
    return io.BytesIO(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in items))


def test_lines_for_the_batchs_endpoint_pass_and_unreadable_ones_stay_line_errors() -> None:
    stream = _lines(openai_line(1), b"not json", {"custom_id": "x", "url": "/v1/chat/completions", "body": {}},
                    b"   ", openai_line(2))
    assert endpoint_errors(stream, "/v1/chat/completions", max_line_bytes=10_000) == []


def test_each_line_for_another_endpoint_or_api_is_named() -> None:
    anthropic = {"custom_id": "a", "params": openai_line(3)["body"]}
    stream = _lines(openai_line(1), {**openai_line(2), "url": "/v1/messages"}, anthropic, openai_line(4)["body"])
    errors = endpoint_errors(stream, "/v1/chat/completions", max_line_bytes=10_000)
    assert [(e["line"], e["code"], e["param"]) for e in errors] == [
        (2, "url_mismatch", "url"), (3, "invalid_request", "url"), (4, "invalid_request", "url")]
    assert "'/v1/messages'" in errors[0]["message"] and "'/v1/chat/completions'" in errors[0]["message"]
    on_messages = endpoint_errors(_lines({**openai_line(1), "url": "/v1/messages"}, openai_line(2)), "/v1/messages",
                                  max_line_bytes=10_000)
    assert [(e["line"], e["code"]) for e in on_messages] == [(2, "url_mismatch")]


def test_past_so_many_lines_the_rest_are_counted_in_one_error() -> None:
    wrong = {**openai_line(1), "url": "/v1/messages"}
    errors = endpoint_errors(_lines(*[{**wrong, "custom_id": f"r{i}"} for i in range(MAX_NAMED + 7)]),
                             "/v1/chat/completions", max_line_bytes=10_000)
    assert len(errors) == MAX_NAMED + 1 and errors[-1]["line"] is None and "7 more" in errors[-1]["message"]


FINISHED = {"status": "completed", "finished_at": "1000.5", "succeeded": "3", "failed": "0", "invalid": "0",
            "cancelled": "0", "expired": "0"}


@pytest.mark.parametrize(("meta", "kinds"), [
    (FINISHED, ["output"]),
    ({**FINISHED, "invalid": "1"}, ["output", "errors"]),
    ({**FINISHED, "succeeded": "0", "expired": "2"}, ["errors"]),
    ({**FINISHED, "status": "in_progress"}, []),
    ({**FINISHED, "status": "cancelling"}, []),
    ({**FINISHED, "cancelled": "1", "status": "cancelled"}, ["output", "errors"]),
    ({**FINISHED, "invalid": "1", "serve_output_gone": "1"}, ["errors"]),
    ({**FINISHED, "invalid": "1", "serve_errors_gone": "1", "serve_output_gone": "1"}, []),
])
def test_a_finished_batch_has_an_output_and_an_error_file_while_it_has_such_records(meta: dict[str, str],
                                                                                     kinds: list[str]) -> None:
    outs = outputs_of("batch_abc", meta)
    assert [o.kind for o in outs] == kinds
    assert all(o.created_at == 1000.5 and o.expires_at is None for o in outs)
    assert [o.id for o in outs] == [f"file-abc-{k}" for k in kinds]


def test_an_output_file_expires_after_the_batchs_policy_from_when_it_finished() -> None:
    (out,) = outputs_of("batch_abc", {**FINISHED, "serve_output_expires_s": "3600"})
    assert out.expires_at == 4600.5


def _request(method: str, path: str) -> Request:
    return Request({"type": "http", "method": method, "path": path, "query_string": b"", "headers": []})


@pytest.mark.parametrize(("method", "path", "exc", "status", "body"), [
    ("GET", "/v1/nope", HTTPException(404), 404,
     {"error": {"message": "Invalid URL (GET /v1/nope)", "type": "invalid_request_error", "param": None, "code": None}}),
    ("PUT", "/v1/batches", HTTPException(405, headers={"Allow": "GET, POST"}), 405,
     {"error": {"message": "Invalid method for URL (PUT /v1/batches)", "type": "invalid_request_error", "param": None,
                "code": None}}),
    ("GET", "/v1/messages/x", HTTPException(404), 404,
     {"type": "error", "error": {"type": "not_found_error", "message": "Not found: GET /v1/messages/x"}}),
    ("PATCH", "/v1/messages/batches", HTTPException(405, headers={"Allow": "GET, POST"}), 405,
     {"type": "error", "error": {"type": "invalid_request_error",
                                 "message": "Method PATCH is not allowed on /v1/messages/batches"}}),
])
async def test_an_unknown_route_or_method_answers_in_its_apis_shape(method: str, path: str, exc: HTTPException,
                                                                     status: int, body: dict[str, Any]) -> None:
    r = await unknown_route(_request(method, path), exc)
    assert (r.status_code, orjson.loads(r.body), r.media_type) == (status, body, "application/json")
    assert r.headers.get("allow") == (exc.headers or {}).get("Allow")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/batches", {"error": {"message": "The server had an error while processing your request.",
                               "type": "server_error", "param": None, "code": None}}),
    ("/v1/messages/batches", {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}),
])
async def test_a_server_fault_answers_500_in_its_apis_shape(path: str, body: dict[str, Any]) -> None:
    r = await server_fault(_request("GET", path), RuntimeError("boom"))
    assert (r.status_code, orjson.loads(r.body)) == (500, body)
    assert b"boom" not in r.body
