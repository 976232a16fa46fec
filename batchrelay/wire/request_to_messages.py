"""Chat (OpenAI Chat Completions) request bodies as messages (Anthropic Messages) requests. Pure;
see `translate` for the rules every translation follows."""

from __future__ import annotations

import copy
from typing import Any

from batchrelay.wire.translate_reply import (
    add_note,
    load_arguments,
    meaningful,
    messages_of,
    obj,
    objects,
)

Body = dict[str, Any]
Block = dict[str, Any]

_CHAT_HANDLED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p", "stream",
    "user", "tools", "tool_choice", "parallel_tool_calls",
})
# Chat parameters left at their documented default change nothing, so dropping them is exact.
_CHAT_DEFAULTS: dict[str, Any] = {
    "n": 1, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0, "response_format": {"type": "text"},
}
_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id"})
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def _text_block(text: str) -> Block:
    return {"type": "text", "text": text}


def _as_blocks(content: str | list[Block]) -> list[Block]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    return content





def chat_to_messages_request(body: Body, *, default_max_tokens: int = 4096) -> tuple[Body, list[str]]:
    """An OpenAI chat completions request as an Anthropic messages request."""
    chat_messages = messages_of(body)
    notes: list[str] = []
    out: Body = {}
    if "model" in body:
        out["model"] = body["model"]
    system, turns = _chat_turns(chat_messages, notes)
    if system is not None:
        out["system"] = system
    out["messages"] = turns

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
        add_note(notes, f"max_tokens: not set; default {default_max_tokens} applied (the messages dialect requires it)")
    out["max_tokens"] = max_tokens

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = list(stop)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, int | float) and temperature > 1:
            add_note(notes, f"temperature {temperature} is above the messages maximum of 1; clamped to 1")
            temperature = 1
        out["temperature"] = temperature
    for key in ("top_p", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("user") is not None:
        out["metadata"] = {"user_id": body["user"]}

    tools = objects(body.get("tools"), "tools")
    if tools:
        out["tools"] = _tools_to_messages(tools, notes)
    tool_choice = _tool_choice_to_messages(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools), notes)
    if tool_choice is not None:
        out["tool_choice"] = tool_choice

    for key, value in body.items():
        if key not in _CHAT_HANDLED and meaningful(value) and _CHAT_DEFAULTS.get(key, ...) != value:
            add_note(notes, f"{key} has no equivalent in the messages dialect; dropped")
    return out, notes


def _chat_turns(chat_messages: list[Body], notes: list[str]) -> tuple[str | list[Block] | None, list[Body]]:
    """System prompt and alternating turns; Anthropic rejects two turns of the same role in a row."""
    systems: list[str | list[str]] = []
    turns: list[Body] = []
    for message in chat_messages:
        role = message.get("role")
        for key in set(message) - _MESSAGE_KEYS:
            if meaningful(message[key]):
                add_note(notes, f"message field {key!r} has no equivalent in the messages dialect; dropped")
        content: str | list[Block]
        if role in ("system", "developer"):
            if turns:
                add_note(notes, f"a {role} message inside the conversation moved to the top-level system prompt")
            systems.append(_system_texts(message.get("content"), notes))
            continue
        if role == "user":
            content = _chat_content(message.get("content"), notes)
        elif role == "assistant":
            content = _chat_assistant(message, notes)
        elif role == "tool":
            role, content = "user", [_tool_result(message, notes)]
        else:
            add_note(notes, f"messages with role {role!r} have no equivalent in the messages dialect; dropped")
            continue
        if content == []:
            add_note(notes, f"a {role} message with no content left was dropped")
        elif turns and turns[-1]["role"] == role:
            # Tool results and the user's next words share one user turn, tool_result blocks first.
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(content)
        else:
            turns.append({"role": role, "content": content})

    if not systems:
        return None, turns
    if len(systems) == 1:
        only = systems[0]
        return only if isinstance(only, str) else [_text_block(text) for text in only], turns
    return "\n\n".join(s if isinstance(s, str) else "".join(s) for s in systems), turns


def _system_texts(content: Any, notes: list[str]) -> str | list[str]:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for part in objects(content, "system content"):
        if part.get("type") == "text":
            texts.append(part.get("text") or "")
        else:
            add_note(notes, f"{part.get('type')!r} parts in a system message have no equivalent; dropped")
    return texts


def _chat_content(content: Any, notes: list[str]) -> str | list[Block]:
    if content is None or isinstance(content, str):
        return content or ""
    blocks: list[Block] = []
    for part in objects(content, "message content"):
        kind = part.get("type")
        if kind == "text":
            blocks.append(_text_block(part.get("text") or ""))
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), notes))
        else:
            add_note(notes, f"{kind!r} content parts have no equivalent in the messages dialect; dropped")
    return blocks


def _image_block(image: Any, notes: list[str]) -> Block:
    url = image.get("url") if isinstance(image, dict) else image
    detail = image.get("detail") if isinstance(image, dict) else None
    if detail not in (None, "auto"):
        add_note(notes, "image_url.detail has no equivalent in the messages dialect; dropped")
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url.partition(",")
        if comma and header.endswith(";base64"):
            media_type = header[len("data:"):].split(";")[0]
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        add_note(notes, "an image data URI is not base64-encoded; sent as a URL, which the provider may reject")
    return {"type": "image", "source": {"type": "url", "url": url}}


def _chat_assistant(message: Body, notes: list[str]) -> str | list[Block]:
    calls = objects(message.get("tool_calls"), "tool_calls")
    if not calls and message.get("content") is None:
        return []
    content = _chat_content(message.get("content"), notes)
    if not calls:
        return content
    blocks = _as_blocks(content)  # Anthropic rejects empty text blocks, so "" content disappears here
    for call in calls:
        if call.get("type", "function") != "function":
            add_note(notes, f"{call.get('type')!r} tool calls have no equivalent in the messages dialect; dropped")
            continue
        function = obj(call.get("function"))
        blocks.append({
            "type": "tool_use", "id": call.get("id"), "name": function.get("name"),
            "input": load_arguments(function.get("arguments"), call.get("id"), notes),
        })
    return blocks


def _tool_result(message: Body, notes: list[str]) -> Block:
    # tool_result takes text and image blocks, the same as a user turn.
    result = _chat_content(message.get("content"), notes)
    return {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": result}


def _tools_to_messages(tools: list[Body], notes: list[str]) -> list[Body]:
    out: list[Body] = []
    for tool in tools:
        if tool.get("type", "function") != "function":
            add_note(notes, f"{tool.get('type')!r} tools have no equivalent in the messages dialect; dropped")
            continue
        function = obj(tool.get("function"))
        mapped: Body = {"name": function.get("name")}
        if function.get("description") is not None:
            mapped["description"] = function["description"]
        # Anthropic requires a schema; chat's "no parameters" means exactly an empty object.
        parameters = function.get("parameters")
        mapped["input_schema"] = copy.deepcopy(parameters if parameters is not None else _EMPTY_SCHEMA)
        if function.get("strict"):
            add_note(notes, "function.strict has no equivalent in the messages dialect; dropped")
        out.append(mapped)
    return out


def _tool_choice_to_messages(choice: Any, parallel: Any, has_tools: bool, notes: list[str]) -> Body | None:
    mapped: Body | None
    if choice is None:
        # Anthropic puts the parallel switch inside tool_choice, so one must exist to carry it.
        mapped = {"type": "auto"} if parallel is False and has_tools else None
    elif isinstance(choice, str) and choice in ("auto", "required", "none"):
        mapped = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        mapped = {"type": "tool", "name": obj(choice.get("function")).get("name")}
    else:
        add_note(notes, f"tool_choice {choice!r} has no equivalent in the messages dialect; dropped")
        mapped = {"type": "auto"} if parallel is False and has_tools else None
    if mapped is not None and parallel is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped
