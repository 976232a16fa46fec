"""Translate a finished reply between the chat and messages dialects (requests: `request_to_*.py`).

A job's result body is always in the job's own dialect, so a reply from a provider speaking the
other dialect is rewritten here. Pure functions: each returns a new dict and a list of notes about
what could not be carried over exactly (empty when the mapping was exact); inputs are never
mutated. Reply metadata with no counterpart (`system_fingerprint`, `service_tier`, `created` going
to messages) is dropped without a note: it changes no content and no token count.

The helpers for tool-call arguments, notes and message lists live here too, because the requests need them
and the request directions import this module (not the other way round).
"""

from __future__ import annotations

import copy
import json
from typing import Any

RAW_ARGUMENTS = "_raw_arguments"

FINISH_TO_STOP: dict[str, str] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
}
STOP_TO_FINISH: dict[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "refusal": "content_filter", "pause_turn": "stop",
}


def add_note(notes: list[str], text: str) -> None:
    # A body with a hundred images should say "detail dropped" once, not a hundred times.
    if text not in notes:
        notes.append(text)


def meaningful(value: Any) -> bool:
    # SDKs echo assistant messages back with `refusal: None`, `annotations: []`: nothing is lost there.
    return value is not None and not (isinstance(value, list | dict | str) and not value)


def messages_of(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError("not a request: no messages list")
    return objects(body["messages"], "messages")


def as_int(value: Any) -> int:
    # Providers send null for cache counters they do not track; bool is an int subclass but no count.
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: a missing sub-object reads as empty."""
    return value if isinstance(value, dict) else {}


def objects(value: Any, what: str) -> list[dict[str, Any]]:
    """`value` as a list of JSON objects; None means empty. Anything else is not translatable."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{what} must be a list of objects")
    return value


def load_arguments(arguments: Any, call_id: Any, notes: list[str]) -> dict[str, Any]:
    """Chat's JSON-string arguments as the object messages requires for `tool_use.input`.

    Models do emit broken JSON; the text is kept under `_raw_arguments` rather than lost, and
    `dump_arguments` restores it verbatim on the way back.
    """
    if isinstance(arguments, dict):  # a few OpenAI-compatible providers send the object itself
        return copy.deepcopy(arguments)
    if arguments is None or arguments == "":  # OpenAI-compatible servers use "" for a call with no arguments
        return {}
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    add_note(notes, f"tool call {call_id}: arguments are not a JSON object; kept as {{\"{RAW_ARGUMENTS}\": ...}}")
    return {RAW_ARGUMENTS: raw}


def dump_arguments(tool_input: Any) -> str:
    raw = tool_input.get(RAW_ARGUMENTS) if isinstance(tool_input, dict) and len(tool_input) == 1 else None
    if isinstance(raw, str):
        return raw
    # Compact, like OpenAI's own arguments; non-ASCII kept readable as the model wrote it.
    return json.dumps(tool_input if tool_input is not None else {}, ensure_ascii=False, separators=(",", ":"))


def chat_to_messages_response(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An OpenAI `chat.completion` as an Anthropic `message`."""
    notes: list[str] = []
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list):
        raise ValueError("not a chat.completion: no choices list")
    if len(choices) > 1:
        add_note(notes, f"choices: {len(choices)} choices returned; only choice 0 is kept")
    if not choices:
        add_note(notes, "choices: the reply has no choices; the message is empty")
    choice = obj(choices[0] if choices else None)
    message = obj(choice.get("message"))

    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # some compatible providers answer with content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and p.get("type") == "text")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
        add_note(notes, "message.refusal has no equivalent in the messages dialect; sent as a text block")
    for call in objects(message.get("tool_calls"), "message.tool_calls"):
        function = obj(call.get("function"))
        content.append({
            "type": "tool_use", "id": call.get("id"), "name": function.get("name"),
            "input": load_arguments(function.get("arguments"), call.get("id"), notes),
        })
    for key in ("reasoning_content", "reasoning", "audio", "function_call"):
        if message.get(key):
            add_note(notes, f"message.{key} has no equivalent in the messages dialect; dropped")
    if choice.get("logprobs"):
        add_note(notes, "logprobs have no equivalent in the messages dialect; dropped")

    finish = choice.get("finish_reason")
    stop_reason = FINISH_TO_STOP.get(finish) if isinstance(finish, str) else None
    if finish is not None and stop_reason is None:
        stop_reason = "end_turn"
        add_note(notes, f"finish_reason {finish!r} has no equivalent in the messages dialect; reported as end_turn")

    return {
        "id": body.get("id"), "type": "message", "role": "assistant", "model": body.get("model"),
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": _usage_to_messages(body.get("usage"), notes),
    }, notes


def _usage_to_messages(usage: Any, notes: list[str]) -> dict[str, int]:
    if not isinstance(usage, dict):
        add_note(notes, "usage: the reply reports no usage; token counts set to 0")
        usage = {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None:  # DeepSeek-style providers report cache hits at the top level
        cached = usage.get("prompt_cache_hit_tokens")
    prompt, cached = as_int(usage.get("prompt_tokens")), as_int(cached)
    if cached > prompt:
        add_note(notes, f"usage: cached_tokens ({cached}) exceed prompt_tokens ({prompt}); capped")
        cached = prompt
    # Chat counts cache hits inside prompt_tokens; messages counts them apart from input_tokens.
    return {
        "input_tokens": prompt - cached, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached, "output_tokens": as_int(usage.get("completion_tokens")),
    }


def messages_to_chat_response(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An Anthropic `message` as an OpenAI `chat.completion` with one choice."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise ValueError("not a message: no content list")
    notes: list[str] = []
    blocks = objects(body["content"], "message content")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
            if block.get("citations"):
                add_note(notes, "text citations have no equivalent in the chat dialect; dropped")
        elif kind == "tool_use":
            tool_calls.append({
                "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": dump_arguments(block.get("input"))},
            })
        elif kind in ("thinking", "redacted_thinking"):
            add_note(notes, "thinking blocks have no equivalent in the chat dialect; dropped")
        else:
            add_note(notes, f"{kind!r} blocks have no equivalent in the chat dialect; dropped")

    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls

    stop = body.get("stop_reason")
    finish = STOP_TO_FINISH.get(stop) if isinstance(stop, str) else None
    if stop == "pause_turn":
        add_note(notes, "stop_reason pause_turn (a server tool paused, the turn is unfinished) reported as stop")
    elif stop is not None and finish is None:
        finish = "stop"
        add_note(notes, f"stop_reason {stop!r} has no equivalent in the chat dialect; reported as stop")

    created = body.get("created")
    return {
        "id": body.get("id"), "object": "chat.completion",
        # Messages has no timestamp; 0 keeps the function deterministic (callers may set their own).
        "created": created if isinstance(created, int) and not isinstance(created, bool) else 0,
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage_to_chat(body.get("usage"), notes),
    }, notes


def _usage_to_chat(usage: Any, notes: list[str]) -> dict[str, Any]:
    if not isinstance(usage, dict):
        add_note(notes, "usage: the reply reports no usage; token counts set to 0")
        usage = {}
    written = as_int(usage.get("cache_creation_input_tokens"))
    read = as_int(usage.get("cache_read_input_tokens"))
    prompt = as_int(usage.get("input_tokens")) + written + read
    completion = as_int(usage.get("output_tokens"))
    if written:
        # Cache writes are billed above the input price; chat usage cannot say so.
        add_note(notes, f"usage: {written} cache-write tokens have no chat equivalent; counted as uncached prompt")
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }
