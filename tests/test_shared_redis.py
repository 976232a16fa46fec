"""Two setups on one Redis (issue 13, item 1): with different `[redis] prefix`es they never take each
other's work. Every arq job id batchrelay makes, the workers' cron ticks included, carries its
setup's prefix, so each setup's webhooks and sweeps run on its own workers, on time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis as sync_redis

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess

from .conftest import OwnRedis, batchrelay, openai_line, status_of, wait_for, write_config
from .test_webhooks import Receiver

SETUPS = ("a:", "b:")
ARQ_KEY = re.compile(rb"^arq:(job|in-progress|result|retry):(.+)$")


def _worker(cfg: Path, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--quiet"],
                            env={**os.environ, "REDIS_URL": url}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _arq_job_ids(url: str) -> list[str]:
    """The job id in every key arq wrote (`arq:job:ID`, `arq:in-progress:ID`, ...)."""
    client = sync_redis.Redis.from_url(url)
    try:
        return [m[2].decode() for key in client.scan_iter(match="arq:*", count=1000) if (m := ARQ_KEY.match(key))]
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_two_setups_on_one_redis_each_get_their_webhooks_on_time_and_only_their_own_work(
    tmp_path: Path, own_redis: OwnRedis,
) -> None:
    url, n = own_redis.url, {"a:": 6, "b:": 9}
    receiver = Receiver([200])
    sims = {p: SimulatorProcess({"latency_ms": 20}) for p in SETUPS}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        cfgs = {p: write_config(tmp_path / f"{p[0]}.toml", p, [{"name": "sim", "base_url": sims[p].start()}])
                for p in SETUPS}
        workers = [_worker(cfgs[p], url) for p in SETUPS]
        started = time.time()
        time.sleep(3)  # both workers up and ticking
        batches = {}
        for p in SETUPS:
            src = tmp_path / f"{p[0]}.jsonl"
            src.write_bytes(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n[p] + 1)))
            proc = batchrelay("-c", str(cfgs[p]), "submit", str(src), "--webhook", f"{receiver.url}&setup={p[0]}",
                              env={"REDIS_URL": url})
            assert proc.returncode == 0, proc.stderr
            batches[p] = proc.stdout.strip()
        wait_for(lambda: len(receiver.posts) >= 2, 60, "both webhooks")
        arrived = time.time()
        # a few more webhook ticks (every 2 s) and a sweep (every 15 s) of both setups
        time.sleep(max(arrived + 6, started + 17) - time.time())
        ids = _arq_job_ids(url)
        calls = {p: sims[p].stats()["calls"] for p in SETUPS}
        for w in workers:
            w.send_signal(signal.SIGTERM)
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
    finally:
        stop_all(workers, grace=5)
        for s in sims.values():
            s.stop()
        receiver.server.shutdown()
        receiver.server.server_close()

    posted = {body["data"]["id"]: body["data"] for body in receiver.bodies()}
    assert set(posted) == set(batches.values()) and len(receiver.posts) == 2
    for p in SETUPS:
        st = status_of(cfgs[p], url, batches[p])
        assert st["status"] == "completed" and st["counts"]["succeeded"] == n[p]
        # delivered within seconds of the batch's end (the webhook cron ticks every 2 s)
        assert arrived - st["finished_at"] < 8, (p, arrived - st["finished_at"])
        assert posted[batches[p]]["counts"]["succeeded"] == n[p]
    # each setup's provider saw that setup's lines only: its workers ran its own chunks
    assert calls == n
    # every job arq holds is one setup's, by its id: the chunk jobs and both crons' ticks, of each setup
    assert ids and [i for i in ids if not i.startswith(SETUPS)] == []
    for p in SETUPS:
        mine = [i for i in ids if i.startswith(p)]
        assert sum("batchrelay-webhooks" in i for i in mine) >= 2, (p, mine)
        assert sum("batchrelay-sweep" in i for i in mine) >= 1, (p, mine)
