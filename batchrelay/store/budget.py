"""A batch's spending limit in Redis (money/budget.py says what it is and how it is used).

The budget hash holds `max`, `spent` and `reserved` (pico-dollars) and one `r:{token}` field per
reservation; the leases sorted set scores each token by when it lapses. Every change is one Lua
script (lua/budget_*.lua), so several workers share one limit exactly.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

from batchrelay.money.budget import BudgetInfo, Refusal
from batchrelay.money.pricing import pico, usd
from batchrelay.store.resume import drop_queue
from batchrelay.store.store import Store
from batchrelay.store.sweeper import requeue_pending


class Budget:
    """The spending limits of a store's batches; `lease_s`: how long a reservation lasts unsettled."""

    def __init__(self, store: Store, lease_s: float = 300.0) -> None:
        self.store, self.lease_ms = store, int(lease_s * 1000)

    async def try_reserve(self, batch_id: str, amount: Decimal, token: str | None = None,
                          lease_s: float | None = None) -> str | Refusal:
        """A reservation token, or why the limit cannot cover `amount`: WAIT (not beside the
        reservations in flight; try again once they settle) or EXHAUSTED (not even were they all
        settled at 0; the batch is then budget_exhausted). `token`: the caller's own (a lane line's
        `lane:{pid}:{line}`, which the lane's result write settles; a token already reserved keeps its
        reservation); `lease_s`: how long it lasts unsettled, instead of the store's lease (a lane
        line waits hours for its answer)."""
        token = token or uuid.uuid4().hex[:16]
        lease_ms = self.lease_ms if lease_s is None else int(lease_s * 1000)
        got = await self.store.scripts.reserve(self.store.keys, batch_id, token=token, amount=pico(amount),
                                               now_ms=int(time.time() * 1000), lease_ms=lease_ms)
        return token if got == 1 else Refusal.WAIT if got == 0 else Refusal.EXHAUSTED

    async def reserve(self, batch_id: str, amount: Decimal, token: str | None = None,
                      lease_s: float | None = None) -> str | None:
        """`try_reserve`'s token, or None when it was refused (either way)."""
        got = await self.try_reserve(batch_id, amount, token, lease_s)
        return got if isinstance(got, str) else None

    async def settle(self, batch_id: str, token: str, billed: Decimal) -> None:
        await self.store.scripts.settle(self.store.keys, batch_id, token=token, billed=pico(billed))

    async def raise_limit(self, batch_id: str, max_usd: Decimal) -> bool:
        """Set the limit; True when the batch was waiting on it and may now go on."""
        return await self.store.scripts.raise_limit(self.store.keys, batch_id, max_pico=pico(max_usd), now=time.time())

    async def raise_and_requeue(self, batch_id: str, max_usd: Decimal) -> int:
        """`raise_limit`; when the batch waited on it, its pending lines go back on the queue (how many
        chunks were requeued). A batch on the private queue of a `run` (which ended when the limit ran
        out) moves to the shared queue, and that queue is dropped: its jobs (lines deferred while their
        reservation waited for the calls in flight) have no worker left, and would keep their chunks
        from being requeued."""
        info = await self.store.info(batch_id)
        if not await self.raise_limit(batch_id, max_usd):
            return 0
        if ":run:" in info.queue:
            await drop_queue(self.store, info.queue)
            await self.store.set_queue(batch_id, self.store.keys.queue)
        return await requeue_pending(self.store, batch_id)

    async def unsent(self, batch_id: str, line: int) -> None:
        """A line that waited for the budget and has made no call yet: its first try is forgotten, so
        its deadline to find a provider starts when it is sent (not while it waits, maybe for a lane's
        hours), and a stop of its batch need not give it the grace of a call in flight."""
        await self.store.redis.hdel(self.store.keys.first_try(batch_id), str(line))  # type: ignore[misc]

    async def info(self, batch_id: str) -> BudgetInfo:
        s = self.store
        await s.scripts.drop_lapsed(s.keys, batch_id, int(time.time() * 1000))
        raw: list[bytes | None] = await s.redis.hmget(s.keys.budget(batch_id), ["max", "spent", "reserved"])  # type: ignore[misc]
        mx, spent, reserved = (int(v) if v is not None else None for v in raw)
        return BudgetInfo(None if mx is None else usd(mx), usd(spent or 0), usd(reserved or 0))
