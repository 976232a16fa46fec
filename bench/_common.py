"""Shared helpers for the benchmarks: a Redis to use and its cleanup, sample files."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis

from batchrelay.embedded import EmbeddedRedis


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


def write_lines(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(1, n + 1):
            f.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4o-mini",
                                           "messages": [{"role": "user", "content": f"Say hi {i}"}]}}) + b"\n")
    return path
