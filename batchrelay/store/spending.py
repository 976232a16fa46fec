"""A batch's spending as people see it: its ledger total beside its budget (`status`, `cost`, `run`)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from batchrelay.money.budget import BudgetInfo
from batchrelay.money.ledger import Row, rows, total
from batchrelay.money.pricing import usd, usd_str
from batchrelay.store.budget import Budget
from batchrelay.store.lane_status import batch_lanes, timing
from batchrelay.store.store import BatchInfo, Store


async def ledger_of(store: Store, batch_id: str) -> tuple[list[Row], Row, BudgetInfo]:
    """The batch's ledger rows, their total and its budget (an unknown id reads as empty: callers
    that may get one check it with `store.info` first)."""
    rs = rows(await store.ledger(batch_id))
    return rs, total(rs), await Budget(store).info(batch_id)


async def status_object(store: Store, info: BatchInfo) -> dict[str, Any]:
    """The batch as `status --json`, the Python API and webhooks show it: its info, its deadline, ETA
    and lane lines (store/lane_status.py) and running cost."""
    _rows, spent, budget = await ledger_of(store, info.id)
    now = time.time()
    lanes = timing(info, await batch_lanes(store, info.id), now)  # deadline, ETA and what the lanes hold
    return {**info.as_dict(now), **lanes, "cost": cost_summary(spent, budget)}


def cost_summary(t: Row, budget: BudgetInfo) -> dict[str, Any]:
    """The batch's running cost, for `status` and `cost`."""
    d: dict[str, Any] = {"usd": usd_str(t.cost), "requests": t["requests"], "unpriced_calls": t["unpriced"],
                         "discrepancies": t["discrepancies"], "cache_hits": t["cache_hits"],
                         "saved_usd": usd_str(usd(t["saved"]))}
    if budget.max_usd is not None:
        d["budget"] = budget.as_dict()
    return d


def cost_line(summary: dict[str, Any]) -> str:
    """One line of text for a `cost_summary`."""
    text = f"cost ${summary['usd']} for {summary['requests']} billed calls"
    if summary["unpriced_calls"]:
        text += f", {summary['unpriced_calls']} more of unknown price"
    if summary.get("cache_hits"):
        text += f"; {summary['cache_hits']} lines answered from the cache (saved ${summary['saved_usd']})"
    if b := summary.get("budget"):
        text += (f"; budget ${plain_usd(b['max_usd'])}: ${plain_usd(b['spent_usd'])} spent, "
                 f"${plain_usd(b['reserved_usd'])} reserved")
    return text


def plain_usd(amount: str | None) -> str | None:
    """A USD decimal string as `usd_str` writes it (no trailing zeros)."""
    return None if amount is None else usd_str(Decimal(amount))


HISTORY_BATCHES = 20


async def output_history(store: Store, batches: int = HISTORY_BATCHES) -> dict[tuple[str, str], float]:
    """Output tokens per billed call, per provider and model, over the last `batches` finished
    batches' ledgers: what the estimate expects when it has seen the model answer before."""
    totals: dict[tuple[str, str], list[int]] = {}
    for info in await store.list_batches(limit=200):
        if not info.finished:
            continue
        for row in rows(await store.ledger(info.id)):
            t = totals.setdefault((row.provider, row.model), [0, 0])
            t[0] += row["output"]
            t[1] += row["requests"]
        batches -= 1
        if batches <= 0:
            break
    return {k: out / calls for k, (out, calls) in totals.items() if calls}
