"""What `submit` and `run` say about lanes and deadlines, on stderr and in `--json`.

With a lane configured (an official Batch API), each lane gets one line saying whether the batch's
lines go there and, when they do not, why (money/lane_notes.py): a lane skipped without a word
looks like a lane that does not work. A `run` (or `submit --resume`) that finds the batch of the
same input and options keeps that batch's deadline (the fingerprint does not cover it: `+26h` is
another instant at each run); `deadline_note` says so when the deadline given now is another. On
such a resume, a lane that already holds lines of the batch says so (`held_notes`) instead of
announcing again that they go there: they are upstream already.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from batchrelay.cli.text import counted
from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import StoreError
from batchrelay.money.estimate import estimate_file
from batchrelay.money.lane_notes import LaneNote, lane_notes
from batchrelay.spec import BatchSpec
from batchrelay.store.lane_status import BatchLanes

SAME_INSTANT_S = 60.0  # a relative --deadline given again names a slightly later instant: the same one
RUN_HINT = "--deadline +{until} or later"
KEPT_HINT = "--new with --deadline +{until} or later"
SUBMIT_KEPT_HINT = "a new batch (without --resume) with --deadline +{until} or later"


def submit_hint(spec: BatchSpec) -> str:
    """What would let a lane in on `submit`: both limits must leave it its window + margin. Pure."""
    deadline, window = "--deadline +{until} or later", "--completion-window {needs} or more"
    if spec.deadline is not None and spec.completion_window is not None:
        return f"{deadline} with {window}"
    if spec.deadline is None and spec.completion_window is None:
        return f"{deadline} (or {window})"
    return deadline if spec.deadline is not None else window


def when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def lanes_of(settings: Settings, spec: BatchSpec) -> list[ProviderConfig]:
    """The configured lanes a batch of `spec` may use (its `providers`, if it names some)."""
    return [p for p in settings.ordered_providers()
            if p.is_lane and (spec.providers is None or p.name in spec.providers)]


def lane_names(settings: Settings) -> list[str]:
    """The configured lanes' names (for the run fingerprint: store/resume.py)."""
    return [p.name for p in settings.providers if p.is_lane]


def same_instant(a: float | None, b: float | None) -> bool:
    return (a is None) == (b is None) and (a is None or b is None or abs(a - b) <= SAME_INSTANT_S)


def deadline_note(batch_id: str, kept: float | None, given: float | None, done: bool) -> str | None:
    """One line when the batch found (`kept`: its deadline) is not given the deadline given now
    (`given`): it keeps its own. None when they are the same instant (to the minute). Pure."""
    if same_instant(kept, given):
        return None
    has = ("ran with" if done else "keeps") + (f" its deadline {when(kept)}" if kept is not None else " no deadline")
    now = (f"this run's deadline {when(given)} is not applied (--new starts a batch with it)" if given is not None
           else "this run gives none (--new starts a batch without one)")
    return f"note: batch {batch_id} (same input and options) {has}; {now}"


def held_notes(notes: list[LaneNote], held: BatchLanes) -> list[LaneNote]:
    """The notes of a resumed batch: a lane whose parcels hold some of its lines says how many are
    there already, in what state, and when at the latest they are answered (or handed back to the
    synchronous providers: the parcels' must_end_by); the others' notes stay. Pure."""
    out = []
    for note in notes:
        parcels = [p for p in held.parcels if p.view.lane == note.lane and p.lines]
        if not parcels:
            out.append(note)
            continue
        lines = sum(p.lines for p in parcels)
        states = ", ".join(sorted({p.view.state for p in parcels}))
        ends = [p.view.must_end_by for p in parcels if p.view.must_end_by]
        by = f", answered by {when(max(ends))} at the latest" if ends else ""
        word = "parcel" if len(parcels) == 1 else "parcels"
        out.append(replace(note, used=True, lines=lines, reason=None,
                           text=f"lane {note.lane}: {counted(lines, 'line')} already there ({word} {states}{by})"))
    return out


def lane_health(settings: Settings, names: list[str]) -> dict[str, dict[str, Any]]:
    """The lanes' shared health (a disabled lane takes no line); {} when Redis cannot be reached.
    Blocking: runs its own event loop (called from a command, or from a thread)."""
    from batchrelay.cli.kit import open_store
    from batchrelay.store.health import Health

    async def read() -> dict[str, dict[str, Any]]:
        async with open_store(settings) as store:
            return await Health(store, settings.health).snapshot(names)

    try:
        return asyncio.run(read())
    except (StoreError, RedisError, OSError):
        return {}


def lane_report(settings: Settings, file: Path, spec: BatchSpec, deadline: float | None, *, hint: str,
                start: float | None = None) -> list[LaneNote]:
    """The lanes' notes for `file` submitted with `spec`, due at `deadline`, its lines claimed from
    now or from its `start` if that is later (a deferred batch), and the lanes' shared health. Reads
    the file and Redis (blocking); nothing when no lane may serve it."""
    lanes = lanes_of(settings, spec)
    if not lanes:
        return []
    health = lane_health(settings, [p.name for p in lanes])
    real = time.time()
    now = max(real, start or real)
    est = estimate_file(file, settings, default_dialect=spec.endpoint, allow=spec.providers, deadline=deadline,
                        now=now)
    return lane_notes(est, lanes, now, hint, ahead_s=now - real, health=health)
