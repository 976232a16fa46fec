"""docker-compose.yml cannot be started here (no Docker engine); its structure is checked instead: services,
healthchecks (run for real against local servers), volumes, that every command is one the CLI has, and
that the README's "Docker" walk-through reads inputs that exist and writes where the image's user may."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml

from batchrelay.cli.main import cli
from batchrelay.config.settings import load_settings
from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess, free_port

from .conftest import wait_for, write_config

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("simulator", "worker", "serve", "cli")  # the ones built from the Dockerfile


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _services() -> dict[str, dict[str, Any]]:
    return dict(_compose()["services"])


def _dockerfile() -> list[str]:
    """Its instructions, continuation lines joined."""
    return [line.strip() for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _docker_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Docker\n")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def _readme_commands(tool: str) -> list[tuple[str, list[str]]]:
    """(service, args) of each `docker compose run ... SERVICE ARGS` or `docker compose cp` in the section."""
    found = []
    for line in _docker_section().splitlines():
        m = re.search(rf"docker compose {tool} ([^)#]*)", line)
        if m:
            words = shlex.split(m.group(1).replace("$B", "batch_x"))
            while words[0].startswith("-"):  # --rm, -T: flags of compose's own
                words.pop(0)
            found.append((words[0], words[1:]))
    return found


def _volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each short-syntax volume."""
    out = []
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out.append((source, target, "ro" in mode))
    return out


def _mount_of(service: dict[str, Any], path: str) -> tuple[str, str, bool]:
    """The volume a container path lies on (the deepest mount holding it)."""
    holding = [v for v in _volumes(service) if PurePosixPath(path).is_relative_to(v[1])]
    assert holding, f"{path} is on no volume: it is lost with the container"
    return max(holding, key=lambda v: len(v[1]))


def _on_host(service: dict[str, Any], arg: str) -> str:
    """A container path on a bind mount, as the host path it reads; anything else as it is."""
    if not arg.startswith("/"):
        return arg
    source, target, _ = _mount_of(service, arg)
    if source.startswith("."):
        return str(ROOT / source / PurePosixPath(arg).relative_to(target))
    return arg


def parse_command(args: list[str]) -> click.Context:
    """Parse `batchrelay ARGS` as the CLI would, without running it: UsageError for what it lacks."""
    ctx = click.Context(cli, info_name="batchrelay")
    group: click.Group = cli
    while True:
        name, found, args = group.resolve_command(ctx, args)
        assert name and found is not None, args
        if not isinstance(found, click.Group):
            return found.make_context(name, args, parent=ctx)
        group, ctx = found, click.Context(found, info_name=name, parent=ctx)


def _user() -> tuple[str, set[str]]:
    """The Dockerfile's USER and the names it goes by (uid and login, from its useradd line)."""
    user = [line.split()[1] for line in _dockerfile() if line.startswith("USER ")][-1].split(":")[0]
    for line in _dockerfile():
        m = re.search(r"useradd .*--uid (\d+) .*?(\w+)\s*(?:&&|$)", line)
        if m and user in m.groups():
            return user, set(m.groups())
    return user, {user}


def _owned_by_user(path: str) -> bool:
    """The image makes `path` (or a directory above it) with the USER as its owner."""
    _, names = _user()
    for line in _dockerfile():
        for m in re.finditer(r"install -d -o (\S+) -g \S+ ((?:/\S+ ?)+)", line):
            if m.group(1) in names and any(PurePosixPath(path).is_relative_to(d) for d in m.group(2).split()):
                return True
    return False


def test_compose_redis_keeps_data_with_aof_and_never_evicts() -> None:
    cmd = " ".join(_services()["redis"]["command"])
    assert "--appendonly yes" in cmd
    assert "--appendfsync everysec" in cmd
    assert "--maxmemory-policy noeviction" in cmd


def test_compose_worker_can_scale_and_reaches_redis_and_its_config() -> None:
    services = _services()
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # both would break --scale
    assert worker["environment"]["REDIS_URL"].startswith("redis://redis:")
    host_path, container_path, read_only = _volumes(worker)[0]
    assert container_path == worker["environment"]["BATCHRELAY_CONFIG"] and read_only
    settings = load_settings(ROOT / host_path)
    assert settings.providers[0].base_url == "http://simulator:8787"
    assert services["simulator"]["command"][:1] == ["simulate"]


def test_every_compose_service_builds_or_pulls_an_image() -> None:
    for name, svc in _services().items():
        assert "build" in svc or "image" in svc, name
    assert sum(line.startswith("ENTRYPOINT") for line in _dockerfile()) == 1


def test_every_command_in_compose_and_the_readme_is_one_the_cli_has() -> None:
    services = _services()
    for name in APP_SERVICES:
        svc = services[name]
        assert "image" not in svc and svc["build"] == ".", name  # `command` is given to ENTRYPOINT batchrelay
        if "command" in svc:
            parse_command(list(svc["command"]))
        test = svc.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["batchrelay"]:
            parse_command(test[2:])
    ran = _readme_commands("run")
    assert {s for s, _ in ran} == {"cli"} and len(ran) >= 2
    for service, args in ran:
        parse_command([_on_host(services[service], a) for a in args])  # inputs must exist in ./examples


def test_a_mistyped_command_is_caught() -> None:
    with pytest.raises(click.UsageError):
        parse_command(["result", "b", "-o", "x"])
    with pytest.raises(click.UsageError):
        parse_command(["results", "b", "--out", "x"])
    with pytest.raises(click.BadParameter):
        parse_command(["submit", "/no/such/file.jsonl"])
    assert parse_command(["providers", "check", "--json"]).info_name == "check"


def test_the_image_runs_as_a_user_of_its_own() -> None:
    user, names = _user()
    assert not names & {"root", "0", "nobody", "65534"}
    assert any(n.isdigit() and int(n) >= 1000 for n in names), "a fixed uid, so volumes it owns fit new images"


def test_the_readme_writes_results_on_a_volume_the_image_user_owns_and_copies_them_out() -> None:
    compose, services = _compose(), _services()
    outputs = [(s, args[args.index(flag) + 1]) for s, args in _readme_commands("run")
               for flag in ("-o", "--output", "--errors") if flag in args]
    assert outputs, "the Docker section writes results"
    for service, path in outputs:
        source, target, read_only = _mount_of(services[service], path)
        # a named volume: Docker fills a new one from the image, owner included, whatever the host's uids
        # (a bind mount keeps the host directory's owner, which the image's user is not)
        assert source in compose["volumes"] and not read_only, (path, source)
        assert "user" not in services[service]
        assert _owned_by_user(target), f"the Dockerfile makes {target} for its USER"
        copies = [s for s, _ in _readme_commands("cp")]
        assert any(c.split(":", 1)[1] == path and _mount_of(services[c.split(":")[0]], path)[0] == source
                   for c in copies), f"the README copies {path} out through a service sharing {source}"


def test_serve_is_published_with_its_client_keys_from_the_environment_and_files_on_the_volume() -> None:
    services, compose = _services(), _compose()
    serve = services["serve"]
    ctx = parse_command(list(serve["command"]))
    assert ctx.params["host"] == "0.0.0.0"
    assert any(str(p).endswith(f":{ctx.params['port']}") for p in serve["ports"])
    cfg = load_settings(ROOT / _volumes(serve)[0][0])
    assert cfg.serve.api_keys_env
    for name in cfg.serve.api_keys_env:  # the key's value comes from the host's environment (or .env), never the file
        assert re.fullmatch(rf"\$\{{{name}(:\?[^}}]+)?\}}", serve["environment"][name]), serve["environment"][name]
    source, _, read_only = _mount_of(serve, str(cfg.serve.files_dir))
    assert source in compose["volumes"] and not read_only and _owned_by_user(str(cfg.serve.files_dir))


def test_long_running_services_have_healthchecks_and_start_after_healthy_dependencies() -> None:
    services = _services()
    for name, svc in services.items():
        if "profiles" in svc:
            continue  # `docker compose run` one-offs
        assert svc["healthcheck"]["test"][0] == "CMD", name
        for dep, how in svc.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", (name, dep)
    assert set(services["worker"]["depends_on"]) == {"redis", "simulator"}
    assert set(services["serve"]["depends_on"]) == {"redis"}


# The healthchecks, run here as Docker would run them in the containers, against the same servers.

def _client_key_env() -> str:
    return load_settings(ROOT / "examples" / "compose.toml").serve.api_keys_env[0]


@pytest.fixture
def local_stack(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[dict[str, int]]:
    """A simulator and `batchrelay serve` on free ports: container port -> local port."""
    key_env = _client_key_env()
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:1"}])
    with cfg.open("a") as f:
        f.write(f'\n[serve]\napi_keys_env = ["{key_env}"]\nfiles_dir = "{tmp_path / "files"}"\n')
    env = {**os.environ, "REDIS_URL": redis_url, key_env: "k-local", "BATCHRELAY_CONFIG": str(cfg)}
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "batchrelay", "serve", "--port", str(port)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with SimulatorProcess({}) as sim_url:
            wait_for(lambda: _healthy(_services()["serve"], {8080: port}, env), 20, "serve to answer")
            yield {8787: int(sim_url.rsplit(":", 1)[1]), 8080: port}
    finally:
        stop_all([serve], grace=10)


def _healthy(svc: dict[str, Any], ports: dict[int, int], env: dict[str, str]) -> bool:
    argv = svc["healthcheck"]["test"][1:]
    argv = [re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(int(m.group(1)), m.group(1))}", a)
            for a in argv]
    prog = {"python": [sys.executable], "batchrelay": [sys.executable, "-m", "batchrelay"]}[argv[0]]
    return subprocess.run([*prog, *argv[1:]], env=env, capture_output=True, timeout=30).returncode == 0


def test_the_healthchecks_pass_on_healthy_servers_and_fail_without_them(local_stack: dict[str, int],
                                                                         redis_url: str, tmp_path: Path) -> None:
    services = _services()
    env = {**os.environ, "REDIS_URL": redis_url, "BATCHRELAY_CONFIG": str(tmp_path / "c.toml")}
    key_env = _client_key_env()
    for name in ("simulator", "serve", "worker"):
        assert _healthy(services[name], local_stack, {**env, key_env: "k-local"}), name
    dead = {8787: free_port(), 8080: free_port()}
    assert not _healthy(services["simulator"], dead, env)
    assert not _healthy(services["serve"], local_stack, {**env, key_env: "wrong"})
    assert not _healthy(services["worker"], local_stack, {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
