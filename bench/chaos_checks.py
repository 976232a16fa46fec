"""The chaos run's checks (bench/chaos.py): exactly once, bad lines reported with their number, and
where a planted secret could have leaked (every Redis key and value, files, outputs)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()] if path.exists() else []


def line_of(rec: dict[str, Any]) -> int:
    return int(rec["batchrelay"]["line"])


def error_message(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return str(rec["error"].get("message", ""))
    err = (rec.get("result") or {}).get("error") or {}
    return str((err.get("error") or err).get("message", ""))


def exactly_once(results: list[dict[str, Any]], errors: list[dict[str, Any]], valid: dict[int, str]
                 ) -> tuple[int, int, int, int]:
    """(valid lines answered once in the results, duplicates, lost, valid lines in the errors file)."""
    by_line = Counter(line_of(r) for r in results)
    by_id = Counter(r["custom_id"] for r in results if line_of(r) in valid)
    dups = sum(c - 1 for c in by_line.values() if c > 1)  # extra records of one line
    id_at = {line_of(r): r["custom_id"] for r in results}
    once = sum(1 for line, cid in valid.items() if by_line[line] == 1 and id_at[line] == cid and by_id[cid] == 1)
    lost = sum(1 for line in valid if by_line[line] == 0)
    failed = sum(1 for e in errors if line_of(e) in valid)
    return once, dups, lost, failed


def bad_lines_reported(errors: list[dict[str, Any]], results: list[dict[str, Any]], bad: dict[int, str]
                       ) -> tuple[int, list[str]]:
    """How many bad lines have exactly one error record carrying their line number; what is wrong."""
    recs: dict[int, list[dict[str, Any]]] = {}
    for e in errors:
        recs.setdefault(line_of(e), []).append(e)
    good, wrong = 0, []
    for line, kind in bad.items():
        got = recs.get(line, [])
        if len(got) != 1:
            wrong.append(f"line {line} ({kind}): {len(got)} error records")
            continue
        msg = error_message(got[0])
        numbered = msg.startswith(f"line {line}:") and got[0].get("error", {}).get("line", line) == line
        if numbered and got[0]["batchrelay"].get("error") == "invalid_input":
            good += 1
        else:
            wrong.append(f"line {line} ({kind}): {msg[:100]!r}")
    wrong += [f"line {line_of(r)} ({bad[line_of(r)]}) is in the results" for r in results if line_of(r) in bad]
    return good, wrong


def redis_dump_hits(url: str, needles: dict[str, bytes], prefix: str) -> tuple[int, int, list[str]]:
    """Every key of the server and every value of every type: (keys, keys under the prefix, hits)."""
    client: Any = redis.Redis.from_url(url)  # sync client: its replies are values, never awaitables
    n = under = 0
    hits: list[str] = []
    try:
        for key in client.scan_iter(count=1000):
            n += 1
            under += key.startswith(prefix.encode())
            kind = client.type(key)
            parts: list[bytes] = [key]
            if kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"hash":
                for k, v in client.hgetall(key).items():
                    parts += [k, v]
            elif kind == b"list":
                parts += client.lrange(key, 0, -1)
            elif kind == b"set":
                parts += list(client.smembers(key))
            elif kind == b"zset":
                parts += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"stream":
                for entry_id, fields in client.xrange(key):
                    parts.append(entry_id)
                    for k, v in fields.items():
                        parts += [k, v]
            else:
                parts.append(client.dump(key) or b"")
            for name, needle in needles.items():
                if any(needle in p for p in parts):
                    hits.append(f"redis key {key[:80]!r}: {name}")
    finally:
        client.close()
    return n, under, hits


def scan_bytes(where: str, data: bytes, needles: dict[str, bytes]) -> list[str]:
    return [f"{where}: {name}" for name, needle in needles.items() if needle in data]
