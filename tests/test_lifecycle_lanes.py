"""A paused batch (an interrupted `run`) whose lines a lane holds, stopped: a burst worker of the
shared queue moves its parcel on (the upstream batch cancelled, what it answered kept), and the batch
ends. Before, the batch stayed on the run's dropped queue: a burst worker, which moves only its own
queue's parcels, left the parcel alone and the batch stayed `cancelling` (or `expiring`) for good.
A batchrelay `serve` is the upstream (tests/lanekit.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .lanekit import answered_by, chat_lines, check_batch, downstream, run_command, run_until, upstream

pytestmark = pytest.mark.timeout(150)


def test_a_paused_runs_batch_cancelled_has_its_parcel_moved_on_by_a_shared_burst_worker(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    n = 8
    with upstream(tmp_path, redis_url, prefix, sim={"latency_ms": 1500}) as up, \
            downstream(tmp_path, redis_url, prefix, up) as down:
        said = tmp_path / "run.stderr"
        code, _ = run_until(down, run_command(down, tmp_path, chat_lines(n), "--deadline", "+90s"), said,
                            lambda: up.batches("openai-batch"))
        err = said.read_text()
        assert code == 130, err
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
