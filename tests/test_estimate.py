"""`batchrelay estimate`: what a file would cost, per model and provider. Pure, table-tested."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from batchrelay.cli.cost import with_lanes
from batchrelay.cli.main import cli
from batchrelay.config.settings import ProviderConfig, RoutingConfig, Settings
from batchrelay.errors import ExitCode, InputError
from batchrelay.money.estimate import Estimate, OutputGuess, estimate_file, estimate_jobs
from batchrelay.money.lane_cost import span
from batchrelay.money.pricing import usd_str
from batchrelay.money.tokens import input_tokens
from batchrelay.wire.jobs import BadLine, JobLine

MILLION = D(1_000_000)
HI = [{"role": "user", "content": "hi"}]  # 32 bytes of JSON: 8 + 4 = 12 input tokens


def provider(name: str, priority: int = 100, prices: dict[str, Any] | None = None, **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=name, base_url="http://127.0.0.1:1", priority=priority, prices=prices or {}, **kw)


def settings(*providers: ProviderConfig, **routing: Any) -> Settings:
    return Settings(routing=RoutingConfig(**routing)).with_providers(list(providers))


def job(line: int, model: str = "m", dialect: str = "chat", messages: list[dict[str, Any]] | None = None,
        **body: Any) -> JobLine:
    return JobLine(line, f"c{line}", "bare", dialect, {"model": model, "messages": messages or HI, **body})  # type: ignore[arg-type]


def cost(inp: int, out: int, rate_in: str, rate_out: str) -> D:
    return (inp * D(rate_in) + out * D(rate_out)) / MILLION


CHEAP = {"m": {"input": "1", "output": "2"}}
DEAR = {"m": {"input": "10", "output": "20"}}


def test_input_tokens_of_the_sample_request() -> None:
    assert input_tokens({"model": "m", "messages": HI}) == 12  # what the numbers below are built on


def test_the_first_choice_under_priority_is_the_lowest_priority_number() -> None:
    s = settings(provider("dear", 2, DEAR), provider("cheap", 1, CHEAP))
    est = estimate_jobs([job(1, max_tokens=100), job(2, max_tokens=100)], s, output=OutputGuess(tokens=50))
    assert [(r.provider, r.first_choice) for r in est.rows] == [("cheap", True), ("dear", False)]
    cheap, dear = est.rows
    assert (cheap.lines, cheap.input_tokens, cheap.expected_output_tokens, cheap.max_output_tokens) == (2, 24, 100, 200)
    assert (cheap.low, cheap.expected, cheap.high) == (2 * cost(12, 1, "1", "2"), 2 * cost(12, 50, "1", "2"),
                                                       2 * cost(12, 100, "1", "2"))
    assert dear.high == 2 * cost(12, 100, "10", "20")
    assert est.first_choice_total() == (cheap.low, cheap.expected, cheap.high)  # failover rows are not added
    assert est.lines == 2 and est.invalid == 0 and est.unpriced() == [] and est.unserved == {}
    d = est.as_dict()
    assert d["first_choice"] == {"low_usd": "0.000028", "expected_usd": "0.000224", "high_usd": "0.000424"}
    assert d["rows"][0]["price_source"] == "config" and d["rows"][0]["provider_model"] == "m"


def test_the_cheapest_strategy_makes_the_cheapest_provider_the_first_choice() -> None:
    s = settings(provider("dear", 1, DEAR), provider("cheap", 2, CHEAP), strategy="cheapest")
    est = estimate_jobs([job(1)], s)
    assert [(r.provider, r.first_choice) for r in est.rows] == [("cheap", True), ("dear", False)]


def test_the_weighted_strategy_is_shown_in_priority_order_every_time() -> None:
    s = settings(provider("b", 2, CHEAP, weight=100), provider("a", 1, CHEAP, weight=0.001), strategy="weighted")
    firsts = {tuple(r.provider for r in estimate_jobs([job(1)], s).rows if r.first_choice) for _ in range(20)}
    assert firsts == {("a",)}


def test_a_minimum_charge_applies_per_line_not_to_the_sum() -> None:
    s = settings(provider("p", prices={"m": {"input": "1", "output": "1", "min_charge": "0.001",
                                              "per_request": "0.0001"}}))
    jobs = [job(1, max_tokens=10), job(2, max_tokens=10), job(3, max_tokens=2000)]
    (row,) = estimate_jobs(jobs, s, output=OutputGuess(tokens=10)).rows
    # lines 1 and 2 cost $0.0001 + 22 tokens: each pays the $0.001 minimum; line 3 at most 2012 tokens + $0.0001
    assert row.low == 3 * D("0.001")
    assert row.expected == 3 * D("0.001")
    assert row.high == 2 * D("0.001") + cost(12, 2000, "1", "1") + D("0.0001")
    assert row.high != max(cost(36, 2020, "1", "1") + 3 * D("0.0001"), D("0.001"))  # not the sum's minimum


@pytest.mark.parametrize(("guess", "inp", "cap", "expected"), [
    (OutputGuess(), 12, 4096, 12),  # by default as many output tokens as input
    (OutputGuess(ratio=2.5), 12, 4096, 30),
    (OutputGuess(ratio=2.5), 12, 20, 20),  # capped by max_tokens
    (OutputGuess(ratio=0.01), 12, 4096, 1),  # at least one
    (OutputGuess(tokens=300), 12, 4096, 300),  # a fixed count ignores the input
    (OutputGuess(tokens=300), 12, 100, 100),  # ... but not max_tokens
    (OutputGuess(tokens=0), 12, 100, 1),
])
def test_output_guess(guess: OutputGuess, inp: int, cap: int, expected: int) -> None:
    assert guess.expected(inp, cap) == expected


@pytest.mark.parametrize(("guess", "body", "expected_out", "cap"), [
    (OutputGuess(tokens=500), {"max_tokens": 64}, 64, 64),
    (OutputGuess(tokens=5), {"max_tokens": 64}, 5, 64),
    (OutputGuess(ratio=3), {"max_completion_tokens": 30}, 30, 30),
    (OutputGuess(ratio=2), {}, 24, 4096),  # no max_tokens: the worker's default_max_tokens caps it
])
def test_expected_output_is_capped_by_each_lines_max_tokens(guess: OutputGuess, body: dict[str, Any],
                                                            expected_out: int, cap: int) -> None:
    (row,) = estimate_jobs([job(1, **body)], settings(provider("p", prices=CHEAP)), output=guess).rows
    assert (row.expected_output_tokens, row.max_output_tokens) == (expected_out, cap)
    assert row.expected == cost(12, expected_out, "1", "2")


@pytest.mark.parametrize("guess", [OutputGuess(), OutputGuess(tokens=1), OutputGuess(tokens=10**6),
                                   OutputGuess(ratio=0.001), OutputGuess(ratio=50)])
@pytest.mark.parametrize("prices", [CHEAP, {"m": {"input": "3", "output": "0", "min_charge": "0.00002"}},
                                    {"m": {"input": "0", "output": "0", "per_request": "0.01"}}])
def test_low_expected_high_are_in_order(guess: OutputGuess, prices: dict[str, Any]) -> None:
    words = [{"role": "user", "content": "word " * n} for n in (1, 40, 400)]
    jobs = [job(i, messages=[m], max_tokens=mt) for i, (m, mt) in enumerate(
        [(w, mt) for w in words for mt in (1, 16, 4000)], start=1)]
    (row,) = estimate_jobs(jobs, settings(provider("p", prices=prices)), output=guess).rows
    assert row.low is not None and row.expected is not None and row.high is not None
    assert D(0) <= row.low <= row.expected <= row.high
    assert row.lines == 9


def test_unknown_prices_give_unknown_totals_and_are_listed() -> None:
    s = settings(provider("known", 1, CHEAP), provider("nowhere", 2))
    est = estimate_jobs([job(1, model="m"), job(2, model="no-such-model-anywhere")], s)
    by = {(r.model, r.provider): r for r in est.rows}
    assert by[("m", "known")].price_source == "config"
    unknown = by[("no-such-model-anywhere", "nowhere")]
    assert unknown.price_source == "unknown" and (unknown.low, unknown.expected, unknown.high) == (None, None, None)
    assert by[("no-such-model-anywhere", "known")].first_choice is True  # `known` has no price for it either
    assert est.unpriced() == [("m", "nowhere"), ("no-such-model-anywhere", "known"),
                              ("no-such-model-anywhere", "nowhere")]
    assert est.first_choice_total() == (None, None, None)
    d = est.as_dict()
    assert d["first_choice"] == {"low_usd": None, "expected_usd": None, "high_usd": None}
    assert {"model": "m", "provider": "nowhere"} in d["unpriced"]


def test_an_unpriced_failover_leaves_the_first_choice_total_known_but_is_listed() -> None:
    s = settings(provider("known", 1, CHEAP), provider("nowhere", 2))
    est = estimate_jobs([job(1, max_tokens=10)], s, output=OutputGuess(tokens=10))
    assert est.first_choice_total() == (cost(12, 1, "1", "2"), cost(12, 10, "1", "2"), cost(12, 10, "1", "2"))
    assert est.unpriced() == [("m", "nowhere")]  # what --require-prices refuses


def test_official_prices_and_the_multiplier_price_a_model_without_config_rates() -> None:
    s = settings(provider("half", price_multiplier="0.5"))
    (row,) = estimate_jobs([job(1, model="gpt-4o", max_tokens=100)], s, output=OutputGuess(tokens=100)).rows
    assert row.price_source == "genai-prices"
    assert row.high == cost(12, 100, "1.25", "5")  # gpt-4o: $2.5 / $10 per 1M, halved


def test_the_price_is_looked_up_under_the_providers_own_model_name() -> None:
    s = settings(provider("p", prices={"vendor/m-v2": {"input": "5", "output": "5"}}, models={"m": "vendor/m-v2"}))
    (row,) = estimate_jobs([job(1, max_tokens=8)], s).rows
    assert (row.model, row.provider_model, row.price_source) == ("m", "vendor/m-v2", "config")
    assert row.high == cost(12, 8, "5", "5")


def test_bad_lines_are_counted_as_invalid() -> None:
    s = settings(provider("p", prices=CHEAP))
    est = estimate_jobs([BadLine(1, "invalid JSON"), job(2), BadLine(3, "duplicate custom_id", "c2", "bare")], s)
    assert (est.lines, est.invalid) == (1, 2)
    assert est.rows[0].lines == 1


def test_an_allow_list_narrows_the_providers() -> None:
    s = settings(provider("a", 1, CHEAP), provider("b", 2, DEAR), provider("c", 3, CHEAP))
    est = estimate_jobs([job(1, max_tokens=10)], s, allow=["c", "b"])
    assert [(r.provider, r.first_choice) for r in est.rows] == [("b", True), ("c", False)]
    assert est.first_choice_total()[2] == cost(12, 10, "10", "20")


def test_routes_narrow_the_providers_per_model() -> None:
    s = settings(provider("a", 1, {"*": {"input": "1", "output": "1"}}), provider("b", 2, {"*": {"input": "1", "output": "1"}}),
                 routes={"special-*": ["b"]})
    est = estimate_jobs([job(1, model="special-1"), job(2, model="plain")], s)
    assert {(r.model, r.provider, r.first_choice) for r in est.rows} == {
        ("special-1", "b", True), ("plain", "a", True), ("plain", "b", False)}


def test_a_model_no_provider_may_serve_is_unserved() -> None:
    s = settings(provider("a", 1, CHEAP), provider("b", 2, CHEAP), routes={"only-b": ["b"]})
    est = estimate_jobs([job(1, model="only-b"), job(2, model="only-b"), job(3)], s, allow=["a"])
    assert est.unserved == {"only-b": 2}
    assert est.lines == 3 and [(r.model, r.provider) for r in est.rows] == [("m", "a")]
    assert est.as_dict()["unserved"] == {"only-b": 2}


def test_a_dialect_no_provider_speaks_or_translates_is_unserved() -> None:
    s = settings(provider("chat-only", prices=CHEAP, dialects=("chat",), translate=False))
    est = estimate_jobs([job(1, dialect="messages", max_tokens=5), job(2)], s)
    assert est.unserved == {"m": 1}
    (row,) = est.rows
    assert (row.dialect, row.lines) == ("chat", 1)


def test_a_translated_provider_is_a_failover_after_native_ones() -> None:
    s = settings(provider("chat-only", 1, CHEAP, dialects=("chat",)), provider("native", 2, DEAR,
                                                                              dialects=("messages",)))
    est = estimate_jobs([job(1, dialect="messages", max_tokens=5)], s)
    assert [(r.provider, r.first_choice) for r in est.rows] == [("native", True), ("chat-only", False)]


def test_an_empty_file_costs_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n\n")
    est = estimate_file(src, settings(provider("p", prices=CHEAP)))
    assert est == Estimate() and est.first_choice_total() == (0, 0, 0)


def test_estimate_file_reads_each_line_format(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", '
        b'"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}}\n'
        b'{"custom_id": "b", "params": {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}}\n'
        b'{not json\n')
    est = estimate_file(src, settings(provider("p", prices=CHEAP)))
    assert (est.lines, est.invalid) == (2, 1)
    assert {(r.dialect, r.max_output_tokens) for r in est.rows} == {("chat", 7), ("messages", 9)}


def test_estimate_file_of_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read input file"):
        estimate_file(tmp_path / "nope.jsonl", settings(provider("p", prices=CHEAP)))


# lanes: an official Batch API at its price, when the batch's deadline allows it

NOW = 1_000_000.0
NEEDS = 86400 + 3600  # the default window (24 h) and margin (1 h)


def lane(name: str = "batch", priority: int = 100, **kw: Any) -> ProviderConfig:
    return provider(name, priority, kind="openai-batch", **kw)


def test_a_lane_is_priced_at_the_official_price_times_its_multiplier_of_one_half() -> None:
    s = settings(lane(), provider("reseller", price_multiplier="0.75"), strategy="cheapest")
    est = estimate_jobs([job(1, model="gpt-4o", max_tokens=100)], s, output=OutputGuess(tokens=100),
                        deadline=NOW + NEEDS, now=NOW)
    by = {r.provider: r for r in est.rows}
    assert by["batch"].price_source == by["reseller"].price_source == "genai-prices"
    assert by["batch"].high == cost(12, 100, "1.25", "5")  # gpt-4o: $2.5 / $10 per 1M, halved
    assert by["reseller"].high == cost(12, 100, "1.875", "7.5")
    # the lane is where routing sends the line; the reseller is its first synchronous choice (the failover)
    assert by["batch"].lane and by["batch"].lane_allowed and by["batch"].first_choice and not by["batch"].first_sync
    assert by["reseller"].first_sync and not by["reseller"].first_choice and not by["reseller"].lane
    assert est.first_choice_total() == (by["batch"].low, by["batch"].expected, by["batch"].high)
    assert est.sync_total() == (by["reseller"].low, by["reseller"].expected, by["reseller"].high)


def test_a_lane_with_listed_prices_charges_them() -> None:
    s = settings(lane(prices=CHEAP), provider("dear", 1, DEAR), strategy="cheapest")
    est = estimate_jobs([job(1, max_tokens=10)], s, output=OutputGuess(tokens=10), deadline=NOW + NEEDS, now=NOW)
    assert est.lane_total()[1] == cost(12, 10, "1", "2")  # listed prices are what the lane charges


def _mixed(deadline: float | None) -> Any:
    """Two lines of `m` (the lane is cheapest for them) and one of `other` (routed to `dear` only)."""
    s = settings(lane(prices={"*": CHEAP["m"]}), provider("dear", 1, {"*": DEAR["m"]}), strategy="cheapest",
                 routes={"other": ["dear"]})
    return estimate_jobs([job(1, max_tokens=10), job(2, max_tokens=10), job(3, model="other", max_tokens=10)], s,
                         output=OutputGuess(tokens=10), deadline=deadline, now=NOW)


def test_the_estimate_shows_the_total_with_the_lane_and_without_when_the_deadline_allows_it() -> None:
    est = _mixed(NOW + NEEDS + 5 * 3600)
    lane_line, sync_line = cost(12, 10, "1", "2"), cost(12, 10, "10", "20")
    assert est.sync_total()[1] == 3 * sync_line  # without the lane: every line at `dear`
    assert est.lane_total()[1] == 2 * lane_line + sync_line  # `other` is not the lane's (routes)
    assert est.first_choice_total() == est.lane_total()  # the first choice is what routing really picks
    assert est.lane_lines == 2
    d = est.as_dict()
    assert (d["lane"], d["lane_allowed"], d["lane_needs_s"], d["deadline"]) == ("batch", True, NEEDS,
                                                                                 NOW + NEEDS + 5 * 3600)
    assert d["lane_total_usd"] == str(2 * lane_line + sync_line).rstrip("0")
    assert d["sync_total_usd"] == d["without_lane"]["expected_usd"] == str(3 * sync_line).rstrip("0")
    assert d["first_choice"] == d["with_lane"] and d["first_choice"]["expected_usd"] == d["lane_total_usd"]
    (v,) = d["lanes"]
    assert v["text"] == "deadline leaves 30h; lane batch needs 25h (window 24h + margin 1h): allowed"
    assert v["lines"] == 2
    assert [(r["provider"], r["lane"], r["first_choice"], r["first_sync_choice"], r["lines"])
            for r in d["rows"] if r["model"] == "m"] == [("batch", True, True, False, 2), ("dear", False, False, True, 2)]


@pytest.mark.parametrize(("deadline", "text"), [
    (NOW + NEEDS - 61, "deadline leaves 24.9h; lane batch needs 25h (window 24h + margin 1h): not allowed: the lines "
                      "go to synchronous providers"),
    (NOW + 3600, "deadline leaves 1h; lane batch needs 25h (window 24h + margin 1h): not allowed: the lines go to "
                 "synchronous providers"),
    (None, "no deadline; lane batch needs 25h (window 24h + margin 1h): not allowed; give --deadline, or a "
           "--completion-window of at least 25h"),
])
def test_a_deadline_too_short_for_the_lane_leaves_every_line_synchronous(deadline: float | None, text: str) -> None:
    est = _mixed(deadline)
    assert est.lane_total() == est.first_choice_total() == est.sync_total()
    assert est.lane_lines == 0
    d = est.as_dict()
    assert (d["lane"], d["lane_allowed"], d["lane_needs_s"], d["deadline"]) == ("batch", False, NEEDS, deadline)
    assert d["lanes"][0]["text"] == text
    assert d["lane_total_usd"] == d["sync_total_usd"]


def test_a_lane_ranked_after_a_synchronous_provider_gets_no_line() -> None:
    s = settings(lane(priority=50, prices=CHEAP), provider("first", 1, DEAR))  # priority: `first` goes first
    est = estimate_jobs([job(1)], s, deadline=NOW + 10 * NEEDS, now=NOW)
    assert [r.provider for r in est.rows] == ["first"] and est.lanes == {}
    d = est.as_dict()
    assert (d["lane"], d["lane_allowed"], d["lane_needs_s"]) == (None, None, None)
    assert d["lane_total_usd"] == d["sync_total_usd"]


def test_lines_only_a_lane_may_serve_are_unserved_unless_the_deadline_allows_it() -> None:
    s = settings(lane(prices=CHEAP), provider("sync", 1, CHEAP))
    assert estimate_jobs([job(1)], s, allow=["batch"], deadline=None, now=NOW).unserved == {"m": 1}
    est = estimate_jobs([job(1, max_tokens=10)], s, allow=["batch"], deadline=NOW + NEEDS, now=NOW,
                        output=OutputGuess(tokens=10))
    assert est.unserved == {} and est.lane_total()[1] == cost(12, 10, "1", "2")


@pytest.mark.parametrize(("seconds", "text", "down"), [
    (90000, "25h", "25h"), (5400, "1.5h", "1.5h"), (3600, "1h", "1h"), (90, "1.5m", "1.5m"), (45, "45s", "45s"),
    (-7200, "-2h", "-2h"), (89999.9, "25h", "24.9h"), (44.6, "45s", "44s"),
    (3599.6, "1h", "59.9m"), (59.7, "1m", "59s"), (-3599.6, "-1h", "-59.9m")])
def test_spans_read_as_hours_minutes_or_seconds(seconds: float, text: str, down: str) -> None:
    assert (span(seconds), span(seconds, down=True)) == (text, down)


def _lane_estimate_args(tmp_path: Path) -> list[str]:
    """`estimate` of one gpt-4o line, a reseller at 0.75x and an openai-batch lane (cheapest first)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[routing]\nstrategy = "cheapest"\n[[providers]]\nname = "reseller"\nbase_url = "http://127.0.0.1:9"\n'
                   'price_multiplier = "0.75"\n[[providers]]\nname = "openai-batch"\nkind = "openai-batch"\n'
                   'base_url = "http://127.0.0.1:9"\n')
    src = tmp_path / "in.jsonl"
    src.write_text('{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}\n')
    return ["-c", str(cfg), "estimate", str(src), "--no-history", "--output-tokens", "100"]


def test_the_estimate_command_says_what_the_deadline_allows(tmp_path: Path) -> None:
    runner, base = CliRunner(), _lane_estimate_args(tmp_path)
    text = runner.invoke(cli, [*base, "--completion-window", "24h", "--deadline", "+30h"])
    assert text.exit_code == 0, text.output
    assert "deadline leaves 24h; lane openai-batch needs 25h (window 24h + margin 1h): not allowed" in text.output
    out = runner.invoke(cli, [*base, "--deadline", "+30h", "--json"])
    d = orjson.loads(out.stdout)
    assert (d["lane"], d["lane_allowed"], d["lane_needs_s"]) == ("openai-batch", True, NEEDS)
    assert D(d["lane_total_usd"]) == cost(12, 100, "1.25", "5")
    assert D(d["sync_total_usd"]) == cost(12, 100, "1.875", "7.5")
    past = runner.invoke(cli, [*base, "--deadline", "2020-01-01T00:00:00Z"])
    assert past.exit_code == ExitCode.USAGE and "Traceback" not in past.output
    assert "Error: deadline: 2020-01-01T00:00:00Z has passed" in past.output


def test_a_deadline_of_exactly_the_lanes_window_plus_margin_lets_it_in_and_the_lane_is_the_first_choice(
        tmp_path: Path) -> None:
    """`--deadline +25h` for a lane needing 25h: the deadline is read before the check, a moment earlier, so
    an exact check never passed (found by a fresh-clone check); the first-choice total ignored the lane."""
    runner, base = CliRunner(), _lane_estimate_args(tmp_path)
    out = runner.invoke(cli, [*base, "--deadline", "+25h", "--json"])
    assert out.exit_code == 0, out.output
    d = orjson.loads(out.stdout)
    assert (d["lane"], d["lane_allowed"], d["lane_lines"]) == ("openai-batch", True, 1)
    lane_cost, sync_cost = cost(12, 100, "1.25", "5"), cost(12, 100, "1.875", "7.5")
    assert D(d["first_choice"]["expected_usd"]) == D(d["with_lane"]["expected_usd"]) == lane_cost
    assert D(d["without_lane"]["expected_usd"]) == D(d["sync_total_usd"]) == sync_cost
    assert [(r["provider"], r["first_choice"], r["first_sync_choice"]) for r in d["rows"]] == [
        ("openai-batch", True, False), ("reseller", False, True)]
    text = runner.invoke(cli, [*base, "--completion-window", "25h"])
    assert text.exit_code == 0, text.output
    assert "openai-batch (lane) *" in text.output
    assert "deadline leaves 25h; lane openai-batch needs 25h (window 24h + margin 1h): allowed" in text.output
    assert f"On first-choice providers (*): expected ${usd_str(lane_cost)}" in text.output
    assert f"without it: expected ${usd_str(sync_cost)}" in text.output
    short = runner.invoke(cli, [*base, "--deadline", "+1498m"])
    assert "deadline leaves 24.9h; lane openai-batch needs 25h" in short.output and "not allowed" in short.output


def test_the_totals_line_names_the_lanes_the_lines_go_to() -> None:
    """Two lanes (`estimate` said "With the lane (3 lines there)" for both together)."""
    s = settings(lane("a", prices={"*": CHEAP["m"]}), lane("b", prices={"*": CHEAP["m"]}),
                 provider("dear", 1, {"*": DEAR["m"]}), strategy="cheapest", routes={"other": ["b", "dear"]})
    jobs = [job(1, max_tokens=10), job(2, max_tokens=10), job(3, model="other", max_tokens=10)]
    both = estimate_jobs(jobs, s, output=OutputGuess(tokens=10), deadline=NOW + NEEDS, now=NOW)
    sync = usd_str(3 * cost(12, 10, "10", "20"))
    assert with_lanes(both).startswith(f"With lanes a (2 lines) and b (1 line): as above; without them: expected "
                                       f"${sync}, range $")
    one = estimate_jobs(jobs[:2], s, output=OutputGuess(tokens=10), deadline=NOW + NEEDS, now=NOW)
    assert with_lanes(one).startswith("With lane a (2 lines there): as above; without it: expected $")


@pytest.mark.parametrize(("closed", "first", "lane_lines", "allowed"), [
    (frozenset(), "openai-batch", 1, True),
    (frozenset({"openai-batch"}), "reseller", 0, False),  # disabled after a 401, benched or cooling
])
def test_a_lane_the_shared_health_has_closed_is_not_the_first_choice(
        closed: frozenset[str], first: str, lane_lines: int, allowed: bool) -> None:
    """`estimate` priced a disabled lane as the first choice (found by a fresh-clone check): routing skips
    a closed lane, so the first choice and its total are the reseller's."""
    s = settings(ProviderConfig(name="reseller", base_url="http://127.0.0.1:9", price_multiplier=D("0.75")),
                 ProviderConfig(name="openai-batch", kind="openai-batch", base_url="http://127.0.0.1:9"),
                 strategy="cheapest")
    line = job(1, "gpt-4o")
    est = estimate_jobs([line], s, deadline=1_000_000 + 30 * 3600, now=1_000_000, closed=closed)
    assert [r.provider for r in est.rows if r.first_choice] == [first]
    d = est.as_dict()
    assert (d["lane"], d["lane_allowed"], d["lane_lines"]) == ("openai-batch", allowed, lane_lines)
    assert (d["first_choice"] == d["without_lane"]) is bool(closed)
