"""Input lines → jobs.

Each non-blank line of a batch file is detected as one of three formats:

- ``openai``: an OpenAI Batch line ``{"custom_id", "method": "POST", "url", "body"}``;
- ``anthropic``: an Anthropic Message Batches line ``{"custom_id", "params"}`` (messages dialect);
- ``bare``: a request body ``{"model", "messages", ...}``, given ``custom_id = line-<n>``.

A line that cannot be used becomes a `BadLine` with its 1-based line number and a reason; the
rest of the file is unaffected. Files are streamed line by line, never read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Dialect

InputFormat = Literal["openai", "anthropic", "bare"]
URL_DIALECTS: dict[str, Dialect] = {"/v1/chat/completions": "chat", "/v1/messages": "messages"}
MAX_REASON = 300


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


def parse_line(raw: bytes, line: int, *, default_dialect: Dialect = "chat") -> JobLine | BadLine:
    """Parse one non-blank line. Pure: duplicate custom_ids are the caller's concern."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as u:
            return BadLine(line, f"invalid UTF-8 at byte {u.start}")
        return BadLine(line, _short(f"invalid JSON: {e}"))
    if not isinstance(data, dict):
        return BadLine(line, f"expected a JSON object, got {type(data).__name__ if data is not None else 'null'}")
    custom_id = data.get("custom_id") if isinstance(data.get("custom_id"), str) else None

    if "params" in data:
        try:
            a = _AnthropicLine.model_validate(data)
        except ValidationError as e:
            return BadLine(line, _short(f"Anthropic batch line: {_explain(e)}"), custom_id, "anthropic")
        if problem := _check_body(a.params, "params"):
            return BadLine(line, _short(problem), custom_id, "anthropic")
        return JobLine(line, a.custom_id, "anthropic", "messages", a.params)

    if "body" in data or "url" in data:
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

    if problem := _check_body(data, ""):
        return BadLine(line, _short(f"not a batch line or request body: {problem}"), None, "bare")
    return JobLine(line, f"line-{line}", "bare", default_dialect, data)


def iter_jobs(stream: IO[bytes], *, default_dialect: Dialect = "chat") -> Iterator[JobLine | BadLine]:
    """Yield a job or a bad line for every non-blank line; a repeated custom_id is a bad line."""
    seen: set[str] = set()
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        item = parse_line(raw, number, default_dialect=default_dialect)
        if isinstance(item, JobLine):
            if item.custom_id in seen:
                item = BadLine(number, f"duplicate custom_id {item.custom_id!r}", item.custom_id, item.fmt)
            else:
                seen.add(item.custom_id)
        yield item
