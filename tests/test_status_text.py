"""`status` of a batch nothing works at a rate (cli/status_text.py, store/lane_status.py timing,
BatchInfo.eta_seconds): paused, over its budget, or being cancelled or expired, it gets no ETA (in
text or `--json`) and says what it waits for instead; a batch in progress keeps its rate and ETA."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay.cli.status_text import waiting_line
from batchrelay.money.ledger import SEP
from batchrelay.spec import BatchSpec
from batchrelay.store.spending import status_object
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream

from .conftest import batchrelay, openai_line, write_config

NOW = 1_800_000_000.0
ID = "batch_0123"


def _st(status: str, pending: int = 6, deadline: float | None = None, lane_lines: int = 0) -> dict[str, Any]:
    return {"id": ID, "status": status, "counts": {"pending": pending}, "deadline": deadline,
            "lanes": {"lines": lane_lines, "answered_by": None, "parcels": []}}


@pytest.mark.parametrize(("st", "said"), [
    (_st("in_progress"), None),
    (_st("completed", pending=0), None),
    (_st("cancelled", pending=0), None),
    (_st("scheduled"), None),
    (_st("paused"), f"its `run` was interrupted: the same `run` command, or `batchrelay resume {ID}`, continues it"),
    (_st("paused", deadline=NOW + 60),
     f"its `run` was interrupted: the same `run` command, or `batchrelay resume {ID}`, continues it"),
    (_st("paused", deadline=NOW - 60),
     f"its `run` was interrupted: the same `run` command, or `batchrelay resume {ID}`, continues it; it is past "
     "its deadline: the next sweep of a `batchrelay worker` (`--burst` too) expires its lines"),
    (_st("budget_exhausted"), f"stopped at its budget: its 6 lines left wait, unsent, until `batchrelay budget {ID} "
                              "--max-cost USD` raises it"),
    (_st("budget_exhausted", pending=1), f"stopped at its budget: its 1 line left wait, unsent, until "
                                         f"`batchrelay budget {ID} --max-cost USD` raises it"),
    (_st("expiring"), "being expired: lines not in flight are expired at once, calls in flight get up to 125s to "
                      f"come back with their answer (a `batchrelay worker`'s sweep moves it on, as does "
                      f"`batchrelay cancel {ID}`)"),
    (_st("cancelling", lane_lines=4),
     "being cancelled: lines not in flight are cancelled at once, calls in flight get up to 125s to come back with "
     "their answer, the 4 lines lanes hold wait until their lane lets go of them (a `batchrelay worker`'s sweep "
     f"moves it on, as does `batchrelay cancel {ID}`)"),
])
def test_what_a_batch_waits_for_in_place_of_a_rate(st: dict[str, Any], said: str | None) -> None:
    assert waiting_line(st, 125.0, NOW) == said


async def _half_done(store: Store) -> str:
    """A batch of 4 lines, 2 answered a while after it was created (so it has a rate)."""
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, 5)))
    batch = (await submit_stream(store, src, BatchSpec(name="t", chunk_size=2), source="t")).batch_id
    items: list[tuple[int, bytes, bool, dict[str, int], str | None]] = [
        (n, orjson.dumps({"line": n}), True, {f"p{SEP}m{SEP}requests": 1}, None) for n in (1, 2)]
    assert await store.write_results(batch, items) == 2
    await store.set_fields(batch, {"created_at": str(time.time() - 10)})
    return batch


@pytest.mark.parametrize("status", [Status.IN_PROGRESS, Status.PAUSED, Status.BUDGET_EXHAUSTED, Status.EXPIRING,
                                    Status.CANCELLING])
async def test_only_a_batch_in_progress_has_an_eta(store: Store, status: Status) -> None:
    batch = await _half_done(store)
    await store.set_fields(batch, {"status": status})
    info = await store.info(batch)
    st = await status_object(store, info)
    assert info.rate(time.time()) > 0 and st["rate_lines_per_s"] > 0
    etas = (st["eta_s"], st["eta_sync_s"], info.as_dict()["eta_s"])
    if status == Status.IN_PROGRESS:
        assert all(e is not None and e > 0 for e in etas), etas
    else:
        assert etas == (None, None, None)


async def test_status_of_a_batch_over_its_budget_says_what_it_waits_for_and_gives_no_eta(
        store: Store, redis_url: str, prefix: str, tmp_path: Path) -> None:
    batch = await _half_done(store)
    await store.set_fields(batch, {"status": Status.BUDGET_EXHAUSTED})
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "p", "base_url": "http://127.0.0.1:9"}])
    env = {"REDIS_URL": redis_url}
    proc = batchrelay("-c", str(cfg), "status", batch, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "lines/s" not in proc.stdout and "ETA" not in proc.stdout
    assert f"stopped at its budget: its 2 lines left wait, unsent, until `batchrelay budget {batch} " in proc.stdout
    st = json.loads(batchrelay("-c", str(cfg), "status", batch, "--json", env=env).stdout)
    assert (st["status"], st["eta_s"], st["eta_sync_s"]) == ("budget_exhausted", None, None)
