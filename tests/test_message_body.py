"""The body of Anthropic's message-batch create, walked in flat memory (serve/message_body.py): each
request becomes one line, as its own bytes, however the body is laid out or cut into reads; anything
else is a BadParam naming the request, before anything is written for it."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrelay.serve import message_body
from batchrelay.serve.message_body import write_requests
from batchrelay.serve.params import BadParam

JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                    allow_infinity=False) | st.text(), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
REQUESTS = st.lists(st.fixed_dictionaries({"custom_id": st.text(max_size=12),
                                           "params": st.dictionaries(st.text(max_size=8), JSON, max_size=4)}),
                    min_size=1, max_size=6)
LAYOUTS: list[Callable[[Any], bytes]] = [
    orjson.dumps, lambda o: json.dumps(o, indent=2).encode(),
    lambda o: json.dumps(o, ensure_ascii=False, indent="\t", separators=(" ,\r\n", " : ")).encode()]


def walk(body: bytes, piece: int = 7, max_requests: int = 100, max_request_bytes: int = 2**20) -> list[bytes]:
    out = io.BytesIO()
    old, message_body.PIECE = message_body.PIECE, piece
    try:
        n = write_requests(io.BytesIO(body), out, max_requests=max_requests, max_request_bytes=max_request_bytes)
    finally:
        message_body.PIECE = old
    lines = out.getvalue().split(b"\n")
    assert lines.pop() == b"" and len(lines) == n
    return lines


@settings(max_examples=150, deadline=None)
@given(REQUESTS, st.sampled_from(LAYOUTS), st.sampled_from([1, 2, 5, 64, 2**20]))
def test_every_request_becomes_one_line_whatever_the_layout_and_reads(requests: list[dict[str, Any]],
                                                                      layout: Callable[[Any], bytes],
                                                                      piece: int) -> None:
    lines = walk(layout({"requests": requests}), piece)
    assert [orjson.loads(line) for line in lines] == requests
    assert all(b"\n" not in line and b"\r" not in line for line in lines)


def test_a_request_is_written_as_its_own_bytes() -> None:
    raw = b'{ "params" : {"t": 0.70, "n": 1e2, "x": 1.000000000000000000001, "s": "\\u00e9\\n"},\n "custom_id":"a"}'
    assert walk(b'{"requests":[' + raw + b"]}") == [raw.replace(b"\n", b" ")]


def request(i: int, extra: bytes = b"") -> bytes:
    return b'{"custom_id": "r%d", "params": {"model": "m"%s}}' % (i, extra)


@pytest.mark.parametrize(("body", "param", "message"), [
    (b"", "body", "must be a JSON object"),
    (b"[]", "body", "must be a JSON object"),
    (b"{}", "requests", "requests: must be a non-empty list"),
    (b'{"requests": []}', "requests", "requests: must be a non-empty list"),
    (b'{"requests": {}}', "requests", "requests: must be a non-empty list"),
    (b'{"requests": [' + request(0) + b", 1]}", "requests.1", "requests.1: must be an object of exactly"),
    (b'{"requests": [{"custom_id": "x", "params": {}, "more": 1}]}', "requests.0", "requests.0: must be an object"),
    (b'{"requests": [{"custom_id": 1, "params": {}}]}', "requests.0", "requests.0: must be an object"),
    (b'{"requests": [' + request(0) + b", " + request(1, b', "a": [}') + b"]}", "requests.1", "not valid JSON"),
    (b'{"requests": [' + request(0) + b"," + request(1) + b"," + request(2) + b"]}", "requests",
     "requests: at most 2 per batch ([serve] max_batch_requests)"),
    (b'{"requests": [' + request(0, b', "big": "' + b"x" * 200 + b'"') + b"]}", "requests.0",
     "requests.0: over 100 bytes ([worker] max_line_bytes)"),
    (b'{"requests": [' + request(0) + b'], "model": "m"}', "model", "model: Extra inputs are not permitted"),
    (b'{"requests": [' + request(0) + b'], "requests": [' + request(1) + b"]}", "requests", "given twice"),
    (b'{"requests": [' + request(0) + b",]}", "body", "not valid JSON"),
    (b'{"requests": [' + request(0) + b"]} []", "body", "not valid JSON"),
    (b'{"requests": [' + request(0, b', "s": "\\"}'), "body", "not valid JSON (it ends early)"),
    (b'{"requests": [' + request(0), "body", "not valid JSON"),
    (b'{"requests" [' + request(0) + b"]}", "body", "not valid JSON"),
], ids=["empty", "array", "no-requests", "no-request", "requests-not-a-list", "not-an-object", "more-keys",
        "custom-id-not-a-string", "bad-json-inside", "too-many", "too-long", "unknown-key", "requests-twice",
        "trailing-comma", "trailing-data", "unended-string", "unended-list", "no-colon"])
def test_a_body_that_is_not_a_message_batch_names_the_request(body: bytes, param: str, message: str) -> None:
    for piece in (3, 2**20):
        with pytest.raises(BadParam) as e:
            walk(body, piece, max_requests=2, max_request_bytes=100)
        assert e.value.param == param and message in str(e.value)


def test_an_escaped_key_is_read_as_its_value() -> None:
    assert walk(b'{"re\\u0071uests": [' + request(0) + b"]}") == [request(0)]


def test_memory_stays_flat_whatever_the_body_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_body, "PIECE", 64 * 1024)
    peaks = []
    for n in (4_000, 20_000):
        body = b'{"requests": [' + b",".join(request(i, b', "c": "' + b"q" * 500 + b'"') for i in range(n)) + b"]}"
        tracemalloc.start()
        try:
            with open(os.devnull, "wb") as out:
                write_requests(io.BytesIO(body), out, max_requests=n, max_request_bytes=2**20)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < 512 * 1024 and peaks[1] < peaks[0] * 1.2, peaks  # 2 MiB, then 10 MiB of body
