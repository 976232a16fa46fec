"""One validation layer: the shared parsers (parse.py), BatchSpec (spec.py), the error tree and
exit codes (errors.py), and the command line and the Python API refusing the same values alike."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrelay import Client, errors, parse
from batchrelay.config.settings import ProviderConfig, Settings, WorkerConfig, load_settings, parse_settings
from batchrelay.errors import ConfigError, ExitCode, InputError, InvalidValue
from batchrelay.spec import BatchSpec

from .conftest import batchrelay, openai_line, write_config

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("value", "kept"), [
    ("0.50", D("0.5")),
    ("$2", D(2)),
    (" 1.25 ", D("1.25")),
    (3, D(3)),
    (0.1, D("0.1")),
    (D("1e-12"), D("1e-12")),
    ("1.5e-12", D("2e-12")),  # kept to whole pico-dollars, half to even
    ("2.5e-12", D("2e-12")),
    ("0.0000000000014", D("1e-12")),
])
def test_a_usd_amount_is_kept_to_whole_pico_dollars(value: Any, kept: D) -> None:
    amount = parse.usd_amount(value)
    assert amount == kept
    assert parse.pico(amount) == parse.pico(kept) >= 1
    assert parse.usd_amount(amount) == amount  # a parsed amount passes again unchanged


@pytest.mark.parametrize(("value", "why"), [
    ("1e-13", "once kept to whole pico-dollars"),  # would be a limit of 0
    ("0.0000000000004", "once kept to whole pico-dollars"),
    (1e-13, "once kept to whole pico-dollars"),
    ("0", "must be more than 0"),
    ("-1", "must be more than 0"),
    (-0.5, "must be more than 0"),
    ("nan", "must be more than 0"),
    ("inf", "must be more than 0"),
    ("-Infinity", "must be more than 0"),
    ("abc", "is not an amount in USD"),
    ("", "is not an amount in USD"),
    ("1,5", "is not an amount in USD"),
    (True, "is not an amount in USD"),
    (None, "is not an amount in USD"),
])
def test_a_usd_amount_under_one_pico_dollar_or_not_a_number_is_refused(value: Any, why: str) -> None:
    with pytest.raises(InvalidValue, match=re.escape(why)):
        parse.usd_amount(value)


def test_pico_and_usd_convert_both_ways() -> None:
    assert parse.pico(D("0.000125")) == 125_000_000
    assert parse.usd(125_000_000) == D("0.000125")
    assert parse.usd(0) == D(0)


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90.0), ("30m", 1800.0), ("24h", 86400.0), ("7d", 604800.0), ("1.5h", 5400.0), (" 2h ", 7200.0),
    ("45", 45.0), (45, 45.0), (0.25, 0.25), (timedelta(hours=2), 7200.0), (86400.0, 86400.0),
])
def test_a_duration_has_one_unit_table(value: Any, seconds: float) -> None:
    assert parse.duration_s(value) == seconds
    assert parse.duration_s(parse.duration_s(value)) == seconds


@pytest.mark.parametrize(("value", "why"), [
    ("soon", "is not a duration"), ("2w", "is not a duration"), ("h", "is not a duration"),
    ("", "is not a duration"), ("-5s", "is not a duration"), ("1e3s", "is not a duration"),
    (True, "is not a duration"), (None, "is not a duration"),
    ("0s", "more than 0 seconds"), ("0", "more than 0 seconds"), (0, "more than 0 seconds"),
    (-1, "more than 0 seconds"), (float("nan"), "more than 0 seconds"), (float("inf"), "more than 0 seconds"),
    (timedelta(0), "more than 0 seconds"),
])
def test_a_duration_of_nothing_or_of_no_known_unit_is_refused(value: Any, why: str) -> None:
    with pytest.raises(InvalidValue, match=why):
        parse.duration_s(value)


@pytest.mark.parametrize(("value", "unix"), [
    ("2026-11-22T12:00:00Z", NOON),
    ("2026-11-22T13:00:00+01:00", NOON),
    (datetime(2026, 11, 22, 12, 0, tzinfo=UTC), NOON),
    (datetime(2026, 11, 22, 7, 0, tzinfo=timezone(timedelta(hours=-5))), NOON),
    (NOON, NOON),
    (int(NOON), NOON),
])
def test_an_instant_is_unix_time(value: Any, unix: float) -> None:
    assert parse.instant(value) == unix


@pytest.mark.parametrize("value", ["tomorrow", "", "22/11/2026", float("nan"), float("inf"), True, None])
def test_an_instant_that_is_no_time_is_refused(value: Any) -> None:
    with pytest.raises(InvalidValue):
        parse.instant(value)


@pytest.mark.parametrize(("value", "names"), [
    ("a,b", ("a", "b")),
    (" b , ,a,b", ("b", "a")),  # blanks and repeats dropped, order kept
    (["a"], ("a",)),
    (("a", "b"), ("a", "b")),
    (iter(["b"]), ("b",)),
    ("", None),
    (" , ", None),
    ([], None),
    (None, None),
])
def test_an_allow_list_is_provider_names(value: Any, names: tuple[str, ...] | None) -> None:
    assert parse.allow_list(value, ["a", "b"]) == names


@pytest.mark.parametrize(("value", "known", "message"), [
    ("a,c", ["a", "b"], "unknown providers c (configured: a, b)"),
    (["x", "y"], ["a"], "unknown providers x, y (configured: a)"),
    ("a", [], "unknown providers a (configured: none)"),
    ([1], None, "is not a list of provider names"),
])
def test_an_allow_list_names_only_configured_providers(value: Any, known: list[str] | None, message: str) -> None:
    with pytest.raises(InvalidValue, match=re.escape(message)):
        parse.allow_list(value, known)


def test_an_allow_list_without_known_names_is_only_parsed() -> None:
    assert parse.allow_list("anything, else") == ("anything", "else")


@pytest.mark.parametrize(("value", "ok"), [("chat", True), ("messages", True), ("embeddings", False),
                                           ("Chat", False), ("", False)])
def test_a_dialect_is_chat_or_messages(value: str, ok: bool) -> None:
    if ok:
        assert parse.dialect(value) == value
    else:
        with pytest.raises(InvalidValue, match="is not one of chat, messages"):
            parse.dialect(value)


@pytest.mark.parametrize(("url", "ok"), [
    ("https://example.com/hooks/batch", True),
    ("http://127.0.0.1:8081/h?token=abc", True),
    ("  https://example.com/x  ", True),
    ("ftp://example.com/x", False),
    ("https:///nohost", False),
    ("example.com/hook", False),
    ("https://exa mple.com/", False),
    ("https://example.com/\x07", False),
    ("https://example.com:99999/", False),
    ("https://example.com/" + "a" * 2100, False),
])
def test_webhook_urls(url: str, ok: bool) -> None:
    if ok:
        assert parse.webhook_url(url) == url.strip()
    else:
        with pytest.raises(InvalidValue, match="webhook URL"):
            parse.webhook_url(url)


def _settings(*names: str, **worker: Any) -> Settings:
    return Settings(worker=WorkerConfig(**worker),
                    providers=tuple(ProviderConfig(name=n, base_url="http://127.0.0.1:9") for n in names))


def test_a_spec_takes_the_chunk_size_and_line_limit_from_the_settings() -> None:
    spec = BatchSpec.of(_settings("a", chunk_size=7, max_line_bytes=4096))
    assert (spec.chunk_size, spec.max_line_bytes) == (7, 4096)
    assert (spec.name, spec.endpoint, spec.providers, spec.max_cost, spec.webhook) == (None, "chat", None, None, None)
    assert not spec.needs_prices


def test_a_spec_holds_each_option_parsed() -> None:
    spec = BatchSpec.of(_settings("a", "b"), name="n", endpoint="messages", providers="b, a", max_cost="$0.50",
                        completion_window="24h", start_at="2026-11-22T12:00:00Z", webhook=" https://x.test/h ")
    assert spec.model_dump() == {
        "name": "n", "endpoint": "messages", "providers": ("b", "a"), "max_cost": D("0.5"), "require_prices": False,
        "completion_window": 86400.0, "start_at": NOON, "webhook": "https://x.test/h", "chunk_size": 50,
        "max_line_bytes": 8 * 1024 * 1024, "cache": False, "deadline": None}
    assert spec.needs_prices  # a budget needs prices
    assert BatchSpec.of(_settings("a", "b"), spec) == spec  # a spec passes again unchanged


def test_options_given_over_a_spec_replace_its_fields() -> None:
    base = BatchSpec(name="base", max_cost=D(1), require_prices=True, chunk_size=3)
    spec = BatchSpec.of(_settings(), base, max_cost="2", completion_window=60)
    assert (spec.name, spec.max_cost, spec.require_prices, spec.completion_window, spec.chunk_size) == (
        "base", D(2), True, 60.0, 3)


def test_a_spec_names_every_bad_option_at_once() -> None:
    with pytest.raises(InputError) as caught:
        BatchSpec.of(_settings("a"), endpoint="embeddings", providers="a,zz", max_cost="1e-13",
                     completion_window="soon", start_at="tomorrow", webhook="mailto:a@b")
    message = str(caught.value)
    for part in ("endpoint: 'embeddings' is not one of chat, messages", "providers: unknown providers zz",
                 "max_cost: '1e-13': the amount must be more than 0", "completion_window: 'soon' is not a duration",
                 "start_at: 'tomorrow' is not an ISO-8601 time", "webhook: webhook URL must be http"):
        assert part in message
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_spec_refuses_options_it_does_not_know_and_cannot_be_changed() -> None:
    with pytest.raises(InputError, match="colour"):
        BatchSpec.of(_settings(), colour="red")
    spec = BatchSpec(name="n")
    with pytest.raises(ValueError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]
    assert spec.named("file.jsonl").name == "n"
    assert BatchSpec().named("file.jsonl").name == "file.jsonl"


def test_a_spec_built_without_settings_checks_no_provider_names() -> None:
    assert BatchSpec(providers="x,y").providers == ("x", "y")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown providers y"):
        BatchSpec.checked({"providers": "x,y"}, known_providers=["x"])


def test_the_config_refuses_a_schedule_budget_under_one_pico_dollar() -> None:
    schedule = {"name": "n", "cron": "* * * * *", "input": "x", "output_dir": "o"}
    with pytest.raises(ConfigError, match=r"schedules\[0\]\.max_cost: .*must be more than 0"):
        parse_settings({"schedules": [{**schedule, "max_cost": "1e-13"}]}, "c.toml")
    with pytest.raises(ConfigError, match=r"schedules\[0\]\.webhook: .*webhook URL"):
        parse_settings({"schedules": [{**schedule, "webhook": "mailto:a@b"}]}, "c.toml")
    assert parse_settings({"schedules": [{**schedule, "max_cost": "0.5"}]}).schedules[0].max_cost == D("0.5")


def _drawn_tree() -> dict[str, str | None]:
    """Each class the errors.py docstring draws, and the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^ {4}([│ ]*(?:├── |└── )?)(\w+)\s", line + " ")
        if not m or not m.group(2)[0].isupper():
            continue
        depth = len(m.group(1)) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[m.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, m.group(2)))
    return parents


def test_the_error_tree_docstring_draws_every_error_class_under_its_parent() -> None:
    classes = {name: c for name, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.BatchrelayError) and c.__module__ == errors.__name__}
    drawn = _drawn_tree()
    assert set(drawn) == set(classes)
    for name, cls in classes.items():
        base = next((b for b in cls.__bases__ if issubclass(b, errors.BatchrelayError)), None)
        assert drawn[name] == (base.__name__ if base else None), name


def test_exit_codes_are_defined_once() -> None:
    assert [int(c) for c in (ExitCode.OK, ExitCode.USAGE, ExitCode.FAILED_LINES, ExitCode.BUDGET)] == [0, 2, 3, 4]
    assert InvalidValue("x").exit_code == ConfigError.exit_code == ExitCode.USAGE
    assert issubclass(InvalidValue, InputError) and issubclass(InvalidValue, ValueError)
    package = Path(errors.__file__).parent
    for path in package.rglob("*.py"):  # no exit status spelled as a bare number
        text = path.read_text()
        assert not re.search(r"exit\((?:[1-9]\d*)\)|exit_code = \d", text), path


BAD_OPTIONS = [  # (the API's keyword, its value, the command line's option)
    ("max_cost", "1e-13", "--max-cost"),
    ("max_cost", "-1", "--max-cost"),
    ("max_cost", "nan", "--max-cost"),
    ("max_cost", "lots", "--max-cost"),
    ("completion_window", "soon", "--completion-window"),
    ("completion_window", "0s", "--completion-window"),
    ("start_at", "tomorrow", "--at"),
    ("webhook", "ftp://example.com/x", "--webhook"),
    ("providers", "sim,nope", "--providers"),
    ("endpoint", "embeddings", "--endpoint"),
]


@pytest.mark.parametrize(("keyword", "value", "option"), BAD_OPTIONS, ids=[f"{o}={v}" for _k, v, o in BAD_OPTIONS])
def test_the_command_line_and_the_api_refuse_the_same_value_with_the_same_reason(
        tmp_path: Path, redis_url: str, prefix: str, keyword: str, value: str, option: str) -> None:
    cfg = write_config(tmp_path / "c.toml", prefix, [{"name": "sim", "base_url": "http://127.0.0.1:9"}])
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(openai_line(1)) + b"\n")
    with Client(redis_url, settings=load_settings(cfg)) as client:
        with pytest.raises(InputError) as caught:
            client.submit(src, **{keyword: value})
        assert client.batches() == []
    api_field, _, api_reason = str(caught.value).partition(": ")
    assert api_field == keyword
    proc = batchrelay("-c", str(cfg), "submit", str(src), option, value, env={"REDIS_URL": redis_url})
    assert proc.returncode == ExitCode.USAGE and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"Error: Invalid value for '{option}': {api_reason}"
