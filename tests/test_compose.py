"""docker-compose.yml cannot be started here (no Docker engine); its structure is checked instead."""

from __future__ import annotations

from pathlib import Path

import yaml

from batchrelay.config.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_redis_keeps_data_with_aof_and_never_evicts() -> None:
    cmd = " ".join(_compose()["services"]["redis"]["command"])
    assert "--appendonly yes" in cmd
    assert "--appendfsync everysec" in cmd
    assert "--maxmemory-policy noeviction" in cmd


def test_compose_worker_can_scale_and_reaches_redis_and_its_config() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # both would break --scale
    assert worker["environment"]["REDIS_URL"].startswith("redis://redis:")
    host_path, container_path, _ = worker["volumes"][0].split(":")
    assert container_path == worker["environment"]["BATCHRELAY_CONFIG"]
    settings = load_settings(ROOT / host_path)
    assert settings.providers[0].base_url == "http://simulator:8787"
    assert services["simulator"]["command"][:1] == ["simulate"]


def test_every_compose_service_builds_or_pulls_an_image() -> None:
    for name, svc in _compose()["services"].items():
        assert "build" in svc or "image" in svc, name
    assert (ROOT / "Dockerfile").read_text().count("ENTRYPOINT") == 1
