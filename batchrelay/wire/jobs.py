"""Input lines → jobs.

Each non-blank line of a batch file is detected as one of three formats:

- ``openai``: an OpenAI Batch line ``{"custom_id", "method": "POST", "url", "body"}``;
- ``anthropic``: an Anthropic Message Batches line ``{"custom_id", "params"}`` (messages dialect);
- ``bare``: a request body ``{"model", "messages", ...}``, given ``custom_id = line-<n>``.

A line that cannot be used becomes a `BadLine` with its 1-based line number and a reason; the
rest of the file is unaffected. Files are streamed line by line, never read whole, and no line is
ever held whole past `max_line_bytes`: a longer one is read in pieces, dropped, and reported.
Invalid JSON or UTF-8, non-object lines and JSON nested deeper than `MAX_DEPTH` are bad lines; a
UTF-8 byte order mark on the first line and CRLF line endings are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchrelay.wire.dialect import Dialect

InputFormat = Literal["openai", "anthropic", "bare"]
URL_DIALECTS: dict[str, Dialect] = {"/v1/chat/completions": "chat", "/v1/messages": "messages"}
MAX_REASON = 300
MAX_LINE_BYTES = 8 * 1024 * 1024  # default of `worker.max_line_bytes`
MAX_DEPTH = 128  # nesting levels of a line's JSON; orjson writes at most 254, and a body gets wrapped
DISCARD_PIECE = 1024 * 1024  # the rest of an over-long line is read (and dropped) this much at a time
BOM = b"\xef\xbb\xbf"
ANTHROPIC_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # Anthropic's rule for a message batch's custom_id
MAX_ID_SHOWN = 64  # characters of an id kept in a bad line's record when its rule refuses it
IdRule = Callable[[str], str | None]  # a custom_id's problem, or None


class LineReader(Protocol):
    """What `iter_jobs` reads: a binary file, or anything with the same `readline`."""

    def readline(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class JobLine:
    line: int
    custom_id: str
    fmt: InputFormat
    dialect: Dialect
    body: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"line": self.line, "custom_id": self.custom_id, "fmt": self.fmt, "dialect": self.dialect,
             "body": self.body}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> JobLine:
        d = orjson.loads(raw)
        return cls(d["line"], d["custom_id"], d["fmt"], d["dialect"], d["body"])


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str
    custom_id: str | None = None
    fmt: InputFormat | None = None


class _Body(BaseModel):
    """The fields every request body needs; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)


class _OpenAILine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1)
    method: Literal["POST"] = "POST"
    url: str
    body: dict[str, Any]


class _AnthropicLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1)
    params: dict[str, Any]


def _explain(e: ValidationError, where: str = "") -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        field = f"{where}.{loc}" if where and loc else (where or loc)
        parts.append(f"{field}: {err['msg']}" if field else err["msg"])
    return "; ".join(parts)


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _check_body(body: dict[str, Any], where: str) -> str | None:
    try:
        _Body.model_validate(body)
    except ValidationError as e:
        return _explain(e, where)
    return None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels (the top value is level 1). Iterative, so a
    hostile line cannot exhaust Python's stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        children = v.values() if isinstance(v, dict) else v
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


_OPENAI_KEYS = frozenset(_OpenAILine.model_fields)
_ANTHROPIC_KEYS = frozenset(_AnthropicLine.model_fields)


def _plainly_valid(body: Any) -> TypeGuard[dict[str, Any]]:
    """`_Body`'s rules, checked directly: most lines pass, and pydantic (2 x 3 µs a line) then only
    runs for the others, to explain what is wrong. Exact for values from orjson (str keys, no bytes)."""
    if not isinstance(body, dict):
        return False
    model, messages = body.get("model"), body.get("messages")
    return (isinstance(model, str) and model != "" and isinstance(messages, list) and len(messages) > 0
            and all(isinstance(m, dict) for m in messages))


def parse_line(raw: bytes, line: int, *, default_dialect: Dialect = "chat") -> JobLine | BadLine:
    """Parse one non-blank line. Pure: duplicate custom_ids are the caller's concern."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as u:
            return BadLine(line, f"invalid UTF-8 at byte {u.start}")
        if "depth limit" in e.msg:  # orjson stops at 1024 levels
            return BadLine(line, f"JSON nested more than {MAX_DEPTH} levels deep")
        return BadLine(line, _short(f"invalid JSON: {e.msg} (column {e.colno})"))
    if not isinstance(data, dict):
        return BadLine(line, f"expected a JSON object, got {type(data).__name__ if data is not None else 'null'}")
    # every container needs a bracket, so only a line with many of them can be too deep to re-encode
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(data, MAX_DEPTH):
        return BadLine(line, f"JSON nested more than {MAX_DEPTH} levels deep")
    custom_id = data.get("custom_id") if isinstance(data.get("custom_id"), str) else None

    if "params" in data:
        if custom_id and data.keys() <= _ANTHROPIC_KEYS and _plainly_valid(params := data["params"]):
            return JobLine(line, custom_id, "anthropic", "messages", params)
        try:
            a = _AnthropicLine.model_validate(data)
        except ValidationError as e:
            return BadLine(line, _short(f"Anthropic batch line: {_explain(e)}"), custom_id, "anthropic")
        if problem := _check_body(a.params, "params"):
            return BadLine(line, _short(problem), custom_id, "anthropic")
        return JobLine(line, a.custom_id, "anthropic", "messages", a.params)

    if "body" in data or "url" in data:
        if (custom_id and data.keys() <= _OPENAI_KEYS and data.get("method", "POST") == "POST"
                and isinstance(url := data.get("url"), str) and url in URL_DIALECTS
                and _plainly_valid(body := data.get("body"))):
            return JobLine(line, custom_id, "openai", URL_DIALECTS[url], body)
        try:
            o = _OpenAILine.model_validate(data)
        except ValidationError as e:
            return BadLine(line, _short(f"OpenAI batch line: {_explain(e)}"), custom_id, "openai")
        dialect = URL_DIALECTS.get(o.url)
        if dialect is None:
            supported = ", ".join(URL_DIALECTS)
            return BadLine(line, _short(f"unsupported url {o.url!r} (supported: {supported})"), custom_id, "openai")
        if problem := _check_body(o.body, "body"):
            return BadLine(line, _short(problem), custom_id, "openai")
        return JobLine(line, o.custom_id, "openai", dialect, o.body)

    if _plainly_valid(data):
        return JobLine(line, f"line-{line}", "bare", default_dialect, data)
    if problem := _check_body(data, ""):
        return BadLine(line, _short(f"not a batch line or request body: {problem}"), None, "bare")
    return JobLine(line, f"line-{line}", "bare", default_dialect, data)


def read_lines(stream: LineReader, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | int]]:
    """(1-based line number, line) for every line, or (number, its size) for a line of more than
    `max_line_bytes` (not counting its newline or the first line's BOM, which is dropped): such a
    line is read in pieces of at most that size and thrown away, unless it is only whitespace,
    which is yielded as b"" whatever its length."""
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be at least 1")
    number, extra = 0, len(BOM)  # room for a BOM at the start of the file
    while piece := stream.readline(want := max_line_bytes + 1 + extra):
        number += 1
        raw = piece[len(BOM):] if extra and piece.startswith(BOM) else piece
        extra = 0
        newline = raw.endswith(b"\n")
        size = len(raw) - newline
        if size <= max_line_bytes:
            yield number, raw
            continue
        blank = raw.isspace()
        done = newline or len(piece) < want  # else the line goes on
        raw = piece = b""  # let go of the first piece before reading the next
        while not done and (piece := stream.readline(DISCARD_PIECE)):
            done = piece.endswith(b"\n")
            size += len(piece) - done
            blank = blank and piece.isspace()
        yield number, b"" if blank else size


def anthropic_custom_id(custom_id: str) -> str | None:
    """Why Anthropic's Message Batches would refuse this custom_id (`^[a-zA-Z0-9_-]{1,64}$`), or None."""
    if ANTHROPIC_ID.fullmatch(custom_id):
        return None
    if len(custom_id) > 64:
        return f"custom_id is {len(custom_id):,} characters long, over Anthropic's limit of 64"
    return "custom_id may only have letters, digits, _ and - (Anthropic's rule: ^[a-zA-Z0-9_-]{1,64}$)"


def _refused_id(item: JobLine | BadLine, problem: str) -> BadLine:
    """The bad line for an item whose custom_id its rule refused; a long id is cut, and the reason says so."""
    custom_id = item.custom_id or ""
    if len(custom_id) > MAX_ID_SHOWN:
        custom_id = custom_id[:MAX_ID_SHOWN] + "…"
        problem += f" (this result's custom_id is its first {MAX_ID_SHOWN} characters and …)"
    return BadLine(item.line, problem, custom_id, item.fmt)


def iter_jobs(
    stream: LineReader, *, default_dialect: Dialect = "chat", max_line_bytes: int = MAX_LINE_BYTES,
    dedupe: bool = True, id_rule: IdRule | None = None,
) -> Iterator[JobLine | BadLine]:
    """Yield a job or a bad line for every non-blank line, holding no more than `max_line_bytes`
    (and a few) of any line in memory. With `dedupe`, a repeated custom_id is a bad line; that keeps
    every id in memory, so `submit` turns it off and checks ids in Redis instead. `id_rule`: a
    line whose custom_id it refuses is a bad line (`serve`'s Anthropic door: `anthropic_custom_id`)."""
    first_on: dict[str, int] = {}
    for number, raw in read_lines(stream, max_line_bytes):
        if isinstance(raw, int):
            yield BadLine(number, f"line is {raw:,} bytes, over the limit of {max_line_bytes:,} bytes (max_line_bytes)")
            continue
        if not raw or raw.isspace():
            continue
        item = parse_line(raw, number, default_dialect=default_dialect)
        if id_rule and item.custom_id is not None and (problem := id_rule(item.custom_id)):
            item = _refused_id(item, problem)
        if dedupe and isinstance(item, JobLine):
            first = first_on.setdefault(item.custom_id, number)
            if first != number:
                item = duplicate(item, first)
        yield item


def duplicate(job: JobLine, first: int) -> BadLine:
    """The bad line for `job`, whose custom_id was already taken by line `first`."""
    return BadLine(job.line, _short(f"duplicate custom_id {job.custom_id!r} (first on line {first})"), job.custom_id,
                   job.fmt)
