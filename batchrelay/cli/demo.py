"""The demo's sample batch and simulated providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from batchrelay.errors import InputError

# the flaky one is tried first: its 429 and 503s show retries and failover in the attempts
DEMO_PROVIDERS: dict[str, dict[str, Any]] = {
    "flaky-reseller": {"script": [429], "fail_rate": 0.25, "fail_rate_status": 503, "retry_after": 0.2,
                       "latency_ms": 20, "seed": 7},
    "steady-reseller": {"latency_ms": 200},
}
TOPICS = ["black holes", "sourdough", "TCP slow start", "the Krebs cycle", "haiku", "Redis AOF", "tides"]
BAD_LINES = [b'{"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": {', b"[1, 2, 3]",
             b'{"custom_id": "no-model", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}']


def sample_line(i: int) -> dict[str, Any]:
    question = f"In one sentence, explain {TOPICS[i % len(TOPICS)]} (request {i})."
    if i % 3 == 2:
        return {"custom_id": f"req-{i}", "params": {"model": "claude-3-5-haiku-20241022", "max_tokens": 200,
                                                   "messages": [{"role": "user", "content": question}]}}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}}


def refuse_overwrite(paths: list[Path]) -> None:
    """InputError naming the files the demo would overwrite: they may be the user's own."""
    if taken := [str(p) for p in paths if p.exists()]:
        raise InputError(f"the demo would overwrite {', '.join(taken)}: pass --force to overwrite, "
                         "or -o a path in another directory")


def write_sample(path: Path, lines: int, *, bad: bool = True) -> Path:
    """`lines` requests in OpenAI and Anthropic batch formats, with a few bad lines planted."""
    with path.open("wb") as f:
        for i in range(1, lines + 1):
            f.write(orjson.dumps(sample_line(i)) + b"\n")
            if bad and i % 70 == 35:
                f.write(BAD_LINES[(i // 70) % len(BAD_LINES)] + b"\n")
    return path
