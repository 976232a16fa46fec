"""The chaos run's processes (bench/chaos.py): a restartable redis-server of its own, worker
processes that can be killed and replaced, and CLI calls whose every output is kept."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from batchrelay.procs import stop_all
from batchrelay.sim.process import free_port
from batchrelay.store.embedded import find_redis_server


class OwnRedis:
    """A redis-server of this run's own, with AOF in `data`, that may be restarted on the same port."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cmd = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
                    "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                    "--maxmemory-policy", "noeviction", "--logfile", str(data / "redis.log")]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.RedisError, OSError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not come up on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def restart(self, down_s: float) -> float:
        """SIGTERM (a clean shutdown writes the AOF out), `down_s` away, start again; seconds unreachable."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        time.sleep(down_s)
        self.start()
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc], grace=15)
            self.proc = None


class Workers:
    """`batchrelay worker` processes (not --burst), each logging at INFO to its own file."""

    def __init__(self, cfg: Path, env: dict[str, str], logs: Path) -> None:
        self.cfg, self.env, self.logs = cfg, env, logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # live ones, by index
        self.killed: list[int] = []
        self.died: list[tuple[int, int]] = []  # (index, rc) of workers that left on their own
        self.count = 0

    def log(self, i: int) -> Path:
        return self.logs / f"worker{i}.log"

    def start(self) -> int:
        i, self.count = self.count, self.count + 1
        with self.log(i).open("wb") as out:  # the child keeps its own copy of the descriptor
            self.procs[i] = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(self.cfg), "worker"],
                                             env=self.env, stdout=out, stderr=out)
        return i

    def kill_one(self, rng: random.Random) -> int:
        i = rng.choice(sorted(self.procs))
        p = self.procs.pop(i)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        self.killed.append(i)
        return i

    def check(self) -> None:
        """Replace any worker that left by itself (a failure, recorded)."""
        for i, p in list(self.procs.items()):
            if p.poll() is not None:
                self.died.append((i, p.returncode))
                del self.procs[i]
                self.start()

    def terminate(self, grace: float) -> dict[int, int | None]:
        """SIGTERM every live worker; their exit codes (None: still there after `grace`, then killed)."""
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in self.procs.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        rcs = {i: p.poll() for i, p in self.procs.items()}
        stop_all(list(self.procs.values()), grace=1)
        self.procs.clear()
        return rcs

    def stop(self) -> None:
        stop_all(list(self.procs.values()), grace=5)
        self.procs.clear()


class Cli:
    """`batchrelay -c CFG ...` in a child process, bounded; every stdout/stderr is kept for the secret scan."""

    def __init__(self, cfg: Path, env: dict[str, str]) -> None:
        self.cfg, self.env = cfg, env
        self.outputs: list[tuple[str, str]] = []  # (what, text)

    def __call__(self, *args: str, timeout: float = 120, ok: Iterable[int] = (0,)) -> str:
        what = " ".join(args[:2])
        try:
            proc = subprocess.run([sys.executable, "-m", "batchrelay", "-c", str(self.cfg), *args],
                                  capture_output=True, text=True, env=self.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"batchrelay {what} did not finish within {timeout:g}s") from None
        self.outputs += [(f"`{what}` stdout", proc.stdout), (f"`{what}` stderr", proc.stderr)]
        if proc.returncode not in tuple(ok):
            raise RuntimeError(f"batchrelay {what} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        return proc.stdout

    def json(self, *args: str, timeout: float = 120, ok: Iterable[int] = (0,)) -> Any:
        return json.loads(self(*args, "--json", timeout=timeout, ok=ok))
