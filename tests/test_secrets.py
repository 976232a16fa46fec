"""Secrets (issue 6): API keys come only from the environment and are written nowhere.

One scene plants a distinctive key in the environment of every child process (never on a command
line, never in a file) and drives every command a user touches against four providers: a simulator
that demands the key, a simulator that rejects it with 401, a server of this test's own that echoes
the key back in error bodies and headers, and a provider whose key variable holds a newline. Then
every captured stdout/stderr, every file under the test's directory and every Redis key and value
the batches produced is searched for the key (raw, its first 12 characters, base64, URL-encoded).
Only the simulator's own request log may hold it, and must, which proves the key was really sent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis as sync_redis

from batchrelay.config.settings import ProviderConfig, RedisConfig, Settings
from batchrelay.sim.process import SimulatorProcess
from batchrelay.sim.state import redacted

from .conftest import batchrelay, drop_prefix, openai_line, write_config

# --- the planted secrets ---------------------------------------------------------------------------

# "/" and "+" as in base64-style keys: URL-encoding and JSON escaping then change how it looks
KEY = "sk-PLANTED-" + uuid.uuid4().hex + "/" + uuid.uuid4().hex[:8] + "+Zz"
KEY_VAR = "BR_SECRET_TEST_KEY_" + uuid.uuid4().hex[:6].upper()
NL_HEAD, NL_TAIL = "sk-NEWLINE-" + uuid.uuid4().hex, "X-Injected-" + uuid.uuid4().hex
NL_KEY = f"{NL_HEAD}\n{NL_TAIL}: 1"
NL_VAR = "BR_SECRET_TEST_NL_" + uuid.uuid4().hex[:6].upper()
OTHER_KEY = "sk-the-simulator-wants-another-key"


def needles(secret: str) -> list[bytes]:
    """The secret and the forms it could hide in: a 12-character prefix, base64, URL-encoding."""
    forms = {secret, secret[:12], secret.replace("/", "\\/"), base64.b64encode(secret.encode()).decode(),
             base64.b64encode(f"Bearer {secret}".encode()).decode(), quote(secret, safe="")}
    return sorted({f.encode() for f in forms})


KEY_NEEDLES = needles(KEY)
NL_NEEDLES = needles(NL_HEAD) + needles(NL_TAIL) + [NL_KEY.encode(), json.dumps(NL_KEY)[1:-1].encode()]
ALL_NEEDLES = KEY_NEEDLES + NL_NEEDLES


def leaks(blob: bytes) -> list[bytes]:
    return [n for n in ALL_NEEDLES if n in blob]


# --- a provider that echoes the key back -----------------------------------------------------------

class _EchoHandler(BaseHTTPRequestHandler):
    """Echoes the caller's key, as some resellers do, in ways chosen by the request's model:
    echo-400 (rejected request), echo-500 (server error, key in a header too), echo-junk (a 200
    that is not JSON), echo-200err (a 200 carrying an error object)."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]]  # (model, authorization header) per call, set on the subclass

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # models endpoint, should anything ask
        self._send(401, orjson.dumps({"error": {"message": f"no such key: {self.headers.get('authorization')}"}}))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization") or ""
        key = auth.removeprefix("Bearer ")
        try:
            model = str(orjson.loads(raw).get("model"))
        except orjson.JSONDecodeError:
            model = "?"
        self.seen.append((model, auth))
        if model == "echo-400":
            self._send(400, orjson.dumps({"error": {"message": f"the request with key {key} is invalid",
                                                    "type": "invalid_request_error", "auth": auth}}))
        elif model == "echo-500":
            self._send(500, orjson.dumps({"error": {"message": f"upstream failed for {key}",
                                                    "type": "server_error"}}), x_echo_key=key)
        elif model == "echo-junk":
            self._send(200, f"<html>gateway error for {auth}</html>".encode(), "text/html")
        elif model == "echo-php":  # PHP's json_encode writes "/" as "\/"
            text = orjson.dumps({"error": {"message": f"invalid key {key}", "type": "invalid_request_error"}})
            self._send(400, text.replace(b"/", b"\\/"))
        else:  # echo-200err
            self._send(200, orjson.dumps({"error": {"message": f"key {key} hit an internal error"}}))


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("Echo", (_EchoHandler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


# --- the scene -------------------------------------------------------------------------------------

@dataclass
class World:
    """Simulators, config and everything the commands printed, shared by the tests of this module."""

    root: Path
    prefix: str
    redis_url: str
    good: str
    bad: str
    echo_seen: list[tuple[str, str]]
    cfg: Path
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    redis_dumps: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)

    def cli(self, label: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command in a child process; the keys are in its environment only."""
        env = {"REDIS_URL": self.redis_url, KEY_VAR: KEY, NL_VAR: NL_KEY}
        proc = batchrelay("-c", str(self.cfg), *args, env=env, timeout=timeout, cwd=self.root)
        self.outputs[label] = proc
        return proc

    def parallel(self, calls: list[tuple[str, tuple[str, ...]]]) -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda c: self.cli(c[0], *c[1]), calls))

    def json(self, label: str) -> Any:
        return json.loads(self.outputs[label].stdout)

    def dump(self, moment: str) -> None:
        """Every key under the prefix, and arq's job keys of our batches (they live under `arq:`)."""
        client = sync_redis.Redis.from_url(self.redis_url)
        try:
            self.redis_dumps[moment] = dump_redis(client, [self.prefix + "*",
                                                           *(f"arq:*{b}*" for b in self.batches.values())])
        finally:
            client.close()

    def sim_log(self, base: str) -> list[dict[str, Any]]:
        return list(httpx.get(base + "/_sim/log?full=1", timeout=10).json())

    def lines(self, name: str) -> Path:
        return self.root / name


def _toml(prefix: str, good: str, bad: str, echo: str) -> str:
    return f"""
[redis]
prefix = "{prefix}"

[worker]
concurrency = 8
chunk_size = 5
call_timeout = 5
job_timeout = 20
backoff = 0.01

[health]
line_deadline_s = 3
max_wait_s = 1
probe_wait_s = 0.3

[[providers]]
name = "good"
base_url = "{good}"
api_key_env = "{KEY_VAR}"
models_path = "/v1/models"
priority = 1
prices = {{ "gpt-4o-mini" = {{ input = 0.15, output = 0.6 }} }}

[[providers]]
name = "wrongkey"
base_url = "{bad}"
api_key_env = "{KEY_VAR}"
models_path = "/v1/models"
priority = 0

[[providers]]
name = "echo"
base_url = "{echo}"
api_key_env = "{KEY_VAR}"
priority = 3

[[providers]]
name = "newline"
base_url = "{good}"
api_key_env = "{NL_VAR}"
models_path = "/v1/models"
priority = 4
"""


def _write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return path


def dump_redis(client: sync_redis.Redis, patterns: list[str]) -> bytes:
    """Every key matching the patterns, with its value whatever its type, as one blob."""
    parts: list[bytes] = []
    for pattern in patterns:
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key).decode()
            parts.append(b"KEY " + key + b" " + kind.encode())
            if kind == "string":
                parts.append(client.get(key) or b"")
            elif kind == "hash":
                parts.extend(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == "set":
                parts.extend(client.smembers(key))
            elif kind == "zset":
                parts.extend(m + b" " + str(s).encode() for m, s in client.zrange(key, 0, -1, withscores=True))
            elif kind == "list":
                parts.extend(client.lrange(key, 0, -1))
            elif kind == "stream":
                parts.extend(orjson.dumps({k.decode(): v.decode("latin-1") for k, v in f.items()})
                             for _id, f in client.xrange(key))
            else:
                parts.append(b"<unknown type>")
    return b"\n".join(parts)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          echo_server: tuple[str, list[tuple[str, str]]]) -> Iterator[World]:
    root = tmp_path_factory.mktemp("secrets")
    prefix = f"brtest:{uuid.uuid4().hex[:10]}:"
    echo_url, echo_seen = echo_server
    try:
        with SimulatorProcess({"api_key": KEY}) as good, SimulatorProcess({"api_key": OTHER_KEY}) as bad:
            cfg = root / "batchrelay.toml"
            cfg.write_text(_toml(prefix, good, bad, echo_url))
            _write_lines(root / "plain.jsonl", [openai_line(i) for i in range(1, 6)])
            _write_lines(root / "echo.jsonl", [openai_line(i, m) for i, m in enumerate(
                ["echo-400", "echo-500", "echo-junk", "echo-200err"], start=1)])
            _write_lines(root / "one.jsonl", [openai_line(1)])
            yield World(root, prefix, redis_url, good, bad, echo_seen, cfg)
    finally:
        drop_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def front(world: World) -> World:
    """`run` (text, and --json through the provider that rejects the key first), `estimate`,
    `providers` (JSON and text) and `providers check` (plain and --live)."""
    w, plain = world, str(world.lines("plain.jsonl"))
    w.parallel([
        ("run", ("run", plain, "-o", str(w.root / "run-text.jsonl"), "--providers", "good")),
        ("run_json", ("run", plain, "-o", str(w.root / "run-json.jsonl"), "--providers", "wrongkey,good", "--json")),
    ])
    w.batches["run_text"] = w.outputs["run"].stdout.split(":")[0].strip()
    w.batches["run_json"] = w.json("run_json")["id"]
    w.parallel([
        ("status_json_run_json", ("status", w.batches["run_json"], "--json")),
        ("estimate", ("estimate", plain, "--json")),
        ("providers_json", ("providers", "--json")),
        ("providers", ("providers",)),
        ("check", ("providers", "check", "--json")),
        ("check_live", ("providers", "check", "--live", "--json")),
    ])
    return w


SUBMITS = {"budgeted": ("plain.jsonl", ["--providers", "good", "--max-cost", "1"]),
           "echo": ("echo.jsonl", ["--providers", "echo"]),
           "newline": ("one.jsonl", ["--providers", "newline"]),
           "cancelled": ("plain.jsonl", ["--providers", "good"])}


@pytest.fixture(scope="module")
def queued(world: World) -> World:
    """`submit --json` four batches, `cancel` and `retry` one, `worker --burst` (its INFO log kept),
    then `status`, `results`, `cost`, `budget`, `batches`."""
    w = world
    w.parallel([(f"submit_{label}", ("submit", str(w.lines(src)), "--json", *extra))
                for label, (src, extra) in SUBMITS.items()])
    for label in SUBMITS:
        w.batches[label] = w.json(f"submit_{label}")["id"]
    w.dump("after submit, arq jobs queued")
    w.cli("cancel", "cancel", w.batches["cancelled"], "--json")
    w.cli("retry", "retry", w.batches["cancelled"], "--json")
    w.cli("worker", "worker", "--burst", "--concurrency", "8")
    (w.root / "worker.log").write_text(w.outputs["worker"].stdout + w.outputs["worker"].stderr)
    b = w.batches
    w.parallel([
        *[(f"results_{label}", ("results", b[label], "-o", str(w.root / f"results-{label}.jsonl"), "--json"))
          for label in SUBMITS],
        ("status_json_echo", ("status", b["echo"], "--json")),
        ("status_json_newline", ("status", b["newline"], "--json")),
        ("status_echo", ("status", b["echo"])),
        ("cost_budgeted", ("cost", b["budgeted"], "--json")),
        ("cost_echo", ("cost", b["echo"], "--json")),
        ("budget_budgeted", ("budget", b["budgeted"], "--json")),
        ("batches", ("batches", "--json")),
    ])
    return w


def test_providers_check_names_the_variable_of_a_key_a_header_cannot_carry(front: World) -> None:
    for label in ("check", "check_live"):
        (newline,) = [r for r in front.json(label) if r["provider"] == "newline"]
        assert not newline["ok"]
        assert any(NL_VAR in c["detail"] for c in newline["checks"]), newline["checks"]


# --- every path ran --------------------------------------------------------------------------------

def test_run_and_the_provider_commands(front: World) -> None:
    w, out = front, front.outputs
    assert out["run"].returncode == 0, out["run"].stderr
    assert out["run_json"].returncode == 0, out["run_json"].stderr
    # run --json went through the 401 first, then failed over
    rows = [orjson.loads(x) for x in (w.root / "run-json.jsonl").read_bytes().splitlines()]
    assert len(rows) == 5 and {r["batchrelay"]["provider"] for r in rows} == {"good"}
    assert any(a["provider"] == "wrongkey" and a["status"] == 401 for r in rows for a in r["batchrelay"]["attempts"])
    assert w.json("status_json_run_json")["counts"]["succeeded"] == 5
    listed = {p["name"]: p for p in w.json("providers_json")}
    assert listed["good"]["api_key_env"] == KEY_VAR and listed["good"]["key_set"] is True
    plain = {r["provider"]: r for r in w.json("check")}
    assert plain["good"]["ok"] and not plain["wrongkey"]["ok"] and not plain["newline"]["ok"]
    live = {r["provider"]: r for r in w.json("check_live")}
    assert live["good"]["ok"] and not live["wrongkey"]["ok"] and not live["newline"]["ok"]
    assert out["check_live"].returncode == 1 and out["check"].returncode == 1
    for label, proc in out.items():
        assert "Traceback" not in proc.stderr, f"{label}: {proc.stderr}"


def test_submitted_batches_worked_cancelled_and_retried(queued: World) -> None:
    w, out = queued, queued.outputs
    assert out["worker"].returncode == 0, out["worker"].stderr
    assert "Starting worker" in out["worker"].stderr  # the INFO log was captured
    assert w.json("cancel")["status"] == "cancelled"
    assert w.json("retry")["lines"] == 5
    counts = {label: w.json(f"results_{label}")["counts"] for label in SUBMITS}
    assert counts["budgeted"]["succeeded"] == 5
    assert counts["cancelled"]["succeeded"] == 5
    assert counts["echo"]["failed"] == 4
    assert counts["newline"]["failed"] == 1
    assert w.json("budget_budgeted")["max_usd"] is not None
    # the echoed key was redacted, not dropped: the error bodies are still there
    errors = (w.root / "results-echo.errors.jsonl").read_text()
    assert "***" in errors and "the request with key" in errors
    # the newline key: refused by its variable's name, its value never shown
    nl = orjson.loads((w.root / "results-newline.errors.jsonl").read_bytes())
    assert NL_VAR in nl["error"]["message"]
    for label, proc in out.items():
        assert "Traceback" not in proc.stderr, f"{label}: {proc.stderr}"


def test_the_key_really_went_to_the_providers(front: World, queued: World) -> None:
    good, bad = front.sim_log(front.good), front.sim_log(front.bad)
    # (the simulators' logs show a key redacted, by its fingerprint)
    assert any(e["headers"].get("authorization") == f"Bearer {redacted(KEY)}" and e["status"] == 200
               for e in good), "the accepting simulator never got the key"
    assert any(e["headers"].get("authorization") == f"Bearer {redacted(KEY)}" and e["status"] == 401
               for e in bad), "the rejecting simulator never saw the key"
    assert {m for m, auth in front.echo_seen if auth == f"Bearer {KEY}"} >= {
        "echo-400", "echo-500", "echo-junk", "echo-200err"}
    # the newline key was refused before anything was sent: no request carried any part of it
    for entry in good + bad:
        assert NL_TAIL not in json.dumps(entry) and NL_HEAD not in json.dumps(entry)


# --- and it is nowhere else ------------------------------------------------------------------------

def test_no_command_prints_the_key(front: World, queued: World) -> None:
    assert len(front.outputs) >= 20
    found = {label: leaks((p.stdout + "\n" + p.stderr).encode()) for label, p in front.outputs.items()}
    assert not {k: v for k, v in found.items() if v}


def test_no_file_holds_the_key(front: World, queued: World) -> None:
    files = [p for p in front.root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"results-echo.errors.jsonl", "results-newline.errors.jsonl", "run-json.jsonl", "run-text.jsonl",
            "worker.log", "results-budgeted.jsonl", "results-cancelled.jsonl"} <= names
    found = {str(p.relative_to(front.root)): leaks(p.read_bytes()) for p in files}
    assert not {k: v for k, v in found.items() if v}


def test_redis_holds_no_key(front: World, queued: World) -> None:
    front.dump("at the end")
    for moment, blob in front.redis_dumps.items():
        assert f"KEY {front.prefix}batch:".encode() in blob, moment
        assert not leaks(blob), f"{moment}: {leaks(blob)}"
    queued_jobs = front.redis_dumps["after submit, arq jobs queued"]
    assert b"KEY arq:job:" in queued_jobs  # the chunk payloads were really looked at
    assert f"KEY {front.prefix}queue zset".encode() in queued_jobs
    assert f"KEY {front.prefix}health hash".encode() in front.redis_dumps["at the end"]


def test_a_key_echoed_with_escaped_slashes_is_redacted_too(
        tmp_path: Path, redis_url: str, prefix: str, echo_server: tuple[str, list[tuple[str, str]]]) -> None:
    var, key = "BR_SLASH_KEY_" + uuid.uuid4().hex[:6].upper(), f"sk-SLASHED-{uuid.uuid4().hex}/{uuid.uuid4().hex}"
    echo_url, seen = echo_server
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "echo", "base_url": echo_url, "api_key_env": var}])
    src = _write_lines(tmp_path / "in.jsonl", [openai_line(1, "echo-php")])
    proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--json",
                      env={"REDIS_URL": redis_url, var: key}, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert ("echo-php", f"Bearer {key}") in seen
    errors = (tmp_path / "out.errors.jsonl").read_bytes()
    assert b"invalid key" in errors
    client = sync_redis.Redis.from_url(redis_url)
    try:
        stored = dump_redis(client, [prefix + "*"])
    finally:
        client.close()
    found = {where: [n for n in needles(key) if n in blob]
             for where, blob in [("errors file", errors), ("redis", stored),
                                 ("output", (proc.stdout + proc.stderr).encode())]}
    assert not {k: v for k, v in found.items() if v}


# --- a key variable that is not set ----------------------------------------------------------------

def test_an_unset_key_variable_is_refused_before_anything_is_sent_naming_it(tmp_path: Path, redis_url: str,
                                                                            prefix: str) -> None:
    var = "BR_UNSET_KEY_" + uuid.uuid4().hex[:8].upper()
    with SimulatorProcess({"api_key": KEY}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "nokey", "base_url": sim, "api_key_env": var}],
                           health={"line_deadline_s": 3})
        src = _write_lines(tmp_path / "in.jsonl", [openai_line(1), openai_line(2)])
        env = {"REDIS_URL": redis_url}
        assert var not in os.environ
        proc = batchrelay("-c", str(cfg), "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--json",
                          env=env, timeout=60)
        calls = SimulatorProcess.stats_of(sim)["calls"]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"nokey needs {var}" in proc.stderr
    assert calls == 0  # nothing was sent without a key
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.errors.jsonl").exists()
    check = batchrelay("-c", str(cfg), "providers", "check", "--json", env=env)
    (res,) = json.loads(check.stdout)
    assert not res["ok"] and var in res["checks"][0]["detail"]


# --- the config handed to `run --workers N` --------------------------------------------------------

def test_the_worker_config_dump_names_the_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)
    provider = ProviderConfig(name="p", base_url="http://127.0.0.1:9", api_key_env=KEY_VAR)
    settings = Settings(redis=RedisConfig(prefix="x:"), providers=(provider,))
    assert provider.api_key() == KEY
    dumped = json.dumps(settings.model_dump(mode="json", exclude={"source"}))
    assert KEY_VAR in dumped
    assert not leaks(dumped.encode())
    assert not leaks(repr(settings).encode()) and not leaks(str(provider).encode())


def test_run_with_worker_processes_writes_no_key_into_their_config(tmp_path: Path, redis_url: str,
                                                                   prefix: str) -> None:
    """`run --workers 2` hands its workers a JSON config in a temp dir: catch it while they run."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with SimulatorProcess({"api_key": KEY, "latency_ms": 150}) as sim:
        cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "good", "base_url": sim, "api_key_env": KEY_VAR}],
                           concurrency=2, chunk_size=2)
        src = _write_lines(tmp_path / "in.jsonl", [openai_line(i) for i in range(1, 21)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrelay", "-c", str(cfg), "run", str(src), "-o", str(tmp_path / "out.jsonl"),
             "--workers", "2", "--json"],
            env={**os.environ, "REDIS_URL": redis_url, KEY_VAR: KEY, "TMPDIR": str(tmpdir)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: dict[str, bytes] = {}
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            for f in tmpdir.glob("batchrelay-*/config.json"):
                with contextlib.suppress(OSError):  # gone already
                    seen.setdefault(str(f), f.read_bytes())
            time.sleep(0.01)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    assert seen, "never saw the workers' config file"
    for blob in seen.values():
        if blob:  # caught mid-write at worst
            assert KEY_VAR.encode() in blob
        assert not leaks(blob)
    assert not leaks(stdout + stderr)
    assert not any(leaks(p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
