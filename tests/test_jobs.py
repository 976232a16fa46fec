"""Input lines → jobs: format detection, bad lines with line numbers, streaming."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrelay.wire.jobs import MAX_REASON, BadLine, JobLine, anthropic_custom_id, iter_jobs, parse_line

MESSAGES = [{"role": "user", "content": "Hello!"}]
CHAT_BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2}
MSG_BODY = {"model": "claude-3-5-haiku", "max_tokens": 100, "system": "Be brief.", "messages": MESSAGES}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def openai_line(custom_id: str, url: str = "/v1/chat/completions", body: Any = None) -> bytes:
    return dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": CHAT_BODY if body is None else body})


def anthropic_line(custom_id: str, params: Any = None) -> bytes:
    return dumps({"custom_id": custom_id, "params": MSG_BODY if params is None else params})


def jobs_of(*lines: bytes, **kw: Any) -> list[JobLine | BadLine]:
    return list(iter_jobs(io.BytesIO(b"\n".join(lines) + b"\n"), **kw))


# -- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kw", "custom_id", "fmt", "dialect", "body"),
    [
        (openai_line("req-1"), {}, "req-1", "openai", "chat", CHAT_BODY),
        (openai_line("req-2", "/v1/messages", MSG_BODY), {}, "req-2", "openai", "messages", MSG_BODY),
        (anthropic_line("msg-1"), {}, "msg-1", "anthropic", "messages", MSG_BODY),
        (dumps(CHAT_BODY), {}, "line-5", "bare", "chat", CHAT_BODY),
        (dumps(MSG_BODY), {"default_dialect": "messages"}, "line-5", "bare", "messages", MSG_BODY),
    ],
    ids=["openai-chat-url", "openai-messages-url", "anthropic-params", "bare-body", "bare-body-messages-default"],
)
def test_each_input_format_is_detected_with_its_custom_id_and_dialect(
    raw: bytes, kw: dict[str, Any], custom_id: str, fmt: str, dialect: str, body: dict[str, Any]
) -> None:
    job = parse_line(raw, 5, **kw)
    assert job == JobLine(5, custom_id, fmt, dialect, body)  # type: ignore[arg-type]


def test_openai_line_without_method_defaults_to_post() -> None:
    raw = dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": CHAT_BODY})
    assert isinstance(parse_line(raw, 1), JobLine)


def test_extra_body_fields_pass_through_untouched() -> None:
    body = {**CHAT_BODY, "tools": [{"type": "function", "function": {"name": "f"}}], "seed": 7}
    job = parse_line(openai_line("a", body=body), 1)
    assert isinstance(job, JobLine)
    assert job.body == body


# -- bad lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason_parts"),
    [
        (b'{"model": "gpt-4o", "messages": [', ["invalid JSON"]),
        (b'{"model": "gpt-4o\xff\xfe", "messages": []}', ["UTF-8"]),
        (b"[1, 2, 3]", ["expected a JSON object", "list"]),
        (b'"just a string"', ["expected a JSON object", "str"]),
        (b"null", ["expected a JSON object", "null"]),
        (dumps({"messages": MESSAGES}), ["model", "required"]),
        (dumps({"model": "", "messages": MESSAGES}), ["model"]),
        (dumps({"model": "gpt-4o"}), ["messages", "required"]),
        (dumps({"model": "gpt-4o", "messages": []}), ["messages", "at least 1"]),
        (openai_line("a", body={"messages": MESSAGES}), ["body.model", "required"]),
        (openai_line("a", body={"model": "gpt-4o", "messages": []}), ["body.messages"]),
        (openai_line("a", url="/v1/embeddings"), ["unsupported url", "/v1/embeddings", "/v1/chat/completions"]),
        (anthropic_line("a", params={"model": "claude", "max_tokens": 5}), ["params.messages", "required"]),
        (anthropic_line("a", params={"messages": MESSAGES}), ["params.model", "required"]),
        (dumps({"custom_id": "", "url": "/v1/chat/completions", "body": CHAT_BODY}), ["custom_id"]),
    ],
    ids=[
        "invalid-json", "invalid-utf8", "array", "string", "null", "bare-missing-model", "bare-empty-model",
        "bare-missing-messages", "bare-empty-messages", "openai-missing-model", "openai-empty-messages",
        "unsupported-url", "anthropic-missing-messages", "anthropic-missing-model", "empty-custom-id",
    ],
)
def test_unusable_line_becomes_a_bad_line_with_its_number_and_a_reason(raw: bytes, reason_parts: list[str]) -> None:
    bad = parse_line(raw, 42)
    assert isinstance(bad, BadLine)
    assert bad.line == 42
    for part in reason_parts:
        assert part in bad.reason


def test_bad_batch_line_keeps_its_custom_id_and_format_for_the_error_record() -> None:
    bad = parse_line(anthropic_line("msg-9", params={"model": "claude"}), 3)
    assert isinstance(bad, BadLine)
    assert (bad.custom_id, bad.fmt) == ("msg-9", "anthropic")


def test_very_long_reason_is_shortened() -> None:
    bad = parse_line(openai_line("a", url="/v1/" + "x" * 2000), 1)
    assert isinstance(bad, BadLine)
    assert len(bad.reason) <= 300


def test_bad_lines_carry_physical_line_numbers_and_do_not_stop_the_rest_of_the_file() -> None:
    items = jobs_of(openai_line("a"), b"{not json", openai_line("b"), b"[]", openai_line("c"))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("JobLine", 1), ("BadLine", 2), ("JobLine", 3), ("BadLine", 4), ("JobLine", 5),
    ]


def test_duplicate_custom_id_marks_the_second_occurrence_bad_and_keeps_the_first() -> None:
    first, other, second = jobs_of(openai_line("same"), openai_line("other"), anthropic_line("same"))
    assert isinstance(first, JobLine)
    assert first.custom_id == "same"
    assert isinstance(other, JobLine)
    assert isinstance(second, BadLine)
    assert second.line == 3
    assert "duplicate custom_id" in second.reason
    assert "'same'" in second.reason
    assert "(first on line 1)" in second.reason
    assert second.custom_id == "same"


def test_duplicate_check_can_be_left_to_the_caller() -> None:
    items = jobs_of(openai_line("same"), openai_line("same"), dedupe=False)
    assert items == [JobLine(1, "same", "openai", "chat", CHAT_BODY), JobLine(2, "same", "openai", "chat", CHAT_BODY)]


def test_bad_line_does_not_claim_its_custom_id() -> None:
    items = jobs_of(openai_line("x", url="/v1/embeddings"), openai_line("x"))
    assert isinstance(items[0], BadLine)
    assert isinstance(items[1], JobLine)


def test_bare_lines_never_collide_because_their_ids_are_line_numbers() -> None:
    items = jobs_of(dumps(CHAT_BODY), dumps(CHAT_BODY), dumps(CHAT_BODY))
    assert [i.custom_id for i in items] == ["line-1", "line-2", "line-3"]


def test_blank_lines_are_skipped_but_still_count_towards_line_numbers() -> None:
    items = jobs_of(b"", openai_line("a"), b"   ", b"\t\r", dumps(CHAT_BODY), b"")
    assert [(i.custom_id, i.line) for i in items] == [("a", 2), ("line-5", 5)]


def test_windows_line_endings_are_accepted() -> None:
    items = list(iter_jobs(io.BytesIO(openai_line("a") + b"\r\n" + openai_line("b") + b"\r\n")))
    assert [i.custom_id for i in items if isinstance(i, JobLine)] == ["a", "b"]


def test_default_dialect_applies_to_bare_lines_only() -> None:
    items = jobs_of(dumps(CHAT_BODY), openai_line("a"), default_dialect="messages")
    assert [i.dialect for i in items if isinstance(i, JobLine)] == ["messages", "chat"]


# -- streaming ---------------------------------------------------------------------------------


class BrokenAfter:
    """A file whose lines run out into an error: reading past line `n` raises."""

    def __init__(self, lines: list[bytes], n: int) -> None:
        self.lines, self.n, self.read = lines, n, 0

    def readline(self, size: int = -1, /) -> bytes:
        if self.read >= len(self.lines):
            return b""
        if self.read >= self.n:
            raise OSError("disk went away")
        self.read += 1
        return self.lines[self.read - 1]


def test_iter_jobs_streams_and_does_not_read_ahead_of_the_caller() -> None:
    stream = BrokenAfter([openai_line(f"r{i}") + b"\n" for i in range(10)], n=3)
    it = iter_jobs(stream)
    first = next(it)
    assert isinstance(first, JobLine)
    assert first.custom_id == "r0"
    assert stream.read == 1
    assert [j.custom_id for j in (next(it), next(it))] == ["r1", "r2"]
    with pytest.raises(OSError, match="disk went away"):
        next(it)


def test_iter_jobs_yields_the_first_job_of_a_large_file_after_reading_one_line() -> None:
    lines = [dumps(CHAT_BODY) + b"\n"] * 100_000
    stream = BrokenAfter(lines, n=len(lines))
    first = next(iter_jobs(stream))
    assert first.line == 1
    assert stream.read == 1


# -- serialisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job",
    [
        JobLine(1, "req-1", "openai", "chat", CHAT_BODY),
        JobLine(7, "msg-1", "anthropic", "messages", MSG_BODY),
        JobLine(12, "line-12", "bare", "chat",
                {"model": "GPT-4 Turbo", "messages": [{"role": "user", "content": "黑洞"}]}),
    ],
)
def test_job_line_survives_a_round_trip_through_json(job: JobLine) -> None:
    assert JobLine.from_json(job.to_json()) == job
    assert JobLine.from_json(job.to_json().decode()) == job


# -- properties --------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text})
bare_body = st.fixed_dictionaries(
    {"model": text.filter(bool), "messages": st.lists(message, min_size=1, max_size=5)},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False),
        "max_tokens": st.integers(1, 100_000),
        "stream": st.booleans(),
    },
)


def assert_usable(item: JobLine | BadLine, line: int) -> None:
    """What the rest of batchrelay relies on from any parsed line: it keeps its number; a bad line
    says why in at most MAX_REASON characters; a job has an id, a known format and dialect, and a
    body a provider call can be made from, and survives its trip through Redis."""
    assert item.line == line
    if isinstance(item, BadLine):
        assert 0 < len(item.reason) <= MAX_REASON
        return
    assert item.custom_id
    assert item.fmt in ("openai", "anthropic", "bare")
    assert item.dialect in ("chat", "messages")
    assert isinstance(item.body["model"], str) and item.body["model"]
    assert item.body["messages"] and all(isinstance(m, dict) for m in item.body["messages"])
    assert JobLine.from_json(item.to_json()) == item


def is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_usable_job_or_a_bad_line_never_an_exception(raw: bytes) -> None:
    item = parse_line(raw, 7)
    assert_usable(item, 7)
    if not is_json_object(raw):
        assert isinstance(item, BadLine)


# keys the parser looks at, so generated objects reach every branch
key = st.sampled_from(["custom_id", "method", "url", "body", "params", "model", "messages"]) | text
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text,
    lambda children: st.lists(children) | st.dictionaries(key, children),
)

# batch lines near the valid ones, so that jobs (not only bad lines) come out of the property below
near_lines = st.one_of(
    bare_body,
    st.fixed_dictionaries(
        {"custom_id": text | json_values, "url": st.sampled_from(["/v1/chat/completions", "/v1/messages"]) | text,
         "body": bare_body | json_values},
        optional={"method": st.sampled_from(["POST", "GET"]), "extra": json_values},
    ),
    st.fixed_dictionaries({"custom_id": text | json_values, "params": bare_body | json_values},
                          optional={"extra": json_values}),
)


@settings(deadline=None)
@given(json_values | near_lines)
def test_any_json_gives_a_usable_job_or_a_bad_line_and_a_job_keeps_its_id_and_body(value: Any) -> None:
    item = parse_line(dumps(value), 7)
    assert_usable(item, 7)
    if not isinstance(value, dict):
        assert isinstance(item, BadLine)
        assert "expected a JSON object" in item.reason
    elif isinstance(item, JobLine):
        where = {"openai": "body", "anthropic": "params", "bare": None}[item.fmt]
        assert item.body == (value[where] if where else value)
        assert item.custom_id == (value["custom_id"] if where else "line-7")


@settings(deadline=None)
@given(bare_body, st.integers(1, 10**9))
def test_valid_bare_body_is_accepted_unchanged(body: dict[str, Any], line: int) -> None:
    job = parse_line(dumps(body), line)
    assert isinstance(job, JobLine)
    assert job.body == body
    assert job.custom_id == f"line-{line}"
    assert JobLine.from_json(job.to_json()) == job


blank = st.sampled_from([b"", b" ", b"\t", b"  \r"])
non_blank = st.binary(min_size=1, max_size=80).filter(lambda b: b"\n" not in b and b.strip() != b"")


@settings(deadline=None)
@given(st.lists(blank | non_blank | bare_body.map(dumps), max_size=30))
def test_iter_jobs_yields_one_item_per_non_blank_line_in_order(lines: list[bytes]) -> None:
    items = list(iter_jobs(io.BytesIO(b"".join(line + b"\n" for line in lines))))
    expected = [n for n, line in enumerate(lines, start=1) if line.strip()]
    assert [i.line for i in items] == expected


# -- custom_id rules (serve's Anthropic door) -----------------------------------------------------


@pytest.mark.parametrize(("custom_id", "problem"), [
    ("a", None), ("A-z_09", None), ("x" * 64, None),
    ("x" * 65, "custom_id is 65 characters long, over Anthropic's limit of 64"),
    ("a b", "custom_id may only have letters, digits, _ and -"), ("é", "custom_id may only have"),
    ("a\n", "custom_id may only have"), ("", "custom_id may only have"),
])
def test_anthropics_custom_id_rule(custom_id: str, problem: str | None) -> None:
    found = anthropic_custom_id(custom_id)
    assert found == problem if problem is None else found is not None and found.startswith(problem)


def test_a_line_whose_custom_id_the_rule_refuses_is_a_bad_line_with_its_id_cut() -> None:
    long_id = "L" * 100_000
    items = jobs_of(anthropic_line("ok"), anthropic_line(long_id), anthropic_line("not ok"),
                    anthropic_line(long_id, {"model": "m"}), id_rule=anthropic_custom_id)
    assert isinstance(items[0], JobLine) and items[0].custom_id == "ok"
    bad = [item for item in items[1:] if isinstance(item, BadLine) and item.fmt == "anthropic"]
    assert len(bad) == 3
    assert bad[0].custom_id == bad[2].custom_id == "L" * 64 + "…"
    assert "100,000 characters" in bad[0].reason and "first 64 characters" in bad[0].reason
    assert bad[1].custom_id == "not ok" and "may only have" in bad[1].reason
    assert [type(i) for i in jobs_of(anthropic_line(long_id))] == [JobLine]  # without the rule, any id
