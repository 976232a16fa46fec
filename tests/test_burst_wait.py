"""A `worker --burst` whose queue is empty while a lane's parcel of its batches is open waits for it in
one arq run: it logs its start once (it was started again, and said so, twice a second: hundreds of
thousands of log lines over a real 24 h window), and a SIGTERM still ends the wait within a moment,
leaving the parcel in Redis for the next worker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis as sync_redis

from batchrelay.store.keys import Keys

from .lanekit import chat_lines, downstream, upstream

pytestmark = pytest.mark.timeout(120)


def test_a_burst_worker_waits_for_an_open_parcel_quietly_and_stops_at_once_on_sigterm(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        up.proxy.on("GET", "/v1/batches/*", [503] * 1000)  # the upstream batch never seems to end
        batch = down.submit(chat_lines(6), "--deadline", "+60s")
        worker = down.worker(burst=True)
        deadline = time.monotonic() + 40
        while not up.batches("openai-batch"):
            assert time.monotonic() < deadline and worker.poll() is None, down.logs()
            time.sleep(0.2)
        time.sleep(3)  # the worker's queue is empty; the parcel is open: it waits
        assert worker.poll() is None, down.logs()
        worker.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        worker.wait(timeout=30)
        assert time.monotonic() - stopped < 10, down.logs()
        log = (down.tmp / "worker0.log").read_text(errors="replace")
        assert log.count("Starting worker for") == 1 and log.count("redis_version=") == 1, log[-3000:]
        client = sync_redis.Redis.from_url(down.redis_url)
        try:
            assert client.zcard(Keys(down.prefix).lane_parcels) == 1  # the parcel is left for the next worker
        finally:
            client.close()
        assert down.meta(batch)["status"] == "in_progress"
