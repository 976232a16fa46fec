"""What `status` and `providers` say about lanes (official Batch APIs as providers). Pure.

A lane's lines wait upstream for an answer that may come at any time until their parcel's
`must_end_by` (its batch's deadline minus the lane's margin): then the upstream batch is cancelled
and what it has not answered goes to the synchronous providers. So `status` gives no ETA from the
rate while a lane holds lines; it says how many lines each lane holds and by when, at the latest,
they are answered upstream or handed back. A lane holding lines is `waiting upstream`, one holding
none `idle`, never `untried` (a lane is never called line by line, so its health has no successful
call to go by; benched, disabled and cooling still show).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from batchrelay.cli.text import counted
from batchrelay.config.lanes import BATCH_KINDS, lane_state
from batchrelay.money.lane_cost import span

NOT_SENT = {"gathering": "not sent yet", "sealed": "not uploaded yet", "uploaded": "upstream batch not created yet",
            "creating": "upstream batch being created"}


def when(t: float) -> str:
    """A unix time as `2026-12-07T17:00:00Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _from_now(t: float, now: float) -> str:
    return f"in {span(t - now)}" if t >= now else f"{span(now - t)} ago"


def deadline_line(st: Mapping[str, Any], now: float) -> str | None:
    """`deadline 2026-12-07T18:00:00Z (in 26h)`: when the batch's unanswered lines expire; None: it has none."""
    t = st.get("deadline")
    return None if t is None else f"deadline {when(t)} ({_from_now(t, now)})"


def rate_line(st: Mapping[str, Any]) -> str:
    """The rate, and the ETA of what the synchronous providers work; with lane lines, no batch ETA."""
    text = f"{st['rate_lines_per_s']:.1f} lines/s"
    lanes = st.get("lanes") or {}
    if not lanes.get("lines"):
        return text + (f", ETA {st['eta_s']:.0f}s" if st["eta_s"] is not None else "")
    sync = max(0, st["counts"]["pending"] - lanes["lines"])
    if sync and st.get("eta_sync_s") is not None:
        return text + f", ETA {st['eta_sync_s']:.0f}s for the {counted(sync, 'line')} on synchronous providers"
    return text


def _parcel_text(p: Mapping[str, Any]) -> str:
    if p.get("upstream_id"):
        upstream = f"upstream {p['upstream_id']}" + (f" ({p['upstream_status']})" if p.get("upstream_status") else "")
    else:
        upstream = NOT_SENT.get(p["state"], "no upstream batch")
    end = f", must end by {when(p['must_end_by'])}" if p.get("must_end_by") else ""
    return f"parcel {p['parcel']}: {p['state']}, {upstream}, {counted(p['lines'], 'line')}{end}"


# what becomes of the lines a lane gives back, by the batch's status (else: the synchronous providers)
AFTER_LANE = {"paused": "they wait for the batch's resume then", "cancelling": "they end with the batch then",
              "expiring": "they end with the batch then"}


def lane_lines(st: Mapping[str, Any], now: float) -> list[str]:
    """Per lane holding lines: how many and by when at the latest, then each of its parcels."""
    out = []
    for lane, parcels in _holding(st).items():
        n = sum(p["lines"] for p in parcels)
        latest = max((p["must_end_by"] for p in parcels if p.get("must_end_by")), default=None)
        # a paused batch's lines given back wait for its resume; a stopping one's end with it
        then = AFTER_LANE.get(str(st.get("status")), "they go to the synchronous providers then")
        by = (f": answered upstream by {when(latest)} ({_from_now(latest, now)}) at the latest, else {then}"
              ) if latest else ""
        out.append(f"{counted(n, 'line')} in lane {lane}{by}")
        out.extend(f"  {_parcel_text(p)}" for p in parcels)
    return out


def _holding(st: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for p in (st.get("lanes") or {}).get("parcels", []):
        if p["lines"]:
            out.setdefault(p["lane"], []).append(p)
    return out


def _states(parcels: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    return dict(Counter(p["state"] for p in parcels))


def with_lanes(health: Mapping[str, dict[str, Any]], kinds: Mapping[str, str],
               held: Mapping[str, tuple[int, Mapping[str, int]]]) -> dict[str, dict[str, Any]]:
    """Each provider's health with its `kind`; a lane holding lines (`held`: lane -> its lines and
    its parcels holding them by state) with `lane_lines` and `parcels`, and `waiting upstream`
    where its health state says nothing more; a lane holding none `idle` rather than `untried`."""
    out = {}
    for name, h in health.items():
        row = {**h, "kind": kinds.get(name, "chat")}
        holding = name in held and bool(held[name][0])
        if holding:
            row["lane_lines"], row["parcels"] = held[name][0], dict(held[name][1])
        if row["kind"] in BATCH_KINDS:
            row["state"] = lane_state(str(row.get("state")), holding)
        out[name] = row
    return out


def held_in_batch(st: Mapping[str, Any]) -> dict[str, tuple[int, dict[str, int]]]:
    """`with_lanes`'s `held` from a batch's status: lane -> its lines and parcels by state."""
    return {lane: (sum(p["lines"] for p in ps), _states(ps)) for lane, ps in _holding(st).items()}


def waiting_text(h: Mapping[str, Any]) -> str:
    """`40 lines; parcels: 1 created` for a lane holding lines, else ''."""
    if not h.get("lane_lines"):
        return ""
    states = ", ".join(f"{n} {s}" for s, n in sorted(h.get("parcels", {}).items()))
    return f"{counted(h['lane_lines'], 'line')}; parcels: {states}" if states else counted(h["lane_lines"], "line")


def lane_settings_text(name: str, kind: str, lane: Mapping[str, Any], multiplier: str) -> str:
    """One line of a lane's settings for `providers`."""
    return (f"lane {name} ({kind}): window {span(lane['window_s'])}, margin {span(lane['margin_s'])}, "
            f"gather {span(lane['gather_s'])}, up to {lane['max_lines']:,} lines / {lane['max_bytes']:,} bytes per "
            f"upstream batch, price official x{multiplier}")
