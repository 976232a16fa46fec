"""Shared helpers for the benchmarks: a Redis to use and its cleanup, sample files."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from batchrelay.store.embedded import EmbeddedRedis


@contextlib.contextmanager
def bench_redis() -> Iterator[tuple[str, str]]:
    """(url, prefix): REDIS_URL with a fresh prefix whose keys are removed after, else an embedded server."""
    prefix = f"brbench:{uuid.uuid4().hex[:8]}:"
    url = os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="brbench-") as d, contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(EmbeddedRedis(Path(d)))
        try:
            yield url, prefix
        finally:
            client = redis.Redis.from_url(url)
            for batch in client.scan_iter(match=prefix + "*", count=5000):
                client.delete(batch)
            client.close()


def write_lines(path: Path, n: int, dups: float = 0.0) -> Path:
    """`n` OpenAI batch lines, streamed to `path`; with `dups`, every 1/dups-th line repeats the
    custom_id of the line before it."""
    every = max(2, round(1 / dups)) if dups > 0 else 0
    with path.open("wb", buffering=1024 * 1024) as f:
        for i in range(1, n + 1):
            cid = f"r{i - 1}" if every and i % every == 0 else f"r{i}"
            f.write(orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4o-mini",
                                           "messages": [{"role": "user", "content": f"Say hi {i}"}]}}) + b"\n")
    return path


@dataclass
class Figure:
    """One printed figure of a benchmark, with its target when it has one."""

    scenario: str
    name: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: reported, no target


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_summary(figures: Sequence[Figure]) -> bool:
    """The summary table of every figure; True when no target failed."""
    print("\n== summary")
    rows = [("scenario", "figure", "value", "target", "result")]
    for f in figures:
        rows.append((f.scenario, f.name, f.value, f.target or "-",
                     "-" if f.ok is None else ("PASS" if f.ok else "FAIL")))
    print_table(rows)
    failed = [f for f in figures if f.ok is False]
    print(f"  {len(failed)} of {sum(f.ok is not None for f in figures)} targets failed")
    return not failed
