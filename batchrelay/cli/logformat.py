"""How a log record becomes a line: JSON (one object per line, for a log shipper) or text (for a
person), and what is taken out of it first (secrets) or left out (arq's per-job chatter).

The fields a record may carry, put on it with `extra=` at the log sites (worker/relay.py,
worker/runtime.py, worker/worker.py), are FIELDS; both formats show those a record has, in that
order, after the message. Everything here is pure but for reading the clock of the record.
"""

from __future__ import annotations

import base64
import logging
import re
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from batchrelay.parse import CONTROL

# in the order the formats show them; `attempt` is the line's attempt number (1 = its first call)
FIELDS = ("batch", "line", "job", "provider", "model", "status", "outcome", "latency_ms", "attempt", "error",
          "wait_s", "lines")
LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
               logging.CRITICAL: "critical"}
MASK = "***"


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def level_name(levelno: int) -> str:
    return LEVEL_NAMES.get(levelno) or logging.getLevelName(levelno).lower()


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields the record carries (FIELDS, in order; None left out)."""
    got = record.__dict__
    return {k: got[k] for k in FIELDS if got.get(k) is not None}


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    return record.exc_text or None


def _error_class(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return record.exc_info[0].__name__
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, event (the message), the
    record's FIELDS, and `exception` (the traceback as one string) when there is one. A newline in
    any value is escaped by JSON itself, so a record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _iso(record.created), "level": level_name(record.levelno),
                               "logger": record.name, "event": record.getMessage(), **fields_of(record)}
        if "error" not in out and (cls := _error_class(record)):
            out["error"] = cls
        if exc := _exception_text(record):
            out["exception"] = exc
        if record.stack_info:
            out["stack"] = record.stack_info
        try:
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # an int past 64 bits, say: as text rather than no line at all
            return orjson.dumps({k: v if isinstance(v, str | float | bool) else str(v)
                                 for k, v in out.items()}).decode()


def _shown(value: Any) -> str:
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        return orjson.dumps(text).decode()  # quoted, so `k=v` pairs still split on spaces
    return text


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER message k=v k=v`: the JSON format's content for a person. Control
    characters in the message and fields are shown escaped (a provider's error text must not move a
    terminal's cursor or fake a log line); a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={_shown(v)}" for k, v in fields_of(record).items())
        head = f"{_iso(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        line = CONTROL.sub(_escaped, f"{head} {pairs}" if pairs else head)
        if exc := _exception_text(record):
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _escaped(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


# --- secrets -------------------------------------------------------------------------------------

# shapes of a credential whatever its value: an Authorization or x-api-key header's value, a bearer
# token, an OpenAI/Anthropic-style `sk-` key
SHAPES = (
    (re.compile(r"(?i)\b((?:x-api-key|api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?)"
                r"(?:(?:bearer|basic)\s+)?[^\s\"',;&}]+"), r"\1" + MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{12,}[A-Za-z0-9_+/=-]*"), "sk-" + MASK),
)
MIN_SECRET = 6  # shorter values are not masked: they would mask ordinary words


def _forms(secret: str) -> set[str]:
    """The ways a secret could be written: raw, JSON- or URL-escaped, base64 (alone or as a Basic or
    Bearer header's payload), and each line of one with a newline."""
    forms = {secret, secret.replace("/", "\\/"), quote(secret, safe=""), base64.b64encode(secret.encode()).decode(),
             base64.b64encode(f"Bearer {secret}".encode()).decode(), orjson.dumps(secret).decode()[1:-1]}
    forms.update(part.strip() for part in secret.splitlines())
    return {f for f in forms if len(f) >= MIN_SECRET}


class Redactor:
    """Takes secrets out of text: the values of the configured key variables (in every form
    `_forms` knows, and the start of one cut short), then anything shaped like a credential."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = sorted({f for s in secrets if s for f in _forms(s)}, key=len, reverse=True)
        # a secret cut short (a reason clipped to 500 characters) still starts with its first 12
        prefixes = sorted({re.escape(s.strip()[:12]) + r"\S*" for s in secrets if len(s.strip()) >= 16})
        parts = [re.escape(f) for f in forms] + prefixes
        self.values = re.compile("|".join(parts)) if parts else None

    def __call__(self, text: str) -> str:
        if self.values is not None:
            text = self.values.sub(MASK, text)
        for pattern, replacement in SHAPES:
            text = pattern.sub(replacement, text)
        return text


class RedactingFilter(logging.Filter):
    """The handler's last line of defence: the message, the string fields, the traceback and the
    stack of every record are redacted before any formatter sees them."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: log what there is rather than raise
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        for k in FIELDS:
            v = record.__dict__.get(k)
            if isinstance(v, str):
                setattr(record, k, self.redact(v))
        if exc := _exception_text(record):
            record.exc_text = self.redact(exc)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


# --- arq's chatter -------------------------------------------------------------------------------

# arq logs each job's start, end and retry (a cron tick is a job: webhooks every 2 s, the sweep every
# 15 s) and its health at INFO; these templates mark them
ARQ_PER_JOB = ("%6.2fs ", "recording health")


class ArqPerJob(logging.Filter):
    """On the `arq.worker` logger: its per-job lines become DEBUG (shown only at --log-level debug);
    its warnings, errors and start-up banner stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(record.msg, str) and record.msg.startswith(ARQ_PER_JOB):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True
