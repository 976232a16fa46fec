"""The log lines of a line's provider calls (relay.py), with their structured fields
(cli/logformat.py FIELDS): batch, line, provider, model, status, latency_ms, attempt (the line's
attempts so far, this one included), error (the class), outcome (what classify made of it).

An answered call is routine (DEBUG); a failed one is news (INFO); one that benches, disables or
cools its provider, and a line failing over to the next provider, are warnings.
"""

from __future__ import annotations

import logging
from typing import Any

from batchrelay.errors import ProviderError

log = logging.getLogger("batchrelay.worker.relay")
BLOCKED_AS = {"rate_limited": "cooling", "billing": "benched", "auth": "disabled"}  # health kind -> the log's word
MAX_REASON = 300


def fields(batch: str | None, line: int, attempt: int, provider: str, model: str, status: int | None,
           latency_ms: float | None = None, **more: Any) -> dict[str, Any]:
    return {"batch": batch, "line": line, "provider": provider, "model": model, "status": status,
            "latency_ms": None if latency_ms is None else round(latency_ms, 1), "attempt": attempt, **more}


def answered(batch: str | None, line: int, attempt: int, provider: str, model: str, latency_ms: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("call answered", extra=fields(batch, line, attempt, provider, model, 200, latency_ms, outcome="ok"))


def failed(batch: str | None, line: int, attempt: int, provider: str, model: str, e: ProviderError, action: str,
           kind: str, latency_ms: float) -> None:
    blocked = BLOCKED_AS.get(kind)
    level = logging.WARNING if blocked else logging.INFO
    if log.isEnabledFor(level):
        reason = e.reason[:MAX_REASON]
        event = f"{provider} {blocked} ({kind}): {reason}" if blocked else f"call failed ({action}): {reason}"
        log.log(level, event, extra=fields(batch, line, attempt, provider, model, e.status, latency_ms,
                                           error=type(e).__name__, outcome=action))


def failing_over(batch: str | None, line: int, attempt: int, provider: str, to: str, model: str, e: ProviderError,
                 action: str) -> None:
    log.warning("failing over from %s to %s: %s", provider, to, e.reason[:MAX_REASON],
                extra=fields(batch, line, attempt, provider, model, e.status, error=type(e).__name__, outcome=action))
