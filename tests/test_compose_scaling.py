"""Docker Compose on several machines (README "Scaling"): the Redis machine's override gives Redis a
password and a published port and every app service the URL with that password (its healthcheck run
for real against a password-protected redis-server); the workers-only file asks a worker-only machine
for its Redis URL and its own config, never for serve's client key."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchrelay.procs import stop_all
from batchrelay.sim.process import free_port
from batchrelay.store.embedded import find_redis_server

from .conftest import wait_for
from .test_compose import ROOT, parse_command

WORKERS_FILE = ROOT / "docker-compose.workers.yml"


def _scaling_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Scaling\n")
    return readme[start:readme.index("\n## ", start + 1)]


def _override() -> dict[str, Any]:
    """The README's docker-compose.override.yml for the Redis machine."""
    blocks = re.findall(r"```yaml\n(.*?)```", _scaling_section(), flags=re.S)
    found = [b for b in blocks if "docker-compose.override.yml" in b]
    assert len(found) == 1, blocks
    return dict(yaml.safe_load(found[0]))


def _required(text: str) -> set[str]:
    """The variables a compose file cannot be read without (`${NAME:?...}`), comments left out."""
    lines = [line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")]
    return set(re.findall(r"\$\{(\w+):\?", "\n".join(lines)))


def test_the_redis_machine_s_override_gives_redis_a_password_and_a_port_and_every_app_its_url() -> None:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    over = _override()["services"]
    redis = over["redis"]
    assert redis["command"][:len(base["redis"]["command"])] == base["redis"]["command"]  # AOF, noeviction kept
    assert redis["command"][-2:] == ["--requirepass", "${REDIS_PASSWORD}"]
    assert redis["ports"] and all(p.endswith(":6379") and not p.startswith("0.0.0.0") for p in redis["ports"])
    for name in ("worker", "serve", "cli"):  # the app services of docker-compose.yml, each with the password
        assert name in base
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", over[name]["environment"]["REDIS_URL"])


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--requirepass", "pw-1234", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        stop_all([proc], grace=5)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli (as in the redis image) is not installed")
def test_the_override_s_healthcheck_passes_with_the_password_only(protected_redis: int) -> None:
    redis = _override()["services"]["redis"]
    kind, command = redis["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and set(redis["environment"]) == {"REDISCLI_AUTH"}
    command = command.replace("redis-cli", f"redis-cli -p {protected_redis}")

    def healthy(password: str) -> bool:
        env = {**os.environ, "REDISCLI_AUTH": password}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=10).returncode == 0

    wait_for(lambda: healthy("pw-1234"), 15, "the protected redis-server")
    assert not healthy("wrong")  # redis-cli itself exits 0 on NOAUTH: the check must not


def test_worker_only_machines_need_their_redis_url_and_config_but_not_serve_s_client_key() -> None:
    text = WORKERS_FILE.read_text()
    services = yaml.safe_load(text)["services"]
    assert set(services) == {"worker"}  # no redis, simulator or serve of its own
    worker = services["worker"]
    assert worker["build"] == "." and "depends_on" not in worker
    parse_command(list(worker["command"]))
    parse_command(worker["healthcheck"]["test"][2:])
    assert _required(text) == {"REDIS_URL"}
    # the all-in-one file needs serve's key for any command at all (Compose reads every service of it)
    assert "BATCHRELAY_CLIENT_KEY" in _required((ROOT / "docker-compose.yml").read_text())
    (mount,) = worker["volumes"]
    assert mount["type"] == "bind" and mount["target"] == worker["environment"]["BATCHRELAY_CONFIG"]
    assert mount["read_only"] and mount["bind"]["create_host_path"] is False  # a missing config is an error
    assert "examples/compose.toml" not in mount["source"]  # the simulator's: real providers are the machine's own
    assert "docker compose -f docker-compose.workers.yml up" in _scaling_section()
