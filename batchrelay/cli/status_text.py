"""What `status` says of a batch nothing works at a rate now, in place of a rate and ETA (pure):
a paused one waits for its `run` or `resume`, one over its budget for `budget --max-cost`, one
being cancelled or expired for its calls in flight (their grace) and for the lanes holding its lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchrelay.cli.text import counted
from batchrelay.store.status import FINAL, Status


def waiting_line(st: Mapping[str, Any], grace_s: float, now: float) -> str | None:
    """What the batch waits for (`st`: `status --json`'s object); None for a batch in progress or
    ended (validating, scheduled: its rate line, or its start, says how it goes)."""
    status, bid, pending = st["status"], st["id"], st["counts"]["pending"]
    if status == Status.PAUSED:
        text = f"its `run` was interrupted: the same `run` command, or `batchrelay resume {bid}`, continues it"
        if st.get("deadline") is not None and st["deadline"] <= now:
            text += ("; it is past its deadline: the next sweep of a `batchrelay worker` (`--burst` too) expires "
                     "its lines")
        return text
    if status == Status.BUDGET_EXHAUSTED:
        return (f"stopped at its budget: its {counted(pending, 'line')} left wait, unsent, until "
                f"`batchrelay budget {bid} --max-cost USD` raises it")
    if status in FINAL:
        final = FINAL[Status(status)]
        held = (st.get("lanes") or {}).get("lines") or 0
        text = (f"being {final}: lines not in flight are {final} at once, calls in flight get up to {grace_s:g}s "
                f"to come back with their answer")
        if held:
            text += f", the {counted(held, 'line')} lanes hold wait until their lane lets go of them"
        return text + f" (a `batchrelay worker`'s sweep moves it on, as does `batchrelay cancel {bid}`)"
    return None
