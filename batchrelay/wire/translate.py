"""Translate request bodies between the chat (OpenAI Chat Completions) and messages (Anthropic
Messages) dialects, so a job can run on a provider that only speaks the other one.

Pure functions. Each returns a new body plus notes: one human-readable line per kind of thing that
could not be carried over exactly (deduplicated, empty when the mapping was exact). Nothing is
dropped without a note. Inputs are never mutated and the result shares no mutable parts with them.
A body that is not a request at all (no list of message objects) raises ValueError.

Requests: `request_to_messages.py` and `request_to_chat.py`; replies: `translate_reply.py`. This module
dispatches to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchrelay.wire.request_to_chat import messages_to_chat_request
from batchrelay.wire.request_to_messages import chat_to_messages_request
from batchrelay.wire.translate_reply import chat_to_messages_response, messages_to_chat_response

if TYPE_CHECKING:
    from batchrelay.wire.dialect import Dialect

__all__ = [
    "chat_to_messages_request", "chat_to_messages_response", "messages_to_chat_request",
    "messages_to_chat_response", "translate_request", "translate_response",
]

Body = dict[str, Any]


# -- dispatch -----------------------------------------------------------------------------------


def translate_request(
    body: Body, source: Dialect, target: Dialect, *, default_max_tokens: int = 4096
) -> tuple[Body, list[str]]:
    """`body`, written in `source`, as a request in `target`. Same dialect: `body` itself, unchanged."""
    if source == target:
        return body, []
    if source == "chat" and target == "messages":
        return chat_to_messages_request(body, default_max_tokens=default_max_tokens)
    if source == "messages" and target == "chat":
        return messages_to_chat_request(body)
    raise ValueError(f"cannot translate a request from {source!r} to {target!r}")


def translate_response(body: Body, source: Dialect, target: Dialect) -> tuple[Body, list[str]]:
    """A reply written in `source` (the provider's dialect) as one in `target` (the job's)."""
    if source == target:
        return body, []
    if source == "chat" and target == "messages":
        return chat_to_messages_response(body)
    if source == "messages" and target == "chat":
        return messages_to_chat_response(body)
    raise ValueError(f"cannot translate a response from {source!r} to {target!r}")
