"""The processes and instruments of bench/serve_abuse.py: a redis-server of its own, the simulator,
`batchrelay serve` (started afresh for every attack) and a worker; serve's RSS and Redis's memory
sampled in the background; a keyed probe on its own connection; raw HTTP exchanges that go on
sending whatever the server answers.

Its processes run in its temporary directory: `python -m` puts the working directory first on the
path, so from inside a checkout they would run that checkout's code whatever PYTHONPATH says."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil
import redis
from chaos_rig import OwnRedis

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess, free_port

KEY_ENV = "BENCH_ABUSE_CLIENT_KEY"
PROBE_PATH = "/v1/batches?limit=1"


class Rig:
    """Redis and the simulator for the whole run; serve and the worker come and go."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = os.environ.get(KEY_ENV) or "sk-abuse-" + secrets.token_hex(16)
        (tmp / "redis").mkdir()
        self.redis = OwnRedis(tmp / "redis")
        self.redis.cmd[self.redis.cmd.index("--appendonly") + 1] = "no"  # memory figures, not durability
        self.sim = SimulatorProcess({"latency_ms": 500})  # slow answers: the worker barely works
        self.files = tmp / "files"
        self.config = tmp / "batchrelay.toml"
        self.env = {**os.environ, "REDIS_URL": self.redis.url, KEY_ENV: self.key}
        self.env.pop("BATCHRELAY_CONFIG", None)
        self.port = 0
        self.serve: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def __enter__(self) -> Rig:
        self.redis.start()
        self.sim.start()
        self.config.write_text("\n".join([
            "[redis]", 'prefix = "abuse:"', "", "[worker]", "concurrency = 4", "chunk_size = 50",
            "call_timeout = 2", "job_timeout = 20", "", "[[providers]]", 'name = "sim"',
            f"base_url = {json.dumps(self.sim.base_url)}", "", "[serve]", f'api_keys_env = ["{KEY_ENV}"]',
            f"files_dir = {json.dumps(str(self.files))}", ""]))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_worker()
        self.stop_serve()
        self.sim.stop()
        self.redis.stop()

    def reset(self) -> None:
        """An empty store (our own server) and files directory."""
        client = redis.Redis.from_url(self.redis.url)
        client.flushall()
        client.close()
        shutil.rmtree(self.files, ignore_errors=True)
        self.files.mkdir()

    def used_memory(self) -> int:
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            return int(cast(dict[str, Any], client.info("memory"))["used_memory"])
        finally:
            client.close()

    def start_serve(self, log: Path) -> subprocess.Popen[bytes]:
        self.port = free_port()
        with log.open("wb") as out:
            self.serve = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(self.config), "serve",
                                           "--port", str(self.port)], env=self.env, stdout=out, stderr=out,
                                          cwd=self.tmp)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.serve.poll() is not None:
                raise RuntimeError(f"serve exited {self.serve.returncode}: {log.read_text()[-1500:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", PROBE_PATH, headers=self.auth)
                if conn.getresponse().status == 200:
                    conn.close()
                    return self.serve
                conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("serve did not answer within 30 s")

    def stop_serve(self) -> None:
        if self.serve is not None:
            stop_all([self.serve], grace=10)
            self.serve = None

    def start_worker(self, log: Path) -> None:
        with log.open("wb") as out:
            self.worker = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(self.config), "worker"],
                                           env=self.env, stdout=out, stderr=out, cwd=self.tmp)

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_all([self.worker], grace=10)
            self.worker = None


class Sampler:
    """The serve process's RSS every ~20 ms and Redis's used_memory every ~250 ms, each on its own thread."""

    def __init__(self, pid: int, rig: Rig) -> None:
        self.proc, self.rig = psutil.Process(pid), rig
        self.rss: list[tuple[float, int]] = []
        self.redis: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._rss, daemon=True),
                        threading.Thread(target=self._redis, daemon=True)]
        for t in self.threads:
            t.start()

    def _rss(self) -> None:
        while not self.done.is_set():
            try:
                self.rss.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return  # serve is gone
            self.done.wait(0.02)

    def _redis(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(redis.RedisError, OSError):
                self.redis.append((time.monotonic(), self.rig.used_memory()))
            self.done.wait(0.25)

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join()

    @staticmethod
    def last_before(samples: list[tuple[float, int]], t: float) -> int:
        return next((v for at, v in reversed(samples) if at <= t), samples[0][1] if samples else 0)

    @staticmethod
    def peak_from(samples: list[tuple[float, int]], t: float) -> int:
        return max((v for at, v in samples if at >= t), default=0)


class Probe:
    """Small keyed GETs one after another on one keep-alive connection (a new one after an error):
    (started, ended, status) each, status 0 for no answer."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.samples: list[tuple[float, float, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.done.is_set():
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.rig.port, timeout=30)
            t0 = time.monotonic()
            try:
                conn.request("GET", PROBE_PATH, headers=self.rig.auth)
                answer = conn.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = None
            self.samples.append((t0, time.monotonic(), status))
            self.done.wait(0.02)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def during(self, start: float, end: float) -> list[tuple[float, int]]:
        """(seconds, status) of the probes that overlapped [start, end]."""
        return [(t1 - t0, status) for t0, t1, status in self.samples if t0 < end and t1 > start]


@dataclass
class Exchange:
    status: str  # the answer's status code, or how the connection ended without one
    seconds: float  # until the answer was complete (or the connection ended)
    sent: int  # bytes the server took before we stopped (all of them, or it closed / stopped reading)
    received: int  # bytes of the answer, head included


def _answer(sock: socket.socket) -> tuple[str, int]:
    """Read one HTTP answer, counting its bytes without keeping its body."""
    head, received, status = bytearray(), 0, ""
    try:
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                return ("cut" if head else "closed"), received
            received += len(data)
            head += data
        top, _, rest = bytes(head).partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = lines[0].split(" ")[1]
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if "content-length" in fields:
            left = int(fields["content-length"]) - len(rest)
            while left > 0 and (data := sock.recv(1 << 20)):
                received += len(data)
                left -= len(data)
        else:  # chunked, or until the server closes
            tail = rest[-5:]
            while not tail.endswith(b"0\r\n\r\n") and (data := sock.recv(1 << 20)):
                received += len(data)
                tail = (tail + data)[-5:]
        return status, received
    except ConnectionResetError:
        return status or "reset", received
    except TimeoutError:
        return status or "no answer", received


def exchange(port: int, pieces: Iterable[bytes], timeout: float = 300, linger: float = 10) -> Exchange:
    """Send `pieces` on a new connection while reading its answer; after the answer, go on sending
    (as an attacker would) for at most `linger` seconds, until all is sent or the server refuses."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)
    sent = [0]

    def send() -> None:
        try:
            for piece in pieces:
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError:
            pass  # refused (closed, reset) or we shut it down

    t0 = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    status, received = _answer(sock)
    seconds = time.monotonic() - t0
    sender.join(linger)
    shutdown(sock)
    sender.join()
    sock.close()
    return Exchange(status, seconds, sent[0], received)


def shutdown(sock: socket.socket) -> None:
    """Wake a sender blocked in sendall (closing alone would not)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def still_open(socks: list[socket.socket]) -> int:
    """How many of these connections the server has not closed (whatever it may have sent on them)."""
    count = 0
    for s in socks:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def padded(prefix: bytes, unit: bytes, count: int, suffix: bytes) -> tuple[int, Iterable[bytes]]:
    """(length, pieces) of prefix + unit * count + suffix, streamed in ~1 MiB pieces."""
    per = max(1, (1 << 20) // len(unit))
    block = unit * per
    full, rest = divmod(count, per)
    pieces = itertools.chain([prefix], itertools.repeat(block, full), [unit * rest, suffix])
    return len(prefix) + len(unit) * count + len(suffix), pieces


def request_head(method: str, path: str, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

