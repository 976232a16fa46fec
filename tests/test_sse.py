"""Streams are assembled into the body a non-streaming call returns; cut streams are refused."""

from __future__ import annotations

import json

import httpx
import pytest
from httpx_sse import EventSource

from batchrelay.wire.sse import ChatStream, MessagesStream


async def _events(text: str) -> list[tuple[str | None, str]]:
    """The (event, data) pairs httpx-sse reads from `text`, as providers/client.py feeds them."""
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=text.encode())
    return [(e.event, e.data) async for e in EventSource(resp).aiter_sse()]


def _chunk(**delta: object) -> str:
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n"


CHAT_STREAM = (
    _chunk(role="assistant") + "\n" + _chunk(content="Hel") + "\n" + _chunk(content="lo") + "\n"
    + 'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    + 'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    + "data: [DONE]\n\n"
)


async def test_a_chat_stream_becomes_one_chat_completion() -> None:
    s = ChatStream()
    for ev, data in await _events(CHAT_STREAM):
        s.feed(ev, data)
    body = s.body()
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                "finish_reason": "stop"}]
    assert body["usage"]["completion_tokens"] == 2
    assert (body["id"], body["model"], body["object"]) == ("c1", "m", "chat.completion")


async def test_a_chat_stream_without_done_is_refused() -> None:
    s = ChatStream()
    for ev, data in await _events(CHAT_STREAM.replace("data: [DONE]\n\n", "")):
        s.feed(ev, data)
    with pytest.raises(ValueError, match="end marker"):
        s.body()


async def test_tool_call_deltas_are_joined() -> None:
    s = ChatStream()
    s.feed(None, json.dumps({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"ci"}}]}}]}))
    s.feed(None, json.dumps({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}]}, "finish_reason": "tool_calls"}]}))
    s.feed(None, "[DONE]")
    (call,) = s.body()["choices"][0]["message"]["tool_calls"]
    assert call == {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}


async def test_ainow_streams_end_with_their_cost_line_instead_of_done() -> None:
    s = ChatStream("ainow")
    s.feed(None, json.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": "Paris."},
                                                     "finish_reason": "stop"}]}))
    with pytest.raises(ValueError):
        s.body()
    s.feed(None, '{"input_tokens": 9, "output_tokens": 2, "input_tokens_cost": 0.000018, '
                 '"output_tokens_cost": 0.000006, "total_tokens_cost": 0.000024, "total_time_taken": 0.4}')
    body = s.body()
    assert body["choices"][0]["message"]["content"] == "Paris."
    assert body["input_tokens"] == 9 and body["total_tokens_cost"] == 0.000024


MESSAGES_STREAM = """event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu_1","name":"f","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":7}}

event: message_stop
data: {"type":"message_stop"}

"""


async def test_a_messages_stream_becomes_one_message() -> None:
    s = MessagesStream()
    for ev, data in await _events(MESSAGES_STREAM):
        s.feed(ev, data)
    body = s.body()
    assert body["content"] == [{"type": "text", "text": "Hi there"},
                               {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"a": 1}}]
    assert body["stop_reason"] == "tool_use"
    assert body["usage"] == {"input_tokens": 12, "output_tokens": 7}


async def test_a_messages_stream_cut_before_message_stop_is_refused() -> None:
    s = MessagesStream()
    for ev, data in await _events(MESSAGES_STREAM.split("event: message_delta")[0]):
        s.feed(ev, data)
    with pytest.raises(ValueError, match="message_stop"):
        s.body()


async def test_an_error_event_inside_a_stream_is_a_failure() -> None:
    s = MessagesStream()
    with pytest.raises(ValueError, match="overloaded"):
        s.feed("error", '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}')
