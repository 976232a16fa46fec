"""The lane's state machine (worker/lane_plan.py): the step for every parcel state, on time, late,
its batch stopping, and as a worker that died mid-step left it (its lease lost)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from batchrelay.config.lanes import LaneConfig
from batchrelay.worker.lane_plan import (
    Cancel,
    Collect,
    Create,
    Done,
    Poll,
    Recover,
    Release,
    Seal,
    Step,
    Upload,
    Wait,
    next_step,
    not_found,
    poll_after,
)

LANE = LaneConfig(max_lines=100, max_bytes=10_000, window_s=100, margin_s=20, gather_s=5, poll_min_s=1,
                  poll_max_s=8, poll_factor=2, cancel_wait_s=30, create_wait_s=10)
NOW = 1_000.0


@dataclass(frozen=True)
class P:
    """The parcel fields the plan reads (store/lanes.py ParcelView has these and more)."""

    state: str
    must_end_by: float = NOW + 50
    deadline: float = NOW + 70  # must_end_by + the margin
    first_at: float = NOW - 10
    creating_at: float | None = None
    next_poll_s: float = 1.0


ON_TIME, LATE, STOPPING, LEASE_LOST = "on time", "late", "batch stopping", "lease lost"


def case(state: str, when: str, **fields: float | None) -> tuple[P, float, str]:
    """(parcel, now, batch status) for a parcel in `state`; `lease lost`: as a worker that died
    during its step left it, picked up long after (its lease lapsed)."""
    p = replace(P(state), **fields)  # type: ignore[arg-type]
    if when == LATE:
        return p, p.must_end_by + 1, "in_progress"
    if when == STOPPING:
        return p, NOW, "cancelling"
    if when == LEASE_LOST:
        return replace(p, first_at=NOW - 300, creating_at=NOW - 300 if state == "creating" else None), NOW, \
            "in_progress"
    return p, NOW, "in_progress"


TABLE: list[tuple[str, str, Step]] = [
    ("gathering", ON_TIME, Seal()),
    ("gathering", LATE, Release(True, "too late for the lane")),
    ("gathering", STOPPING, Release(False, "the batch is stopping")),
    ("gathering", LEASE_LOST, Seal()),
    ("sealed", ON_TIME, Upload()),
    ("sealed", LATE, Release(True, "too late for the lane")),
    ("sealed", STOPPING, Release(False, "the batch is stopping")),
    ("sealed", LEASE_LOST, Upload()),  # the upload is done again (an orphan file is looked up by name)
    ("uploaded", ON_TIME, Create()),
    ("uploaded", LATE, Release(True, "too late for the lane")),
    ("uploaded", STOPPING, Release(False, "the batch is stopping")),
    ("uploaded", LEASE_LOST, Create()),
    ("creating", ON_TIME, Recover()),  # seen by the next holder only: the create may have landed
    ("creating", LATE, Recover()),  # found, it is recorded (then cancelled); never created twice
    ("creating", STOPPING, Recover()),
    ("creating", LEASE_LOST, Recover()),
    ("created", ON_TIME, Poll(2)),
    ("created", LATE, Cancel()),
    ("created", STOPPING, Cancel()),
    ("created", LEASE_LOST, Poll(2)),
    ("cancelling", ON_TIME, Poll(1)),
    ("cancelling", LATE, Poll(1)),  # 1 s past must_end_by: the cancel still has cancel_wait_s
    ("cancelling", STOPPING, Poll(1)),
    ("cancelling", LEASE_LOST, Poll(1)),
    ("ended", ON_TIME, Collect()),
    ("ended", LATE, Collect()),  # what the upstream answered is written, however late
    ("ended", STOPPING, Collect()),
    ("ended", LEASE_LOST, Collect()),  # a collect cut off goes on (its writes are exactly-once)
    ("collected", ON_TIME, Done()),
    ("collected", LATE, Done()),
    ("collected", STOPPING, Done()),
    ("collected", LEASE_LOST, Done()),
    ("failed", ON_TIME, Release(True, "the upstream refused the batch")),
    ("failed", LATE, Release(True, "the upstream refused the batch")),
    ("failed", STOPPING, Release(False, "the upstream refused the batch")),
    ("failed", LEASE_LOST, Release(True, "the upstream refused the batch")),
]


@pytest.mark.parametrize(("state", "when", "step"), TABLE, ids=[f"{s}-{w}" for s, w, _ in TABLE])
def test_each_parcel_state_has_its_next_step(state: str, when: str, step: Step) -> None:
    p, now, status = case(state, when)
    assert next_step(p, now=now, batch_status=status, lane=LANE) == step


@pytest.mark.parametrize(("state", "step"), [
    ("gathering", Release(False, "the batch is paused: its lines wait for its resume")),
    ("sealed", Release(False, "the batch is paused: its lines wait for its resume")),
    ("uploaded", Release(False, "the batch is paused: its lines wait for its resume")),
    ("creating", Recover()),  # the create may have landed: found, it goes on
    ("created", Poll(2)),  # already upstream (and paid for): polled and collected as ever
    ("ended", Collect()),
    ("failed", Release(False, "the upstream refused the batch")),  # no job on the run's dropped queue
])
def test_a_paused_batch_sends_nothing_new_upstream_and_its_lines_wait_for_its_resume(state: str, step: Step) -> None:
    """A long-running worker moves every parcel, a paused run's too: after Ctrl-C it sent the run's unsent
    parcels upstream (new spend for a batch nobody works); now their lines go back, unqueued, to the resume."""
    p, now, _ = case(state, ON_TIME)
    assert next_step(p, now=now, batch_status="paused", lane=LANE) == step


def test_the_table_covers_every_state_in_every_situation() -> None:
    states = {"gathering", "sealed", "uploaded", "creating", "created", "cancelling", "ended", "collected", "failed"}
    assert {(s, w) for s, w, _ in TABLE} == {(s, w) for s in states for w in (ON_TIME, LATE, STOPPING, LEASE_LOST)}


def test_a_gathering_parcel_waits_for_its_gather_time() -> None:
    p = P("gathering", first_at=NOW - 2)
    assert next_step(p, now=NOW, batch_status="in_progress", lane=LANE) == Wait(3)


def test_a_cancel_the_upstream_never_finishes_gives_the_lines_back_after_cancel_wait() -> None:
    p = P("cancelling", must_end_by=NOW - 30)
    assert next_step(p, now=NOW, batch_status="in_progress", lane=LANE) == Release(
        True, "the upstream did not end its cancelled batch in time")
    assert next_step(p, now=NOW, batch_status="expiring", lane=LANE).requeue is False  # type: ignore[union-attr]


def test_a_cancel_wait_longer_than_half_the_margin_ends_half_way_through_it_for_lines_that_fail_over() -> None:
    """cancel_wait_s 30 and margin_s 20: lines given back only 30 s after must_end_by would come back
    10 s past their deadline; they come back 10 s after it, with 10 s left to be answered."""
    p = P("cancelling", must_end_by=NOW - 10, deadline=NOW + 10)
    assert next_step(p, now=NOW - 0.1, batch_status="in_progress", lane=LANE) == Poll(1)
    assert next_step(p, now=NOW, batch_status="in_progress", lane=LANE) == Release(
        True, "the upstream did not end its cancelled batch in time")
    # a stopping batch's lines are not answered elsewhere: its cancel gets the whole cancel_wait_s
    assert next_step(p, now=NOW, batch_status="cancelling", lane=LANE) == Poll(1)
    assert next_step(p, now=NOW + 20, batch_status="cancelling", lane=LANE) == Release(
        False, "the upstream did not end its cancelled batch in time")


def test_any_stopping_status_or_a_forgotten_batch_stops_the_lane() -> None:
    for status in ("cancelling", "cancelled", "expiring", "expired", "failed", ""):
        assert next_step(P("created"), now=NOW, batch_status=status, lane=LANE) == Cancel()
    for status in ("in_progress", "budget_exhausted", "paused"):  # the lane's lines were reserved: it goes on
        assert isinstance(next_step(P("created"), now=NOW, batch_status=status, lane=LANE), Poll)


def test_an_unknown_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown parcel state"):
        next_step(P("weird"), now=NOW, batch_status="in_progress", lane=LANE)


@pytest.mark.parametrize(("waited", "status", "must_end_by", "step"), [
    (3, "in_progress", NOW + 50, Wait(1)),  # the create may still land: look again soon
    (9.5, "in_progress", NOW + 50, Wait(0.5)),
    (10, "in_progress", NOW + 50, Create()),  # create_wait_s has passed: it never landed
    (10, "cancelling", NOW + 50, Release(False, "the batch is stopping")),
    (10, "in_progress", NOW - 1, Release(True, "too late for the lane")),
])
def test_a_create_not_found_waits_then_creates_again_or_gives_up(waited: float, status: str, must_end_by: float,
                                                                  step: Step) -> None:
    p = P("creating", creating_at=NOW - waited, must_end_by=must_end_by)
    assert not_found(p, now=NOW, batch_status=status, lane=LANE) == step


@pytest.mark.parametrize(("next_poll_s", "progressed", "retry_after", "must_end_by", "after"), [
    (1, False, None, NOW + 50, 2),  # backs off by poll_factor
    (4, False, None, NOW + 50, 8),
    (8, False, None, NOW + 50, 8),  # up to poll_max_s
    (8, True, None, NOW + 50, 1),  # progress: from poll_min_s again
    (0.1, False, None, NOW + 50, 1),  # never under poll_min_s
    (8, False, None, NOW + 3, 3),  # never past must_end_by: lateness is seen on time
    (1, False, 30, NOW + 50, 30),  # Retry-After honoured
])
def test_polls_back_off_and_reset_on_progress(next_poll_s: float, progressed: bool, retry_after: float | None,
                                              must_end_by: float, after: float) -> None:
    p = P("created", next_poll_s=next_poll_s, must_end_by=must_end_by)
    assert poll_after(p, LANE, now=NOW, progressed=progressed, retry_after=retry_after) == after
