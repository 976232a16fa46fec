"""What `status`, `providers` and the progress bar say about lanes (store/lane_status.py,
cli/lane_text.py), against a real redis-server with parcels made by LaneStore as a worker makes
them: a lane holding lines shows them with their parcel's state, upstream batch id and must_end_by,
its provider reads `waiting upstream` (not `untried`), and no ETA is extrapolated for them."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from batchrelay.cli.lane_text import held_in_batch, lane_lines, rate_line, waiting_text, with_lanes
from batchrelay.cli.progress import Bar
from batchrelay.cli.providers import health_text
from batchrelay.config.lanes import IDLE, WAITING
from batchrelay.config.settings import HealthConfig
from batchrelay.money.ledger import SEP
from batchrelay.spec import BatchSpec
from batchrelay.store.fleet import read_fleet
from batchrelay.store.lane_status import batch_lanes, held_lines, lane_loads, open_parcels, timing
from batchrelay.store.lanes import LaneStore
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_stream

from .conftest import batchrelay, openai_line, write_config

LANE = "openai-batch"
HOUR = 3600.0
LANE_PROVIDER = {"name": LANE, "kind": "openai-batch", "base_url": "http://127.0.0.1:9", "api_key_env": "LANE_K",
                 "window_s": 7200, "margin_s": 1800}
SYNC_PROVIDER = {"name": "reseller", "base_url": "http://127.0.0.1:9"}


async def _batch(store: Store, n: int) -> str:
    src = io.BytesIO(b"".join(orjson.dumps(openai_line(i)) + b"\n" for i in range(1, n + 1)))
    spec = BatchSpec(name="t", chunk_size=n, completion_window=24 * HOUR)
    return (await submit_stream(store, src, spec, source="t")).batch_id


async def _take(lanes: LaneStore, batch: str, lines: list[int], *, must_end_by: float, max_lines: int = 100) -> None:
    now = time.time()
    taken = await lanes.take(LANE, batch, f"{lanes.store.keys.prefix}{batch}:c0",
                             [(n, f"{batch}-{n}", 100) for n in lines], deadline=now + 24 * HOUR,
                             must_end_by=must_end_by, max_lines=max_lines, max_bytes=1_000_000, gather_s=60, now=now)
    assert taken == lines


async def _created(lanes: LaneStore, pid: str, upstream_id: str) -> None:
    """The parcel driven as a worker drives it, up to an upstream batch recorded and running."""
    assert await lanes.advance(pid, "gathering", "sealed", sealed_at=time.time())
    assert await lanes.advance(pid, "sealed", "uploaded", file_id="file-1")
    assert await lanes.advance(pid, "uploaded", "creating", creating_at=time.time())
    assert await lanes.record(pid, upstream_id, due_at=time.time() + 60)
    await lanes.save(pid, upstream_status="in_progress", polls=1)


async def _answer(lanes: LaneStore, batch: str, pid: str, lines: list[int]) -> None:
    items = [(n, orjson.dumps({"line": n}), True, {f"{LANE}{SEP}m{SEP}requests": 1, f"{LANE}{SEP}m{SEP}cost": 5},
              None) for n in lines]
    assert await lanes.write_results(batch, pid, items, [{} for _ in lines]) == len(lines)


# --- the store: what the lanes hold ------------------------------------------------------------------

async def test_a_batch_no_lane_took_from_has_no_parcels_and_keeps_its_eta(store: Store) -> None:
    batch = await _batch(store, 4)
    lanes = await batch_lanes(store, batch)
    assert (lanes.lines, lanes.answered_by, lanes.parcels) == (0, None, ())
    info = await store.info(batch)
    t = timing(info, lanes, info.created_at + 10)
    assert t["deadline"] == info.expires_at and t["deadline"] is not None
    assert t["eta_s"] == t["eta_sync_s"]  # nothing done yet: no rate, no ETA
    assert t["lanes"] == {"lines": 0, "answered_by": None, "parcels": []}


async def test_parcels_show_their_state_upstream_id_lines_held_and_must_end_by(store: Store) -> None:
    ls = LaneStore(store)
    batch = await _batch(store, 10)
    end = time.time() + 20 * HOUR
    await _take(ls, batch, list(range(1, 8)), must_end_by=end, max_lines=4)  # p1 sealed (4), p2 gathering (3)
    p1, p2 = f"{batch}-p1", f"{batch}-p2"
    assert await ls.advance(p1, "sealed", "uploaded", file_id="file-1")
    assert await ls.advance(p1, "uploaded", "creating", creating_at=time.time())
    assert await ls.record(p1, "batch_up1", due_at=time.time() + 60)

    lanes = await batch_lanes(store, batch)
    assert [(p.view.pid, p.view.state, p.view.upstream_id, p.lines) for p in lanes.parcels] == [
        (p1, "created", "batch_up1", 4), (p2, "gathering", None, 3)]
    assert lanes.lines == 7 == await held_lines(store, batch)
    assert lanes.answered_by == end

    # the upstream answers two lines of p1: the lane holds five now
    await _answer(ls, batch, p1, [1, 2])
    lanes = await batch_lanes(store, batch)
    assert [p.lines for p in lanes.parcels] == [2, 3] and lanes.lines == 5 == await held_lines(store, batch)
    d = lanes.as_dict()["parcels"][0]
    assert (d["state"], d["upstream_id"], d["lines"], d["taken"], d["must_end_by"]) == ("created", "batch_up1", 2, 4,
                                                                                       end)


async def test_no_eta_is_extrapolated_for_lines_waiting_upstream(store: Store) -> None:
    ls = LaneStore(store)
    batch = await _batch(store, 10)
    await _take(ls, batch, [7, 8, 9, 10], must_end_by=time.time() + 20 * HOUR)
    # six lines answered synchronously in 6 s: 1 line/s; four lines wait upstream for up to 20 h
    items: list[tuple[int, bytes, bool, dict[str, int], str | None]] = [
        (n, orjson.dumps({"line": n}), True, {f"reseller{SEP}m{SEP}requests": 1}, None) for n in range(1, 7)]
    assert await store.write_results(batch, items) == 6
    info = await store.info(batch)
    assert info.pending == 4
    t = timing(info, await batch_lanes(store, batch), info.created_at + 6)
    assert t["eta_s"] is None  # not pending / rate = 4 s
    assert t["eta_sync_s"] == 0  # the synchronous providers have nothing left
    assert t["lanes"]["lines"] == 4


async def test_lane_loads_sum_open_parcels_and_held_lines_over_batches(store: Store) -> None:
    ls = LaneStore(store)
    a, b = await _batch(store, 3), await _batch(store, 2)
    await _take(ls, a, [1, 2, 3], must_end_by=time.time() + HOUR)
    await _take(ls, b, [1, 2], must_end_by=time.time() + HOUR)
    await _created(ls, f"{b}-p1", "batch_up2")
    loads = await lane_loads(store)
    assert loads[LANE].lines == 5
    assert loads[LANE].as_dict() == {"open_parcels": {"gathering": 1, "created": 1}, "lines": 5}
    assert await open_parcels(store) == {LANE: {"gathering": 1, "created": 1}}  # the metrics' read: no line read
    fleet = await read_fleet(store, [LANE], HealthConfig())
    assert fleet.lanes == {LANE: {"gathering": 1, "created": 1}}


# --- the text: pure ------------------------------------------------------------------------------------

def _st(pending: int, lane_lines_: int, parcels: list[dict[str, Any]], eta_s: float | None = 3.0,
        eta_sync_s: float | None = 3.0) -> dict[str, Any]:
    return {"rate_lines_per_s": 2.0, "eta_s": eta_s, "eta_sync_s": eta_sync_s, "counts": {"pending": pending},
            "lanes": {"lines": lane_lines_, "parcels": parcels}}


def _parcel(lines: int, state: str = "created", upstream: str | None = "batch_up1", end: float = 7200.0,
            lane: str = LANE) -> dict[str, Any]:
    return {"parcel": "batch_x-p1", "lane": lane, "state": state, "upstream_id": upstream,
            "upstream_status": "in_progress" if upstream else None, "lines": lines, "must_end_by": end}


@pytest.mark.parametrize(("st", "text"), [
    (_st(6, 0, []), "2.0 lines/s, ETA 3s"),
    (_st(6, 0, [], eta_s=None, eta_sync_s=None), "2.0 lines/s"),
    (_st(10, 4, [_parcel(4)], eta_s=None), "2.0 lines/s, ETA 3s for the 6 lines on synchronous providers"),
    (_st(4, 4, [_parcel(4)], eta_s=None, eta_sync_s=0), "2.0 lines/s"),  # all pending lines wait upstream
])
def test_the_rate_line_gives_an_eta_only_for_what_the_synchronous_providers_work(st: dict[str, Any],
                                                                                 text: str) -> None:
    assert rate_line(st) == text


def test_lane_lines_say_how_many_by_when_and_each_parcel() -> None:
    st = _st(9, 7, [_parcel(4), {**_parcel(3, "gathering", None, end=3600.0), "parcel": "batch_x-p2"},
                    {**_parcel(0, "collected"), "parcel": "batch_x-p0"}])
    assert lane_lines(st, now=0.0) == [
        f"7 lines in lane {LANE}: answered upstream by 1970-01-01T02:00:00Z (in 2h) at the latest, else they go to "
        "the synchronous providers then",
        "  parcel batch_x-p1: created, upstream batch_up1 (in_progress), 4 lines, must end by 1970-01-01T02:00:00Z",
        "  parcel batch_x-p2: gathering, not sent yet, 3 lines, must end by 1970-01-01T01:00:00Z"]
    assert lane_lines(_st(0, 0, [_parcel(0, "collected")]), now=0.0) == []
    paused, cancelling = ({**_st(4, 4, [_parcel(4)]), "status": s} for s in ("paused", "cancelling"))
    assert lane_lines(paused, now=0.0)[0].endswith("at the latest, else they wait for the batch's resume then")
    assert lane_lines(cancelling, now=0.0)[0].endswith("at the latest, else they end with the batch then")


@pytest.mark.parametrize(("health", "state", "text"), [
    ({"state": "untried", "last": None}, WAITING, "waiting upstream (4 lines; parcels: 1 created)"),
    ({"state": "ok", "last": None}, WAITING, "waiting upstream (4 lines; parcels: 1 created)"),
    ({"state": "benched", "for_s": 60.0, "last": "402"}, "benched", "benched 60s (4 lines; parcels: 1 created)"),
])
def test_a_lane_holding_lines_reads_waiting_upstream_unless_its_health_says_more(
        health: dict[str, Any], state: str, text: str) -> None:
    rows = with_lanes({LANE: health, "reseller": {"state": "untried", "last": None}},
                      {LANE: "openai-batch", "reseller": "chat"}, held_in_batch(_st(4, 4, [_parcel(4)])))
    assert rows[LANE]["state"] == state and rows[LANE]["kind"] == "openai-batch"
    assert health_text(rows[LANE]) == text
    assert rows["reseller"] == {"state": "untried", "last": None, "kind": "chat"}  # it holds nothing
    assert waiting_text(rows["reseller"]) == ""


@pytest.mark.parametrize(("health", "state"), [
    ({"state": "untried", "last": None}, IDLE),  # its health never sees a call succeed: untried says nothing
    ({"state": "disabled", "for_s": 60.0, "last": "401"}, "disabled"),
])
def test_a_lane_holding_nothing_is_idle_unless_its_health_says_more(health: dict[str, Any], state: str) -> None:
    rows = with_lanes({LANE: health}, {LANE: "anthropic-batch"}, {})
    assert rows[LANE]["state"] == state and "lane_lines" not in rows[LANE]


# --- the progress bar ------------------------------------------------------------------------------------

def test_the_bar_counts_lane_lines_apart_and_promises_no_time_for_them() -> None:
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    bar = Bar("batch_0123456789abcdef01234567", show=True, console=console)
    counts = {"total": 1000, "done": 600, "succeeded": 600, "failed": 0, "invalid": 0, "cancelled": 0,
              "expired": 0, "pending": 400}
    bar.update(counts, lanes=400)
    assert bar.progress is not None
    console.print(bar.progress.get_renderable())
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())  # type: ignore[attr-defined]
    bar.close()
    (line,) = {line.rstrip() for line in re.split(r"[\r\n]", drawn) if "600/1000" in line}
    assert "400 in lanes" in line and line.endswith("-:--:--") and len(line) <= 80, line


# --- the CLI: status and providers, text and --json ----------------------------------------------------

async def test_status_shows_the_deadline_lane_lines_and_a_waiting_lane(store: Store, redis_url: str, prefix: str,
                                                                        tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [LANE_PROVIDER, SYNC_PROVIDER])
    ls = LaneStore(store)
    batch = await _batch(store, 5)
    end = time.time() + 20 * HOUR
    await _take(ls, batch, [1, 2, 3], must_end_by=end)
    await _created(ls, f"{batch}-p1", "batch_up1")
    items: list[tuple[int, bytes, bool, dict[str, int], str | None]] = [
        (n, orjson.dumps({"line": n}), True, {f"reseller{SEP}m{SEP}requests": 1}, None) for n in (4, 5)]
    assert await store.write_results(batch, items) == 2  # the synchronous provider answered the rest
    env = {"REDIS_URL": redis_url}

    st = json.loads(batchrelay("-c", str(cfg), "status", batch, "--json", env=env).stdout)
    info = await store.info(batch)
    assert st["deadline"] == info.expires_at is not None
    assert st["eta_s"] is None and st["eta_sync_s"] == 0 and st["rate_lines_per_s"] > 0
    assert st["lanes"]["lines"] == 3 and st["lanes"]["answered_by"] == pytest.approx(end)
    (parcel,) = st["lanes"]["parcels"]
    assert (parcel["parcel"], parcel["lane"], parcel["state"], parcel["upstream_id"], parcel["lines"]) == (
        f"{batch}-p1", LANE, "created", "batch_up1", 3)
    lane = st["providers"][LANE]
    assert (lane["state"], lane["kind"], lane["lane_lines"], lane["parcels"]) == (WAITING, "openai-batch", 3,
                                                                                  {"created": 1})
    assert st["providers"]["reseller"]["state"] == "untried" and st["providers"]["reseller"]["kind"] == "chat"

    proc = batchrelay("-c", str(cfg), "status", batch, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "  deadline 20" in out and "(in 24h)" in out
    assert f"3 lines in lane {LANE}: answered upstream by " in out and "(in 20h) at the latest" in out
    assert f"parcel {batch}-p1: created, upstream batch_up1 (in_progress), 3 lines, must end by " in out
    assert f"provider {LANE}: waiting upstream (3 lines; parcels: 1 created)" in out
    assert "lines/s" in out and "ETA" not in out  # a rate, but not one the lane's lines go by


def test_providers_show_kind_and_a_lanes_settings(redis_url: str, prefix: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [LANE_PROVIDER, SYNC_PROVIDER])
    env = {"REDIS_URL": redis_url}
    rows = {r["name"]: r for r in json.loads(batchrelay("-c", str(cfg), "providers", "--json", env=env).stdout)}
    assert (rows[LANE]["kind"], rows["reseller"]["kind"]) == ("openai-batch", "chat")
    lane = rows[LANE]["lane"]
    assert (lane["window_s"], lane["margin_s"], lane["gather_s"], lane["max_lines"]) == (7200, 1800, 60, 50_000)
    assert rows[LANE]["price_multiplier"] == "0.5" and rows["reseller"]["lane"] is None
    assert (rows[LANE]["health"]["kind"], rows[LANE]["health"]["state"]) == ("openai-batch", IDLE)

    proc = batchrelay("-c", str(cfg), "providers", env=env)
    assert proc.returncode == 0, proc.stderr
    table = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:3]}
    assert table[LANE][1] == "openai-batch" and table["reseller"][1] == "chat"
    assert (f"lane {LANE} (openai-batch): window 2h, margin 30m, gather 1m, up to 50,000 lines / 209,715,200 "
            "bytes per upstream batch, price official x0.5") in proc.stdout


async def test_providers_show_what_a_lane_holds_over_every_batch(store: Store, redis_url: str, prefix: str,
                                                                 tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [LANE_PROVIDER])
    ls = LaneStore(store)
    batch = await _batch(store, 2)
    await _take(ls, batch, [1, 2], must_end_by=time.time() + HOUR)
    env = {"REDIS_URL": redis_url}
    (row,) = json.loads(batchrelay("-c", str(cfg), "providers", "--json", env=env).stdout)
    assert (row["health"]["state"], row["health"]["lane_lines"], row["health"]["parcels"]) == (
        WAITING, 2, {"gathering": 1})
    assert "waiting upstream (2 lines; parcels: 1 gathering)" in batchrelay("-c", str(cfg), "providers",
                                                                             env=env).stdout


# --- end to end: a real lane (batchrelay serve upstream of another batchrelay) ---------------------------

@pytest.mark.timeout(120)
def test_status_while_a_real_upstream_batch_runs_and_after_it_ended(tmp_path: Path, redis_url: str,
                                                                     prefix: str) -> None:
    from .lanekit import chat_lines, downstream, upstream

    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        poll = up.proxy.hold("GET", "/v1/batches/*", after=False)  # the first poll waits: the lines stay upstream
        batch = down.submit(chat_lines(6), "--completion-window", "60s")
        down.worker()
        assert poll.reached.wait(30), down.logs()
        st = json.loads(down.cli("status", batch, "--json"))
        ((upstream_batch, _),) = [(b["id"], b) for b in up.batches("openai-batch")]
        (parcel,) = st["lanes"]["parcels"]
        assert (parcel["state"], parcel["upstream_id"], parcel["lines"], st["lanes"]["lines"]) == (
            "created", upstream_batch, 6, 6)
        assert st["deadline"] is not None and parcel["must_end_by"] == pytest.approx(st["deadline"] - 5)  # margin_s 5
        assert st["eta_s"] is None
        assert st["providers"]["lane"]["state"] == WAITING and st["providers"]["lane"]["lane_lines"] == 6
        text = down.cli("status", batch)
        assert "6 lines in lane lane: answered upstream by " in text and f"upstream {upstream_batch}" in text
        assert "provider lane: waiting upstream (6 lines; parcels: 1 created)" in text

        poll.release()
        assert down.wait(batch) == "completed"
        st = json.loads(down.cli("status", batch, "--json"))
        assert st["lanes"]["lines"] == 0 and [p["state"] for p in st["lanes"]["parcels"]] == ["collected"]
        assert st["providers"]["lane"]["state"] == IDLE and "lane_lines" not in st["providers"]["lane"]
        assert "in lane" not in down.cli("status", batch)
