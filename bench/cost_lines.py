"""The cost benchmark's input files (bench/cost.py): numbered lines for the recomputation, short
questions and medium prompts for the estimate, all mixing chat (gpt-4o-mini) and messages (haiku)."""

from __future__ import annotations

import random
from typing import Any

import orjson

GPT, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-20241022"

WORDS = ["why", "does", "the", "tide", "turn", "and", "what", "keeps", "a", "bridge", "standing", "when", "wind",
         "blows", "over", "river", "during", "long", "cold", "winter", "night", "near", "old", "harbour", "town"]


def request(custom_id: str, text: str, chat: bool, max_tokens: int | None = None,
            system: str | None = None) -> dict[str, Any]:
    """An OpenAI batch line (gpt-4o-mini) or, with `chat` false, an Anthropic one (haiku, which needs
    max_tokens); `system` goes first among the chat messages."""
    messages: list[dict[str, str]] = [{"role": "user", "content": text}]
    if not chat:
        return {"custom_id": custom_id, "params": {"model": HAIKU, "max_tokens": max_tokens, "messages": messages}}
    if system:
        messages.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {"model": GPT} if max_tokens is None else {"model": GPT, "max_tokens": max_tokens}
    body["messages"] = messages
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def numbered_lines(n: int, spread: int = 23) -> bytes:
    """Chat (gpt-4o-mini) and messages (haiku, max_tokens 64) lines; the prompt says its line number
    ("question i: ...") and varies in length, so some pay the minimum charge and some their tokens."""
    rows = []
    for i in range(1, n + 1):
        text = f"question {i}: " + "why " * (i % spread)
        rows.append(request(f"req-{i}", text, chat=bool(i % 3), max_tokens=None if i % 3 else 64))
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def line_of(request: dict[str, Any]) -> int:
    content = request["messages"][-1]["content"]
    return int(content.split(":")[0].split()[1])


def short_questions(n: int, seed: int = 5) -> bytes:
    topics = ["tea", "rain", "Redis", "TCP", "bread", "the moon", "jazz", "glaciers", "owls", "compilers",
              "tides", "copper", "sourdough", "chess", "volcanoes"]
    forms = ["What is {}?", "Why {}?", "Who invented {}?", "Explain {} briefly.", "Is {} useful?",
             "Define {} (#{}).", "{} in a word?"]
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        text = rng.choice(forms).format(rng.choice(topics), i)
        rows.append(request(f"s-{i}", text, chat=bool(i % 4), max_tokens=None if i % 4 else 100))
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def medium_prompts(n: int, seed: int = 9) -> bytes:
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        words = rng.randint(30, 120)  # about 150 to 650 characters
        text = f"Summarise item {i}: " + " ".join(rng.choice(WORDS) for _ in range(words))
        cap = rng.choice([64, 128, 256, 512])
        rows.append(request(f"m-{i}", text, chat=bool(i % 2), max_tokens=cap,
                            system="You are terse." if i % 5 == 1 else None))
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)
