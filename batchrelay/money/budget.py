"""A batch's spending limit (`--max-cost`), shared by every worker (kept in Redis by store/budget.py).

Before each call a reservation (the most that call may cost: its input estimate and max_tokens at
that provider's price, or the minimum charge) is taken; after it, the reservation is settled with
the billed cost. Only reserved calls are sent, and spent + reserved never passes the limit, so
spending passes it only when a call bills more than its reservation (its input was estimated).

A reservation is refused in one of two ways (`Refusal`):
- WAIT: the limit covers it, but not beside the reservations in flight. Those settle at or below
  their amounts (most calls answer far short of max_tokens), so the line waits and tries again
  shortly: the batch goes on (the relay waits a moment, then defers the line; a lane leaves it
  unreserved until its upload).
- EXHAUSTED: even were every reservation in flight settled at 0 it would not fit (spent + amount >
  max). The batch becomes `budget_exhausted`: its remaining lines wait, pending, until
  `raise_limit` (the `budget` command) lets them go on.

Amounts are integer pico-dollars. A worker killed mid-call leaves its reservation behind; it lapses
after `lease_s`. The comparison runs in Lua numbers, exact up to 2^53 pico-dollars ($9,007).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import BudgetBusy as BudgetBusy  # what `reserve` raises, as the relay imports them
from batchrelay.errors import OverBudget as OverBudget
from batchrelay.errors import Unpriced as Unpriced
from batchrelay.money.pricing import price_of, reservation
from batchrelay.money.tokens import DEFAULT_MAX_OUTPUT, input_tokens, max_output_tokens


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


class Refusal(Enum):
    """Why a reservation was not made (the module's docstring says what each means)."""

    WAIT = "wait"  # the reservations in flight leave no room now; once they settle there may be
    EXHAUSTED = "exhausted"  # spent + amount > max: it will not fit whatever they settle at


@dataclass(frozen=True, slots=True)
class Reservation:
    token: str
    amount: Decimal


class Limits(Protocol):
    """Where the limits are kept and reservations taken (store/budget.py's `Budget`, in Redis)."""

    async def try_reserve(self, batch_id: str, amount: Decimal) -> str | Refusal:
        """A reservation token, or why the limit cannot cover `amount` (now, or at all)."""

    async def settle(self, batch_id: str, token: str, billed: Decimal) -> None: ...


def most_it_may_cost(provider: ProviderConfig, body: dict[str, Any], default_max_tokens: int) -> Decimal:
    """What a call is reserved for: its input estimate and max_tokens at the provider's price, or the
    minimum charge. Unpriced when the model has no known price there."""
    price = price_of(provider, provider.provider_model(str(body["model"])))
    amount = reservation(price, input_tokens(body), max_output_tokens(body, default_max_tokens))
    if amount is None:
        raise Unpriced(f"no known price for {body['model']} at {provider.name}, and the batch has a budget")
    return amount


@dataclass(frozen=True, slots=True)
class Spend:
    """One budgeted batch as the relay sees it: reserve before a call, settle after it."""

    budget: Limits
    batch_id: str
    default_max_tokens: int = DEFAULT_MAX_OUTPUT

    async def reserve(self, provider: ProviderConfig, body: dict[str, Any]) -> Reservation:
        """BudgetBusy: wait for the reservations in flight; OverBudget: the batch is budget_exhausted."""
        amount = most_it_may_cost(provider, body, self.default_max_tokens)
        got = await self.budget.try_reserve(self.batch_id, amount)
        if got is Refusal.WAIT:
            raise BudgetBusy(self.batch_id)
        if got is Refusal.EXHAUSTED:
            raise OverBudget(self.batch_id)
        return Reservation(got, amount)

    async def settle(self, held: Reservation, billed: Decimal | None) -> None:
        """`billed` None: the call's cost is unknown, so the reservation counts as spent."""
        await self.budget.settle(self.batch_id, held.token, held.amount if billed is None else billed)
