"""The cost ledger: per batch × provider × model, what was billed, in integer pico-dollars.

A line's billed calls (its answer and any failed call the provider still billed) are listed in its
attempts. From those attempts come both the line's `batchrelay.cost` and its ledger increments,
which `Store.write_result` adds in the same Lua step as the result: a rerun of a finished line
writes nothing, so nothing is counted twice, and the ledger always equals the sum of the lines.
Pure functions; the Redis hash is `Keys.ledger(batch)`, fields `provider SEP model SEP metric`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchrelay.money.pricing import CallCost, pico, usd, usd_str
from batchrelay.wire.reply import Usage

SEP = "\x1f"  # cannot occur in a provider or model name read from TOML or JSON without escaping
METRICS = ("requests", "failed", "input", "cached", "cache_write", "output", "reasoning",
           "cost", "reported", "unpriced", "min_charge", "discrepancies", "cache_hits", "saved")
CACHE = "cache"  # the ledger's provider column for lines the response cache answered (no call, cost 0)


@dataclass(frozen=True, slots=True)
class Billed:
    """One call a provider billed: who, which model, the tokens, and what it cost."""

    provider: str
    model: str
    usage: Usage
    cost: CallCost
    failed: bool = False


def increments(calls: Iterable[Billed]) -> dict[str, int]:
    """The ledger fields (`provider SEP model SEP metric`) these calls add, zeros left out."""
    out: dict[str, int] = {}

    def add(c: Billed, metric: str, n: int) -> None:
        if n:
            k = f"{c.provider}{SEP}{c.model}{SEP}{metric}"
            out[k] = out.get(k, 0) + n

    for c in calls:
        u, cost = c.usage, c.cost
        add(c, "requests", 1)
        add(c, "failed", int(c.failed))
        add(c, "input", u.input_tokens)
        add(c, "cached", u.cached_input_tokens)
        add(c, "cache_write", u.cache_write_tokens)
        add(c, "output", u.output_tokens)
        add(c, "reasoning", u.reasoning_tokens)
        if cost.billed is None:
            add(c, "unpriced", 1)
        else:
            add(c, "cost", pico(cost.billed))
        if cost.reported is not None:
            add(c, "reported", pico(cost.reported))
        add(c, "min_charge", int(cost.min_charge_applied))
        add(c, "discrepancies", int(cost.discrepancy is not None))
    return out


def hit_increments(model: str, saved: Decimal | None) -> dict[str, int]:
    """The ledger fields a line answered from the response cache adds: a hit, and what its answer had
    cost when it was paid for (`saved`; None: unknown price). It bills nothing."""
    out = {f"{CACHE}{SEP}{model}{SEP}cache_hits": 1}
    if saved:
        out[f"{CACHE}{SEP}{model}{SEP}saved"] = pico(saved)
    return out


def line_cost(calls: Sequence[Billed]) -> dict[str, Any]:
    """A result line's `batchrelay.cost`. `usd` is None when a billed call had no known price."""
    tokens = Usage()
    billed = computed = reported = failed = Decimal(0)
    unpriced = any(c.cost.billed is None for c in calls)
    for c in calls:
        u = c.usage
        tokens = Usage(tokens.input_tokens + u.input_tokens, tokens.output_tokens + u.output_tokens,
                       tokens.cached_input_tokens + u.cached_input_tokens,
                       tokens.cache_write_tokens + u.cache_write_tokens, tokens.reasoning_tokens + u.reasoning_tokens)
        billed += c.cost.billed or 0
        computed += c.cost.computed or 0
        reported += c.cost.reported or 0
        if c.failed:
            failed += c.cost.billed or 0
    d: dict[str, Any] = {
        "usd": None if unpriced else usd_str(billed),
        "calls": len(calls),
        "tokens": tokens.as_dict(),
        "computed_usd": None if any(c.cost.computed is None for c in calls) else usd_str(computed),
        "reported_usd": usd_str(reported) if any(c.cost.reported is not None for c in calls) else None,
        "min_charge_applied": any(c.cost.min_charge_applied for c in calls),
    }
    if calls:
        d["source"] = calls[-1].cost.source
    if unpriced:
        d["price"] = "unknown"
    if any(c.failed for c in calls):
        d["failed_calls_usd"] = usd_str(failed)
    gaps = [g for c in calls if (g := c.cost.discrepancy) is not None]
    if gaps:
        d["discrepancy_pct"] = str(round(max(gaps) * 100, 2))
    return d


@dataclass(slots=True)
class Row:
    """The ledger of one provider and model in one batch."""

    provider: str
    model: str
    counts: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> int:
        return self.counts.get(metric, 0)

    @property
    def cost(self) -> Decimal:
        return usd(self["cost"])

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"provider": self.provider, "model": self.model}
        for m in METRICS:
            if m == "saved":
                d["saved_usd"] = usd_str(usd(self[m]))
            elif m in ("cost", "reported"):
                d[f"{m}_usd"] = usd_str(usd(self[m])) if m == "cost" or self[m] else None
            else:
                d[m] = self[m]
        return d


def rows(raw: Mapping[bytes, bytes]) -> list[Row]:
    """The ledger hash as rows, sorted by provider and model."""
    by: dict[tuple[str, str], Row] = {}
    for k, v in raw.items():
        provider, model, metric = k.decode().split(SEP)
        row = by.setdefault((provider, model), Row(provider, model))
        row.counts[metric] = int(v)
    return [by[k] for k in sorted(by)]


def total(rs: Sequence[Row]) -> Row:
    t = Row("*", "*")
    for r in rs:
        for m, n in r.counts.items():
            t.counts[m] = t.counts.get(m, 0) + n
    return t
