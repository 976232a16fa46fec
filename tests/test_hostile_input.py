"""Hostile input (issue 6): every bad line is a line-numbered error and nothing else is affected.

Over-long lines are read in bounded pieces, deeply nested JSON, invalid UTF-8, NUL bytes, lone
surrogates and non-object lines are bad lines, a BOM and CRLF endings are accepted, and duplicate
custom_ids are caught in Redis across blocks while submitting.
"""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from batchrelay.config.settings import WorkerConfig
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store import submit
from batchrelay.store.store import ERR, Store
from batchrelay.store.submit import submit_stream
from batchrelay.wire.jobs import (
    DISCARD_PIECE,
    MAX_DEPTH,
    MAX_LINE_BYTES,
    URL_DIALECTS,
    BadLine,
    JobLine,
    _AnthropicLine,
    _Body,
    _OpenAILine,
    iter_jobs,
    parse_line,
)

from .conftest import worker_runtime

MESSAGES = [{"role": "user", "content": "Hello!"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
MSG = {"model": "claude-3-5-haiku", "max_tokens": 50, "messages": MESSAGES}


def openai(custom_id: str, body: Any = None, url: str = "/v1/chat/completions") -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": CHAT if body is None else body})


def anthropic(custom_id: str, params: Any = None) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "params": MSG if params is None else params})


def items_of(data: bytes, **kw: Any) -> list[JobLine | BadLine]:
    return list(iter_jobs(io.BytesIO(data), **kw))


def only(data: bytes, **kw: Any) -> JobLine | BadLine:
    (item,) = items_of(data, **kw)
    return item


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """`depth` levels of arrays around `inner`."""
    return b"[" * depth + inner + b"]" * depth


def content(raw: bytes) -> bytes:
    """A bare chat body whose message content is the JSON text `raw`."""
    return b'{"model":"m","messages":[{"role":"user","content":' + raw + b"}]}"


class Recording:
    """A stream that remembers the largest piece any readline returned."""

    def __init__(self, data: bytes) -> None:
        self.stream, self.largest, self.calls = io.BytesIO(data), 0, 0

    def readline(self, size: int = -1, /) -> bytes:
        raw = self.stream.readline(size)
        self.largest, self.calls = max(self.largest, len(raw)), self.calls + 1
        return raw


# -- line size limit ---------------------------------------------------------------------------


def test_line_over_the_limit_is_a_bad_line_and_the_following_lines_keep_their_numbers() -> None:
    long = b'{"model": "' + b"x" * 5000 + b'"}'
    items = items_of(openai("a") + b"\n" + long + b"\n\n" + openai("b") + b"\n", max_line_bytes=1024)
    assert [(type(i).__name__, i.line) for i in items] == [("JobLine", 1), ("BadLine", 2), ("JobLine", 4)]
    bad = items[1]
    assert isinstance(bad, BadLine)
    assert bad.reason == f"line is {len(long):,} bytes, over the limit of 1,024 bytes (max_line_bytes)"


@pytest.mark.parametrize("ending", [b"\n", b""], ids=["newline", "eof"])
def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not(ending: bytes) -> None:
    line = openai("a")
    assert isinstance(only(line + ending, max_line_bytes=len(line)), JobLine)
    bad = only(line + ending, max_line_bytes=len(line) - 1)
    assert isinstance(bad, BadLine)
    assert bad.reason.startswith(f"line is {len(line):,} bytes")


def test_a_ten_megabyte_line_is_never_held_whole() -> None:
    size = 10 * 1024 * 1024
    data = openai("a") + b"\n" + b'{"model": "' + b"x" * (size - 13) + b'"}\n' + openai("b") + b"\n"
    stream = Recording(data)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        items = list(iter_jobs(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(type(i).__name__, i.line) for i in items] == [("JobLine", 1), ("BadLine", 2), ("JobLine", 3)]
    assert items[1].reason == f"line is {size:,} bytes, over the limit of {MAX_LINE_BYTES:,} bytes (max_line_bytes)"  # type: ignore[union-attr]
    assert stream.largest == MAX_LINE_BYTES + 1
    assert peak < MAX_LINE_BYTES + DISCARD_PIECE  # the first piece, never the whole 10 MB


def test_a_line_under_a_raised_limit_is_parsed_whatever_its_size() -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "y" * (10 * 1024 * 1024)}]}
    job = only(openai("big", body) + b"\n", max_line_bytes=16 * 1024 * 1024)
    assert isinstance(job, JobLine)
    assert job.body == body


def test_a_long_line_of_whitespace_is_blank() -> None:
    items = items_of(b" " * 5000 + b"\r\n" + openai("a") + b"\n", max_line_bytes=1024)
    assert [(type(i).__name__, i.line) for i in items] == [("JobLine", 2)]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        items_of(b"{}\n", max_line_bytes=0)


def test_the_limit_is_a_worker_setting_with_a_floor() -> None:
    assert WorkerConfig().max_line_bytes == MAX_LINE_BYTES
    assert WorkerConfig(max_line_bytes=2048).max_line_bytes == 2048
    with pytest.raises(ValidationError):
        WorkerConfig(max_line_bytes=100)


# -- nesting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        nested(100_000),
        nested(1025),  # past orjson's own limit
        content(nested(1000)),  # orjson reads it but could not write it back
        content(nested(MAX_DEPTH)),
        content(b'{"a":' * 300 + b"1" + b"}" * 300),
        openai("deep", {**CHAT, "tools": orjson.loads(nested(MAX_DEPTH))}),
    ],
    ids=["100k-arrays", "1025-arrays", "1000-in-content", "limit-in-content", "300-objects", "in-openai-body"],
)
def test_deeply_nested_json_is_a_bad_line(raw: bytes) -> None:
    bad = parse_line(raw, 9)
    assert isinstance(bad, BadLine)
    assert bad.line == 9
    assert bad.reason == f"JSON nested more than {MAX_DEPTH} levels deep"


def test_nesting_up_to_the_limit_is_accepted_and_survives_storage() -> None:
    # the line is level 1, messages 2, a message 3, its content 4
    job = parse_line(content(nested(MAX_DEPTH - 3)), 1)
    assert isinstance(job, JobLine)
    assert JobLine.from_json(job.to_json()) == job


def test_many_flat_brackets_are_not_nesting() -> None:
    body = {**CHAT, "stop": [[] for _ in range(5000)]}
    assert isinstance(parse_line(orjson.dumps(body), 1), JobLine)


# -- encoding and bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "at"),
    [
        (b'{"model": "gpt\xff"}', 14),
        (b'{"model": "\xc0\xaf"}', 11),  # overlong encoding of "/"
        (b'{"model": "\xed\xa0\x80"}', 11),  # a surrogate, UTF-8 encoded
        (b'{"model": "caf\xc3', 14),  # cut in the middle of a character
        (b"\x80", 0),
    ],
    ids=["ff", "overlong", "encoded-surrogate", "truncated", "continuation-byte"],
)
def test_invalid_utf8_is_a_bad_line_with_its_byte_offset(raw: bytes, at: int) -> None:
    bad = parse_line(raw, 3)
    assert bad == BadLine(3, f"invalid UTF-8 at byte {at}")


@pytest.mark.parametrize(
    ("raw", "got"),
    [(b"[1, 2]", "list"), (b"[]", "list"), (b'"text"', "str"), (b"42", "int"), (b"-1.5e3", "float"),
     (b"null", "null"), (b"true", "bool"), (b"false", "bool")],
)
def test_non_object_lines_are_bad_lines(raw: bytes, got: str) -> None:
    assert parse_line(raw, 4) == BadLine(4, f"expected a JSON object, got {got}")


def test_a_bom_on_the_first_line_is_accepted() -> None:
    items = items_of(b"\xef\xbb\xbf" + openai("a") + b"\n" + openai("b") + b"\n")
    assert [(i.custom_id, i.line) for i in items if isinstance(i, JobLine)] == [("a", 1), ("b", 2)]


def test_a_bom_alone_on_the_first_line_is_a_blank_line() -> None:
    assert [i.line for i in items_of(b"\xef\xbb\xbf\r\n" + openai("a") + b"\n")] == [2]


def test_a_bom_on_a_later_line_is_a_bad_line() -> None:
    second = items_of(openai("a") + b"\n\xef\xbb\xbf" + openai("b") + b"\n")[1]
    assert isinstance(second, BadLine)
    assert second.line == 2
    assert "invalid JSON" in second.reason


def test_crlf_and_lf_endings_can_be_mixed() -> None:
    items = items_of(openai("a") + b"\r\n" + openai("b") + b"\n\r\n" + openai("c") + b"\r\n")
    assert [(i.custom_id, i.line) for i in items if isinstance(i, JobLine)] == [("a", 1), ("b", 2), ("c", 4)]


@pytest.mark.parametrize(
    "raw",
    [content(b'"a\x00b"'), content(b'"x"') + b"\x00", b"\x00", b"\x00" * 10, b'{"model"\x00: 1}'],
    ids=["in-string", "after-document", "alone", "several", "between-tokens"],
)
def test_raw_nul_bytes_make_a_bad_line(raw: bytes) -> None:
    bad = parse_line(raw, 2)
    assert isinstance(bad, BadLine)
    assert bad.reason.startswith("invalid JSON")


def test_an_escaped_nul_is_just_a_character() -> None:
    job = parse_line(content(b'"a\\u0000b"'), 1)
    assert isinstance(job, JobLine)
    assert job.body["messages"][0]["content"] == "a\x00b"


@pytest.mark.parametrize(
    "escape", [b'"\\ud800"', b'"\\udfff"', b'"x\\ud83d"', b'"\\ude00\\ud83d"'],
    ids=["high", "low", "high-at-end", "reversed-pair"],
)
def test_lone_surrogate_escapes_are_bad_lines(escape: bytes) -> None:
    bad = parse_line(content(escape), 6)
    assert isinstance(bad, BadLine)
    assert bad.line == 6
    assert bad.reason.startswith("invalid JSON")
    assert "surrogate" in bad.reason


def test_a_surrogate_pair_escape_is_one_character() -> None:
    job = parse_line(content(b'"\\ud83d\\ude00"'), 1)
    assert isinstance(job, JobLine)
    assert job.body["messages"][0]["content"] == "\U0001f600"


def test_invalid_json_reason_gives_the_column_but_not_the_content() -> None:
    bad = parse_line(b'{"model": "secret-ish", ' + b"x" * 100_000, 1)
    assert isinstance(bad, BadLine)
    assert bad.reason.startswith("invalid JSON: ")
    assert "(column 25)" in bad.reason
    assert "secret-ish" not in bad.reason


def test_a_huge_duplicate_custom_id_gives_a_short_reason() -> None:
    cid = "z" * 10_000
    bad = items_of(openai(cid) + b"\n" + anthropic(cid) + b"\n")[1]
    assert isinstance(bad, BadLine)
    assert len(bad.reason) <= 300
    assert bad.custom_id == cid


def test_duplicates_of_bare_line_ids_are_caught_too() -> None:
    bad = items_of(openai("line-2") + b"\n" + orjson.dumps(CHAT) + b"\n")[1]
    assert bad == BadLine(2, "duplicate custom_id 'line-2' (first on line 1)", "line-2", "bare")


# -- properties --------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
json_scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                                      allow_infinity=False) | text
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4),
                          max_leaves=12)
block = st.fixed_dictionaries({"type": st.just("text"), "text": text})
chat_message = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]), "content": text | st.lists(block, max_size=3)})
chat_body = st.fixed_dictionaries(
    {"model": text.filter(bool), "messages": st.lists(chat_message, min_size=1, max_size=4)},
    optional={"temperature": st.floats(0, 2), "max_tokens": st.integers(1, 100_000), "stream": st.booleans(),
              "n": st.integers(1, 4), "metadata": st.dictionaries(text, json_value, max_size=3),
              "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
                  {"name": text, "parameters": st.dictionaries(text, json_value, max_size=3)})}), max_size=2)},
)
messages_body = st.fixed_dictionaries(
    {"model": text.filter(bool), "max_tokens": st.integers(1, 100_000),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                 "content": text | st.lists(block, max_size=3)}),
                          min_size=1, max_size=4)},
    optional={"system": text | st.lists(block, max_size=2), "temperature": st.floats(0, 1),
              "stop_sequences": st.lists(text, max_size=3), "metadata": st.dictionaries(text, json_value, max_size=3)},
)
custom_id = text.filter(bool)


@st.composite
def request_line(draw: st.DrawFn) -> tuple[bytes, str | None, str, str, dict[str, Any]]:
    """(line, custom_id or None for bare, format, dialect, body) of a valid line."""
    dialect = draw(st.sampled_from(["chat", "messages"]))
    body = draw(chat_body if dialect == "chat" else messages_body)
    fmt = draw(st.sampled_from(["openai", "anthropic", "bare"] if dialect == "messages" else ["openai", "bare"]))
    cid: str | None = draw(custom_id)
    if fmt == "openai":
        url = "/v1/chat/completions" if dialect == "chat" else "/v1/messages"
        line: dict[str, Any] = {"custom_id": cid, "url": url, "body": body}
        if draw(st.booleans()):
            line["method"] = "POST"
    elif fmt == "anthropic":
        line = {"custom_id": cid, "params": body}
    else:
        line, cid = body, None
    keys = list(line)
    order = draw(st.permutations(keys))
    return orjson.dumps({k: line[k] for k in order}), cid, fmt, dialect, body


@settings(deadline=None, max_examples=300)
@given(request_line(), st.integers(1, 10**9))
def test_valid_lines_of_every_format_are_accepted_with_their_body_unchanged(
    case: tuple[bytes, str | None, str, str, dict[str, Any]], line: int
) -> None:
    raw, cid, fmt, dialect, body = case
    job = parse_line(raw, line, default_dialect=dialect)  # type: ignore[arg-type]
    assert job == JobLine(line, cid or f"line-{line}", fmt, dialect, body)  # type: ignore[arg-type]
    assert JobLine.from_json(job.to_json()) == job
    assert JobLine.from_json(job.to_json().decode()) == job


lines = st.lists(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
    | st.sampled_from([b"", b"  ", b"\r", b"\t \r", b"\xef\xbb\xbf", b"\x00", b"[]", b"null", b'"\\ud800"'])
    | request_line().map(lambda c: c[0])
    | json_value.map(orjson.dumps),
    max_size=25,
)


@settings(deadline=None, max_examples=300)
@given(lines, st.sampled_from(["\n", "\r\n"]), st.booleans(), st.sampled_from([1, 16, 64, 200, MAX_LINE_BYTES]))
def test_iter_jobs_never_raises_and_numbers_every_non_blank_line(
    raw_lines: list[bytes], ending: str, final_newline: bool, limit: int
) -> None:
    data = ending.encode().join(raw_lines) + (ending.encode() if final_newline and raw_lines else b"")
    items = items_of(data, max_line_bytes=limit)

    physical = data.split(b"\n") if data else []
    if physical and physical[-1] == b"":
        physical.pop()  # the file's last newline ends a line, it does not start one
    if physical and physical[0].startswith(b"\xef\xbb\xbf"):
        physical[0] = physical[0][3:]
    expected = [n for n, line in enumerate(physical, start=1) if line.strip()]
    assert [i.line for i in items] == expected
    for item, n in zip(items, expected, strict=True):
        if isinstance(item, BadLine):
            assert isinstance(item.reason, str)
            assert 0 < len(item.reason) <= 300
        if len(physical[n - 1]) > limit:
            assert isinstance(item, BadLine)
            assert "(max_line_bytes)" in item.reason


# the parser takes a shortcut for plainly valid lines; it must agree with the pydantic models
key = st.sampled_from(["custom_id", "method", "url", "body", "params", "model", "messages", "role"]) | text
shaped = st.recursive(
    json_scalar | st.sampled_from(["POST", "GET", *URL_DIALECTS, "/v1/embeddings", ""]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(key, c, max_size=5),
    max_leaves=15,
)


def reference(data: dict[str, Any]) -> bool:
    """Whether the pydantic models alone accept the object."""
    try:
        if "params" in data:
            _Body.model_validate(_AnthropicLine.model_validate(data).params)
        elif "body" in data or "url" in data:
            o = _OpenAILine.model_validate(data)
            _Body.model_validate(o.body)
            return o.url in URL_DIALECTS
        else:
            _Body.model_validate(data)
    except ValidationError:
        return False
    return True


@settings(deadline=None, max_examples=500)
@given(st.dictionaries(key, shaped, max_size=5) | request_line().map(lambda c: orjson.loads(c[0])))
def test_the_parser_accepts_exactly_what_the_models_accept(data: dict[str, Any]) -> None:
    item = parse_line(orjson.dumps(data), 1)
    assert isinstance(item, JobLine) == reference(data)


# -- submitting through Redis ------------------------------------------------------------------


def hostile_file() -> tuple[bytes, dict[int, str], dict[int, str]]:
    """(file, valid line -> custom_id, bad line -> a part of its reason); its blocks are 7 lines long
    when FLUSH_LINES is 7, so duplicates come both from earlier blocks and from the same block."""
    lines: list[bytes] = []
    valid: dict[int, str] = {}
    bad: dict[int, str] = {}

    def good(raw: bytes, cid: str) -> None:
        lines.append(raw)
        valid[len(lines)] = cid

    def hostile(raw: bytes, why: str) -> None:
        lines.append(raw)
        bad[len(lines)] = why

    good(b"\xef\xbb\xbf" + openai("bom-first"), "bom-first")
    for i in range(1, 7):
        good(openai(f"r{i}") if i % 2 else anthropic(f"r{i}"), f"r{i}")
    hostile(b'{"custom_id": "x", "body": ', "invalid JSON")
    hostile(b'{"model": "gpt\xff"}', "invalid UTF-8 at byte 14")
    hostile(b"A" * 9 * 1024 * 1024, "over the limit of 8,388,608 bytes (max_line_bytes)")
    hostile(nested(100_000), "nested more than")
    hostile(content(nested(500)), "nested more than")
    hostile(b"[1, 2, 3]", "got list")
    hostile(b'"a string"', "got str")
    hostile(b"12", "got int")
    hostile(b"null", "got null")
    hostile(content(b'"nul\x00"'), "control character")
    hostile(content(b'"\\udc00"'), "surrogate")
    hostile(openai("r1"), "duplicate custom_id 'r1' (first on line 2)")  # from an earlier block
    lines.append(b"")
    good(openai("fresh") + b"\r", "fresh")
    hostile(anthropic("fresh"), "duplicate custom_id 'fresh' (first on line 21)")  # from this block
    hostile(openai("r7", url="/v1/embeddings"), "unsupported url")  # a bad line takes no id
    good(openai("r7"), "r7")
    good(orjson.dumps(CHAT), "line-25")
    hostile(openai("line-25"), "duplicate custom_id 'line-25' (first on line 25)")
    for i in range(8, 40):
        good(openai(f"r{i}"), f"r{i}")
    hostile(anthropic("r8"), "duplicate custom_id 'r8' (first on line 27)")
    return b"\n".join(lines) + b"\n", valid, bad


async def test_submit_turns_every_hostile_line_into_its_error_and_runs_the_rest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit, "FLUSH_LINES", 7)
    data, valid, bad = hostile_file()
    res = await submit_stream(store, io.BytesIO(data), BatchSpec(name="hostile", chunk_size=4), source="h.jsonl")

    info = await store.info(res.batch_id)
    assert (res.valid, res.invalid, res.total) == (len(valid), len(bad), len(valid) + len(bad))
    assert (info.total, info.invalid, info.pending, info.status) == (res.total, len(bad), len(valid), "in_progress")
    assert info.max_line == max(valid | bad)

    pending = {int(x) for x in await store.redis.smembers(store.keys.pending(res.batch_id))}  # type: ignore[misc]
    assert pending == set(valid)
    chunks = await store.chunk_map(res.batch_id)
    assert sorted(line for ls in chunks.values() for line in ls) == sorted(valid)
    queued = {m.decode() for m in await store.redis.zrange(store.keys.queue, 0, -1)}
    assert queued == set(chunks)

    results = await store.redis.hgetall(store.keys.results(res.batch_id))  # type: ignore[misc]
    assert {int(k) for k in results} == set(bad)
    for line, why in bad.items():
        raw = results[str(line).encode()]
        assert raw.startswith(ERR)
        record = orjson.loads(raw[1:])
        assert record["batchrelay"] == {"line": line, "error": "invalid_input"}
        message = record["error"]["message"] if "error" in record else record["result"]["error"]["error"]["message"]
        assert message.startswith(f"line {line}: ")
        assert why in message
        assert len(raw) < 1000

    ids = await store.redis.hgetall(store.keys.custom_ids(res.batch_id))  # type: ignore[misc]
    assert {k.decode(): int(v) for k, v in ids.items()} == {cid: line for line, cid in valid.items()}

    claim = await store.claim(res.batch_id, sorted(valid))
    assert {(j.line, j.custom_id) for j in claim.jobs} == set(valid.items())


async def test_hostile_batch_runs_to_completion(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit, "FLUSH_LINES", 7)
    data, valid, bad = hostile_file()
    res = await submit_stream(store, io.BytesIO(data), BatchSpec(name="hostile", chunk_size=4), source="h.jsonl")
    with SimulatorProcess({}) as base:
        async with worker_runtime(store, base, concurrency=8, chunk_size=4) as rt:
            for cid, lines_ in (await store.chunk_map(res.batch_id)).items():
                await rt.run_chunk(res.batch_id, lines_, cid)
    info = await store.info(res.batch_id)
    assert (info.status, info.succeeded, info.failed, info.invalid) == ("completed", len(valid), 0, len(bad))


async def test_duplicates_are_caught_across_many_default_blocks(store: Store) -> None:
    n = submit.FLUSH_LINES + 100
    data = b"".join(openai(f"r{i}") + b"\n" for i in range(n)) + openai("r3") + b"\n" + openai(f"r{n - 1}") + b"\n"
    res = await submit_stream(store, io.BytesIO(data), BatchSpec(), source="t")
    assert (res.valid, res.invalid) == (n, 2)
    results = await store.redis.hgetall(store.keys.results(res.batch_id))  # type: ignore[misc]
    messages = sorted(orjson.loads(v[1:])["error"]["message"] for v in results.values())
    assert messages == [f"line {n + 1}: duplicate custom_id 'r3' (first on line 4)",
                        f"line {n + 2}: duplicate custom_id 'r{n - 1}' (first on line {n})"]


async def test_long_lines_are_written_in_smaller_blocks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit, "FLUSH_BYTES", 4096)
    body = {**CHAT, "messages": [{"role": "user", "content": "w" * 1000}]}
    data = b"".join(openai(f"r{i}", body) + b"\n" for i in range(40)) + openai("r0") + b"\n"
    progress: list[int] = []
    res = await submit_stream(store, io.BytesIO(data), BatchSpec(), source="t", on_progress=progress.append)
    assert (res.valid, res.invalid) == (40, 1)
    assert len(progress) >= 10
    assert progress == sorted(progress)
    assert progress[-1] == 41


async def test_submit_takes_its_line_limit(store: Store) -> None:
    data = openai("a") + b"\n" + openai("b", {**CHAT, "user": "u" * 3000}) + b"\n"
    res = await submit_stream(store, io.BytesIO(data), BatchSpec(max_line_bytes=2048), source="t")
    assert (res.valid, res.invalid) == (1, 1)
    (record,) = (await store.redis.hgetall(store.keys.results(res.batch_id))).values()  # type: ignore[misc]
    assert "over the limit of 2,048 bytes" in orjson.loads(record[1:])["error"]["message"]


async def test_a_block_that_cannot_be_written_fails_the_submit_cleanly(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit, "FLUSH_LINES", 5)
    real, calls = store.add_lines, []

    async def flaky(*a: Any) -> None:
        calls.append(a)
        if len(calls) == 2:
            raise ConnectionError("Redis went away")
        await real(*a)

    monkeypatch.setattr(store, "add_lines", flaky)
    data = b"".join(openai(f"r{i}") + b"\n" for i in range(30))
    with pytest.raises(ConnectionError, match="Redis went away"):
        await submit_stream(store, io.BytesIO(data), BatchSpec(), source="t")
    (batch_id,) = [b.decode() for b in await store.redis.zrange(store.keys.batches, 0, -1)]
    info = await store.info(batch_id)
    assert info.status == "failed"
    assert len(calls) == 2  # nothing was written after the failed block


async def test_a_file_that_breaks_while_a_block_is_being_written_fails_the_submit(store: Store) -> None:
    class Breaking(io.BytesIO):
        """Fails just after the first block was handed over to be written."""

        lines = 0

        def readline(self, size: int | None = -1, /) -> bytes:
            self.lines += 1
            if self.lines > submit.FLUSH_LINES + 10:
                raise OSError("disk went away")
            return super().readline(size)

    data = b"".join(openai(f"r{i}") + b"\n" for i in range(submit.FLUSH_LINES + 500))
    with pytest.raises(OSError, match="disk went away"):
        await submit_stream(store, Breaking(data), BatchSpec(), source="t")
    (batch_id,) = [b.decode() for b in await store.redis.zrange(store.keys.batches, 0, -1)]
    assert (await store.info(batch_id)).status == "failed"
