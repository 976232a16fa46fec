"""Server-sent event streams assembled into the same body a non-streaming call returns.

The events come parsed (httpx-sse, in providers/client.py); each is fed here as (event name, data).
A stream that ends before its end marker ([DONE], message_stop, or ai-now's cost line) is a
transient failure (ValueError here, retried by the caller), never a half answer.
"""

from __future__ import annotations

from typing import Any

import orjson

from batchrelay.wire.dialect import Dialect


def _load(data: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError(f"stream event is not JSON: {data[:100]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError("stream event is not a JSON object")
    if obj.get("error") or obj.get("type") == "error":
        raise ValueError(f"error inside the stream: {str(obj.get('error'))[:200]}")
    return obj


class ChatStream:
    """OpenAI chat.completion.chunk events → one chat.completion body."""

    def __init__(self, variant: str = "standard") -> None:
        self.variant = variant
        self.done = False
        self.head: dict[str, Any] = {}
        self.text: dict[int, list[str]] = {}
        self.role: dict[int, str] = {}
        self.tools: dict[int, dict[int, dict[str, Any]]] = {}
        self.finish: dict[int, str | None] = {}
        self.usage: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}

    def feed(self, event: str | None, data: str) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            return
        obj = _load(data)
        if self.variant == "ainow" and "choices" not in obj and "total_tokens_cost" in obj:
            self.extra = obj  # ai-now's last line: its tokens and costs; the stream's end marker
            self.done = True
            return
        for k in ("id", "created", "model", "system_fingerprint"):
            if k in obj and k not in self.head:
                self.head[k] = obj[k]
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or []:
            i = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            if delta.get("role"):
                self.role[i] = delta["role"]
            if delta.get("content"):
                self.text.setdefault(i, []).append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                slot = self.tools.setdefault(i, {}).setdefault(int(tc.get("index", 0)), {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish[i] = choice["finish_reason"]

    def body(self) -> dict[str, Any]:
        if not self.done:
            raise ValueError("stream ended before its end marker")
        choices = []
        for i in sorted(set(self.text) | set(self.finish) | set(self.tools) | set(self.role) or {0}):
            message: dict[str, Any] = {"role": self.role.get(i, "assistant"),
                                       "content": "".join(self.text[i]) if i in self.text else None}
            if i in self.tools:
                message["tool_calls"] = [self.tools[i][k] for k in sorted(self.tools[i])]
            choices.append({"index": i, "message": message, "finish_reason": self.finish.get(i)})
        body: dict[str, Any] = {"id": self.head.get("id"), "object": "chat.completion",
                                "created": self.head.get("created"), "model": self.head.get("model"),
                                "choices": choices}
        if self.usage is not None:
            body["usage"] = self.usage
        body.update(self.extra)
        return body


class MessagesStream:
    """Anthropic message stream events → one message body."""

    def __init__(self) -> None:
        self.done = False
        self.message: dict[str, Any] = {}
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, str] = {}

    def feed(self, event: str | None, data: str) -> None:
        obj = _load(data)
        kind = obj.get("type") or event
        if kind == "message_start":
            self.message = dict(obj.get("message") or {})
            self.message["content"] = []
        elif kind == "content_block_start":
            self.blocks[int(obj["index"])] = dict(obj.get("content_block") or {})
        elif kind == "content_block_delta":
            i, delta = int(obj["index"]), obj.get("delta") or {}
            block = self.blocks.setdefault(i, {"type": "text", "text": ""})
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif dtype == "input_json_delta":
                self.partial_json[i] = self.partial_json.get(i, "") + delta.get("partial_json", "")
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif dtype == "signature_delta":
                block["signature"] = delta.get("signature")
        elif kind == "content_block_stop":
            i = int(obj["index"])
            if i in self.partial_json:
                raw = self.partial_json.pop(i)
                self.blocks[i]["input"] = orjson.loads(raw) if raw.strip() else {}
        elif kind == "message_delta":
            self.message.update({k: v for k, v in (obj.get("delta") or {}).items()})
            if isinstance(obj.get("usage"), dict):
                self.message["usage"] = {**(self.message.get("usage") or {}), **obj["usage"]}
        elif kind == "message_stop":
            self.done = True

    def body(self) -> dict[str, Any]:
        if not self.done:
            raise ValueError("stream ended before message_stop")
        return {**self.message, "content": [self.blocks[i] for i in sorted(self.blocks)]}


def assembler(dialect: Dialect, variant: str) -> ChatStream | MessagesStream:
    return ChatStream(variant) if dialect == "chat" else MessagesStream()
