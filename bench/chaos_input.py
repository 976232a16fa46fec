"""The chaos run's input file (bench/chaos.py): mixed chat and messages lines, and 5 % bad lines of
every kind the parser must report with their line number."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

GPT, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-20241022"
BAD_SHARE = 0.05
BAD_KINDS = ("invalid_json", "invalid_utf8", "not_object", "missing_model", "duplicate_custom_id",
             "unsupported_url")

WORDS = ["tide", "bridge", "wind", "river", "winter", "harbour", "copper", "owl", "glacier", "bread", "jazz",
         "compiler", "volcano", "chess", "moon", "rain"]


def valid_line(i: int, rng: random.Random) -> dict[str, Any]:
    text = f"question {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30)))
    if i % 3:
        body: dict[str, Any] = {"model": GPT, "messages": [{"role": "user", "content": text}]}
        if i % 4 == 0:
            body["max_tokens"] = 48
        if i % 5 == 0:
            body["messages"].insert(0, {"role": "system", "content": "Be brief."})
        return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    params: dict[str, Any] = {"model": HAIKU, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    if i % 2:
        params["system"] = "Answer in one line."
    return {"custom_id": f"req-{i}", "params": params}


def bad_line(i: int, kind: str, earlier_id: str) -> bytes:
    if kind == "invalid_json":
        return b'{"custom_id": "bad-%d", "method": "POST", "body": {"model": ' % i
    if kind == "invalid_utf8":
        return b'{"custom_id": "bad-%d", "params": {"model": "\xff\xfe\xfd"}}' % i
    if kind == "not_object":
        return [b"[1, 2, 3]", b'"just a string"', b"42", b"null"][i % 4]
    if kind == "missing_model":
        if i % 2:
            return orjson.dumps({"custom_id": f"bad-{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"messages": [{"role": "user", "content": "no model"}]}})
        return orjson.dumps({"custom_id": f"bad-{i}", "params": {"max_tokens": 10,
                                                                 "messages": [{"role": "user", "content": "x"}]}})
    if kind == "duplicate_custom_id":
        return orjson.dumps({"custom_id": earlier_id, "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": GPT, "messages": [{"role": "user", "content": "again"}]}})
    if kind == "unsupported_url":
        return orjson.dumps({"custom_id": f"bad-{i}", "method": "POST", "url": "/v1/embeddings",
                             "body": {"model": "text-embedding-3-small", "input": "hello"}})
    raise ValueError(kind)


def make_input(path: Path, n: int, rng: random.Random) -> tuple[dict[int, str], dict[int, str]]:
    """Write N lines; (valid line -> custom_id, bad line -> kind). Bad lines never come first, so a
    repeated custom_id always repeats an earlier valid line's."""
    n_bad = max(len(BAD_KINDS) if n >= 40 else 1, round(n * BAD_SHARE))
    bad_at = sorted(rng.sample(range(2, n + 1), n_bad))
    kinds = {line: BAD_KINDS[k % len(BAD_KINDS)] for k, line in enumerate(bad_at)}
    valid: dict[int, str] = {}
    with path.open("wb") as f:
        for i in range(1, n + 1):
            if i in kinds:
                f.write(bad_line(i, kinds[i], valid[rng.choice(sorted(valid))]) + b"\n")
            else:
                row = valid_line(i, rng)
                valid[i] = row["custom_id"]
                f.write(orjson.dumps(row) + b"\n")
    return valid, kinds
