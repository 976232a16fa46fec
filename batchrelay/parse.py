"""The values users give batchrelay, each parsed by one function for every way in: the command
line, the Python API, `serve` and the config file.

A value that cannot be used raises InvalidValue saying why, without naming where it came from:
the layer that read it adds that (click the option, pydantic the field). Every parser accepts what
it returns, so a value parsed once passes again unchanged.

Money is kept as whole pico-dollars (10^-12 USD) in Redis: `pico` and `usd` convert, and a budget
is refused unless it is at least one pico-dollar, so no amount becomes a limit of 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from urllib.parse import urlsplit

from batchrelay.errors import InvalidValue
from batchrelay.wire.dialect import DIALECTS, Dialect

PICO = Decimal("1e-12")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_URL_CHARS = 2048
# What a terminal acts on instead of showing: C0 and C1 controls and DEL (colours, cursor moves, bells,
# new lines), and the Unicode controls that reorder or break lines (bidi marks, embeddings, overrides,
# isolates; the line and paragraph separators).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


def pico(usd: Decimal) -> int:
    """USD as an integer number of pico-dollars, rounded half-even (the Redis form of money)."""
    return int((usd / PICO).to_integral_value(ROUND_HALF_EVEN))


def usd(pico_dollars: int) -> Decimal:
    return (Decimal(pico_dollars) * PICO).normalize() if pico_dollars else Decimal(0)


def usd_amount(value: Decimal | float | str) -> Decimal:
    """A spending limit in USD (`0.50`, `$2`, `1e-3`), as the store will keep it: at least one
    pico-dollar, so neither 0, a negative, NaN, infinity nor an amount that rounds to 0."""
    if isinstance(value, bool):
        raise InvalidValue(f"{value!r} is not an amount in USD (e.g. 0.50)")
    try:
        amount = Decimal(str(value).strip().lstrip("$"))
    except InvalidOperation:
        raise InvalidValue(f"{value!r} is not an amount in USD (e.g. 0.50)") from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidValue(f"{value!r}: the amount must be more than 0")
    kept = pico(amount)
    if kept < 1:
        raise InvalidValue(f"{value!r}: the amount must be more than 0 once kept to whole pico-dollars (10^-12 USD)")
    return usd(kept)


def duration_s(value: timedelta | float | str) -> float:
    """`90s`, `30m`, `24h`, `7d`, plain seconds (a number or a string) or a timedelta, as seconds (more than 0)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if not m:
            raise InvalidValue(f"{value!r} is not a duration like 90s, 30m, 24h or 7d")
        seconds = float(m.group(1)) * UNITS[m.group(2) or "s"]
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidValue(f"{value!r}: a duration must be more than 0 seconds")
    return seconds


def instant(value: datetime | float | str) -> float:
    """A point in time as unix time: a datetime (naive: local time), unix seconds, or an ISO-8601
    string (`2026-11-22T05:00:00Z`; without an offset, local time)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidValue(f"{value!r} is not a time")
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).timestamp()
        except ValueError:
            pass
    raise InvalidValue(f"{value!r} is not an ISO-8601 time like 2026-11-22T05:00:00Z")


def allow_list(value: str | Iterable[str] | None, known: Iterable[str] | None = None) -> tuple[str, ...] | None:
    """Provider names (`"a,b"` or a list), blanks and repeats dropped; None when none are named.
    With `known` (the configured providers' names) every name must be one of them."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in items):
        raise InvalidValue(f"{items!r} is not a list of provider names")
    names = tuple(dict.fromkeys(n.strip() for n in items if n.strip()))
    if known is not None:
        configured = set(known)
        unknown = [n for n in names if n not in configured]
        if unknown:
            raise InvalidValue(f"unknown providers {', '.join(unknown)} "
                               f"(configured: {', '.join(sorted(configured)) or 'none'})")
    return names or None


def batch_name(value: str) -> str | None:
    """A batch's name without control characters (CONTROL: a file name can carry escape sequences
    meant for whoever lists the batches); None when nothing is left."""
    return CONTROL.sub("", value) or None


def dialect(value: str) -> Dialect:
    """The dialect of bare request bodies: `chat` or `messages`."""
    for d in DIALECTS:
        if value == d:
            return d
    raise InvalidValue(f"{value!r} is not one of {', '.join(DIALECTS)}")


def http_url(url: str, what: str = "URL", example: str = "https://example.com/") -> str:
    """An http or https URL with a host (`what` names it in the InvalidValue)."""
    if not isinstance(url, str):
        raise InvalidValue(f"{url!r} is not a {what}")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise InvalidValue(f"{what} is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidValue(f"{what} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise InvalidValue(f"{what} is not valid: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue(f"{what} must be http:// or https:// with a host, e.g. {example}")
    return url


def webhook_url(url: str) -> str:
    """A URL a batch object can be POSTed to."""
    return http_url(url, "webhook URL", "https://example.com/hooks/batch")
