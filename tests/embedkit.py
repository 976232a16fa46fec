"""For tests of the embedded Redis as a new user meets it: real `batchrelay` processes with an empty
HOME, no REDIS_URL, no config, and the redis-server processes they share."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis


@pytest.fixture
def home() -> Iterator[Path]:
    """An empty HOME, short enough for the unix socket path under it (~100 bytes at most)."""
    d = Path(tempfile.mkdtemp(prefix="br-home-"))
    yield d
    _stop_servers_under(d)  # a failed test must not leave a redis-server behind
    shutil.rmtree(d, ignore_errors=True)


def fresh_env(home: Path) -> dict[str, str]:
    """The environment of a user with nothing set up (REDIS_URL and the config lookups unset)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "BATCHRELAY_CONFIG", "BATCHRELAY_STATE_DIR", "XDG_STATE_HOME")}
    return {**env, "HOME": str(home)}


def state_of(home: Path) -> Path:
    return home / ".local" / "state" / "batchrelay"


def socket_of(home: Path) -> Path:
    return state_of(home) / "redis.sock"


def cli(home: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """`batchrelay ARGS` as that user (with `env` on top), in HOME (so no ./batchrelay.toml is found)."""
    return subprocess.run([sys.executable, "-m", "batchrelay", *args], capture_output=True, text=True,
                          env={**fresh_env(home), **(env or {})}, cwd=home, timeout=timeout)


def spawn(home: Path, *args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    """`batchrelay ARGS` in the background (with `env` on top), in a process group of its own (as a
    shell's job is), so a test can send it what a terminal sends."""
    return subprocess.Popen([sys.executable, "-m", "batchrelay", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**fresh_env(home), **(env or {})}, cwd=home,
                            start_new_session=True, **kw)  # type: ignore[call-overload]


def servers_on(sock: Path) -> list[int]:
    """The pids of the live redis-server processes whose data directory is `sock`'s (from /proc:
    redis-server runs in its `--dir`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if comm.startswith("redis-server") and state != "Z" and cwd == str(sock.parent):
            found.append(int(entry.name))
    return found


def server_pid(sock: Path) -> int:
    """The pid the redis-server answering on `sock` reports for itself."""
    client = sync_redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _stop_servers_under(home: Path) -> None:
    for pid in servers_on(socket_of(home)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
