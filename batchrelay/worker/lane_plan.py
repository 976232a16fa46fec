"""What to do next with a lane's parcel: the state machine of issue #18, pure and table-tested.

A parcel (store/lanes.py) is the lines of one batchrelay batch gathered for one upstream batch. Its
state is kept in Redis and moved on by the engine (lanes.py), one step at a time, by whichever worker
holds its lease; `next_step` decides the step from the parcel as it is stored, so a worker that picks a
parcel up after another died mid-way (its lease lapsed) goes on from where the state says:

    gathering -Seal-> sealed -Upload-> uploaded -(mark creating, then Create)-> creating -record-> created
    created -Poll...-> ended -Collect-> collected (Done)
    created -late, or the batch is stopping: Cancel-> cancelling -Poll...-> ended
    creating: the create may have reached the upstream before a crash: Recover (look for it) first
    before created, late or stopping, or `failed` (the upstream refused it): Release (lines back)

Late means past `must_end_by` (the batch's deadline less the lane's margin): the lines still have the
margin to be answered synchronously. A parcel not yet sent upstream is still sent until then: an
upstream batch that would overrun is cancelled at `must_end_by` with what it answered kept, so the
margin is never spent on it. A cancel the upstream does not finish within `cancel_wait_s` of
`must_end_by` (and, for lines that go on to the synchronous providers, by half-way through the
margin: the other half is theirs) gives the lines back anyway (they might then be paid twice, which
the engine logs and counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from batchrelay.config.lanes import LaneConfig
from batchrelay.store.status import Status

# a batch in these (or gone: "") takes nothing more: its lanes cancel upstream and send nothing new
STOPPING = frozenset({Status.CANCELLING, Status.CANCELLED, Status.EXPIRING, Status.EXPIRED, Status.FAILED, ""})
NOT_SENT = ("gathering", "sealed", "uploaded")


class Parcel(Protocol):
    """The fields of store/lanes.py's ParcelView the plan reads."""

    @property
    def state(self) -> str: ...
    @property
    def deadline(self) -> float: ...
    @property
    def must_end_by(self) -> float: ...
    @property
    def first_at(self) -> float: ...
    @property
    def creating_at(self) -> float | None: ...
    @property
    def next_poll_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Seal:
    """Close the gathering parcel: no more lines join it."""


@dataclass(frozen=True, slots=True)
class Upload:
    """Build the request file; OpenAI: upload it (Anthropic has no upload: the file goes with the create)."""


@dataclass(frozen=True, slots=True)
class Create:
    """Mark the parcel `creating`, then create the upstream batch and record its id."""


@dataclass(frozen=True, slots=True)
class Recover:
    """A create was under way when its worker stopped: find the upstream batch it may have made."""


@dataclass(frozen=True, slots=True)
class Poll:
    """Ask the upstream how its batch is doing; unchanged, ask again in `after_s`."""

    after_s: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the upstream batch (late, or the batchrelay batch is stopping); what it answered is kept."""


@dataclass(frozen=True, slots=True)
class Collect:
    """The upstream batch has ended: write its answers, give the rest back."""


@dataclass(frozen=True, slots=True)
class Release:
    """Give the parcel's lines back: to the synchronous providers (`requeue`), or, the batch stopping,
    to its cancel or expiry."""

    requeue: bool
    why: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before `after_s` (a parcel still gathering, a create that may still land)."""

    after_s: float


@dataclass(frozen=True, slots=True)
class Done:
    """Collected: nothing more to do."""


Step = Seal | Upload | Create | Recover | Poll | Cancel | Collect | Release | Wait | Done


def stopping(batch_status: str) -> bool:
    return batch_status in STOPPING


def next_step(p: Parcel, *, now: float, batch_status: str, lane: LaneConfig) -> Step:
    """The step the parcel `p` needs now, its batch having `batch_status` ("" if it is gone)."""
    stop, late = stopping(batch_status), now >= p.must_end_by
    # a paused batch (its run interrupted): nothing new goes upstream for it, and lines given back wait,
    # with no job, for its resume (which enqueues them); an upstream batch already made goes on as ever
    held_back = stop or batch_status == Status.PAUSED
    match p.state:
        case "collected":
            return Done()
        case "ended":
            return Collect()
        case "failed":
            return Release(not held_back, "the upstream refused the batch")
        case "creating":
            return Recover()
        case "created":
            return Cancel() if stop or late else Poll(poll_after(p, lane, now=now, progressed=False))
        case "cancelling":
            if now >= cancel_given_up_at(p, lane, stop=stop):
                return Release(not held_back, "the upstream did not end its cancelled batch in time")
            return Poll(lane.poll_min_s)
        case state if state in NOT_SENT:
            if stop:
                return Release(False, "the batch is stopping")
            if held_back:
                return Release(False, "the batch is paused: its lines wait for its resume")
            if late:
                return Release(True, "too late for the lane")
            if state == "gathering":
                due = p.first_at + lane.gather_s
                return Seal() if now >= due else Wait(due - now)
            return Upload() if state == "sealed" else Create()
    raise ValueError(f"unknown parcel state {p.state!r}")


def cancel_given_up_at(p: Parcel, lane: LaneConfig, *, stop: bool) -> float:
    """When a cancel the upstream has not finished is given up (its lines given back): `cancel_wait_s`
    after `must_end_by` (a cancel's sending time, when it came earlier); lines that go on to the
    synchronous providers (the batch not stopping) get the second half of the margin whatever
    `cancel_wait_s` says: a wait that ran on to the deadline would leave them no time at all."""
    at = p.must_end_by + lane.cancel_wait_s
    return at if stop else min(at, p.deadline - lane.margin_s / 2)


def not_found(p: Parcel, *, now: float, batch_status: str, lane: LaneConfig) -> Step:
    """After a Recover found no upstream batch of the parcel: wait while its create may still land
    (`create_wait_s` after it started), then create it again, or give the lines back when the
    parcel is late or its batch stopping."""
    waited = now - (p.creating_at or now)
    if waited < lane.create_wait_s:
        return Wait(min(lane.create_wait_s - waited, lane.poll_min_s))
    if stopping(batch_status):
        return Release(False, "the batch is stopping")
    if now >= p.must_end_by:
        return Release(True, "too late for the lane")
    return Create()


def poll_after(p: Parcel, lane: LaneConfig, *, now: float, progressed: bool, retry_after: float | None = None
               ) -> float:
    """When to poll again: back off by `poll_factor` up to `poll_max_s`, from `poll_min_s` again after
    progress; never later than `must_end_by` (lateness is seen on time); a Retry-After is honoured."""
    after = lane.poll_min_s if progressed else min(lane.poll_max_s, max(lane.poll_min_s,
                                                                          p.next_poll_s * lane.poll_factor))
    if now < p.must_end_by:
        after = min(after, max(p.must_end_by - now, 0.05))
    return max(after, retry_after or 0.0)
