"""What `submit` and `run` say about each configured lane: whether the batch's lines go there, and why
not when they do not. Pure (from an Estimate of the file at the batch's deadline).

A lane (an official Batch API) takes a line only when the deadline leaves it its window plus margin
and it ranks first for the line (routing.lane_for); otherwise the line goes to a synchronous provider
without a word, so these notes say it on the command line and in `--json`:

    lane openai-batch: 120 lines go there; they may wait up to 24h, for 67 % of the synchronous price
    lane openai-batch not used: deadline leaves 24h, the lane needs 25h (window 24h + margin 1h); ...
    lane openai-batch not used: disabled after HTTP 401 (check its key; `batchrelay providers check` ...)

A lane the shared health has closed (disabled after a 401/403, benched after a 402, cooling after its
parcels could not be sent) takes no line whatever the deadline: `health` (lane -> its
store/health.describe state) says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batchrelay.config.settings import ProviderConfig
from batchrelay.money.estimate import Estimate
from batchrelay.money.lane_cost import span
from batchrelay.money.pricing import usd_str
from batchrelay.providers.routing import lane_ok


@dataclass(frozen=True, slots=True)
class LaneNote:
    lane: str
    used: bool  # some lines go there
    lines: int  # how many (the lines it ranks first for, when used)
    needs_s: float  # its window plus margin
    leaves_s: float | None  # the deadline minus now; None: no deadline
    reason: str | None  # why not used: "no_deadline", "deadline", "ranked_behind", or its health:
    # "disabled", "benched", "cooling", "breaker_open"
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.lane, "used": self.used, "lines": self.lines, "needs_s": self.needs_s,
                "deadline_leaves_s": self.leaves_s, "reason": self.reason, "text": self.text}


def _needs(lane: ProviderConfig) -> tuple[float, float, str]:
    assert lane.lane is not None, f"{lane.name} is not a lane"
    w, m = lane.lane.window_s, lane.lane.margin_s
    return w, w + m, f"{span(w + m)} (window {span(w)} + margin {span(m)})"


def _price_part(est: Estimate, lane: str) -> str:
    """`, for 67 % of the synchronous price ($0.0012 instead of $0.0018)`, or "" when a price is unknown."""
    keys = {(r.model, r.dialect) for r in est.rows if r.provider == lane and r.lane and r.first_choice}
    there = [r.expected for r in est.rows if r.provider == lane and (r.model, r.dialect) in keys]
    instead = [r.expected for r in est.rows if r.first_sync and (r.model, r.dialect) in keys]
    if not there or not instead or any(v is None for v in (*there, *instead)):
        return ""
    a = sum((v for v in there if v is not None), Decimal(0))
    b = sum((v for v in instead if v is not None), Decimal(0))
    if b <= 0:
        return ""
    return f", for {a / b * 100:.0f} % of the synchronous price (${usd_str(a)} instead of ${usd_str(b)})"


CLOSED = {"disabled": "check its key; `batchrelay providers check` re-enables it",
          "benched": "check its credit; `batchrelay providers check` takes it off the bench",
          "cooling": "it could not be reached; new lines go to it again when this ends",
          "breaker open": "it could not be reached; new lines go to it again when this ends"}


def health_text(name: str, h: Mapping[str, object]) -> str | None:
    """Why a lane the shared health has closed takes no line (None: it is open). Pure."""
    state = str(h.get("state"))
    if state not in CLOSED:
        return None
    last = str(h.get("last") or "")
    code = re.search(r"HTTP (\d{3})", last)
    after = f" after HTTP {code.group(1)}" if code else (f" after {last[:120]}" if last else "")
    left = h.get("for_s")
    until = f" for {span(float(left), up=True)}" if isinstance(left, int | float) and left > 0 else ""
    return f"lane {name} not used: {state}{until}{after} ({CLOSED[state]})"


def lane_notes(est: Estimate, lanes: Sequence[ProviderConfig], now: float, hint: str,
               ahead_s: float = 0.0, health: Mapping[str, Mapping[str, object]] | None = None) -> list[LaneNote]:
    """One note per lane in `lanes` (the configured ones the batch may use) for the batch `est`
    priced at its deadline (`est.deadline`), its lines claimed from `now` (a deferred batch: its
    start, `ahead_s` from the real now). `hint` names the options that would let the lane in:
    `{needs}` is its window + margin (from the start), `{until}` that counted from the real now,
    e.g. "--deadline +{until} or later (or --completion-window {needs})"."""
    notes = []
    for lane in lanes:
        window, needs, needs_text = _needs(lane)
        leaves = None if est.deadline is None else est.deadline - now
        v = est.lanes.get(lane.name)
        fix = hint.format(needs=span(needs, up=True), until=span(needs + max(ahead_s, 0.0), up=True))
        h = (health or {}).get(lane.name) or {}
        if (closed := health_text(lane.name, h)) is not None:
            notes.append(LaneNote(lane.name, False, 0, needs, leaves, str(h["state"]).replace(" ", "_"), closed))
        elif v is not None and v.allowed:
            notes.append(LaneNote(lane.name, True, v.lines, needs, leaves, None,
                                  f"lane {lane.name}: {v.lines} lines go there; they may wait up to {span(window)}"
                                  f"{_price_part(est, lane.name)}"))
        elif lane.name in est.ranked and leaves is None:
            notes.append(LaneNote(lane.name, False, 0, needs, None, "no_deadline",
                                  f"lane {lane.name} not used: the batch has no deadline; the lane needs "
                                  f"{needs_text}: {fix} lets {est.ranked[lane.name]} lines go there"))
        elif lane.name in est.ranked and leaves is not None and not lane_ok(lane, est.deadline, now):
            left = span(leaves) if span(leaves) != span(needs) else span(leaves, down=True)
            notes.append(LaneNote(lane.name, False, 0, needs, leaves, "deadline",
                                  f"lane {lane.name} not used: deadline leaves {left}, the lane needs {needs_text}; "
                                  f"{fix} lets {est.ranked[lane.name]} lines go there"))
        else:
            notes.append(LaneNote(lane.name, False, 0, needs, leaves, "ranked_behind",
                                  f"lane {lane.name} not used: another provider ranks before it for every line "
                                  "(routing.strategy, priority, routes, --providers)"))
    return notes
