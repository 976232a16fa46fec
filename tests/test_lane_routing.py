"""Which lines go to a lane (an official Batch API) instead of a synchronous provider (providers/routing.py,
pure), and the deadline that decides it: `--deadline`, `deadline=`, a schedule's `completion_window`."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay import Client
from batchrelay.config.settings import ProviderConfig, load_settings, parse_settings
from batchrelay.errors import ConfigError, ExitCode, InputError
from batchrelay.providers.routing import Strategy, candidates, lane_for, lane_ok, lane_slack
from batchrelay.spec import BatchSpec
from batchrelay.store.schedules import spec_of
from batchrelay.wire.dialect import Dialect

from .conftest import batchrelay, openai_line, write_config

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
SLACK = 60  # a 25 h lane lets a deadline be a minute short (the time between reading it and checking it)
ENOUGH, TOO_SHORT = NOW + NEEDS, NOW + NEEDS - SLACK - 1

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
    (LANE, NOW + NEEDS - SLACK, True),  # `--deadline +25h`, checked up to a minute later
    (LANE, NOW + NEEDS - SLACK - 1, False),
    (LANE, NOW - 1, False),
    (SHORT, NOW + 4200, True),  # its own window and margin
    (SHORT, NOW + 4200 - 42, True),  # 1 % of a short lane's 70 min, not a whole minute
    (SHORT, NOW + 4200 - 43, False),
    (RESELLER, NOW + 10 * NEEDS, False),  # not a lane
])
def test_lane_ok_needs_the_window_plus_the_margin_before_the_deadline(
        provider: ProviderConfig, deadline: float | None, ok: bool) -> None:
    assert lane_ok(provider, deadline, NOW) is ok


@pytest.mark.parametrize(("needs", "slack"), [(NEEDS, 60), (4200, 42), (25, 0.25), (6000, 60)])
def test_the_slack_is_a_minute_or_one_percent_of_what_the_lane_needs_whichever_is_less(
        needs: float, slack: float) -> None:
    assert lane_slack(needs) == pytest.approx(slack)


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


# the deadline


def test_a_deadline_is_a_time_or_a_duration_from_now() -> None:
    before = time.time()
    assert before + 26 * 3600 <= (BatchSpec(deadline="+26h").deadline or 0) <= time.time() + 26 * 3600  # type: ignore[arg-type]
    assert BatchSpec(deadline="2099-01-01T00:00:00Z").deadline == 4070908800.0  # type: ignore[arg-type]
    assert BatchSpec(deadline=4070908800).deadline == 4070908800.0
    assert BatchSpec().deadline is None


@pytest.mark.parametrize(("options", "expires_in"), [
    ({}, None),
    ({"completion_window": 100}, 100),
    ({"deadline": 50}, 50),
    ({"completion_window": 100, "deadline": 50}, 50),  # the earlier counts
    ({"completion_window": 100, "deadline": 150}, 100),
    ({"completion_window": 100, "start_at": 30}, 130),  # a deferred batch's window runs from its start
    ({"completion_window": 100, "start_at": 30, "deadline": 120}, 120),
])
def test_a_batch_expires_at_the_end_of_its_window_or_at_its_deadline_whichever_is_first(
        options: dict[str, float], expires_in: float | None) -> None:
    now = time.time()
    spec = BatchSpec(**{k: (now + v if k in ("start_at", "deadline") else v) for k, v in options.items()})
    at = spec.expires_at(now)
    assert (None if at is None else round(at - now, 3)) == expires_in


@pytest.mark.parametrize(("options", "why"), [
    ({"deadline": "2020-01-01T00:00:00Z"}, "deadline: 2020-01-01T00:00:00Z has passed"),
    ({"deadline": "+1h", "start_at": time.time() + 7200}, "deadline: .* is not after the batch's start"),
    ({"deadline": "soon"}, "deadline: 'soon' is not an ISO-8601 time like .*, nor a time from now like \\+26h"),
    ({"deadline": "+0h"}, "deadline: '\\+0h' is not a time from now like \\+26h"),
])
def test_a_deadline_that_has_passed_or_is_not_after_the_start_is_refused(options: dict[str, Any], why: str) -> None:
    with pytest.raises(InputError, match=why):
        BatchSpec.checked(options)


def test_the_command_line_refuses_a_past_deadline_or_one_before_the_start_without_a_traceback(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    env = {"REDIS_URL": redis_url}
    past = batchrelay("-c", str(cfg), "submit", str(src), "--deadline", "2020-01-01T00:00:00Z", env=env)
    assert past.returncode == ExitCode.USAGE and "Traceback" not in past.stderr
    assert "Error: deadline: 2020-01-01T00:00:00Z has passed" in past.stderr
    early = batchrelay("-c", str(cfg), "submit", str(src), "--in", "2h", "--deadline", "+1h", env=env)
    assert early.returncode == ExitCode.USAGE and "Traceback" not in early.stderr
    assert "is not after the batch's start" in early.stderr
    ok = batchrelay("-c", str(cfg), "submit", str(src), "--deadline", "+26h", "--completion-window", "30h", "--json",
                    env=env)
    assert ok.returncode == 0, ok.stderr
    submitted = orjson.loads(ok.stdout)
    status = batchrelay("-c", str(cfg), "status", submitted["id"], "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["expires_at"] == pytest.approx(submitted["deadline"], abs=0.01)
    assert submitted["deadline"] == pytest.approx(time.time() + 26 * 3600, abs=60)


def test_the_python_api_takes_a_deadline(tmp_path: Path, redis_url: str, prefix: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    with Client(redis_url, settings=load_settings(cfg)) as client:
        batch = client.submit([openai_line(1)], deadline="+2h", completion_window="3h")
        assert client.status(batch)["expires_at"] == pytest.approx(time.time() + 7200, abs=60)
        with pytest.raises(InputError, match="deadline: .* has passed"):
            client.submit([openai_line(1)], deadline=time.time() - 1)


SCHEDULE = {"name": "nightly", "cron": "0 2 * * *", "input": "in/*.jsonl", "output_dir": "out"}


def test_a_schedule_gives_its_batches_a_completion_window() -> None:
    settings = parse_settings({"schedules": [{**SCHEDULE, "completion_window": "26h"}]})
    spec = spec_of(settings, settings.schedules[0], Path("in/a.jsonl"))
    assert spec.completion_window == 26 * 3600 and spec.name == "nightly:a.jsonl"
    assert spec_of(settings, parse_settings({"schedules": [SCHEDULE]}).schedules[0], Path("a")).completion_window is None
    with pytest.raises(ConfigError, match=r"schedules\[0\]\.completion_window: .*not a duration"):
        parse_settings({"schedules": [{**SCHEDULE, "completion_window": "soon"}]}, "c.toml")
