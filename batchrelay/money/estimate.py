"""What a file will cost before it is submitted, per provider and model, from token estimates.

Every valid line is priced at every provider that may serve it (routing: routes, allow-list,
dialect). Input tokens are estimated from the request (tokens.py); output is a range: `low`
assumes one output token per call, `high` the request's max_tokens (what a budget reserves), and
`expected` the `output` assumption (by default as many tokens as the input, capped by max_tokens).
Minimum charges and per-request fees apply per line. Pure, apart from reading the file.

Lanes (official Batch APIs) take a line only when the batch's deadline leaves them their window
plus margin and they rank first (routing.lane_for). The first choice of a line is where routing
really sends it: the lane when the deadline allows it, else the first synchronous provider. With a
lane configured, the estimate has two totals: the first choice's (`with_lane`: the lane's lines at its
price) and `without_lane` (every line at its first synchronous choice), and a verdict per lane
(lane_cost.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import InputError, UnpricedModels
from batchrelay.money.lane_cost import LaneVerdict, verdict
from batchrelay.money.pricing import MILLION, Price, price_of, usd_str
from batchrelay.money.tokens import input_tokens, max_output_tokens
from batchrelay.providers.routing import candidates, lane_for
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import BadLine, JobLine, iter_jobs

Range = tuple[Decimal | None, Decimal | None, Decimal | None]  # low, expected, high


@dataclass(frozen=True, slots=True)
class OutputGuess:
    """How many output tokens to expect per line: a fixed count; else what this provider and model
    answered per call in earlier batches (`history`); else a ratio of the input estimate."""

    tokens: int | None = None
    ratio: float = 1.0
    history: dict[tuple[str, str], float] = field(default_factory=dict)  # (provider, model) -> tokens/call

    def basis(self, provider: str, model: str) -> str:
        if self.tokens is not None:
            return "given"
        return "history" if (provider, model) in self.history else "ratio"

    def expected(self, inp: int, cap: int, provider: str = "", model: str = "") -> int:
        if self.tokens is not None:
            guess = self.tokens
        elif (provider, model) in self.history:
            guess = round(self.history[(provider, model)])
        else:
            guess = round(inp * self.ratio)
        return max(1, min(cap, guess))


@dataclass(slots=True)
class EstimateRow:
    """One (model, provider) pair: the lines it may serve and what they would cost there."""

    model: str
    dialect: Dialect
    provider: str
    provider_model: str
    first_choice: bool  # where routing sends the lines: the lane when the deadline allows it, else first_sync
    price_source: str
    output_basis: str = "ratio"
    lane: bool = False  # a lane's row: the lines it ranks first for, at its price
    lane_allowed: bool = False  # ... and the deadline lets them go there
    first_sync: bool = False  # the first synchronous choice (without the lane; where its lines fail over)
    lines: int = 0
    input_tokens: int = 0
    expected_output_tokens: int = 0
    max_output_tokens: int = 0
    low: Decimal | None = Decimal(0)
    expected: Decimal | None = Decimal(0)
    high: Decimal | None = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dialect": self.dialect, "provider": self.provider,
                "provider_model": self.provider_model, "first_choice": self.first_choice,
                "first_sync_choice": self.first_sync,
                "price_source": self.price_source, "output_basis": self.output_basis, "lane": self.lane,
                "lane_allowed": self.lane_allowed, "lines": self.lines,
                "input_tokens": self.input_tokens,
                "expected_output_tokens": self.expected_output_tokens, "max_output_tokens": self.max_output_tokens,
                "low_usd": usd_str(self.low), "expected_usd": usd_str(self.expected), "high_usd": usd_str(self.high)}


@dataclass(slots=True)
class Estimate:
    rows: list[EstimateRow] = field(default_factory=list)
    lines: int = 0
    invalid: int = 0
    unserved: dict[str, int] = field(default_factory=dict)  # model -> lines no provider may serve
    deadline: float | None = None  # the batch's (unix time): start + completion window, or --deadline
    lanes: dict[str, LaneVerdict] = field(default_factory=dict)  # the lanes some line would go to, if allowed
    lane_lines: int = 0  # lines that go to a lane (the deadline allows it)
    ranked: dict[str, int] = field(default_factory=dict)  # lane -> lines it would take, given all the time
    closed: frozenset[str] = frozenset()  # lanes the shared health has closed (disabled, benched, cooling)

    def _total(self, rows: list[EstimateRow]) -> Range:
        def total(values: Iterable[Decimal | None]) -> Decimal | None:
            vs = list(values)
            return None if any(v is None for v in vs) else sum((v for v in vs if v is not None), Decimal(0))
        return (total(r.low for r in rows), total(r.expected for r in rows), total(r.high for r in rows))

    def first_choice_total(self) -> Range:
        """The cost range if every line goes where routing sends it first: the lane when the deadline
        allows it, else the first synchronous provider (None: a price is unknown)."""
        return self._total([r for r in self.rows if r.first_choice])

    def lane_total(self) -> Range:
        """The cost range with the lanes (the first choices': the lane's lines at its price)."""
        return self.first_choice_total()

    def sync_total(self) -> Range:
        """The cost range without the lanes: every line at its first synchronous choice."""
        return self._total([r for r in self.rows if r.first_sync])

    def main_lane(self) -> LaneVerdict | None:
        """The lane most lines would go to (if the deadline allowed)."""
        return max(self.lanes.values(), key=lambda v: v.lines, default=None)

    def unpriced(self) -> list[tuple[str, str]]:
        """(model, provider) pairs that may serve lines but have no known price."""
        return sorted({(r.model, r.provider) for r in self.rows if r.price_source == "unknown"})

    def as_dict(self) -> dict[str, Any]:
        low, expected, high = self.first_choice_total()
        sync_low, sync_expected, sync_high = self.sync_total()
        main = self.main_lane()
        return {"lines": self.lines, "invalid": self.invalid, "unserved": self.unserved,
                "first_choice": {"low_usd": usd_str(low), "expected_usd": usd_str(expected), "high_usd": usd_str(high)},
                "deadline": self.deadline, "lane": main.lane if main else None,
                "lane_allowed": (main.allowed and main.lane not in self.closed) if main else None,
                "lane_needs_s": main.needs_s if main else None,
                "lane_lines": self.lane_lines, "sync_total_usd": usd_str(sync_expected),
                "lane_total_usd": usd_str(expected),
                "with_lane": {"low_usd": usd_str(low), "expected_usd": usd_str(expected), "high_usd": usd_str(high)},
                "without_lane": {"low_usd": usd_str(sync_low), "expected_usd": usd_str(sync_expected),
                                 "high_usd": usd_str(sync_high)},
                "lanes": [v.as_dict() for v in self.lanes.values()],
                "unpriced": [{"model": m, "provider": p} for m, p in self.unpriced()],
                "rows": [r.as_dict() for r in self.rows]}


@dataclass(frozen=True, slots=True)
class _Rates:
    """A price's figures, read once per (provider, model): `Price.rates()` is too slow to call per line."""

    source: str
    input: Decimal | None
    output: Decimal | None
    per_request: Decimal
    min_charge: Decimal

    @classmethod
    def of(cls, price: Price) -> _Rates:
        rates = price.rates()
        return cls(price.source, rates["input"], rates["output"], price.per_request, price.min_charge)


def _line_cost(price: _Rates, inp: int, out: int) -> Decimal | None:
    if price.input is None or price.output is None:
        return None
    tokens = (inp * price.input + out * price.output) / MILLION
    return max(tokens + price.per_request, price.min_charge)


def _add(cost: Decimal | None, to: Decimal | None) -> Decimal | None:
    return None if cost is None or to is None else to + cost


def estimate_jobs(jobs: Iterable[JobLine | BadLine], settings: Settings, *, allow: Sequence[str] | None = None,
                  output: OutputGuess = OutputGuess(), deadline: float | None = None,
                  now: float | None = None, closed: frozenset[str] = frozenset()) -> Estimate:
    """`deadline`: the batch's (unix time; None: none, so no lane is used), seen at `now`; `closed`: lanes
    the shared health has closed, which take no line now whatever the deadline (routing skips them)."""
    now = time.time() if now is None else now
    est = Estimate(deadline=deadline, closed=closed)
    rows: dict[tuple[str, str, str], EstimateRow] = {}
    prices: dict[tuple[str, str], _Rates] = {}
    routes: dict[tuple[Dialect, str], _Route] = {}
    providers: list[ProviderConfig] = settings.ordered_providers()
    default_cap = settings.worker.default_max_tokens
    for job in jobs:
        if isinstance(job, BadLine):
            est.invalid += 1
            continue
        est.lines += 1
        model = str(job.body["model"])
        route = routes.get((job.dialect, model))
        if route is None:
            route = routes[(job.dialect, model)] = _route(job.dialect, model, providers, settings, allow, deadline, now,
                                                                 closed)
        if not route.sync and not route.lane_allowed:
            est.unserved[model] = est.unserved.get(model, 0) + 1
            continue
        if route.ideal is not None:
            est.ranked[route.ideal.name] = est.ranked.get(route.ideal.name, 0) + 1
        if route.lane is not None:
            v = est.lanes.get(route.lane.name)
            if v is None:
                v = est.lanes[route.lane.name] = verdict(route.lane, deadline, now)
            v.lines += 1
        inp = input_tokens(job.body)
        cap = max_output_tokens(job.body, default_cap)
        served = [(p, i == 0 and not route.lane_allowed, i == 0, False) for i, p in enumerate(route.sync)]
        if route.lane is not None:
            served.append((route.lane, route.lane_allowed, False, True))
        for provider, first, first_sync, is_lane in served:
            pmodel = provider.provider_model(model)
            exp = output.expected(inp, cap, provider.name, pmodel)
            price = prices.get((provider.name, pmodel))
            if price is None:
                price = prices[(provider.name, pmodel)] = _Rates.of(price_of(provider, pmodel))
            key = (model, job.dialect, provider.name)
            row = rows.get(key)
            if row is None:
                row = rows[key] = EstimateRow(model, job.dialect, provider.name, pmodel, first, price.source,
                                              output.basis(provider.name, pmodel), is_lane, route.lane_allowed,
                                              first_sync)
            costs = (_line_cost(price, inp, 1), _line_cost(price, inp, exp), _line_cost(price, inp, cap))
            row.lines += 1
            row.input_tokens += inp
            row.expected_output_tokens += exp
            row.max_output_tokens += cap
            row.low, row.expected, row.high = (_add(c, t) for c, t in zip(costs, (row.low, row.expected, row.high),
                                                                          strict=True))
        est.lane_lines += route.lane_allowed
    # first choices, then the first synchronous one, then the lane, then failover
    est.rows = [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1], not rows[k].first_choice,
                                                             not rows[k].first_sync, not rows[k].lane, k[2]))]
    return est


@dataclass(frozen=True, slots=True)
class _Route:
    """Where lines of one (dialect, model) may go: the synchronous providers in order, and the lane
    that would take them if the deadline allowed (`lane_allowed`: it does)."""

    sync: list[ProviderConfig]
    lane: ProviderConfig | None
    lane_allowed: bool
    ideal: ProviderConfig | None  # the lane that would take them given all the time in the world


def _route(dialect: Dialect, model: str, providers: Sequence[ProviderConfig], settings: Settings,
           allow: Sequence[str] | None, deadline: float | None, now: float, closed: frozenset[str]) -> _Route:
    routing = settings.routing
    # deterministic order: `weighted` would draw at random, so it is shown in priority order
    strategy = "priority" if routing.strategy == "weighted" else routing.strategy
    sync = [p for p, _wire in candidates(dialect, model, providers, strategy=strategy, routes=routing.routes,
                                         allow=allow)]
    kw: dict[str, Any] = {"strategy": strategy, "routes": routing.routes, "allow": allow, "now": now}
    ideal = lane_for(dialect, model, providers, deadline=math.inf, **kw)
    lane = lane_for(dialect, model, providers, deadline=deadline, skip=closed, **kw)
    return _Route(sync, lane, True, ideal) if lane is not None else _Route(sync, ideal, False, ideal)


def estimate_file(path: Path, settings: Settings, *, default_dialect: Dialect = "chat",
                  allow: Sequence[str] | None = None, output: OutputGuess = OutputGuess(),
                  deadline: float | None = None, now: float | None = None,
                  closed: frozenset[str] = frozenset()) -> Estimate:
    try:
        stream = path.open("rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read input file: {e.strerror}") from None
    with stream:
        jobs = iter_jobs(stream, default_dialect=default_dialect, max_line_bytes=settings.worker.max_line_bytes,
                         dedupe=False)  # duplicates only matter to submit; their cost is the same
        return estimate_jobs(jobs, settings, allow=allow, output=output, deadline=deadline, now=now, closed=closed)


def require_prices(path: Path, settings: Settings, default_dialect: Dialect, allow: Sequence[str] | None) -> None:
    """UnpricedModels naming every model and provider without a known price (`--require-prices`)."""
    missing = estimate_file(path, settings, default_dialect=default_dialect, allow=allow).unpriced()
    if missing:
        pairs = ", ".join(f"{m} at {p}" for m, p in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise UnpricedModels(f"no known price for {pairs}{more}: add `prices` to those providers in the config, "
                             "or leave them out with --providers (providers= in the Python API)")
