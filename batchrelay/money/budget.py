"""A batch's spending limit (`--max-cost`), shared by every worker through Redis.

Before each call a reservation (the most that call may cost: its input estimate and max_tokens at
that provider's price, or the minimum charge) is taken; after it, the reservation is settled with
the billed cost. A reservation the limit cannot cover is refused and the batch becomes
`budget_exhausted`: its remaining lines wait, pending, until `raise_limit` (the `budget` command)
lets them go on. Spending therefore passes the limit by at most the calls already in flight.

Amounts are integer pico-dollars. A worker killed mid-call leaves its reservation behind; it lapses
after `lease_s`. The comparison runs in Lua numbers, exact up to 2^53 pico-dollars ($9,007).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import OverBudget as OverBudget  # what `reserve` raises, as the relay imports them
from batchrelay.errors import Unpriced as Unpriced
from batchrelay.money.pricing import pico, price_of, reservation, usd
from batchrelay.money.tokens import DEFAULT_MAX_OUTPUT, input_tokens, max_output_tokens
from batchrelay.store.keys import Keys

EXHAUSTED = "budget_exhausted"


def _drop_lapsed(now_arg: str) -> str:
    """Lua: give back every reservation whose lease ended before `now_arg` (KEYS[1] budget, KEYS[2] leases)."""
    return f"""
for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', {now_arg})) do
  local a = redis.call('HGET', KEYS[1], 'r:' .. t)
  if a and a ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. a) end
  redis.call('HDEL', KEYS[1], 'r:' .. t)
  redis.call('ZREM', KEYS[2], t)
end
"""


# KEYS: budget, leases, meta. ARGV: token, amount, now_ms, lease_ms
_RESERVE = _drop_lapsed("ARGV[3]") + """local max = redis.call('HGET', KEYS[1], 'max')
if not max then return 1 end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if spent + reserved + tonumber(ARGV[2]) > tonumber(max) then
  if redis.call('HGET', KEYS[3], 'status') == 'in_progress' then
    redis.call('HSET', KEYS[3], 'status', 'budget_exhausted')
  end
  return 0
end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
return 1
"""

# KEYS: budget, leases. ARGV: now_ms. Drops lapsed reservations (as reserve does first).
_PURGE = _drop_lapsed("ARGV[1]") + "return 1"

# KEYS: budget, leases. ARGV: token, billed. Once per reservation: a repeat (a retry after a lost
# connection) finds it gone and changes nothing. A lapsed reservation's call ran past 2 * call_timeout,
# which the relay's own deadline does not allow.
_SETTLE = """
local a = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if not a then return 0 end
if a ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. a) end
redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2]) end
return 1
"""

# KEYS: budget, meta, pending. ARGV: max, now. Returns 1 when the batch's waiting lines may go on.
_RAISE = """
redis.call('HSET', KEYS[1], 'max', ARGV[1])
redis.call('HSET', KEYS[2], 'max_cost', ARGV[1])
if redis.call('HGET', KEYS[2], 'status') ~= 'budget_exhausted' then return 0 end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[2], 'status', 'completed', 'finished_at', ARGV[2])
  return 0
end
redis.call('HSET', KEYS[2], 'status', 'in_progress')
return 1
"""


@dataclass(frozen=True, slots=True)
class BudgetInfo:
    max_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal | None:
        return None if self.max_usd is None else max(Decimal(0), self.max_usd - self.spent_usd - self.reserved_usd)

    def as_dict(self) -> dict[str, Any]:
        def s(v: Decimal | None) -> str | None:
            return None if v is None else format(v, "f")
        return {"max_usd": s(self.max_usd), "spent_usd": s(self.spent_usd), "reserved_usd": s(self.reserved_usd),
                "remaining_usd": s(self.remaining_usd)}


class Budget:
    def __init__(self, redis: Redis, keys: Keys, lease_s: float = 300.0) -> None:
        self.redis, self.keys, self.lease_ms = redis, keys, int(lease_s * 1000)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._raise = redis.register_script(_RAISE)
        self._purge = redis.register_script(_PURGE)

    async def reserve(self, batch_id: str, amount: Decimal) -> str | None:
        """A reservation token, or None when the limit cannot cover `amount` (the batch then waits)."""
        token = uuid.uuid4().hex[:16]
        ok = await self._reserve(
            keys=[self.keys.budget(batch_id), self.keys.budget_leases(batch_id), self.keys.meta(batch_id)],
            args=[token, pico(amount), int(time.time() * 1000), self.lease_ms])
        return token if ok else None

    async def settle(self, batch_id: str, token: str, billed: Decimal) -> None:
        await self._settle(keys=[self.keys.budget(batch_id), self.keys.budget_leases(batch_id)],
                           args=[token, pico(billed)])

    async def raise_limit(self, batch_id: str, max_usd: Decimal) -> bool:
        """Set the limit; True when the batch was waiting on it and may now go on."""
        k = self.keys
        return bool(await self._raise(keys=[k.budget(batch_id), k.meta(batch_id), k.pending(batch_id)],
                                      args=[pico(max_usd), time.time()]))

    async def info(self, batch_id: str) -> BudgetInfo:
        await self._purge(keys=[self.keys.budget(batch_id), self.keys.budget_leases(batch_id)],
                          args=[int(time.time() * 1000)])
        raw: list[bytes | None] = await self.redis.hmget(  # type: ignore[misc]
            self.keys.budget(batch_id), ["max", "spent", "reserved"])
        mx, spent, reserved = (int(v) if v is not None else None for v in raw)
        return BudgetInfo(None if mx is None else usd(mx), usd(spent or 0), usd(reserved or 0))


@dataclass(frozen=True, slots=True)
class Reservation:
    token: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Spend:
    """One budgeted batch as the relay sees it: reserve before a call, settle after it."""

    budget: Budget
    batch_id: str
    default_max_tokens: int = DEFAULT_MAX_OUTPUT

    async def reserve(self, provider: ProviderConfig, body: dict[str, Any]) -> Reservation:
        price = price_of(provider, provider.provider_model(str(body["model"])))
        amount = reservation(price, input_tokens(body), max_output_tokens(body, self.default_max_tokens))
        if amount is None:
            raise Unpriced(f"no known price for {body['model']} at {provider.name}, and the batch has a budget")
        token = await self.budget.reserve(self.batch_id, amount)
        if token is None:
            raise OverBudget(self.batch_id)
        return Reservation(token, amount)

    async def settle(self, held: Reservation, billed: Decimal | None) -> None:
        """`billed` None: the call's cost is unknown, so the reservation counts as spent."""
        await self.budget.settle(self.batch_id, held.token, held.amount if billed is None else billed)
