"""A paused batch (an interrupted `run`) whose lines a lane holds, stopped: a burst worker of the
shared queue moves its parcel on (the upstream batch cancelled, what it answered kept), and the batch
ends. Before, the batch stayed on the run's dropped queue: a burst worker, which moves only its own
queue's parcels, left the parcel alone and the batch stayed `cancelling` (or `expiring`) for good.
A batchrelay `serve` is the upstream (tests/lanekit.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from .lanekit import answered_by, chat_lines, check_batch, downstream, upstream

pytestmark = pytest.mark.timeout(150)


def test_a_paused_runs_batch_cancelled_has_its_parcel_moved_on_by_a_shared_burst_worker(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    n = 8
    with upstream(tmp_path, redis_url, prefix, sim={"latency_ms": 1500}) as up, \
            downstream(tmp_path, redis_url, prefix, up) as down:
        src = tmp_path / "run.jsonl"
        src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in chat_lines(n)))
        run = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(down.cfg), "run", str(src),
                                "-o", str(tmp_path / "run.out.jsonl"), "--deadline", "+90s"],
                               env=down.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 40
            while not up.batches("openai-batch"):
                assert time.monotonic() < deadline and run.poll() is None, "the lane never created its batch"
                time.sleep(0.2)
            run.send_signal(signal.SIGINT)
            _out, err = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 130, err
        batch = re.findall(r"batch_[0-9a-f]{24}", err)[0]
        assert down.meta(batch)["status"] == "paused"

        down.cli("cancel", batch, "--no-wait")
        meta = down.meta(batch)
        assert meta["status"] == "cancelling", meta  # the lane's lines wait until it lets go of them
        down.worker()  # a burst worker of the shared queue: it moves the parcel on, then sweeps
        assert down.wait(batch, timeout=90) == "cancelled"
        assert any(s.method == "POST" and s.path.endswith("/cancel") for s in up.proxy.log)
        rows = check_batch(down, up, batch, n)
        assert {answered_by(r) for r in rows} <= {"lane", None}
        assert down.reseller.stats()["calls"] == 0  # a cancelled batch's lines are not failed over
