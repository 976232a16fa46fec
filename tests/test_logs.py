"""The log of real processes (issue 16): `worker`, `run` and `serve` with `--log-format json` write
one JSON object per stderr line, with the fields of each call; text stays readable; no planted key
reaches a line.

The worker's scene: three providers share one planted key (in the environment only, as
tests/test_secrets.py plants it): `echo` answers 500 with the key in its body and a header (so it
is retried, then failed over from), `broke` answers 402 (benched), `good` demands the key and answers.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from batchrelay.sim.process import SimulatorProcess, free_port

from .conftest import batchrelay, openai_line, wait_for, write_config

KEY = "sk-PLANTED-" + uuid.uuid4().hex + "/" + uuid.uuid4().hex[:8] + "+Zz"
KEY_VAR = "BR_LOGS_TEST_KEY_" + uuid.uuid4().hex[:6].upper()
CLIENT_KEY = "client-PLANTED-" + uuid.uuid4().hex
CLIENT_VAR = "BR_LOGS_TEST_CLIENT_" + uuid.uuid4().hex[:6].upper()
CALL_FIELDS = ("batch", "line", "provider", "model", "status", "latency_ms", "attempt")


def needles(secret: str) -> list[str]:
    return [secret, secret[:12], quote(secret, safe=""), base64.b64encode(secret.encode()).decode(),
            secret.replace("/", "\\/")]


def no_secret(text: str) -> None:
    for secret in (KEY, CLIENT_KEY):
        leaked = [n for n in needles(secret) if n in text]
        assert not leaked, f"planted secret in the log: {leaked}"


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of `stderr` as JSON (the test fails on the first that is not one object)."""
    out = []
    for line in stderr.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line!r}")
        assert isinstance(obj, dict) and {"time", "level", "logger", "event"} <= obj.keys(), line
        assert obj["time"].endswith("Z") and obj["level"] in ("debug", "info", "warning", "error", "critical")
        out.append(obj)
    return out


class _Echo(BaseHTTPRequestHandler):
    """A reseller that answers 500 and echoes the caller's key in the body and a header."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        body = orjson.dumps({"error": {"message": f"upstream failed for {key}", "type": "server_error"}})
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo-Key", key)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def scene(tmp_path: Path, prefix: str, echo_url: str) -> Iterator[Path]:
    with SimulatorProcess({"fail_status": 402}) as broke, SimulatorProcess({"api_key": KEY}) as good:
        yield write_config(tmp_path / "c.toml", prefix, [
            {"name": "echo", "base_url": echo_url, "api_key_env": KEY_VAR, "priority": 1},
            {"name": "broke", "base_url": broke, "api_key_env": KEY_VAR, "priority": 2},
            {"name": "good", "base_url": good, "api_key_env": KEY_VAR, "priority": 3},
        ], attempts_per_provider=2)


def _submit_and_work(tmp_path: Path, cfg: Path, redis_url: str, *log_args: str) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_URL": redis_url, KEY_VAR: KEY}
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 7)))
    sub = batchrelay("-c", str(cfg), "submit", str(src), env=env)
    assert sub.returncode == 0, sub.stderr
    proc = batchrelay("-c", str(cfg), "worker", "--burst", *log_args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_worker_logs_json_lines_with_each_calls_fields_and_no_key(tmp_path: Path, redis_url: str,
                                                                    scene: Path) -> None:
    proc = _submit_and_work(tmp_path, scene, redis_url, "--log-format", "json", "--log-level", "debug",
                            "--log-http")
    no_secret(proc.stderr + proc.stdout)
    lines = json_lines(proc.stderr)
    answered = [x for x in lines if x["event"] == "call answered"]
    assert len(answered) == 6 and {x["provider"] for x in answered} == {"good"}
    for x in answered:
        assert all(k in x for k in CALL_FIELDS), x
        assert x["status"] == 200 and x["model"] == "gpt-4o-mini" and x["batch"].startswith("batch_")
        assert x["attempt"] >= 1 and x["latency_ms"] >= 0
    # the first lines went to echo (and broke) first; once those are benched or broken, lines skip them
    assert max(x["attempt"] for x in answered) >= 2
    failed = [x for x in lines if x["logger"] == "batchrelay.worker.relay" and x.get("status") == 500]
    assert failed and all(x["error"] == "ProviderHTTPError" and x["provider"] == "echo" for x in failed)
    assert any(x["level"] == "warning" and x["event"].startswith("failing over from echo") for x in lines)
    assert any(x["level"] == "warning" and x.get("provider") == "broke" and "benched" in x["event"] for x in lines)
    assert any(x["logger"] == "httpx" for x in lines)  # --log-http
    assert any(x["logger"] == "arq.worker" and x["event"].startswith("Starting worker") for x in lines)
    assert any(x["logger"] == "arq.worker" and x["level"] == "debug" for x in lines)  # its per-job lines


def test_a_worker_at_info_logs_failures_but_not_each_answer_nor_arqs_jobs(tmp_path: Path, redis_url: str,
                                                                        scene: Path) -> None:
    proc = _submit_and_work(tmp_path, scene, redis_url)  # text, info: the defaults
    no_secret(proc.stderr)
    lines = proc.stderr.splitlines()
    assert any(" INFO arq.worker Starting worker" in x for x in lines)
    assert not any(" DEBUG " in x or "call answered" in x or "HTTP Request" in x for x in lines)
    assert not any("run_chunk(" in x for x in lines)  # arq's per-job lines are debug
    warned = [x for x in lines if " WARNING batchrelay.worker.relay failing over from echo" in x]
    assert warned and all("provider=echo" in x and "status=500" in x and "error=ProviderHTTPError" in x for x in warned)


def test_quiet_keeps_working_as_warning(tmp_path: Path, redis_url: str, scene: Path) -> None:
    proc = _submit_and_work(tmp_path, scene, redis_url, "--quiet")
    assert proc.stderr and all(" WARNING " in x or " ERROR " in x for x in proc.stderr.splitlines())
    bad = batchrelay("-c", str(scene), "worker", "--quiet", "--log-level", "info", env={"REDIS_URL": redis_url})
    assert bad.returncode == 2 and "--log-level or --quiet" in bad.stderr


def test_run_gives_json_from_its_worker_processes_too(tmp_path: Path, simulator: SimulatorProcess) -> None:
    cfg = write_config(tmp_path / "c.toml", "unused:", [{"name": "sim", "base_url": simulator.base_url,
                                                         "api_key_env": KEY_VAR}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 21)))
    env = {"BATCHRELAY_STATE_DIR": str(tmp_path / "state"), "REDIS_URL": "", KEY_VAR: KEY}
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--workers", "2",
                      "--log-format", "json", "--log-level", "debug", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["counts"]["succeeded"] == 20  # stdout: the summary alone
    lines = json_lines(proc.stderr)
    assert sum(x["event"].startswith("Starting worker") for x in lines) == 2  # both workers'
    assert sum(x["event"] == "call answered" for x in lines) == 20
    no_secret(proc.stderr)


def _serve_log(cfg: Path, env: dict[str, str], level: str, err: Path) -> str:
    """What `serve --log-format json --log-level LEVEL` writes to stderr while it answers a client that
    puts its key where it should not: in the query string, which the access log shows."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with err.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "serve", "--port", str(port),
                                 "--log-format", "json", "--log-level", level], env=env,
                                stdout=subprocess.DEVNULL, stderr=out)

    def up() -> bool:
        assert proc.poll() is None, err.read_text()
        try:
            return httpx.get(base + "/v1/batches", timeout=1).status_code == 401
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 20, "serve to answer")
        assert httpx.get(base + f"/v1/batches?api_key={CLIENT_KEY}",
                         headers={"Authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    return err.read_text()


def test_serve_logs_json_with_the_access_log_at_debug_only(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    with cfg.open("a") as f:
        f.write(f'\n[serve]\napi_keys_env = ["{CLIENT_VAR}"]\nfiles_dir = "{tmp_path / "files"}"\n')
    env = {**os.environ, "REDIS_URL": redis_url, CLIENT_VAR: CLIENT_KEY}
    logs = {level: _serve_log(cfg, env, level, tmp_path / f"serve-{level}.stderr") for level in ("debug", "info")}
    for level, text in logs.items():
        no_secret(text)
        lines = json_lines(text)
        assert any(x["event"].startswith("batchrelay serve on http://") for x in lines), level
        assert any(x["logger"].startswith("uvicorn") for x in lines), level
    access = [x for x in json_lines(logs["debug"]) if x["logger"] == "uvicorn.access"]
    assert any("/v1/batches" in x["event"] and "***" in x["event"] for x in access), access
    assert not any(x["logger"] == "uvicorn.access" for x in json_lines(logs["info"]))
