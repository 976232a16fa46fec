"""A batch's spending as people see it: its ledger total beside its budget (`status`, `cost`, `run`)."""

from __future__ import annotations

from typing import Any

from .budget import Budget, BudgetInfo
from .ledger import Row, rows, total
from .pricing import usd_str
from .store import Store


async def ledger_of(store: Store, batch_id: str) -> tuple[list[Row], Row, BudgetInfo]:
    await store.info(batch_id)  # BatchNotFound for an unknown id
    rs = rows(await store.ledger(batch_id))
    return rs, total(rs), await Budget(store.redis, store.keys).info(batch_id)


def cost_summary(t: Row, budget: BudgetInfo) -> dict[str, Any]:
    """The batch's running cost, for `status` and `cost`."""
    d: dict[str, Any] = {"usd": usd_str(t.cost), "requests": t["requests"], "unpriced_calls": t["unpriced"],
                         "discrepancies": t["discrepancies"]}
    if budget.max_usd is not None:
        d["budget"] = budget.as_dict()
    return d


def cost_line(t: Row, budget: BudgetInfo) -> str:
    text = f"cost ${usd_str(t.cost)} for {t['requests']} billed calls"
    if t["unpriced"]:
        text += f", {t['unpriced']} more of unknown price"
    if budget.max_usd is not None:
        text += (f"; budget ${usd_str(budget.max_usd)}: ${usd_str(budget.spent_usd)} spent, "
                 f"${usd_str(budget.reserved_usd)} reserved")
    return text
