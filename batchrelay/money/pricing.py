"""What one call costs: prices per provider and model, minimum charges, provider-reported costs.

Pure functions except for the lookup in the `genai-prices` snapshot (offline, cached). A price
comes from the provider's config (`prices`, USD per 1M tokens, shell patterns allowed) when it names
token rates, else from the official price of the model in genai-prices times the provider's
`price_multiplier`. `per_request` and `min_charge` always come from config. A model with neither
has no known price: its calls run, and their cost is `None` (shown as unknown), never 0.

Money is Decimal, kept to the pico-dollar (1e-12 USD: a price per 1M tokens with up to six
decimals is exact), and in Redis an integer count of pico-dollars (`pico`, `usd`: parse.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from batchrelay.config.settings import ModelPrice, ProviderConfig
from batchrelay.parse import pico as pico  # the money units, kept with the parser of amounts
from batchrelay.parse import usd as usd
from batchrelay.wire.reply import Usage

MILLION = Decimal(1_000_000)
DISCREPANCY = Decimal("0.01")  # reported vs computed: flagged above 1 %
CostSource = Literal["computed", "reported"]


def money(amount: Decimal) -> Decimal:
    """An amount kept to the pico-dollar."""
    return usd(pico(amount))


def usd_str(amount: Decimal | None) -> str | None:
    """A decimal string without exponent or trailing zeros ("0.000125", "3", "0")."""
    if amount is None:
        return None
    text = format(money(amount), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@functools.lru_cache(maxsize=1024)
def _official(model: str) -> Any:
    """genai-prices' price object for the model, or None when it does not know the model."""
    try:
        return calc_price(GenaiUsage(input_tokens=0, output_tokens=0), model).model_price
    except LookupError:
        return None


_FLAT: dict[int, tuple[Decimal, Decimal, Decimal, Decimal] | None] = {}
_PRICED_UNITS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


def _flat_rates(official: Any) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
    """(input, output, cached input, cache write) per 1M when those rates are flat; None (use
    genai-prices' own calculation) when one is tiered. Other units (web searches, audio) are not
    in the usage we price, so they cost nothing either way."""
    key = id(official)
    if key not in _FLAT:
        rates = [getattr(official, name, None) for name in _PRICED_UNITS]
        i, o, cached, write = rates
        if all(r is None or isinstance(r, Decimal) for r in rates) and isinstance(i, Decimal) \
                and isinstance(o, Decimal):
            _FLAT[key] = (i, o, i if cached is None else cached, i if write is None else write)
        else:
            _FLAT[key] = None
    return _FLAT[key]


def _mtok(official: Any, name: str) -> Decimal | None:
    """A flat per-1M rate of genai-prices' price object; tiered prices give their base rate."""
    value = getattr(official, name, None)
    if value is None or isinstance(value, Decimal):
        return value
    base = getattr(value, "base", None)
    return base if isinstance(base, Decimal) else None


def _first(rate: Decimal | None, fallback: Decimal | None) -> Any:
    """A rate of its own (0 included), else the fallback rate."""
    return fallback if rate is None else rate


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one model at one provider."""

    config: ModelPrice | None
    official: Any  # genai-prices' price object, used when config names no token rates
    multiplier: Decimal = Decimal(1)

    @property
    def known(self) -> bool:
        return self.config_rates or self.official is not None

    @property
    def config_rates(self) -> bool:
        return self.config is not None and self.config.input is not None and self.config.output is not None

    @property
    def source(self) -> str:
        return "config" if self.config_rates else "genai-prices" if self.official is not None else "unknown"

    @property
    def per_request(self) -> Decimal:
        return self.config.per_request if self.config else Decimal(0)

    @property
    def min_charge(self) -> Decimal:
        return self.config.min_charge if self.config else Decimal(0)

    def rates(self) -> dict[str, Decimal | None]:
        """USD per 1M tokens (for display, reservations and estimates)."""
        if self.config_rates:
            return dict(self._config_rates())
        if self.official is None:
            return {"input": None, "output": None, "cached_input": None, "cache_write": None}
        o, m = self.official, self.multiplier
        base = {"input": _mtok(o, "input_mtok"), "output": _mtok(o, "output_mtok"),
                "cached_input": _first(_mtok(o, "cache_read_mtok"), _mtok(o, "input_mtok")),
                "cache_write": _first(_mtok(o, "cache_write_mtok"), _mtok(o, "input_mtok"))}
        return {k: None if v is None else v * m for k, v in base.items()}

    def _config_rates(self) -> dict[str, Decimal]:
        c = self.config
        assert c is not None and c.input is not None and c.output is not None
        return {"input": c.input, "output": c.output, "cached_input": _first(c.cached_input, c.input),
                "cache_write": _first(c.cache_write, c.input)}

    def tokens_usd(self, usage: Usage) -> Decimal | None:
        """The tokens' cost, cached reads and cache writes at their own rates; None if unknown."""
        if self.config_rates:
            r = self._config_rates()
            total = (usage.uncached_input_tokens * r["input"]
                     + usage.cached_input_tokens * r["cached_input"]
                     + usage.cache_write_tokens * r["cache_write"]
                     + usage.output_tokens * r["output"])
            return total / MILLION
        if self.official is None:
            return None
        flat = _flat_rates(self.official)
        if flat is not None:  # the common case, and 30x faster than genai-prices' own calculation
            i, o, cached, write = flat
            total = (usage.uncached_input_tokens * i + usage.cached_input_tokens * cached
                     + usage.cache_write_tokens * write + usage.output_tokens * o)
            return total / MILLION * self.multiplier
        g = GenaiUsage(input_tokens=usage.input_tokens, cache_read_tokens=usage.cached_input_tokens,
                       cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens)
        return Decimal(self.official.calc_price(g)["total_price"]) * self.multiplier


# (id(provider), provider_model) -> (provider, its Price): every billed call looks its price up, and
# configs are frozen, so the Price of one ProviderConfig object never changes (the provider is kept
# beside it, so an id reused by a later object is never mistaken for it)
_PRICES: dict[tuple[int, str], tuple[ProviderConfig, Price]] = {}
_PRICES_MAX = 4096


def price_of(provider: ProviderConfig, provider_model: str) -> Price:
    """The price of `provider_model` (the name the provider knows the model by) at `provider`."""
    key = (id(provider), provider_model)
    hit = _PRICES.get(key)
    if hit is not None and hit[0] is provider:
        return hit[1]
    config = provider.price_of(provider_model)
    rates_in_config = config is not None and config.input is not None
    official = None if rates_in_config else _official(provider_model)
    price = Price(config, official, provider.price_multiplier)
    if len(_PRICES) >= _PRICES_MAX:
        _PRICES.clear()
    _PRICES[key] = (provider, price)
    return price


@dataclass(frozen=True, slots=True)
class CallCost:
    """One billed call. `billed` is what counts: the provider's reported cost when its
    `cost_source` is "reported" (and it reported one), else the computed cost."""

    computed: Decimal | None
    reported: Decimal | None
    source: CostSource
    min_charge_applied: bool = False
    # usd_str of (billed, computed, reported), worked out once: the attempt and the line both show them
    _usd: tuple[str | None, str | None, str | None] | None = field(default=None, init=False, repr=False,
                                                                  compare=False)

    @property
    def billed(self) -> Decimal | None:
        return self.reported if self.source == "reported" else self.computed

    def usd_strs(self) -> tuple[str | None, str | None, str | None]:
        """(billed, computed, reported) as `usd_str` gives them."""
        s = self._usd
        if s is None:
            computed, reported = usd_str(self.computed), usd_str(self.reported)
            s = (reported if self.source == "reported" else computed, computed, reported)
            object.__setattr__(self, "_usd", s)
        return s

    @property
    def discrepancy(self) -> Decimal | None:
        """|reported - computed| / computed, when both are known and it is over 1 %."""
        if self.reported is None or self.computed is None:
            return None
        if self.computed == 0:
            return None if self.reported == 0 else Decimal(1)
        gap = abs(self.reported - self.computed) / self.computed
        return gap if gap > DISCREPANCY else None

    def as_dict(self) -> dict[str, Any]:
        billed, computed, reported = self.usd_strs()
        d: dict[str, Any] = {"usd": billed, "source": self.source, "computed_usd": computed, "reported_usd": reported}
        if self.min_charge_applied:
            d["min_charge_applied"] = True
        gap = self.discrepancy
        if gap is not None:
            d["discrepancy_pct"] = str(round(gap * 100, 2))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallCost:
        def dec(v: Any) -> Decimal | None:
            return None if v is None else Decimal(v)
        return cls(dec(d.get("computed_usd")), dec(d.get("reported_usd")), d.get("source", "computed"),
                   bool(d.get("min_charge_applied")))


def call_cost(price: Price, usage: Usage, reported: Decimal | None, cost_source: CostSource) -> CallCost:
    """cost = max(tokens + per_request, min_charge); the reported cost is kept beside it. A provider
    that should report but did not is billed the computed cost, and one with no known price its
    reported cost, if any: a call is unknown only when both are."""
    tokens = price.tokens_usd(usage)
    computed = applied = None
    if tokens is not None:
        raw = tokens + price.per_request
        applied = raw < price.min_charge
        computed = money(max(raw, price.min_charge))
    reported = money(reported) if reported is not None else None
    source: CostSource = cost_source
    if source == "reported" and reported is None:
        source = "computed"
    elif source == "computed" and computed is None and reported is not None:
        source = "reported"
    return CallCost(computed, reported, source, bool(applied))


def reservation(price: Price, input_tokens: int, max_output_tokens: int) -> Decimal | None:
    """The most a call may cost, held against a budget before it is sent; None if unknown."""
    tokens = price.tokens_usd(Usage(input_tokens, max_output_tokens))
    if tokens is None:
        return None
    return money(max(tokens + price.per_request, price.min_charge))
