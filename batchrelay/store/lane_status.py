"""What the lanes hold, for people (`status`, `providers`, the progress bar): read-only.

store/lanes.py writes a parcel's record (`Keys.lane_parcel`: state, lane, upstream id, must_end_by,
...) and which parcel holds each line of a batch (`Keys.lane_held`); this module only reads them.
A line counts as the lane's while `lane_held` names its parcel: from its take until its answer is
written or it is given back to the synchronous providers. `must_end_by` is when, at the latest,
the parcel is cancelled upstream and what it has not answered goes to the synchronous providers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchrelay.store.lanes import LaneStore, ParcelView
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store


@dataclass(frozen=True)
class ParcelStatus:
    """A parcel as `status` shows it: its record, and how many of the batch's lines it holds now."""

    view: ParcelView
    lines: int  # held now: not answered and not given back yet

    def as_dict(self) -> dict[str, Any]:
        v = self.view
        return {"parcel": v.pid, "lane": v.lane, "state": v.state, "upstream_id": v.upstream_id,
                "upstream_status": v.upstream_status, "lines": self.lines, "taken": v.n, "collected": v.collected,
                "must_end_by": v.must_end_by or None}


@dataclass(frozen=True)
class BatchLanes:
    """The parcels of one batch (in the order they were opened)."""

    parcels: tuple[ParcelStatus, ...] = ()

    @property
    def lines(self) -> int:
        """Lines the lanes hold now."""
        return sum(p.lines for p in self.parcels)

    @property
    def answered_by(self) -> float | None:
        """When, at the latest, every line the lanes hold is answered upstream or handed back to the
        synchronous providers (the latest must_end_by of a parcel holding lines); None: none held."""
        ends = [p.view.must_end_by for p in self.parcels if p.lines and p.view.must_end_by]
        return max(ends) if ends else None

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "answered_by": self.answered_by,
                "parcels": [p.as_dict() for p in self.parcels]}


def timing(info: BatchInfo, lanes: BatchLanes, now: float) -> dict[str, Any]:
    """The batch's deadline and ETA knowing its lanes (pure): `eta_sync_s` is for the lines the
    synchronous providers work (pending, not held by a lane), at the batch's rate so far (None unless
    it is in progress); `eta_s`
    is that when no lane holds a line, else None: a lane's lines wait upstream for an answer that may
    come at any time until `lanes.answered_by`, and no rate foretells it."""
    rate = info.rate(now)
    # only a batch in progress is worked at its rate: a paused one waits for its `run` or `resume`, one
    # over its budget for `budget --max-cost`, a stopping one for its calls in flight and its lanes
    working = info.status == Status.IN_PROGRESS and rate > 0
    sync = max(0, info.pending - lanes.lines)
    eta_sync = round(sync / rate, 1) if working else None
    return {"deadline": info.expires_at, "eta_s": eta_sync if not lanes.lines else None, "eta_sync_s": eta_sync,
            "lanes": lanes.as_dict()}


def _counts(pids: list[bytes]) -> Counter[str]:
    return Counter(p.decode() for p in pids)


async def batch_lanes(store: Store, batch_id: str) -> BatchLanes:
    """The batch's parcels and the lines each holds now (nothing to read for a batch no lane took from)."""
    k, r = store.keys, store.redis
    n = int(await r.hget(k.meta(batch_id), "lane_parcels") or 0)  # type: ignore[misc]
    if not n:
        return BatchLanes()
    lanes = LaneStore(store)
    views = [await lanes.parcel(f"{batch_id}-p{i}") for i in range(1, n + 1)]  # a handful: max_lines each
    counts = _counts(await r.hvals(k.lane_held(batch_id)))  # type: ignore[misc]
    return BatchLanes(tuple(ParcelStatus(v, counts[v.pid]) for v in views if v is not None))


async def held_lines(store: Store, batch_id: str) -> int:
    """How many of the batch's lines the lanes hold now (one cheap read, for a progress bar's polls)."""
    return int(await store.redis.hlen(store.keys.lane_held(batch_id)))  # type: ignore[misc]


@dataclass(frozen=True)
class LaneLoad:
    """What one lane holds over every batch: its open parcels by state, and their lines."""

    parcels: Mapping[str, int]  # state -> open parcels in it
    lines: int

    def as_dict(self) -> dict[str, Any]:
        return {"open_parcels": dict(self.parcels), "lines": self.lines}


async def _open_views(store: Store) -> list[ParcelView]:
    """The parcels not collected yet, over every batch (a handful: one per lane and batch at a time)."""
    pids = [p.decode() for p in await store.redis.zrange(store.keys.lane_parcels, 0, -1)]
    lanes = LaneStore(store)
    return [v for v in [await lanes.parcel(pid) for pid in pids] if v is not None]


async def open_parcels(store: Store) -> dict[str, dict[str, int]]:
    """lane -> state -> its parcels not collected yet, over every batch (no line is read: a metrics scrape)."""
    out: dict[str, Counter[str]] = {}
    for v in await _open_views(store):
        out.setdefault(v.lane, Counter())[v.state] += 1
    return {lane: dict(c) for lane, c in out.items()}


async def lane_loads(store: Store) -> dict[str, LaneLoad]:
    """lane -> its open parcels (not collected yet) and the lines they hold, over every batch."""
    k, r = store.keys, store.redis
    views = await _open_views(store)
    if not views:
        return {}
    batches = sorted({v.batch for v in views})
    async with r.pipeline(transaction=False) as pipe:
        for b in batches:
            pipe.hvals(k.lane_held(b))
        held = _counts([p for vals in await pipe.execute() for p in vals])
    states: dict[str, Counter[str]] = {}
    lines: Counter[str] = Counter()
    for v in views:
        states.setdefault(v.lane, Counter())[v.state] += 1
        lines[v.lane] += held[v.pid]
    return {lane: LaneLoad(dict(c), lines[lane]) for lane, c in states.items()}
