"""What the dashboard's JSON endpoints answer, shaped from what store/dashboard.py read. Pure and
table-tested: no IO here. Money goes out as decimal strings (usd_str), never floats, except the
charts' points, which are only drawn."""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from batchrelay.money.ledger import SEP
from batchrelay.money.pricing import usd, usd_str
from batchrelay.store.dashboard import BatchRow

CHART_MINUTES = 120  # a chart shows at most the last two hours the batch ran
SAMPLES_PER_CLASS = 5
REASON_CHARS = 300


def batch_row(row: BatchRow, now: float) -> dict[str, Any]:
    info = row.info
    d = info.as_dict(now)
    d["cost_usd"] = usd_str(usd(row.cost_pico))
    d["age_s"] = round(now - info.created_at, 1)
    d["finished"] = info.finished
    return d


def series(buckets: Mapping[int, Mapping[str, int]], now: float, running: bool) -> list[dict[str, Any]]:
    """One point a minute from the batch's first bucket to its last (to now while it runs), gaps as
    zeros, at most the last CHART_MINUTES: lines that ended and their cost (USD) that minute."""
    if not buckets:
        return []
    last = max(max(buckets), int(now // 60)) if running else max(buckets)
    first = max(min(buckets), last - CHART_MINUTES + 1)
    out = []
    for m in range(first, last + 1):
        b = buckets.get(m, {})
        out.append({"t": m * 60, "lines": sum(n for k, n in b.items() if k != "cost"),
                    "cost_usd": float(usd(b.get("cost", 0)))})
    return out


def reason_of(record: Mapping[str, Any]) -> str:
    """An error record's message, in either API's shape."""
    err = record.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:REASON_CHARS]
    result = record.get("result")
    if isinstance(result, dict):
        inner = (result.get("error") or {}).get("error") or {}
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:REASON_CHARS]
    return ""


def error_classes(sample: Iterable[tuple[int, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The sampled error records by class (`batchrelay.error`: invalid_input, provider_error, ...),
    most frequent first, each with up to SAMPLES_PER_CLASS lines and their reasons."""
    by: dict[str, dict[str, Any]] = {}
    for line, rec in sample:
        meta = rec.get("batchrelay") or {}
        kind = str(meta.get("error") or "error")
        c = by.setdefault(kind, {"class": kind, "count": 0, "samples": []})
        c["count"] += 1
        if len(c["samples"]) < SAMPLES_PER_CLASS:
            reason = reason_of(rec)
            said = f"line {line}: "  # invalid input's reasons name their line already
            c["samples"].append({"line": line, "reason": reason[len(said):] if reason.startswith(said) else reason})
    return sorted(by.values(), key=lambda c: (-c["count"], c["class"]))


def provider_totals(counts: Mapping[str, int], ledger: Mapping[bytes, bytes]
                    ) -> dict[str, dict[str, int]]:
    """Per provider: calls (all outcomes), each outcome's calls, and tokens (input + output), over
    the fleet's life."""
    out: dict[str, dict[str, int]] = {}
    for k, n in counts.items():
        parts = k.split(SEP)
        if parts[0] == "calls" and len(parts) == 4:
            t = out.setdefault(parts[1], {})
            t["calls"] = t.get("calls", 0) + n
            t[parts[3]] = t.get(parts[3], 0) + n
    for raw, v in ledger.items():
        provider, _model, metric = raw.decode().split(SEP)
        if metric in ("input", "output"):
            t = out.setdefault(provider, {})
            t["tokens"] = t.get("tokens", 0) + int(v)
    return out


def spend_today(counts: Mapping[str, int], now: float) -> dict[str, str]:
    """USD billed per provider this UTC day (the `spend SEP day SEP provider` counts)."""
    day = str(int(now // 86400))
    out: dict[str, str] = {}
    for k, n in counts.items():
        parts = k.split(SEP)
        if parts[0] == "spend" and len(parts) == 3 and parts[1] == day:
            out[parts[2]] = usd_str(usd(n)) or "0"
    return out


def attempts_by_provider(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """From sampled result records: each provider's median and 95th-percentile call latency and its
    three latest failed attempts (when, status, error)."""
    lat: dict[str, list[float]] = {}
    errs: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        for a in (rec.get("batchrelay") or {}).get("attempts") or []:
            p = a.get("provider")
            if not isinstance(p, str) or p == "…":
                continue
            if a.get("status") is not None:
                lat.setdefault(p, []).append(float(a.get("latency_ms") or 0))
            if a.get("action") or (a.get("status") not in (200, None)) or a.get("error"):
                errs.setdefault(p, []).append({"at": a.get("started_at") or 0, "status": a.get("status"),
                                               "error": str(a.get("error") or a.get("action") or "")[:REASON_CHARS]})
    out: dict[str, dict[str, Any]] = {}
    for p in set(lat) | set(errs):
        xs = sorted(lat.get(p, []))
        d: dict[str, Any] = {"latency_samples": len(xs)}
        if xs:
            d["latency_p50_ms"] = round(statistics.median(xs), 1)
            d["latency_p95_ms"] = round(xs[min(len(xs) - 1, int(len(xs) * 0.95))], 1)
        d["last_errors"] = sorted(errs.get(p, []), key=lambda e: -float(e["at"]))[:3]
        out[p] = d
    return out


class Pace:
    """Calls and tokens a minute per provider, from the fleet's running totals seen at each poll
    (counted when each line's result is written). Kept in this process; the first polls after a
    start have no pace yet."""

    WINDOW_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()

    def observe(self, totals: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
        now = self.clock()
        snap = {p: (t.get("calls", 0), t.get("tokens", 0)) for p, t in totals.items()}
        self._seen.append((now, snap))
        while len(self._seen) > 2 and now - self._seen[1][0] >= self.WINDOW_S:
            self._seen.popleft()
        then, old = self._seen[0]
        span = now - then
        if span < 1.0:
            return {}
        out = {}
        for p, (calls, tokens) in snap.items():
            c0, t0 = old.get(p, (0, 0))
            out[p] = {"calls_per_min": round((calls - c0) * 60 / span, 1),
                      "tokens_per_min": round((tokens - t0) * 60 / span, 1)}
        return out
