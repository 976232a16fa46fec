"""One Redis for every command: with no REDIS_URL and no [redis] url, every command (and the Python
API) uses the embedded Redis of the state directory, shared by the commands running at the same
time; the last one to end stops it, and the next one starts it again with the data (AOF)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest

from batchrelay.api import Client
from batchrelay.config.settings import Settings
from batchrelay.sim.process import free_port

from .conftest import ROOT, openai_line, wait_for
from .embedkit import cli, home, server_pid, servers_on, socket_of, spawn, state_of

__all__ = ["home"]  # the fixture


def _lines(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    return path


def test_after_run_status_results_and_cost_find_the_batch(home: Path) -> None:
    run = cli(home, "run", str(ROOT / "examples" / "requests.jsonl"), "-o", str(home / "r.jsonl"), "--json")
    assert run.returncode == 0, run.stderr
    batch = json.loads(run.stdout)["id"]
    assert servers_on(socket_of(home)) == []  # the last command to end stopped it

    status = cli(home, "status", batch, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["succeeded"] == 50
    results = cli(home, "results", batch, "-o", str(home / "again.jsonl"))
    assert results.returncode == 0, results.stderr
    assert (home / "again.jsonl").read_bytes() == (home / "r.jsonl").read_bytes()
    cost = cli(home, "cost", batch, "--json")
    assert cost.returncode == 0, cost.stderr
    assert json.loads(cost.stdout)["total"]["requests"] == 50
    assert cli(home, "batches", "--json").stdout.count(batch) == 1
    assert (state_of(home) / "appendonlydir").is_dir()
    assert servers_on(socket_of(home)) == []


def test_submit_then_a_worker_then_results_with_no_setup(home: Path) -> None:
    sub = cli(home, "submit", str(_lines(home / "in.jsonl", 30)))
    assert sub.returncode == 0, sub.stderr
    batch = sub.stdout.strip()
    work = cli(home, "worker", "--burst")
    assert work.returncode == 0, work.stderr
    assert "simulator" in work.stderr  # no providers configured: it says what answers instead
    res = cli(home, "results", batch, "-o", str(home / "out.jsonl"))
    assert res.returncode == 0, res.stderr
    rows = [orjson.loads(x) for x in (home / "out.jsonl").read_bytes().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"req-{i}" for i in range(1, 31)]


def test_commands_running_at_once_share_one_redis_server_that_the_last_one_stops(home: Path) -> None:
    sock = socket_of(home)
    workers = [spawn(home, "worker") for _ in range(3)]  # started together: one must start it, two join
    try:
        wait_for(lambda: sock.exists() and len(servers_on(sock)) == 1, 30, "the embedded redis-server")
        pid = server_pid(sock)
        sub = cli(home, "submit", str(_lines(home / "in.jsonl", 40)))
        assert sub.returncode == 0, sub.stderr
        res = cli(home, "results", sub.stdout.strip(), "-o", str(home / "out.jsonl"), "--wait")
        assert res.returncode == 0, res.stderr
        assert servers_on(sock) == [pid]  # the commands that came and went left it to the workers
        for w in workers[:2]:
            w.send_signal(signal.SIGTERM)
            assert w.wait(timeout=30) == 0
        assert servers_on(sock) == [pid] and server_pid(sock) == pid
        time.sleep(0.5)
        assert all(w.poll() is None for w in workers[2:])
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
            w.wait(timeout=30)
    # the last user gone, the server is gone with it, its socket removed after the AOF was written
    wait_for(lambda: servers_on(sock) == [], 10, "the redis-server to stop")
    assert not sock.exists()
    for w in workers:
        assert "Traceback" not in w.stderr.read()  # type: ignore[union-attr]
        w.stdout.close()  # type: ignore[union-attr]
        w.stderr.close()  # type: ignore[union-attr]


def test_the_python_client_uses_the_same_embedded_redis(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli(home, "run", str(ROOT / "examples" / "requests.jsonl"), "-o", str(home / "r.jsonl"), "--json")
    assert run.returncode == 0, run.stderr
    batch = json.loads(run.stdout)["id"]
    for var in ("REDIS_URL", "BATCHRELAY_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    with Client(settings=Settings()) as client:
        assert client.redis_url == f"unix://{socket_of(home)}"
        assert client.status(batch)["counts"]["succeeded"] == 50
        assert len(servers_on(socket_of(home))) == 1
    assert servers_on(socket_of(home)) == []


def test_a_wrong_redis_url_under_run_is_a_usage_error_that_says_to_unset_it(home: Path) -> None:
    src = _lines(home / "in.jsonl", 1)
    url = f"redis://u:pw-s3cret@127.0.0.1:{free_port()}/0"
    proc = cli(home, "run", str(src), "-o", str(home / "o.jsonl"), env={"REDIS_URL": url})
    assert proc.returncode == 2, proc.stderr
    assert "unset REDIS_URL" in proc.stderr and "embedded Redis" in proc.stderr
    assert "pw-s3cret" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (home / "o.jsonl").exists()


def test_serve_stopped_by_sigterm_stops_the_embedded_redis_it_started(home: Path) -> None:
    """uvicorn raises a SIGTERM again after its shutdown: serve must still end its embedded Redis
    (found by a fresh-clone check: it was left running until the next command ended)."""
    sock, cfg = socket_of(home), home / "serve.toml"
    cfg.write_text('[serve]\napi_keys_env = ["BR_TEST_CLIENT_KEY"]\n')
    port = free_port()
    serve = spawn(home, "-c", str(cfg), "serve", "--port", str(port), env={"BR_TEST_CLIENT_KEY": "k-test"})
    try:
        wait_for(lambda: sock.exists() and len(servers_on(sock)) == 1, 30, "the embedded redis-server")
        wait_for(lambda: _answers(port), 30, "serve to listen")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0  # a graceful stop, as a worker's
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
    wait_for(lambda: servers_on(sock) == [], 10, "the redis-server to stop")
    err = serve.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in err, err
    serve.stdout.close()  # type: ignore[union-attr]
    serve.stderr.close()  # type: ignore[union-attr]


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/batches", timeout=2).status_code == 401
    except httpx.HTTPError:
        return False
