"""Helpers for the `serve` tests: a real `batchrelay serve` and worker on this test's Redis and prefix,
the provider simulator behind them, and the official SDKs pointed at it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import orjson
import redis

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess, free_port

from .conftest import wait_for, write_config

KEY = "test-client-key-0123"
KEY_ENV = "BATCHRELAY_TEST_SERVE_KEY"
T = TypeVar("T")


@dataclass
class Api:
    base: str
    sim: SimulatorProcess
    files_dir: Path
    config: Path
    env: dict[str, str]
    stderr: Path  # serve's stderr, written as it goes
    clients: list[openai.OpenAI | anthropic.Anthropic] = field(default_factory=list)
    pid: int = 0  # the serve process

    def openai(self, key: str = KEY) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def anthropic(self, key: str = KEY) -> anthropic.Anthropic:
        client = anthropic.Anthropic(base_url=self.base, api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw request with the client key (for what the SDKs never send)."""
        return httpx.request(method, self.base + path, headers={"Authorization": f"Bearer {KEY}"}, **kwargs)

    def serve_log(self) -> str:
        """What serve has written to stderr so far."""
        return self.stderr.read_text(errors="replace")

    def work(self) -> None:
        """Run a `batchrelay worker --burst` until the queue is empty (its sweep included); with many
        lines in flight, so it takes many chunk jobs at a time."""
        subprocess.run([sys.executable, "-m", "batchrelay", "-c", str(self.config), "worker", "--burst", "--quiet",
                        "--concurrency", "100"], env=self.env, check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serve_config(tmp_path: Path, prefix: str, sim_url: str, serve_extra: str = "") -> Path:
    """The test's config; `serve_extra` is more `[serve]` lines (limits, public_url)."""
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": sim_url}],
                       concurrency=2, chunk_size=5, call_timeout=2)
    with cfg.open("a") as f:
        f.write(f'\n[serve]\napi_keys_env = ["{KEY_ENV}"]\nfiles_dir = "{tmp_path / "files"}"\n{serve_extra}\n')
    return cfg


@contextlib.contextmanager
def serving(tmp_path: Path, redis_url: str, prefix: str, serve_extra: str = "", worker: bool = True
            ) -> Iterator[Api]:
    """`batchrelay serve` and (unless not `worker`) one worker, until the block ends; `serve_extra`
    is more `[serve]` lines for its config."""
    procs: list[subprocess.Popen[bytes]] = []
    sim = SimulatorProcess({})
    with sim as sim_url:
        cfg = serve_config(tmp_path, prefix, sim_url, serve_extra)
        env = {**os.environ, "REDIS_URL": redis_url, KEY_ENV: KEY}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        stderr = tmp_path / "serve.stderr"
        try:
            with stderr.open("wb") as log:  # a file: a pipe nobody reads fills up and blocks serve
                procs.append(subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "serve", "--port",
                                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=log))
            if worker:
                procs.append(subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker",
                                               "--quiet"], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))

            def up() -> bool:
                assert procs[0].poll() is None, stderr.read_text(errors="replace")
                try:
                    return httpx.get(base + "/v1/batches", timeout=1).status_code == 401
                except httpx.HTTPError:
                    return False

            wait_for(up, 20, "batchrelay serve to answer")
            api = Api(base, sim, tmp_path / "files", cfg, env, stderr, pid=procs[0].pid)
            try:
                yield api
            finally:
                for client in api.clients:
                    client.close()
        finally:
            stop_all(procs, grace=10)


def poll(get: Callable[[], T], done: Callable[[T], bool], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        item = get()
        if done(item):
            return item
        assert time.monotonic() < deadline, f"timed out; last: {item}"
        time.sleep(0.2)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def anthropic_request(i: int) -> dict[str, Any]:
    return {"custom_id": f"m-{i}", "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 64,
                                               "messages": [{"role": "user", "content": f"question {i}"}]}}


@contextlib.contextmanager
def redis_commands(redis_url: str) -> Iterator[list[str]]:
    """The commands Redis runs while the block runs (MONITOR: scripts' commands too), as text; the
    list is filled in when the block ends."""
    seen: list[str] = []
    client = redis.Redis.from_url(redis_url)
    marker = f"end-of-watch-{uuid.uuid4().hex}"
    try:
        with client.monitor() as m:  # type: ignore[no-untyped-call]
            yield seen
            client.echo(marker)
            for command in m.listen():
                if marker in command["command"]:
                    break
                seen.append(command["command"])
    finally:
        client.close()
