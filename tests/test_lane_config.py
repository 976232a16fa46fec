"""A lane's config (config/lanes.py): the defaults of each kind, and every check a lane must pass. Pure."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from batchrelay.config.lanes import MAX_BYTES, MAX_LINES, LaneConfig, MiB, lane_defaults, lane_problems
from batchrelay.config.settings import ProviderConfig, parse_settings
from batchrelay.errors import ConfigError


def provider(**fields: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": "p", "base_url": "http://p.invalid", **fields})


@pytest.mark.parametrize(("kind", "max_lines", "max_bytes", "dialects", "auth"), [
    ("openai-batch", 50_000, 200 * MiB, ("chat",), "bearer"),
    ("anthropic-batch", 100_000, 256 * MiB, ("messages",), "x-api-key"),
])
def test_each_batch_kind_has_its_own_defaults(kind: str, max_lines: int, max_bytes: int, dialects: tuple[str, ...],
                                              auth: str) -> None:
    p = provider(kind=kind)
    assert p.is_lane and p.lane is not None
    assert (p.lane.max_lines, p.lane.max_bytes, p.dialects, p.auth, p.price_multiplier) == (
        max_lines, max_bytes, dialects, auth, Decimal("0.5"))
    assert (p.lane.window_s, p.lane.margin_s, p.lane.gather_s) == (86400, 3600, 60)
    assert (p.lane.poll_min_s, p.lane.poll_max_s, p.lane.poll_factor) == (15, 600, 1.5)
    assert (p.lane.cancel_wait_s, p.lane.create_wait_s, p.lane.delete_files) == (900, 120, True)


def test_a_chat_provider_is_no_lane_and_keeps_its_own_defaults() -> None:
    p = provider()
    assert (p.kind, p.lane, p.is_lane, p.price_multiplier, p.dialects) == ("chat", None, False, 1, ("chat", "messages"))
    assert lane_defaults({"name": "p"}) == {"name": "p"}


def test_flat_lane_settings_are_lifted_into_lane_and_given_values_win_over_the_kinds() -> None:
    p = provider(kind="openai-batch", window_s=600, margin_s=120, gather_s=2, poll_min_s=1, poll_max_s=10,
                 max_lines=10, delete_files=False, price_multiplier="0.6", dialects=["chat", "messages"])
    assert p.lane == LaneConfig(window_s=600, margin_s=120, gather_s=2, poll_min_s=1, poll_max_s=10, max_lines=10,
                                max_bytes=200 * MiB, delete_files=False)
    assert (p.price_multiplier, p.dialects) == (Decimal("0.6"), ("chat", "messages"))
    assert provider(kind="anthropic-batch", auth="bearer").auth == "bearer"


@pytest.mark.parametrize("fields", [{"window_s": 60}, {"lane": {"margin_s": 1}}])
def test_lane_settings_on_a_provider_that_is_not_a_lane_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="lane settings, for kind = \"openai-batch\" or \"anthropic-batch\" only"):
        provider(**fields)


LANE = LaneConfig(max_lines=10, max_bytes=100)
PROBLEMS: list[tuple[str, dict[str, Any], str]] = [
    # (kind, the provider's fields, the problem)
    ("openai-batch", {"rpm": 10}, "`rpm` is not for a lane (it is never called line by line)"),
    ("openai-batch", {"tpm": 10}, "`tpm` is not for a lane"),
    ("openai-batch", {"plans": {"x": {"rpm": 1}}, "plan": "x"}, "`plan` is not for a lane"),
    ("openai-batch", {"plans": {"x": {"rpm": 1}}}, "`plans` is not for a lane"),
    ("openai-batch", {"max_concurrency": 2}, "`max_concurrency` is not for a lane"),
    ("openai-batch", {"endpoints": {"chat": "/x"}}, "`endpoints` is not for a lane"),
    ("anthropic-batch", {"models_path": "/v1/models"}, "`models_path` is not for a lane"),
    ("anthropic-batch", {"credits_path": "/credits"}, "`credits_path` is not for a lane"),
    ("openai-batch", {"variant": "ainow"}, "variant = 'ainow' is not for a lane"),
    ("openai-batch", {"cost_source": "reported"}, "a lane's cost is computed from its usage at its price: "
                                                  "cost_source must be \"computed\""),
    ("openai-batch", {"max_lines": 50_001}, "max_lines 50001 is over openai-batch's cap of 50,000 lines per batch"),
    ("anthropic-batch", {"max_lines": 100_001}, "max_lines 100001 is over anthropic-batch's cap of 100,000 lines"),
    ("openai-batch", {"max_bytes": 200 * MiB + 1}, f"max_bytes {200 * MiB + 1} is over openai-batch's cap of "
                                                   f"{200 * MiB:,} bytes per batch"),
    ("anthropic-batch", {"max_bytes": 256 * MiB + 1}, "is over anthropic-batch's cap of 268,435,456 bytes"),
    ("openai-batch", {"poll_min_s": 20, "poll_max_s": 10}, "poll_min_s must not be over poll_max_s"),
    ("openai-batch", {"margin_s": 599}, "margin_s must be at least poll_max_s: a late upstream batch must be seen "
                                        "before its margin is used up"),
]


@pytest.mark.parametrize(("kind", "fields", "problem"), PROBLEMS, ids=[p[2][:40] for p in PROBLEMS])
def test_every_lane_problem_is_refused_with_its_reason(kind: str, fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"providers": [{"name": "lane", "kind": kind, "base_url": "http://l.invalid", **fields}]},
                       "c.toml")
    assert problem in str(caught.value)


@pytest.mark.parametrize(("kind", "lane", "given", "variant", "cost_source", "problems"), [
    ("chat", None, {}, "standard", "computed", []),
    ("chat", LANE, {}, "standard", "computed", ["`lane` is for kind = \"openai-batch\" or \"anthropic-batch\" only"]),
    ("openai-batch", LANE, {"rpm": None, "plans": {}, "endpoints": {}}, "standard", "computed", []),  # written back out
    ("openai-batch", LANE, {"rpm": 5, "tpm": 100}, "ainow", "reported", [
        "`rpm` is not for a lane (it is never called line by line)",
        "`tpm` is not for a lane (it is never called line by line)", "variant = 'ainow' is not for a lane",
        "a lane's cost is computed from its usage at its price: cost_source must be \"computed\""]),
    ("anthropic-batch", LaneConfig(max_lines=MAX_LINES["anthropic-batch"], max_bytes=MAX_BYTES["anthropic-batch"],
                                   poll_max_s=3600, margin_s=3600), {}, "standard", "computed", []),
])
def test_lane_problems_lists_every_problem_at_once(kind: str, lane: LaneConfig | None, given: dict[str, Any],
                                                   variant: str, cost_source: str, problems: list[str]) -> None:
    assert lane_problems(kind, lane, given, variant=variant, cost_source=cost_source) == problems


@pytest.mark.parametrize("kind", ["chat", "openai-batch", "anthropic-batch"])
def test_a_provider_written_back_out_reads_the_same(kind: str) -> None:
    p = ProviderConfig.model_validate({"name": "p", "kind": kind, "base_url": "http://127.0.0.1:9"})
    assert ProviderConfig.model_validate(p.model_dump()) == p


@pytest.mark.parametrize(("fields", "field"), [
    ({"window_s": 0}, "window_s"), ({"margin_s": -1}, "margin_s"), ({"max_lines": 0}, "max_lines"),
    ({"max_bytes": 0}, "max_bytes"), ({"gather_s": -1}, "gather_s"), ({"poll_min_s": 0}, "poll_min_s"),
    ({"poll_factor": 0.5}, "poll_factor"), ({"cancel_wait_s": -1}, "cancel_wait_s"),
    ({"create_wait_s": -1}, "create_wait_s"), ({"colour": "red"}, "colour"),
])
def test_lane_settings_out_of_range_or_unknown_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_settings({"providers": [{"name": "lane", "kind": "openai-batch", "base_url": "http://l.invalid",
                                       "lane": fields}]}, "c.toml")
