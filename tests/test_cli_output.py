"""What a person reads from the command line: options where they are typed, quiet workers, where
`simulate` listens, progress on a terminal, files `demo` will not overwrite."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import orjson

from batchrelay.sim.process import SimulatorProcess, free_port

from .conftest import batchrelay, openai_line, write_config

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _src(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    return path


def test_the_config_file_may_follow_the_command(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "only-here", "base_url": "http://127.0.0.1:9"}])
    env = {"REDIS_URL": redis_url, "BATCHRELAY_CONFIG": ""}
    # --providers is checked against the config given after it
    sub = batchrelay("submit", str(_src(tmp_path / "in.jsonl", 2)), "--providers", "only-here", "-c", str(cfg), env=env)
    assert sub.returncode == 0, sub.stderr
    listed = batchrelay("batches", "--json", "--config", str(cfg), env=env)
    assert [b["id"] for b in json.loads(listed.stdout)] == [sub.stdout.strip()]  # under the config's prefix
    names = batchrelay("providers", "--json", "-c", str(cfg), env=env)
    assert [p["name"] for p in json.loads(names.stdout)] == ["only-here"]
    check = batchrelay("providers", "check", "-c", str(cfg), env=env)
    assert "only-here" in check.stdout
    bad = batchrelay("batches", "-c", str(tmp_path / "missing.toml"), env=env)
    assert bad.returncode == 2 and "missing.toml" in bad.stderr and "Traceback" not in bad.stderr


def test_a_worker_is_quiet_about_each_call_unless_verbose(tmp_path: Path, redis_url: str, prefix: str,
                                                          simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": simulator.base_url}])
    env = {"REDIS_URL": redis_url}
    logs = {}
    for flag in ("", "--verbose"):
        assert batchrelay("-c", str(cfg), "submit", str(_src(tmp_path / "in.jsonl", 3)), env=env).returncode == 0
        proc = batchrelay("-c", str(cfg), "worker", "--burst", *([flag] if flag else []), env=env)
        assert proc.returncode == 0, proc.stderr
        logs[flag] = proc.stderr
    assert "HTTP Request" not in logs[""] and "/v1/chat/completions" not in logs[""]
    assert logs["--verbose"].count("/v1/chat/completions") >= 3


def test_simulate_says_where_it_listens() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "batchrelay", "simulate", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ready = select.select([proc.stderr], [], [], 20)[0]
        line = proc.stderr.readline() if ready else ""
        assert f"http://127.0.0.1:{port}" in line, line
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_demo_does_not_overwrite_a_file_unless_forced(tmp_path: Path) -> None:
    env = {"BATCHRELAY_STATE_DIR": str(tmp_path / "state"), "REDIS_URL": "", "BATCHRELAY_CONFIG": ""}
    mine = tmp_path / "demo-input.jsonl"
    mine.write_text("my own file\n")
    proc = batchrelay("demo", "--lines", "5", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "demo-input.jsonl" in proc.stderr and "--force" in proc.stderr, proc.stderr
    assert mine.read_text() == "my own file\n" and not (tmp_path / "demo-results.jsonl").exists()
    forced = batchrelay("demo", "--lines", "5", "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert mine.read_text() != "my own file\n" and (tmp_path / "demo-results.jsonl").exists()


def _on_a_terminal(args: list[str], env: dict[str, str], seconds: float) -> tuple[int | None, str]:
    """Run the CLI with stderr on a pseudo-terminal (80 columns) for up to `seconds`; what it drew."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "batchrelay", *args], env={**os.environ, **env, "COLUMNS": "80"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    drawn = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([master], [], [], 0.1)[0]:
            try:
                drawn += os.read(master, 65536)
            except OSError:
                break
    code = proc.poll()
    if code is None:
        proc.terminate()
        proc.wait(timeout=10)
    os.close(master)
    return code, ANSI.sub("", drawn.decode("utf-8", "replace"))


def test_results_wait_draws_progress_on_a_terminal_from_the_real_total(tmp_path: Path, redis_url: str,
                                                                       prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    env = {"REDIS_URL": redis_url}
    batch = batchrelay("-c", str(cfg), "submit", str(_src(tmp_path / "in.jsonl", 5)), env=env).stdout.strip()
    # nothing works the batch: `--wait` waits, drawing its progress
    _code, drawn = _on_a_terminal(["-c", str(cfg), "results", batch, "-o", str(tmp_path / "o.jsonl"), "--wait"],
                                  env, 3)
    assert f"{batch}: 5 lines" in drawn and "0/5" in drawn and "0 failed" in drawn and "0 invalid" in drawn
    assert "0/1 " not in drawn


def test_estimate_piped_prints_every_cell_whole(tmp_path: Path) -> None:
    """In a pipe there is no width to cut cells to: model names, prices and ranges come out whole."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"model": "claude-3-5-haiku-20241022", "max_tokens": 50,
                                           "messages": [{"role": "user", "content": f"question {i}"}]}) + b"\n"
                             for i in range(3)))
    proc = batchrelay("estimate", str(src), "--endpoint", "messages", "--no-history",
                      env={"COLUMNS": "40", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert header.split() == ["model", "provider", "lines", "tokens", "in", "/", "out", "expected", "range", "price",
                              "output"]
    assert row.split()[:3] == ["claude-3-5-haiku-20241022", "simulator", "*"]
    assert "genai-prices" in row and "…" not in proc.stdout
