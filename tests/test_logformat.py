"""The log's formats, its redaction and its quieting of arq (cli/logformat.py, cli/logs.py), record by
record: pure but for `setup_logging`, which is checked through the stderr it writes."""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import quote

import click
import orjson
import pytest

from batchrelay.cli.logformat import ArqPerJob, JsonFormatter, RedactingFilter, Redactor, TextFormatter
from batchrelay.cli.logs import LogSetup, setup_logging

KEY = "sk-PLANTED-0123456789abcdef/ghij+Zz"
NL_KEY = "first-half-of-it-0123\nX-Injected: second-half-4567"


def record(msg: str, *args: Any, level: int = logging.INFO, name: str = "batchrelay.worker.relay",
           exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    rec = logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)
    rec.created = 1_796_000_000.25  # 2026-11-30T00:53:20.250Z
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def raised(e: BaseException) -> BaseException:
    try:
        raise e
    except BaseException as caught:
        return caught


# --- JSON ------------------------------------------------------------------------------------------

CALL = {"batch": "batch_1", "line": 7, "provider": "sim", "model": "gpt-4o-mini", "status": 503,
        "latency_ms": 12.5, "attempt": 2, "error": "ProviderError"}


@pytest.mark.parametrize(("rec", "expected"), [
    (record("call failed (retry): %s", "upstream down", level=logging.INFO, **CALL),
     {"time": "2026-11-30T00:53:20.250Z", "level": "info", "logger": "batchrelay.worker.relay",
      "event": "call failed (retry): upstream down", **CALL}),
    (record("Redis is back after %.0fs", 3.2, level=logging.WARNING, name="batchrelay.worker.worker", wait_s=3.2),
     {"time": "2026-11-30T00:53:20.250Z", "level": "warning", "logger": "batchrelay.worker.worker",
      "event": "Redis is back after 3s", "wait_s": 3.2}),
    (record("plain", level=logging.DEBUG, name="arq.worker", batch=None),  # a None field is left out
     {"time": "2026-11-30T00:53:20.250Z", "level": "debug", "logger": "arq.worker", "event": "plain"}),
])
def test_a_json_line_has_the_time_level_logger_event_and_the_fields_the_record_carries(
        rec: logging.LogRecord, expected: dict[str, Any]) -> None:
    assert orjson.loads(JsonFormatter().format(rec)) == expected


def test_an_exception_is_one_field_of_the_one_line_and_names_its_class() -> None:
    line = JsonFormatter().format(record("line %s failed\ninside", 3, level=logging.ERROR,
                                         exc=raised(ValueError("bad\nvalue"))))
    assert "\n" not in line
    got = orjson.loads(line)
    assert got["event"] == "line 3 failed\ninside" and got["error"] == "ValueError"
    assert got["exception"].startswith("Traceback") and got["exception"].endswith("ValueError: bad\nvalue")


@pytest.mark.parametrize(("value", "shown"), [(object, "<class 'object'>"), (2**70, str(2**70)),
                                               ({1: "a"}, {"1": "a"})])
def test_a_value_json_cannot_encode_is_written_as_text(value: Any, shown: Any) -> None:
    assert orjson.loads(JsonFormatter().format(record("x", model=value)))["model"] == shown


def test_a_record_whose_arguments_do_not_fit_is_still_logged() -> None:
    rec = record("%d calls", "not a number")
    assert RedactingFilter(REDACT).filter(rec) and rec.getMessage() == "%d calls ('not a number',)"


# --- text ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rec", "expected"), [
    (record("call failed (retry): %s", "down", **CALL),
     "2026-11-30T00:53:20.250Z INFO batchrelay.worker.relay call failed (retry): down batch=batch_1 line=7 "
     "provider=sim model=gpt-4o-mini status=503 latency_ms=12.5 attempt=2 error=ProviderError"),
    (record("no fields", level=logging.WARNING), "2026-11-30T00:53:20.250Z WARNING batchrelay.worker.relay no fields"),
    (record("spaces", model="a b", provider=""),  # quoted, so the pairs still split on spaces
     '2026-11-30T00:53:20.250Z INFO batchrelay.worker.relay spaces provider="" model="a b"'),
    (record("a fake\n2026-01-01 ERROR line \x1b[2J", provider="p\x1b]0;x\x07"),  # no forged line, no escape
     "2026-11-30T00:53:20.250Z INFO batchrelay.worker.relay a fake\\n2026-01-01 ERROR line \\x1b[2J "
     "provider=p\\x1b]0;x\\x07"),
])
def test_a_text_line_reads_time_level_logger_message_then_the_fields(rec: logging.LogRecord, expected: str) -> None:
    assert TextFormatter().format(rec) == expected


def test_a_text_line_is_followed_by_its_traceback() -> None:
    text = TextFormatter().format(record("oops", level=logging.ERROR, exc=raised(KeyError("k"))))
    first, *rest = text.splitlines()
    assert first.endswith("ERROR batchrelay.worker.relay oops") and rest[0].startswith("Traceback")


# --- secrets ---------------------------------------------------------------------------------------

REDACT = Redactor([KEY, NL_KEY, "short"])


@pytest.mark.parametrize(("text", "expected"), [
    (f"upstream failed for {KEY}", "upstream failed for ***"),
    (f"json {KEY.replace('/', chr(92) + '/')}", "json ***"),  # as PHP's json_encode writes it
    (f"url {quote(KEY, safe='')}", "url ***"),
    (f"b64 {base64.b64encode(KEY.encode()).decode()}", "b64 ***"),
    (f"basic {base64.b64encode(f'Bearer {KEY}'.encode()).decode()}", "basic ***"),
    (f"clipped {KEY[:20]}", "clipped ***"),  # a reason cut short still starts with the key
    ("halves first-half-of-it-0123 and X-Injected: second-half-4567", "halves *** and ***"),
    ("header Authorization: Bearer abcdef123456", "header Authorization: ***"),
    ("bare Bearer abcdef123456 token", "bare Bearer *** token"),
    ('{"x-api-key": "unknown-key-value-123"}', '{"x-api-key": "***"}'),
    ("api_key=zzzzzzzzzzzz&q=1", "api_key=***&q=1"),
    ("an sk-ant-abcdefghijklmnop key", "an sk-*** key"),
    ("a short value or a word like Bearer or sk-1 stays", "a short value or a word like Bearer or sk-1 stays"),
    ("api_key_env names BR_KEY, which is not set", "api_key_env names BR_KEY, which is not set"),
])
def test_the_redactor_takes_out_keys_in_every_form_and_credential_shapes(text: str, expected: str) -> None:
    assert REDACT(text) == expected


def test_the_redacting_filter_cleans_message_arguments_fields_and_traceback() -> None:
    rec = record("calling with %s", KEY, error=f"KeyError {KEY}", provider="sim",
                 exc=raised(RuntimeError(f"sent {KEY}")))
    assert RedactingFilter(REDACT).filter(rec)
    for text in (JsonFormatter().format(rec), TextFormatter().format(rec)):
        assert KEY[:12] not in text and "***" in text
    assert rec.getMessage() == "calling with ***" and rec.provider == "sim"


def test_setup_logging_writes_redacted_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        setup_logging(LogSetup("json", "debug"), secrets=[KEY])
        log = logging.getLogger("batchrelay.test")
        log.warning("key %s", KEY, extra={"batch": "b1", "error": f"x {KEY}"})
        log.debug("debug shows")
        logging.getLogger("httpx").info("HTTP Request: POST http://p/v1 (no --log-http: hidden)")
        setup_logging(LogSetup("text", "warning"))  # again: replaces the handler, does not add one
        log.info("info hidden at warning")
        log.warning("text now")
    finally:
        for h in [h for h in root.handlers if h not in before[1]]:
            root.removeHandler(h)
        root.setLevel(before[0])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    first, second = orjson.loads(lines[0]), orjson.loads(lines[1])
    assert (first["event"], first["batch"], first["error"]) == ("key ***", "b1", "x ***")
    assert second["event"] == "debug shows"
    assert lines[2].endswith("WARNING batchrelay.test text now")
    assert KEY[:12] not in "\n".join(lines)


# --- arq's per-job lines ---------------------------------------------------------------------------

@pytest.mark.parametrize(("msg", "level", "root", "kept_as"), [
    ("%6.2fs → %s(%s)%s", logging.INFO, logging.INFO, None),  # a job (or cron tick) starts
    ("%6.2fs ← %s ● %s", logging.INFO, logging.INFO, None),
    ("recording health: %s", logging.INFO, logging.INFO, None),
    ("%6.2fs → %s(%s)%s", logging.INFO, logging.DEBUG, logging.DEBUG),  # shown at debug, as debug
    ("Starting worker for %d functions: %s", logging.INFO, logging.INFO, logging.INFO),  # the banner stays
    ("%6.2fs ! %s max retries %d exceeded", logging.WARNING, logging.INFO, logging.WARNING),
])
def test_arq_per_job_lines_show_only_at_debug(msg: str, level: int, root: int, kept_as: int | None) -> None:
    rec = record(msg, level=level, name="arq.worker")
    before = logging.getLogger().level
    logging.getLogger().setLevel(root)
    try:
        kept = ArqPerJob().filter(rec)
    finally:
        logging.getLogger().setLevel(before)
    assert (rec.levelno if kept else None) == kept_as


# --- the options -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("quiet", "verbose", "explicit", "expected"), [
    (False, False, False, LogSetup("json", "info")),
    (True, False, False, LogSetup("json", "warning")),
    (False, True, False, LogSetup("json", "debug", http=True)),
    (False, False, True, LogSetup("json", "info")),
])
def test_quiet_and_verbose_are_log_levels(quiet: bool, verbose: bool, explicit: bool, expected: LogSetup) -> None:
    given = LogSetup("json", "info", level_given=explicit)
    assert given.aliased(quiet=quiet, verbose=verbose) == expected


@pytest.mark.parametrize(("quiet", "verbose", "explicit"), [(True, True, False), (True, False, True),
                                                             (False, True, True)])
def test_contradicting_log_options_are_a_usage_error(quiet: bool, verbose: bool, explicit: bool) -> None:
    with pytest.raises(click.UsageError):
        LogSetup(level_given=explicit).aliased(quiet=quiet, verbose=verbose)


def test_run_hands_its_log_options_to_its_worker_processes() -> None:
    assert LogSetup("json", "debug", http=True).child_args() == ["--log-format", "json", "--log-level", "debug",
                                                                 "--log-http"]
    assert LogSetup().child_args() == ["--log-format", "text", "--log-level", "info"]
    assert LogSetup(level="debug").access_log and not LogSetup(level="info").access_log
