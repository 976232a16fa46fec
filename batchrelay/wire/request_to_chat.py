"""Messages (Anthropic Messages) request bodies as chat (OpenAI Chat Completions) requests. Pure;
see `translate` for the rules every translation follows."""

from __future__ import annotations

import copy
from typing import Any

from batchrelay.wire.translate_reply import (
    add_note,
    dump_arguments,
    meaningful,
    messages_of,
    obj,
    objects,
)

Body = dict[str, Any]
Block = dict[str, Any]

_MESSAGES_HANDLED = frozenset({
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "stream",
    "metadata", "tools", "tool_choice",
})
_CACHE_NOTE = "cache_control has no equivalent in the chat dialect; dropped (chat providers cache prompts on their own)"



def messages_to_chat_request(body: Body) -> tuple[Body, list[str]]:
    """An Anthropic messages request as an OpenAI chat completions request."""
    turns = messages_of(body)
    notes: list[str] = []
    out: Body = {}
    if "model" in body:
        out["model"] = body["model"]
    chat_messages: list[Body] = []
    system = body.get("system")
    if isinstance(system, str):
        chat_messages.append({"role": "system", "content": system})
    elif system is not None and (parts := _chat_parts(objects(system, "system"), "system", notes)[0]):
        chat_messages.append({"role": "system", "content": parts})
    for turn in turns:
        chat_messages.extend(_chatmessages_of(turn, notes))
    out["messages"] = chat_messages

    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    stop = body.get("stop_sequences")
    if isinstance(stop, list) and stop:
        out["stop"] = list(stop)
        if len(stop) > 4:
            add_note(notes, f"stop: {len(stop)} stop sequences; OpenAI itself accepts at most 4")
    for key in ("temperature", "top_p", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        if metadata.get("user_id") is not None:
            out["user"] = metadata["user_id"]
        for key in set(metadata) - {"user_id"}:
            add_note(notes, f"metadata.{key} has no equivalent in the chat dialect; dropped")

    tools = _tools_to_chat(objects(body.get("tools"), "tools"), notes)
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        else:
            add_note(notes, f"tool_choice type {kind!r} has no equivalent in the chat dialect; dropped")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False

    for key, value in body.items():
        if key not in _MESSAGES_HANDLED and meaningful(value):
            add_note(notes, f"{key} has no equivalent in the chat dialect; dropped")
    return out, notes


def _chatmessages_of(turn: Body, notes: list[str]) -> list[Body]:
    """One messages turn as chat messages: tool results become `tool` messages, sent first."""
    role, content = turn.get("role"), turn.get("content")
    if role not in ("user", "assistant"):
        add_note(notes, f"messages with role {role!r} have no equivalent in the chat dialect; dropped")
        return []
    if content is None or isinstance(content, str):
        return [{"role": role, "content": content or ""}]
    parts, calls, out = _chat_parts(objects(content, "message content"), role, notes)
    if role == "assistant" and (parts or calls):
        message: Body = {"role": "assistant", "content": parts or None}
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    elif role == "user" and parts:
        out.append({"role": "user", "content": parts})
    return out


def _chat_parts(blocks: list[Block], role: str, notes: list[str]) -> tuple[list[Body], list[Body], list[Body]]:
    """Content parts for the turn itself, and the tool calls and tool messages split out of it."""
    parts: list[Body] = []
    calls: list[Body] = []
    tool_messages: list[Body] = []
    for block in blocks:
        kind = block.get("type")
        if "cache_control" in block:
            add_note(notes, _CACHE_NOTE)
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
            if block.get("citations"):
                add_note(notes, "text citations have no equivalent in the chat dialect; dropped")
        elif kind == "image" and role == "user":
            source = obj(block.get("source"))
            if source.get("type") == "base64":
                url = f"data:{source.get('media_type')};base64,{source.get('data')}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif source.get("type") == "url":
                parts.append({"type": "image_url", "image_url": {"url": source.get("url")}})
            else:
                add_note(notes, f"image source {source.get('type')!r} has no equivalent in the chat dialect; dropped")
        elif kind == "tool_use" and role == "assistant":
            calls.append({
                "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": dump_arguments(block.get("input"))},
            })
        elif kind == "tool_result" and role == "user":
            tool_messages.append(_tool_message(block, notes))
        elif kind in ("thinking", "redacted_thinking"):
            add_note(notes, "thinking blocks have no equivalent in the chat dialect; dropped")
        else:
            add_note(notes, f"{kind!r} blocks in a {role} turn have no equivalent in the chat dialect; dropped")
    return parts, calls, tool_messages


def _tool_message(block: Block, notes: list[str]) -> Body:
    content = block.get("content")
    if isinstance(content, list):
        # Many chat providers take only a string here, so text blocks are joined.
        texts = []
        for item in objects(content, "tool_result content"):
            if "cache_control" in item:
                add_note(notes, _CACHE_NOTE)
            if item.get("type") == "text":
                texts.append(item.get("text") or "")
            else:
                add_note(notes, f"{item.get('type')!r} blocks inside tool_result have no equivalent in chat; dropped")
        content = "\n\n".join(texts)
    if block.get("is_error"):
        add_note(notes, "tool_result.is_error has no equivalent in the chat dialect; sent as a plain result")
    text = content if isinstance(content, str) else ""
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _tools_to_chat(tools: list[Body], notes: list[str]) -> list[Body]:
    out: list[Body] = []
    for tool in tools:
        if tool.get("type") not in (None, "custom"):  # server tools: web search, bash, code execution...
            add_note(notes, f"the server tool {tool.get('type')!r} has no equivalent in the chat dialect; dropped")
            continue
        if "cache_control" in tool:
            add_note(notes, _CACHE_NOTE)
        function: Body = {"name": tool.get("name")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        if tool.get("input_schema") is not None:
            function["parameters"] = copy.deepcopy(tool["input_schema"])
        out.append({"type": "function", "function": function})
    return out
