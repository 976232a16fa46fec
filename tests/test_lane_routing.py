"""Which lines go to a lane (an official Batch API) instead of a synchronous provider (providers/routing.py). Pure."""

from __future__ import annotations

import random
from typing import Any

import pytest

from batchrelay.config.settings import ProviderConfig
from batchrelay.providers.routing import Strategy, candidates, lane_for, lane_ok
from batchrelay.wire.dialect import Dialect

NOW = 1_000_000.0
NEEDS = 86400 + 3600  # a lane's default window (24 h) plus its default margin (1 h)


def prov(name: str, rate: str, **fields: Any) -> ProviderConfig:
    """A provider charging `rate` USD per 1M tokens for input and output each, for model `m`."""
    return ProviderConfig.model_validate({"name": name, "base_url": f"http://{name}.invalid",
                                          "prices": {"m": {"input": rate, "output": rate}}, **fields})


def lane(name: str, rate: str, kind: str = "openai-batch", **fields: Any) -> ProviderConfig:
    return prov(name, rate, kind=kind, **fields)


RESELLER = prov("reseller", "3", priority=10)  # 6 per 1M in + out: dearer than the lane
LANE = lane("batch", "2", priority=50)  # 4
TIE = prov("tie", "2", priority=1)  # the lane's price, and a better priority
CHEAPER = prov("cheaper", "1", priority=90)  # cheaper than the lane
FIRST = prov("first", "9", priority=1)  # dear, but first by priority
CHAT_ONLY = prov("chat-only", "3", priority=10, dialects=["chat"])
STRICT = lane("strict", "2", translate=False)  # speaks chat only and may not translate
CLAUDE = lane("claude-batch", "2", kind="anthropic-batch")  # speaks messages
SHORT = lane("short", "2", priority=60, window_s=3600, margin_s=600)  # needs 70 min
ENOUGH, TOO_SHORT = NOW + NEEDS, NOW + NEEDS - 1

CASES: list[tuple[str, Strategy, list[ProviderConfig], dict[str, Any], str | None]] = [
    # (why, strategy, providers, lane_for's keywords over the defaults below, the lane chosen)
    ("cheapest: the cheaper lane first", "cheapest", [RESELLER, LANE], {}, "batch"),
    ("no deadline: never a lane", "cheapest", [RESELLER, LANE], {"deadline": None}, None),
    ("deadline short of window + margin", "cheapest", [RESELLER, LANE], {"deadline": TOO_SHORT}, None),
    ("deadline exactly window + margin", "cheapest", [RESELLER, LANE], {"deadline": ENOUGH}, "batch"),
    ("a lane the line failed on is skipped", "cheapest", [RESELLER, LANE], {"skip": {"batch"}}, None),
    ("skipping a synchronous provider leaves the lane", "cheapest", [RESELLER, LANE], {"skip": {"reseller"}}, "batch"),
    ("an allow-list without the lane", "cheapest", [RESELLER, LANE], {"allow": ["reseller"]}, None),
    ("an allow-list of the lane alone", "cheapest", [RESELLER, LANE], {"allow": ["batch"]}, "batch"),
    ("a route without the lane", "cheapest", [RESELLER, LANE], {"routes": {"m": ["reseller"]}}, None),
    ("a glob route with the lane", "cheapest", [RESELLER, LANE], {"routes": {"m*": ["reseller", "batch"]}}, "batch"),
    ("cheapest: a price tie goes to the lane", "cheapest", [TIE, LANE], {}, "batch"),
    ("cheapest: a cheaper synchronous provider", "cheapest", [CHEAPER, LANE], {}, None),
    ("cheapest: a cheaper provider skipped", "cheapest", [CHEAPER, LANE], {"skip": ["cheaper"]}, "batch"),
    ("priority: a provider placed before the lane", "priority", [RESELLER, LANE], {}, None),
    ("priority: the lane placed first", "priority", [FIRST, lane("batch", "2", priority=0)], {}, "batch"),
    ("priority: a tie goes by config order", "priority", [lane("batch", "2", priority=1), FIRST], {}, "batch"),
    ("weighted: all the weight on the lane", "weighted", [prov("w", "1", weight=0), LANE], {}, "batch"),
    ("weighted: no weight on the lane", "weighted", [prov("w", "1"), lane("batch", "2", weight=0)], {}, None),
    ("messages: a native provider before a translating lane", "cheapest", [RESELLER, LANE],
     {"dialect": "messages"}, None),
    ("messages: both translate, the cheaper lane first", "cheapest", [CHAT_ONLY, LANE], {"dialect": "messages"},
     "batch"),
    ("messages: a lane that may not translate", "cheapest", [CHAT_ONLY, STRICT], {"dialect": "messages"}, None),
    ("messages: an anthropic-batch lane speaks it", "cheapest", [RESELLER, CLAUDE], {"dialect": "messages"},
     "claude-batch"),
    ("chat: an anthropic-batch lane translates", "cheapest", [CHAT_ONLY, CLAUDE], {}, None),
    ("a lane short of time: the one that fits", "cheapest", [RESELLER, LANE, SHORT], {"deadline": TOO_SHORT},
     "short"),
    ("a skipped lane: the next lane", "cheapest", [RESELLER, LANE, SHORT], {"skip": ["batch"]}, "short"),
    ("only lanes, none allowed by the deadline", "cheapest", [LANE], {"deadline": TOO_SHORT}, None),
    ("only lanes", "priority", [LANE], {}, "batch"),
    ("nothing may serve the model", "cheapest", [RESELLER, LANE], {"routes": {"m": []}}, None),
]


@pytest.mark.parametrize(("why", "strategy", "providers", "given", "chosen"), CASES, ids=[c[0] for c in CASES])
def test_a_line_goes_to_a_lane_only_when_the_deadline_allows_and_the_lane_ranks_first(
        why: str, strategy: Strategy, providers: list[ProviderConfig], given: dict[str, Any],
        chosen: str | None) -> None:
    keywords: dict[str, Any] = {"routes": None, "allow": None, "deadline": ENOUGH, "skip": (), **given}
    dialect: Dialect = keywords.pop("dialect", "chat")
    picked = lane_for(dialect, "m", providers, strategy=strategy, now=NOW, **keywords)
    assert (picked.name if picked else None) == chosen


@pytest.mark.parametrize(("provider", "deadline", "ok"), [
    (LANE, None, False),
    (LANE, NOW + NEEDS, True),
    (LANE, NOW + NEEDS - 1, False),
    (LANE, NOW - 1, False),
    (SHORT, NOW + 4200, True),  # its own window and margin
    (RESELLER, NOW + 10 * NEEDS, False),  # not a lane
])
def test_lane_ok_needs_the_window_plus_the_margin_before_the_deadline(
        provider: ProviderConfig, deadline: float | None, ok: bool) -> None:
    assert lane_ok(provider, deadline, NOW) is ok


@pytest.mark.parametrize("strategy", ["priority", "cheapest", "weighted"])
@pytest.mark.parametrize("dialect", ["chat", "messages"])
def test_candidates_never_offer_a_lane(strategy: Strategy, dialect: Dialect) -> None:
    providers = [lane("batch", "0", priority=0, weight=1000), CHAT_ONLY, CLAUDE, RESELLER]
    ranked = candidates(dialect, "m", providers, strategy=strategy, rng=random.Random(3))
    assert ranked and not any(p.is_lane for p, _ in ranked)


def test_weighted_gives_the_lane_its_share_of_first_places() -> None:
    providers = [prov("sync", "1", weight=1), lane("batch", "2", weight=3)]
    random.seed(7)
    draws = 2000
    to_lane = sum(lane_for("chat", "m", providers, strategy="weighted", routes=None, allow=None, deadline=ENOUGH,
                           now=NOW) is not None for _ in range(draws))
    assert 0.70 <= to_lane / draws <= 0.80  # 3:1 means 75 %
