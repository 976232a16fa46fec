"""Whether a batch's deadline lets its lines go to a lane, said the way `estimate` shows it. Pure.

A lane (an official Batch API) costs less (its price: official x `price_multiplier`, 0.5 by
default) but answers up to its window late, so a line may go there only when its batch's deadline
leaves the window plus the lane's margin (routing.lane_ok). The verdict carries the numbers, so a
user sees why: "deadline leaves 30h; lane X needs 25h (window 24h + margin 1h): allowed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from batchrelay.config.settings import ProviderConfig
from batchrelay.providers.routing import lane_ok


def span(seconds: float, down: bool = False, up: bool = False) -> str:
    """A duration as people read it: `25h`, `1.5h`, `90m`, `45s` (a negative one with a minus sign).
    `down`: rounded down, so a time left just short of what a lane needs never reads as enough; `up`:
    rounded up, so a deadline it suggests is enough."""
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    unit, size = ("h", 3600) if s >= 3600 else ("m", 60) if s >= 60 else ("s", 1)
    tenths = s / size * (1 if unit == "s" else 10)
    n = (math.floor(tenths + 1e-9) if down else math.ceil(tenths - 1e-9) if up else round(tenths)) / (
        1 if unit == "s" else 10)
    if unit != "h" and n * size >= (3600 if unit == "m" else 60):  # 59.97m rounds to 60m: read as 1h
        return span(math.copysign(n * size, seconds))
    return f"{sign}{n:g}{unit}"


@dataclass(slots=True)
class LaneVerdict:
    """What the deadline allows for one lane, and how many lines would go there if it did."""

    lane: str
    window_s: float
    margin_s: float
    leaves_s: float | None  # the deadline minus now; None: the batch has no deadline
    allowed: bool
    lines: int = 0  # the lines the lane ranks first for (they go there when `allowed`)

    @property
    def needs_s(self) -> float:
        return self.window_s + self.margin_s

    def text(self) -> str:
        needs = (f"lane {self.lane} needs {span(self.needs_s)} (window {span(self.window_s)} + "
                 f"margin {span(self.margin_s)})")
        if self.leaves_s is None:
            return (f"no deadline; {needs}: not allowed; give --deadline, or a --completion-window of at least "
                    f"{span(self.needs_s)}")
        verdict = "allowed" if self.allowed else "not allowed: the lines go to synchronous providers"
        leaves = span(self.leaves_s)
        if not self.allowed and leaves == span(self.needs_s):  # just short: it must not read as enough
            leaves = span(self.leaves_s, down=True)
        return f"deadline leaves {leaves}; {needs}: {verdict}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.lane, "lines": self.lines, "allowed": self.allowed, "needs_s": self.needs_s,
                "window_s": self.window_s, "margin_s": self.margin_s, "deadline_leaves_s": self.leaves_s,
                "text": self.text()}


def verdict(lane: ProviderConfig, deadline: float | None, now: float) -> LaneVerdict:
    """`lane`'s verdict for a batch due at `deadline` (unix time; None: no deadline), seen at `now`."""
    assert lane.lane is not None, f"{lane.name} is not a lane"
    return LaneVerdict(lane.name, lane.lane.window_s, lane.lane.margin_s,
                       None if deadline is None else deadline - now, lane_ok(lane, deadline, now))
