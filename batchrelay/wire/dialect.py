"""The two dialects a job or a provider speaks: OpenAI Chat Completions and Anthropic Messages."""

from __future__ import annotations

from typing import Literal

Dialect = Literal["chat", "messages"]
DIALECTS: tuple[Dialect, ...] = ("chat", "messages")
