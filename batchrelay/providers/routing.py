"""Which providers may serve a line, and in what order. Pure.

Strategies: `priority` (lower first), `cheapest` (the job's model priced at each provider; unknown
prices last), `weighted` (a random order drawn by weight). Providers that speak the job's dialect
come before the ones that need a translation, whatever the strategy. Per-model routes and a
per-batch allow-list narrow the set first.

Lanes (`is_lane`: an official Batch API) are never called line by line, so `candidates` leaves them
out. `lane_for` says whether a line goes to a lane instead: only when its batch's deadline leaves the
lane's upstream window plus its margin (`lane_ok`, give or take `lane_slack`), and only when the lane
ranks first among every provider that may serve the line, by the same strategy. A batch without a
deadline never uses a lane.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Literal

from batchrelay.config.settings import ProviderConfig
from batchrelay.money.pricing import price_of
from batchrelay.wire.dialect import Dialect

Strategy = Literal["priority", "cheapest", "weighted"]
OTHER: dict[Dialect, Dialect] = {"chat": "messages", "messages": "chat"}
UNKNOWN = Decimal("Infinity")
LANE_SLACK_S = 60.0  # at most this much of a lane's margin may be short ...
LANE_SLACK_SHARE = 0.01  # ... and at most this share of its window + margin


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
    """`cheapest`: by price, then a lane before a synchronous provider (a tie is worth the wait: the
    lane does not rate-limit or run out of credit), then by priority."""
    if strategy == "cheapest":
        return sorted(providers, key=lambda p: (unit_price(p, model), not p.is_lane, p.priority))
    if strategy == "weighted":
        pool, out = list(providers), []
        r = rng or random
        while pool:
            pick = r.choices(pool, weights=[max(p.weight, 1e-9) for p in pool])[0]
            out.append(pick)
            pool.remove(pick)
        return out
    return sorted(providers, key=lambda p: p.priority)


def _ranked(
    dialect: Dialect, model: str, providers: Sequence[ProviderConfig], strategy: Strategy,
    routes: Mapping[str, Sequence[str]] | None, allow: Sequence[str] | None, rng: random.Random | None,
) -> list[tuple[ProviderConfig, Dialect]]:
    allowed = allowed_by_routes(model, routes or {})
    usable = [p for p in providers
              if (allowed is None or p.name in allowed) and (not allow or p.name in allow)]
    ranked = order(usable, strategy, model, rng)
    other = OTHER[dialect]
    native = [(p, dialect) for p in ranked if p.speaks(dialect)]
    return native + [(p, other) for p in ranked if not p.speaks(dialect) and p.translate and p.speaks(other)]


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
    """(provider, dialect to speak to it) in the order to try them; never a lane."""
    return _ranked(dialect, model, [p for p in providers if not p.is_lane], strategy, routes, allow, rng)


def lane_slack(needs_s: float) -> float:
    """How far short of a lane's window + margin (`needs_s`) a deadline may be and still allow it.

    A deadline such as `--deadline +25h` is counted from when it was read; the check comes later (the
    estimate a moment after, a worker's claim after the file was stored, seconds for a big file). Without
    slack, a deadline of exactly the window + margin would never pass. A minute (1 % for short test
    lanes) is taken from the margin, which is the time left to fail over: nothing else."""
    return min(LANE_SLACK_S, needs_s * LANE_SLACK_SHARE)


def lane_ok(lane: ProviderConfig, deadline: float | None, now: float) -> bool:
    """Whether a batch due at `deadline` (unix time; None: no deadline) leaves `lane` its upstream
    window plus its margin from `now` (less `lane_slack`): the margin is the time left for synchronous
    failover when the upstream batch is late."""
    if lane.lane is None or deadline is None:
        return False
    needs = lane.lane.window_s + lane.lane.margin_s
    return deadline - now + lane_slack(needs) >= needs


def lane_for(
    dialect: Dialect,
    model: str,
    providers: Sequence[ProviderConfig],
    *,
    strategy: Strategy,
    routes: Mapping[str, Sequence[str]] | None,
    allow: Sequence[str] | None,
    deadline: float | None,
    now: float,
    skip: Collection[str] = (),
) -> ProviderConfig | None:
    """The lane to hand the line to, or None (the line goes synchronous).

    The providers that may serve the line (routes, allow-list, dialect or translation; not in `skip`:
    lanes the line already failed on, benched or disabled ones; lanes only when `lane_ok`) are ranked
    as `candidates` ranks them, the lanes among them; a lane is chosen only when it comes first. So
    under `priority` a lane is placed by its priority, under `cheapest` by its price (a tie goes to
    the lane), and under `weighted` it wins the draw by its weight.
    """
    if deadline is None or not any(p.is_lane for p in providers):
        return None
    usable = [p for p in providers
              if p.name not in skip and (not p.is_lane or lane_ok(p, deadline, now))]
    if not any(p.is_lane for p in usable):
        return None
    ranked = _ranked(dialect, model, usable, strategy, routes, allow, None)
    return ranked[0][0] if ranked and ranked[0][0].is_lane else None
