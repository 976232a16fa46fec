"""Lanes end to end (issue 18): one batchrelay (serve + worker + simulator) is the official Batch API
upstream of another, behind a fault proxy (tests/lanekit.py); the one under test has a flaky reseller
at 0.75x and the lane at 0.5x, and works its batches with `worker --burst` processes.

Every test checks what a user relies on (lanekit.check_batch): each line answered or failed exactly
once, the ledger equal to the sum of the lines' costs, a lane-answered line naming its upstream batch,
and one upstream batch per parcel, never two (the kill points included)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from batchrelay.config.settings import ProviderConfig
from batchrelay.money.pricing import call_cost, price_of
from batchrelay.store.keys import Keys
from batchrelay.wire.reply import Usage

from .lanekit import (
    CHAT_MODEL,
    MESSAGES_MODEL,
    Downstream,
    answered_by,
    chat_lines,
    check_batch,
    downstream,
    lane_attempts,
    messages_lines,
    run_command,
    run_until,
    serve_has,
    upstream,
)

pytestmark = pytest.mark.timeout(120)
WINDOW = ("--completion-window", "60s")  # the lane needs window_s 20 + margin_s 5: 60 s leaves room


def _half_price(attempt: dict[str, Any], model: str) -> D | None:
    """What the lane's call costs at 0.5x the official price, from its usage."""
    half = ProviderConfig(name="half", base_url="http://half.invalid", price_multiplier=D("0.5"))
    return call_cost(price_of(half, model), Usage.from_dict(attempt["usage"]), None, "computed").billed


def _deadline_options() -> tuple[str, ...]:
    """`--deadline +60s` when submit has it (issue 18), else a 60 s completion window."""
    from batchrelay.cli.main import cli

    submit = cli.commands["submit"]
    if any(p.name == "deadline" for p in submit.params):
        return ("--deadline", "+60s")
    return WINDOW


def _budget_settled(down: Downstream, batch: str, rows: list[dict[str, Any]]) -> None:
    b = down.budget(batch)
    assert D(b["spent_usd"]) == D(down.ledger(batch)["total"]["usd"]) == sum(
        (D((r["batchrelay"].get("cost") or {}).get("usd") or "0") for r in rows), D(0))
    assert D(b["reserved_usd"]) == 0, b


@pytest.mark.parametrize("kind", ["openai-batch", "anthropic-batch"])
def test_a_batch_with_time_to_spare_is_answered_by_the_lane_at_half_the_official_price(
    tmp_path: Path, redis_url: str, prefix: str, kind: str,
) -> None:
    n = 20
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up, kind=kind) as down:
        lines = chat_lines(n) if kind == "openai-batch" else messages_lines(n)
        options = (*WINDOW, "--max-cost", "1") if kind == "openai-batch" else (*_deadline_options(), "--max-cost", "1")
        batch = down.submit(lines, *options)
        down.worker()
        assert down.wait(batch) == "completed"
        rows = check_batch(down, up, batch, n, kind)
        assert down.reseller.stats()["calls"] == 0
        model = CHAT_MODEL if kind == "openai-batch" else MESSAGES_MODEL
        for r in rows:
            assert answered_by(r) == "lane", r
            (attempt,) = r["batchrelay"]["attempts"]
            assert D(attempt["cost"]["usd"]) == _half_price(attempt, model)
            assert D(attempt["cost"]["usd"]) > 0
        assert {row["provider"] for row in down.ledger(batch)["rows"]} == {"lane"}
        _budget_settled(down, batch, rows)
        # the lane's requests went to the Batch API's own endpoints, none to a synchronous one
        paths = {s.path for s in up.proxy.log}
        assert not any(p.endswith(("/chat/completions", "/v1/messages")) for p in paths), paths


def test_an_urgent_batch_and_one_whose_deadline_is_too_near_never_touch_the_lane(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        urgent = down.submit(chat_lines(10))  # no deadline at all
        near = down.submit(chat_lines(10), "--completion-window", "20s")  # < window_s 20 + margin_s 5
        down.worker()
        for batch in (urgent, near):
            assert down.wait(batch) == "completed"
            rows = check_batch(down, up, batch, 10)
            assert {answered_by(r) for r in rows} == {"reseller"}
            assert not any(a["provider"] == "lane" for r in rows for a in r["batchrelay"]["attempts"])
            assert "lane_parcels" not in down.meta(batch)
        assert up.proxy.log == [] and up.batches("openai-batch") == []


@pytest.mark.skipif(not serve_has("batch_window_s"), reason="`[serve] batch_window_s` is not there yet")
def test_an_upstream_batch_that_expires_keeps_its_answers_and_the_rest_fail_over_to_the_reseller(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    n = 16
    # the upstream answers 2 lines a second (its worker has 2 slots) and its batches expire after 4 s
    with upstream(tmp_path, redis_url, prefix, window_s=4, sim={"latency_ms": 1000}) as up, \
            downstream(tmp_path, redis_url, prefix, up) as down:
        batch = down.submit(chat_lines(n), *WINDOW, "--max-cost", "1")
        down.worker()
        assert down.wait(batch, timeout=90) == "completed"
        rows = check_batch(down, up, batch, n)
        (upstream_batch,) = up.batches("openai-batch")
        assert upstream_batch["status"] == "expired"
        by = Counter(answered_by(r) for r in rows)
        assert by["lane"] > 0 and by["reseller"] > 0 and by["lane"] + by["reseller"] == n, by
        for r in rows:
            (lane,) = lane_attempts(r)
            assert lane["upstream_batch"] == upstream_batch["id"]
            if answered_by(r) == "reseller":  # failed over: the lane's attempt says why, then the reseller's
                assert lane["status"] is None and lane.get("error"), r["batchrelay"]["attempts"]
                assert r["batchrelay"]["attempts"][-1]["provider"] == "reseller"
        assert D(down.ledger(batch)["total"]["usd"]) > 0
        _budget_settled(down, batch, rows)


def test_lines_in_the_upstream_error_file_are_rejected_on_a_400_and_failed_over_on_a_500(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    n = 12
    # upstream: req-1 and req-2 are bad requests (400 from the simulator, before any scripted fault); of the
    # other 10 lines' calls the first 8 are answered and the rest are 500s: the two lines left get nothing
    # but 500s until their line deadline upstream (2 s), fail there and land in the error file
    lines = chat_lines(n)
    for line in lines[:2]:
        line["body"]["max_tokens"] = 0
    with upstream(tmp_path, redis_url, prefix, sim={"script": [0] * 8 + [500] * 60},
                  health={"line_deadline_s": 2}) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        batch = down.submit(lines, *WINDOW)
        down.worker()
        assert down.wait(batch) == "completed"
        rows = check_batch(down, up, batch, n)
        by_id = {r["custom_id"]: r for r in rows}
        for cid in ("req-1", "req-2"):  # rejected: the request is bad, no money is spent elsewhere on it
            r = by_id[cid]
            assert answered_by(r) is None and r["error"], r
            assert [a["provider"] for a in r["batchrelay"]["attempts"]] == ["lane"], r["batchrelay"]
            assert r["batchrelay"]["attempts"][0]["status"] == 400
        failed_over = [r for r in rows if answered_by(r) == "reseller"]
        assert len(failed_over) == 2, Counter(answered_by(r) for r in rows)
        for r in failed_over:
            lane = r["batchrelay"]["attempts"][0]
            assert lane["provider"] == "lane" and lane["upstream_batch"] and "500" in str(lane), lane
        assert sum(answered_by(r) == "lane" for r in rows) == n - 4
        reseller_calls = down.reseller.stats()["by_status"]
        assert sum(reseller_calls.values()) == sum(
            a["provider"] == "reseller" for r in failed_over for a in r["batchrelay"]["attempts"])


def test_5xx_and_429_answers_to_polls_leave_the_lines_alone_and_retry_after_is_honoured(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    n = 10
    with upstream(tmp_path, redis_url, prefix, sim={"latency_ms": 200}) as up, \
            downstream(tmp_path, redis_url, prefix, up) as down:
        up.proxy.on("GET", "/v1/batches/*", [503, 503, (429, {"retry-after": "1"}), 500])
        batch = down.submit(chat_lines(n), *WINDOW)
        down.worker()
        assert down.wait(batch) == "completed"
        rows = check_batch(down, up, batch, n)
        assert {answered_by(r) for r in rows} == {"lane"}
        assert all(len(r["batchrelay"]["attempts"]) == 1 for r in rows)  # the faults are no line's attempt
        polls = up.proxy.seen("GET", "/v1/batches/*")
        assert [p.status for p in polls[:4]] == [503, 503, 429, 500] and polls[-1].status == 200, polls
        assert polls[3].t - polls[2].t >= 0.95, "the poll after a 429 with Retry-After: 1 came too early"
        assert down.reseller.stats()["calls"] == 0


def _upstream_ids(rows: list[dict[str, Any]]) -> set[str]:
    return {a["upstream_batch"] for r in rows for a in lane_attempts(r)}


KILLED_LEASE_S = 4.0  # the parcel lease of the workers in the kill test (BATCHRELAY_LANE_LEASE_S; default 60 s)


@pytest.mark.timeout(240)
def test_workers_killed_between_upload_and_create_and_between_create_and_recording_leave_one_upstream_batch_each(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    """Both kill points in one test, so one lease lapse serves both: batch A's worker dies with its
    create held unsent (the file is uploaded, no upstream batch exists), batch B's with its create sent
    and the answer held (the upstream batch exists, its id never reached the worker). A third worker,
    once their leases lapse, creates A's batch (once) and finds B's again by listing (no second create)."""
    n = 12
    # the deadline must outlast the killed workers' parcel leases, or the parcels come back too late for the lane
    long_window = ("--completion-window", f"{KILLED_LEASE_S + 90:.0f}s")
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        down.env["BATCHRELAY_LANE_LEASE_S"] = str(KILLED_LEASE_S)  # a killed worker's parcel is free again soon
        before = up.proxy.hold("POST", "/v1/batches", after=False)
        a = down.submit(chat_lines(n), *long_window)
        down.kill_when(before.reached, down.worker(), "A's create")
        assert up.batches("openai-batch") == []
        before.release()  # its client is dead: the proxy drops it unforwarded

        after = up.proxy.hold("POST", "/v1/batches", after=True)
        b = down.submit(chat_lines(n), *long_window)
        down.kill_when(after.reached, down.worker(), "B's create")
        assert after.upstream_answer is not None and after.upstream_answer[0] == 200
        b_upstream = orjson.loads(after.upstream_answer[1])["id"]
        assert [x["id"] for x in up.batches("openai-batch")] == [b_upstream]
        after.release()

        down.worker()
        ids = {}
        for batch in (a, b):
            assert down.wait(batch, timeout=KILLED_LEASE_S + 45) == "completed"
            rows = check_batch(down, up, batch, n)  # one upstream batch per parcel: none created twice
            assert {answered_by(r) for r in rows} == {"lane"}
            ids[batch] = _upstream_ids(rows)
        assert ids[b] == {b_upstream} and len(ids[a]) == 1 and ids[a] != ids[b]
        assert len(up.batches("openai-batch")) == 2
        # A's held create was dropped and sent once more; B's was sent once, and found again by listing
        assert [c.status for c in up.proxy.seen("POST", "/v1/batches")] == [502, 200, 200]
        assert up.input_files() == [], "an uploaded input file was left behind"


@pytest.mark.timeout(180)
def test_an_anthropic_worker_killed_between_create_and_recording_leaves_one_upstream_batch(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    """Anthropic's batches carry no metadata: a create whose id never reached the worker is found again
    by its request count among the batches created after the parcel was marked `creating` that no parcel
    recorded (the lane's creates being serialized by a lease). Meanwhile another batch's parcel of the
    same size is created and recorded: the recovery takes the right one, and nothing is created twice."""
    n, kind, path = 12, "anthropic-batch", "/v1/messages/batches"
    long_window = ("--completion-window", f"{KILLED_LEASE_S + 90:.0f}s")
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up, kind=kind) as down:
        down.env["BATCHRELAY_LANE_LEASE_S"] = str(KILLED_LEASE_S)
        after = up.proxy.hold("POST", path, after=True)
        b = down.submit(messages_lines(n), *long_window)
        down.kill_when(after.reached, down.worker(), "the create")
        assert after.upstream_answer is not None and after.upstream_answer[0] == 200
        b_upstream = orjson.loads(after.upstream_answer[1])["id"]
        assert [x["id"] for x in up.batches(kind)] == [b_upstream]
        after.release()

        c = down.submit(messages_lines(n), *long_window)  # same size: created while b's parcel is lost
        down.worker()
        ids = {}
        for batch in (c, b):
            assert down.wait(batch, timeout=KILLED_LEASE_S + 45) == "completed"
            rows = check_batch(down, up, batch, n, kind, others=1)
            assert {answered_by(r) for r in rows} == {"lane"}
            ids[batch] = _upstream_ids(rows)
        assert ids[b] == {b_upstream} and len(ids[c]) == 1 and ids[c] != ids[b]
        assert len(up.batches(kind)) == 2  # b's create was found again, not made twice
        assert [x.status for x in up.proxy.seen("POST", path)] == [200, 200]


def test_cancel_cancels_the_upstream_batch_and_keeps_what_it_answered(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    n = 10
    with upstream(tmp_path, redis_url, prefix, sim={"latency_ms": 1500}) as up, \
            downstream(tmp_path, redis_url, prefix, up) as down:
        batch = down.submit(chat_lines(n), *WINDOW)
        down.worker()
        deadline = time.monotonic() + 30
        while not (listed := up.batches("openai-batch")) or listed[0]["raw"]["request_counts"]["completed"] < 1:
            assert time.monotonic() < deadline, f"the upstream batch never got going: {listed}\n{down.logs()}"
            time.sleep(0.2)
        down.cli("cancel", batch, "--no-wait")
        deadline = time.monotonic() + 60
        while down.meta(batch).get("status") != "cancelled":
            # a burst worker leaves a stop's last step to `cancel` (or a long-running worker's sweep)
            if all(w.poll() is not None for w in down.workers):
                down.cli("cancel", batch)
            assert time.monotonic() < deadline, f"{down.meta(batch)}\n{down.logs()}"
            time.sleep(0.5)
        (upstream_batch,) = up.batches("openai-batch")
        assert upstream_batch["status"] in ("cancelling", "cancelled"), upstream_batch
        assert any(s.method == "POST" and s.path.endswith("/cancel") for s in up.proxy.log)
        rows = check_batch(down, up, batch, n)
        by = Counter(answered_by(r) for r in rows)
        assert by["lane"] >= 1 and by[None] >= 1 and set(by) <= {"lane", None}, by
        for r in rows:
            if answered_by(r) is None:
                assert "cancel" in orjson.dumps(r["error"]).decode(), r
        assert down.reseller.stats()["calls"] == 0  # a cancelled batch's lines are not failed over


def test_ctrl_c_on_a_run_with_an_open_parcel_stops_it_at_once_and_leaves_the_parcel(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    """A run's burst worker waits for an open parcel's lines, but not once it is told to stop: the
    parcel stays in Redis (for the workers' cron, or the run's resume), the run pauses its batch."""
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        up.proxy.on("GET", "/v1/batches/*", [503] * 1000)  # the upstream batch never seems to end
        command = run_command(down, tmp_path, chat_lines(6), "--deadline", "+60s")
        said = tmp_path / "run.stderr"
        code, stop_s = run_until(down, command, said, lambda: up.batches("openai-batch"))
        assert code == 130 and stop_s < 20, said.read_text()
        assert "paused" in said.read_text()
        # the same command again resumes it: the lane's lines are upstream already, and it says so
        # rather than that they go there
        run_until(down, command, said, lambda: "lane lane" in said.read_text())
        text = said.read_text()
        assert "resuming batch" in text and "go there" not in text, text
        assert re.search(r"lane lane: 6 lines already there \(parcel \w+, answered by \S+Z at the latest\)", text), text



def _parcel(down: Downstream, pid: str) -> dict[str, str]:
    client = sync_redis.Redis.from_url(down.redis_url, decode_responses=True)
    try:
        return dict(client.hgetall(Keys(down.prefix).lane_parcel(pid)))  # type: ignore[arg-type]
    finally:
        client.close()




def _run(down: Downstream, lines: list[dict[str, Any]], *options: str) -> subprocess.Popen[bytes]:
    """`batchrelay run` of `lines` (its stderr in run.stderr); the caller waits for it."""
    src = down.tmp / "run.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    with (down.tmp / "run.stderr").open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(down.cfg), "run", str(src),
                                 "-o", str(down.tmp / "run.out.jsonl"), *options],
                                env=down.env, stdout=subprocess.DEVNULL, stderr=err)

def test_a_run_busy_with_a_deferred_line_cancels_its_late_upstream_batch_at_must_end_by_and_keeps_its_answers(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    """The upstream (its batches' own window 10 min) answers 2 lines a second; the run's deadline is 13 s
    away and the lane's margin 8 s. One line is too large for the lane and the reseller answers its
    first call with a 429 (Retry-After 6 s): the run's worker has a job queued (deferred) past
    must_end_by. The parcel is still moved on on time: its upstream batch is cancelled at must_end_by,
    the lines it answered keep their answers, the rest are answered by the reseller before the deadline.
    (Before, the worker moved its parcels on only once its queue was empty: the parcel was never even
    sent, and all its lines were answered synchronously at the end.)"""
    n = 16
    lane = {"window_s": 1, "margin_s": 8, "poll_max_s": 1, "gather_s": 0.2, "cancel_wait_s": 6, "max_bytes": 4000}
    lines = [*chat_lines(n - 1), {**chat_lines(1, messages=[{"role": "user", "content": "x" * 5000}])[0],
                                  "custom_id": f"req-{n}"}]
    with upstream(tmp_path, redis_url, prefix, window_s=600, sim={"latency_ms": 1000}) as up, \
            downstream(tmp_path, redis_url, prefix, up, lane=lane,
                       reseller={"fail_rate": 0, "script": [429], "retry_after": 6}) as down:
        run = _run(down, lines, "--deadline", "+13s")
        try:
            run.wait(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        said = (down.tmp / "run.stderr").read_text()
        assert run.returncode == 0, said
        # the line too large for any parcel goes synchronous at once (left in its chunk, the sweeper put the
        # chunk back every 0.1 s and the lane dropped it again until the lane's time was up)
        assert "arq had dropped" not in said, said
        (upstream_batch,) = up.batches("openai-batch")
        assert upstream_batch["status"] == "cancelled", upstream_batch
        batch = upstream_batch["metadata"]["batchrelay_batch"]
        must_end_by = float(_parcel(down, f"{batch}-p1")["must_end_by"])
        (cancel,) = up.proxy.seen("POST", "/v1/batches/*/cancel")
        assert cancel.t - must_end_by < 1.5, f"cancelled {cancel.t - must_end_by:.1f}s after must_end_by\n{said}"
        rows = check_batch(down, up, batch, n)
        by = Counter(answered_by(r) for r in rows)
        assert by["lane"] > 0 and by["reseller"] > 1 and by["lane"] + by["reseller"] == n, (by, said)
        for r in rows[:n - 1]:
            (attempt,) = lane_attempts(r)
            assert attempt["upstream_batch"] == upstream_batch["id"]
            if answered_by(r) == "reseller":  # failed over: the lane's attempt says why, then the reseller's
                assert attempt["status"] is None and "cancel" in attempt["error"], r["batchrelay"]["attempts"]
        assert rows[n - 1]["custom_id"] == f"req-{n}" and not lane_attempts(rows[n - 1])


def test_a_lane_disabled_after_a_401_is_said_not_used_and_providers_check_re_enables_it(
    tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    """The fresh-clone check: the lane's upstream answers a 401. Its lines go to the reseller with the
    401 in their lane attempt; `providers` shows the lane disabled; `submit` says it is not used and
    why (text and --json); `providers check` lists the lane's batches (no chat request, also with
    --live), passes once the key is accepted again, and re-enables it: the next batch uses the lane."""
    with upstream(tmp_path, redis_url, prefix) as up, downstream(tmp_path, redis_url, prefix, up) as down:
        up.proxy.on("GET", "/v1/files", [401])  # the parcel's first call
        batch = down.submit(chat_lines(8), *WINDOW)
        down.worker()
        assert down.wait(batch) == "completed"
        rows = down.results(batch)  # (check_batch would look for the parcel's upstream batch: there is none)
        assert len(rows) == 8 and up.batches("openai-batch") == []
        for r in rows:
            assert answered_by(r) == "reseller"
            (lane,) = [a for a in r["batchrelay"]["attempts"] if a["provider"] == "lane"]
            assert lane["status"] == 401 and lane["error"] == \
                "the upstream refused the batch (list files: HTTP 401: proxy fault 401)", lane
        (row,) = [x for x in orjson.loads(down.cli("providers", "--json")) if x["name"] == "lane"]
        assert row["health"]["state"] == "disabled", row["health"]
        assert re.search(r"^lane is disabled \d+s after: .*HTTP 401", down.cli("providers"), re.M)  # below the table
        src = tmp_path / "more.jsonl"
        src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in chat_lines(3)))
        proc = batchrelay_cli(down, "submit", str(src), *WINDOW, "--json")
        (note,) = orjson.loads(proc.stdout)["lanes"]
        assert (note["used"], note["reason"]) == (False, "disabled"), note
        assert note["text"].startswith("lane lane not used: disabled for ") and " after HTTP 401 (check its key" in note["text"] and \
            note["text"].endswith("(check its key; `batchrelay providers check` re-enables it)"), note
        assert note["text"] in proc.stderr
        est = orjson.loads(down.cli("estimate", str(src), *WINDOW, "--json"))
        assert "not used: disabled for " in est["lanes_closed"]["lane"], est
        up.proxy.on("GET", "/v1/batches", [401])
        failed = orjson.loads(down.cli("providers", "check", "--live", "--json", ok=(1,)))
        (lane_check,) = [x for x in failed if x["provider"] == "lane"]
        assert lane_check["state"] == "fail" and not lane_check["cleared"], lane_check
        assert "HTTP 401" in lane_check["checks"][0]["detail"] and "key is refused" in lane_check["checks"][0]["detail"]
        checked = orjson.loads(down.cli("providers", "check", "--live", "--json"))
        (lane_check,) = [x for x in checked if x["provider"] == "lane"]
        assert lane_check["state"] == "ok" and lane_check["cleared"], lane_check
        assert [(c["check"], c["ok"]) for c in lane_check["checks"]] == [("batches", True), ("live", None)]
        assert [s.path for s in up.proxy.log if s.method == "POST"] == []  # no chat request, no empty probe
        (row,) = [x for x in orjson.loads(down.cli("providers", "--json")) if x["name"] == "lane"]
        assert row["health"]["state"] not in ("disabled", "benched", "cooling"), row["health"]


def batchrelay_cli(down: Downstream, *args: str) -> subprocess.CompletedProcess[str]:
    from .conftest import batchrelay

    proc = batchrelay("-c", str(down.cfg), *args, env=down.env)
    assert proc.returncode == 0, proc.stderr
    return proc
