"""Server-sent event streams of the simulator, derived from the non-streaming answer. Pure.

Deriving each stream from the rendered non-streaming body keeps the two in step: the streamed
pieces concatenate to the same text and the stream reports the same usage (or ai-now costs).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from batchrelay.sim.answers import malformed
from batchrelay.sim.presets import Provider

DONE = b"data: [DONE]\n\n"
# ai-now's last line: its document lists these, plus time_to_first_data.
AINOW_TAIL = ("input_tokens", "output_tokens", "input_tokens_cost", "output_tokens_cost", "total_tokens_cost",
              "total_time_taken", "tokens_per_second")
_WORD = re.compile(r"\s*\S+")


def sse(payload: Any, event: str | None = None) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return data if event is None else b"event: " + event.encode() + b"\n" + data


def split_text(text: str) -> list[str]:
    """Word pieces, each with the whitespace before it (as models stream), joining back to `text`."""
    pieces = _WORD.findall(text)
    rest = text[sum(map(len, pieces)):]
    return [*pieces, rest] if rest else pieces


def chat_events(p: Provider, full: dict[str, Any], include_usage: bool, first_data: float) -> list[bytes]:
    """chat.completion.chunk events for the chat answer `full`.

    OpenAI's shape: a role chunk, content chunks, a chunk with finish_reason, the usage chunk when
    stream_options.include_usage asked for it, then [DONE]. ai-now's document shows no role chunk,
    finish_reason on the last content chunk, and instead of [DONE] a line with the token counts and
    costs; `first_data` is its time_to_first_data in seconds.
    """
    choice = full["choices"][0]
    text, finish = choice["message"]["content"], choice["finish_reason"]
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"], "model": full["model"]}

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    pieces = split_text(text)
    if p.prices is not None:
        pieces = pieces or [""]
        last = len(pieces) - 1
        events = [chunk({"content": piece}, finish if i == last else None) for i, piece in enumerate(pieces)]
        events.append(sse({**{k: full[k] for k in AINOW_TAIL}, "time_to_first_data": round(first_data, 4)}))
        return events
    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": piece}, None) for piece in pieces]
    events.append(chunk({}, finish))
    if include_usage:
        events.append(sse({**base, "choices": [], "usage": full["usage"]}))
    events.append(DONE)
    return events


def messages_events(full: dict[str, Any]) -> list[bytes]:
    """Anthropic's event sequence for the messages answer `full`.

    As Anthropic does, message_start reports output_tokens 1 and message_delta the final count, which
    replaces it (it is not added to it).
    """
    usage = full["usage"]
    start = {**full, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    events = [
        sse({"type": "message_start", "message": start}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start"),
    ]
    events += [
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            "content_block_delta")
        for piece in split_text(full["content"][0]["text"])
    ]
    events += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": full["stop_reason"], "stop_sequence": None},
             "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


def truncated(events: list[bytes]) -> list[bytes]:
    """The first half of the events: never the end marker ([DONE], message_stop, ai-now's cost line)."""
    return events[: max(1, len(events) // 2)]


def corrupt(events: list[bytes]) -> list[bytes]:
    """The stream with its second event's JSON cut in half (the streaming form of a malformed answer)."""
    i = min(1, len(events) - 1)
    head, _, rest = events[i].partition(b"data: ")
    return [*events[:i], head + b"data: " + malformed(rest[:-2]) + b"\n\n", *events[i + 1:]]
