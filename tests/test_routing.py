"""Which providers may serve a line, and in what order (batchrelay/routing.py). Pure."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.providers.routing import Strategy, allowed_by_routes, candidates, unit_price
from batchrelay.wire.dialect import Dialect


def prov(name: str, **fields: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": name, "base_url": f"http://{name}.invalid", **fields})


def names(ranked: list[tuple[ProviderConfig, Dialect]]) -> list[str]:
    return [p.name for p, _ in ranked]


def price(input_: str, output: str) -> dict[str, str]:
    return {"input": input_, "output": output}


def test_priority_tries_the_lowest_priority_number_first() -> None:
    providers = [prov("a", priority=30), prov("b", priority=10), prov("c", priority=20)]
    assert names(candidates("chat", "gpt-4o", providers)) == ["b", "c", "a"]


PIAPI = ProviderConfig.model_validate({"preset": "piapi", "priority": 50})
OFFICIAL = prov("official", priority=10, prices={"gpt-4o": price("2.5", "10")})
# Its price is listed under its own model id only, so the `models` map must be followed.
RESALE = prov("resale", priority=40, models={"gpt-4o": "openai/gpt-4o"},
              prices={"openai/gpt-4o": price("1.5", "6")})
# No listed price, and a model name genai-prices does not know: its price is unknown.
UNPRICED = prov("unpriced", priority=1, models={"gpt-4o": "mystery-4o"})
# No listed price: the official one (genai-prices' gpt-4o: 2.5 + 10) times its multiplier.
DISCOUNTED = prov("discounted", priority=2, price_multiplier="0.7")


def test_cheapest_ranks_by_the_price_of_the_jobs_model_at_each_provider_unknown_last() -> None:
    # resale 7.5, discounted 8.75 (official 12.5 * 0.7), piapi 9.375 (its listed 1.875 + 7.5), official 12.5,
    # unpriced unknown
    ranked = candidates("chat", "gpt-4o", [UNPRICED, OFFICIAL, PIAPI, DISCOUNTED, RESALE], strategy="cheapest")
    assert names(ranked) == ["resale", "discounted", "piapi", "official", "unpriced"]


@pytest.mark.parametrize(("provider", "model", "usd_per_million"), [
    (PIAPI, "gpt-4o", "9.375"),  # listed prices are already 75% of official: not discounted again
    (PIAPI, "gpt-4o-mini", "0.5625"),
    (PIAPI, "gpt-4-gizmo-g-abc", "12.5"),  # "equal to OpenAI gpt-4o price", found by pattern
    (RESALE, "gpt-4o", "7.5"),  # looked up under the provider's own model id
    (OFFICIAL, "gpt-4o", "12.5"),
    (DISCOUNTED, "gpt-4o", "8.75"),  # official prices from genai-prices, times the multiplier
])
def test_unit_price_is_what_the_provider_charges_for_the_model(
    provider: ProviderConfig, model: str, usd_per_million: str
) -> None:
    assert unit_price(provider, model) == Decimal(usd_per_million)


def test_price_multiplier_does_not_discount_a_providers_listed_prices_again() -> None:
    # A provider charging 8.0 with a 0.5 multiplier is still dearer than one charging 6.0.
    halved = prov("halved", priority=1, price_multiplier="0.5", prices={"m": price("2", "6")})
    plain = prov("plain", priority=2, prices={"m": price("1", "5")})
    assert names(candidates("chat", "m", [halved, plain], strategy="cheapest")) == ["plain", "halved"]


def test_piapi_loses_to_a_provider_cheaper_than_its_listed_price() -> None:
    # 8.0 < piapi's real 9.375 (a double discount would have put piapi at 7.03 and first)
    cheaper = prov("cheaper", priority=90, prices={"gpt-4o": price("2", "6")})
    assert names(candidates("chat", "gpt-4o", [PIAPI, cheaper], strategy="cheapest")) == ["cheaper", "piapi"]


def test_cheapest_breaks_price_ties_and_unknown_prices_by_priority() -> None:
    providers = [
        prov("dear-late", priority=20, prices={"m": price("1", "1")}),
        prov("dear-early", priority=10, prices={"m": price("1", "1")}),
        prov("unknown-late", priority=5),
        prov("unknown-early", priority=3),
    ]
    ranked = candidates("chat", "m", providers, strategy="cheapest")
    assert names(ranked) == ["dear-early", "dear-late", "unknown-early", "unknown-late"]


WEIGHTED = [prov("heavy", weight=3), prov("light", weight=1), prov("rare", weight=0.5)]


def test_weighted_order_is_the_same_for_the_same_seed_and_covers_every_provider() -> None:
    first = names(candidates("chat", "m", WEIGHTED, strategy="weighted", rng=random.Random(42)))
    again = names(candidates("chat", "m", WEIGHTED, strategy="weighted", rng=random.Random(42)))
    assert first == again
    assert sorted(first) == ["heavy", "light", "rare"]


def test_weighted_first_picks_follow_the_weights() -> None:
    providers = [prov("heavy", weight=3), prov("light", weight=1)]
    rng = random.Random(1234)
    draws = 4000
    heavy_first = sum(
        names(candidates("chat", "m", providers, strategy="weighted", rng=rng))[0] == "heavy" for _ in range(draws)
    )
    assert 0.71 <= heavy_first / draws <= 0.79  # 3:1 means 75%


def test_weighted_tries_a_zero_weight_provider_last() -> None:
    providers = [prov("off", weight=0), prov("on", weight=1), prov("also-on", weight=2)]
    rng = random.Random(5)
    for _ in range(200):
        assert names(candidates("chat", "m", providers, strategy="weighted", rng=rng))[-1] == "off"


ROUTES = {"gpt-4o": ["a"], "gpt-*": ["b", "c"], "claude-*": ["c"]}


@pytest.mark.parametrize(("model", "allowed"), [
    ("gpt-4o", {"a"}),  # the exact key wins over a glob that also matches
    ("gpt-4o-mini", {"b", "c"}),  # glob key
    ("claude-3-5-haiku", {"c"}),
    ("deepseek-chat", None),  # no route applies: every provider may serve it
])
def test_allowed_by_routes_uses_the_exact_key_then_globs(model: str, allowed: set[str] | None) -> None:
    assert allowed_by_routes(model, ROUTES) == allowed


@pytest.mark.parametrize(("model", "routes", "allow", "expected"), [
    ("gpt-4o", ROUTES, None, ["a"]),
    ("gpt-4o-mini", ROUTES, None, ["b", "c"]),
    ("deepseek-chat", ROUTES, None, ["a", "b", "c"]),
    ("deepseek-chat", None, ["c", "a"], ["a", "c"]),  # the batch allow-list; order still by priority
    ("gpt-4o-mini", ROUTES, ["c", "a"], ["c"]),  # routes and allow-list both apply
    ("gpt-4o", ROUTES, ["b"], []),  # nothing left: the line cannot be served
])
def test_routes_and_the_batch_allow_list_restrict_the_providers(
    model: str, routes: dict[str, list[str]] | None, allow: list[str] | None, expected: list[str]
) -> None:
    providers = [prov("c", priority=3), prov("a", priority=1), prov("b", priority=2)]
    assert names(candidates("chat", model, providers, routes=routes, allow=allow)) == expected


@pytest.mark.parametrize("strategy", ["priority", "cheapest", "weighted"])
def test_providers_of_the_jobs_dialect_come_before_those_needing_translation(strategy: Strategy) -> None:
    providers = [
        prov("chat-only", priority=1, weight=100, dialects=["chat"], prices={"m": price("0", "0")}),
        prov("both", priority=5, dialects=["chat", "messages"], prices={"m": price("5", "5")}),
        prov("messages-only", priority=9, dialects=["messages"], prices={"m": price("1", "1")}),
    ]
    ranked = candidates("messages", "m", providers, strategy=strategy, rng=random.Random(0))
    assert ranked[-1][0].name == "chat-only" and ranked[-1][1] == "chat"  # spoken to in its own dialect
    assert {p.name for p, _ in ranked[:2]} == {"both", "messages-only"}
    assert all(d == "messages" for _, d in ranked[:2])


def test_a_provider_that_may_not_translate_is_left_out_of_jobs_in_another_dialect() -> None:
    providers = [prov("strict", priority=1, dialects=["chat"], translate=False),
                 prov("native", priority=2, dialects=["messages"])]
    assert [(p.name, d) for p, d in candidates("messages", "m", providers)] == [("native", "messages")]
    # ...but it still serves jobs of its own dialect
    assert [(p.name, d) for p, d in candidates("chat", "m", providers)] == [("strict", "chat"), ("native", "messages")]
