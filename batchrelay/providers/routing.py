"""Which providers may serve a line, and in what order. Pure.

Strategies: `priority` (lower first), `cheapest` (the job's model priced at each provider; unknown
prices last), `weighted` (a random order drawn by weight). Providers that speak the job's dialect
come before the ones that need a translation, whatever the strategy. Per-model routes and a
per-batch allow-list narrow the set first.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Literal

from batchrelay.config.settings import ProviderConfig
from batchrelay.money.pricing import price_of
from batchrelay.wire.dialect import Dialect

Strategy = Literal["priority", "cheapest", "weighted"]
OTHER: dict[Dialect, Dialect] = {"chat": "messages", "messages": "chat"}
UNKNOWN = Decimal("Infinity")


def allowed_by_routes(model: str, routes: Mapping[str, Sequence[str]]) -> set[str] | None:
    """Names the routes allow for `model` (exact key first, then glob keys); None = no route applies."""
    if model in routes:
        return set(routes[model])
    for pattern, names in routes.items():
        if fnmatch.fnmatchcase(model, pattern):
            return set(names)
    return None


def unit_price(provider: ProviderConfig, model: str) -> Decimal:
    """Input + output USD per 1M tokens at this provider; unknown = infinity.

    Listed prices are what the provider charges (piapi's are already 75% of official): the
    `price_multiplier` scales official prices only, so it must not discount them again.
    """
    rates = price_of(provider, provider.provider_model(model)).rates()
    if rates["input"] is None or rates["output"] is None:
        return UNKNOWN
    return rates["input"] + rates["output"]


def order(
    providers: Sequence[ProviderConfig], strategy: Strategy, model: str, rng: random.Random | None = None
) -> list[ProviderConfig]:
    if strategy == "cheapest":
        return sorted(providers, key=lambda p: (unit_price(p, model), p.priority))
    if strategy == "weighted":
        pool, out = list(providers), []
        r = rng or random
        while pool:
            pick = r.choices(pool, weights=[max(p.weight, 1e-9) for p in pool])[0]
            out.append(pick)
            pool.remove(pick)
        return out
    return sorted(providers, key=lambda p: p.priority)


def candidates(
    dialect: Dialect,
    model: str,
    providers: Sequence[ProviderConfig],
    *,
    strategy: Strategy = "priority",
    routes: Mapping[str, Sequence[str]] | None = None,
    allow: Sequence[str] | None = None,
    rng: random.Random | None = None,
) -> list[tuple[ProviderConfig, Dialect]]:
    """(provider, dialect to speak to it) in the order to try them."""
    allowed = allowed_by_routes(model, routes or {})
    usable = [p for p in providers
              if (allowed is None or p.name in allowed) and (not allow or p.name in allow)]
    ranked = order(usable, strategy, model, rng)
    other = OTHER[dialect]
    native = [(p, dialect) for p in ranked if p.speaks(dialect)]
    return native + [(p, other) for p in ranked if not p.speaks(dialect) and p.translate and p.speaks(other)]
