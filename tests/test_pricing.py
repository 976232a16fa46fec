"""Prices, minimum charges, cached tokens and reported costs: pure, table-tested."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from pydantic import ValidationError

from batchrelay.config.settings import ModelPrice, ProviderConfig
from batchrelay.money.pricing import CallCost, call_cost, pico, price_of, reservation, usd, usd_str
from batchrelay.wire.reply import Usage


def provider(**kw: object) -> ProviderConfig:
    return ProviderConfig(name="p", base_url="http://127.0.0.1:1", **kw)  # type: ignore[arg-type]


PIAPI = ProviderConfig(name="piapi", preset="piapi")
AINOW = ProviderConfig(name="ainow", preset="ainow")


@pytest.mark.parametrize(
    ("prov", "model", "usage", "cost", "applied"),
    [
        # PiAPI's gizmo: $2.5/$10 per 1M, a $0.005 minimum per call; 10 tokens cost far less
        (PIAPI, "gpt-4-gizmo-g-abc123", Usage(6, 4), D("0.005"), True),
        # ... and a big call pays its tokens: 1000 * 2.5e-6 + 1000 * 1e-5 = 0.0125
        (PIAPI, "gpt-4-gizmo-g-abc123", Usage(1000, 1000), D("0.0125"), False),
        # PiAPI's listed gpt-4o-mini price (already 75 % of the official one), exact to the pico-dollar
        (PIAPI, "gpt-4o-mini", Usage(1, 1), D("0.0000005625"), False),
        # official gpt-4o (genai-prices): 2.5 input, 1.25 cached input, 10 output per 1M
        (provider(), "gpt-4o", Usage(1000, 100, cached_input_tokens=400), D("0.0015") + D("0.0005") + D("0.001"), False),
        # the same with a 0.5 multiplier
        (provider(price_multiplier="0.5"), "gpt-4o", Usage(1000, 100, 400), D("0.0015"), False),
        # config rates with a cached and a cache-write rate of their own, plus a per-request fee
        (provider(prices={"m": {"input": "3", "output": "15", "cached_input": "0.3", "cache_write": "3.75",
                                "per_request": "0.0001"}}),
         "m", Usage(1000, 10, cached_input_tokens=500, cache_write_tokens=200),
         (300 * D(3) + 500 * D("0.3") + 200 * D("3.75") + 10 * D(15)) / 1_000_000 + D("0.0001"), False),
        # cached tokens without a cached rate cost the input rate
        (provider(prices={"m": {"input": "1", "output": "2"}}), "m", Usage(100, 0, 100), D("0.0001"), False),
        # a min_charge alone keeps the official token rates
        (provider(prices={"gpt-4o": {"min_charge": "0.01"}}), "gpt-4o", Usage(10, 10), D("0.01"), True),
        (provider(prices={"gpt-4o": {"min_charge": "0.01"}}), "gpt-4o", Usage(4000, 0), D("0.01"), False),
    ],
    ids=["gizmo-min-charge", "gizmo-above-min", "piapi-listed", "official-cached", "official-multiplier",
         "config-cache-rates", "cached-at-input-rate", "min-charge-only-small", "min-charge-only-equal"],
)
def test_computed_cost(prov: ProviderConfig, model: str, usage: Usage, cost: D, applied: bool) -> None:
    c = call_cost(price_of(prov, model), usage, None, "computed")
    assert c.computed == cost and c.billed == cost
    assert c.min_charge_applied is applied
    assert c.source == "computed" and c.reported is None


def test_unknown_price_is_unknown_never_zero() -> None:
    price = price_of(provider(), "no-such-model-anywhere")
    assert not price.known and price.source == "unknown"
    c = call_cost(price, Usage(100, 100), None, "computed")
    assert c.computed is None and c.billed is None
    assert c.as_dict()["usd"] is None
    assert reservation(price, 100, 100) is None


def test_reported_cost_is_billed_and_the_computed_one_kept_beside_it() -> None:
    # ai-now quotes Claude 3.5 Sonnet at 0.002 / 0.003 per 1K tokens
    price = price_of(AINOW, "Claude 3.5 Sonnet")
    c = call_cost(price, Usage(1000, 500), D("0.0035"), AINOW.cost_source)
    assert (c.computed, c.reported, c.billed, c.source) == (D("0.0035"), D("0.0035"), D("0.0035"), "reported")
    assert c.discrepancy is None
    off = call_cost(price, Usage(1000, 500), D("0.0036"), "reported")
    assert off.billed == D("0.0036") and off.discrepancy is not None
    assert off.as_dict()["discrepancy_pct"] == "2.86"
    within = call_cost(price, Usage(1000, 500), D("0.00353"), "reported")
    assert within.discrepancy is None  # 0.86 % is not flagged


@pytest.mark.parametrize(
    ("source", "computed_known", "reported", "billed_from"),
    [("reported", True, None, "computed"), ("computed", False, D("0.2"), "reported"),
     ("computed", True, D("0.2"), "computed"), ("reported", False, None, "computed")],
)
def test_billing_falls_back_to_whichever_cost_is_known(source: str, computed_known: bool, reported: D | None,
                                                       billed_from: str) -> None:
    prov = provider(prices={"m": {"input": "1", "output": "1"}}) if computed_known else provider()
    c = call_cost(price_of(prov, "m"), Usage(10, 10), reported, source)  # type: ignore[arg-type]
    assert c.source == billed_from
    assert c.billed == (c.computed if billed_from == "computed" else c.reported)


def test_money_is_kept_to_the_pico_dollar() -> None:
    assert pico(D("0.0000005625")) == 562_500
    assert usd(562_500) == D("5.625E-7")
    assert usd_str(D("0.0000005625")) == "0.0000005625"
    assert usd_str(D("3.000")) == "3" and usd_str(D(0)) == "0" and usd_str(None) is None
    assert usd_str(D("1.23456789012345678")) == "1.234567890123"  # rounded to the pico-dollar
    assert pico(D("1E+3")) == 10**15


def test_call_cost_round_trips_through_its_dict() -> None:
    c = call_cost(price_of(PIAPI, "gpt-4-gizmo-x"), Usage(5, 5), None, "computed")
    assert CallCost.from_dict(c.as_dict()) == c
    d = call_cost(price_of(AINOW, "GPT-4 Turbo"), Usage(10, 10), D("0.0009"), "reported")
    assert CallCost.from_dict(d.as_dict()) == d


def test_reservation_covers_the_largest_answer_and_the_minimum_charge() -> None:
    assert reservation(price_of(PIAPI, "gpt-4o-mini"), 1000, 1000) == D("0.0005625")
    assert reservation(price_of(PIAPI, "gpt-4-gizmo-x"), 1, 1) == D("0.005")


def test_rates_shown_for_official_prices_carry_the_multiplier() -> None:
    r = price_of(provider(price_multiplier="0.75"), "gpt-4o").rates()
    assert r["input"] == D("1.875") and r["output"] == D("7.5") and r["cached_input"] == D("0.9375")


@pytest.mark.parametrize("bad", [{"input": "1"}, {"output": "1"}, {"cached_input": "1"}, {"input": "-1", "output": "1"}])
def test_incomplete_or_negative_prices_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ModelPrice(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "o1-mini", "claude-3-5-haiku-20241022",
                                   "claude-sonnet-4-20250514", "gemini-1.5-pro"])
@pytest.mark.parametrize("usage", [Usage(1007, 333, 400, 0), Usage(300_000, 10), Usage(1000, 10, 0, 300)])
def test_official_prices_match_genai_prices_own_calculation(model: str, usage: Usage) -> None:
    # the flat-rate shortcut must agree with genai-prices, tiers (gemini over 128k) included
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    ref = calc_price(GenaiUsage(input_tokens=usage.input_tokens, cache_read_tokens=usage.cached_input_tokens,
                                cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens),
                     model).total_price
    assert price_of(provider(price_multiplier="0.7"), model).tokens_usd(usage) == ref * D("0.7")
