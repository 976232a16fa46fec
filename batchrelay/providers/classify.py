"""What to do after a failed provider call (the README's failover table). Pure and table-tested."""

from __future__ import annotations

import enum

import orjson

from batchrelay.errors import ProviderBadResponse, ProviderError, ProviderHTTPError, ProviderTransportError


class Action(enum.StrEnum):
    RETRY = "retry"            # transient: same provider again (with backoff), then fail over
    FAILOVER = "failover"      # this provider cannot serve now; try the next one
    BENCH = "bench"            # billing: never retry; fail over; the provider is out of credit
    DISABLE = "disable"        # auth: never retry; fail over; the key is wrong
    COOL_MODEL = "cool_model"  # 404: this provider does not have this model
    FAIL_LINE = "fail_line"    # the request itself is bad: no other provider will do better


BILLING_WORDS = ("insufficient_quota", "credit balance", "quota", "billing", "insufficient balance")
# On a 429 a bare "quota" is usually a per-minute limit ("Quota exceeded for requests per minute"):
# benching the provider for it would idle it long after the limit resets.
RATE_LIMIT_BILLING_WORDS = tuple(w for w in BILLING_WORDS if w != "quota")
CONTEXT_WORDS = ("context length", "context_length", "maximum context", "too many tokens", "prompt is too long")


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:2000].decode("utf-8", "replace").lower()
    return orjson.dumps(data).decode()[:4000].lower()


def classify(err: ProviderError) -> Action:
    if isinstance(err, ProviderTransportError | ProviderBadResponse):
        return Action.RETRY
    if not isinstance(err, ProviderHTTPError) or err.status is None:
        return Action.FAILOVER  # e.g. missing API key variable: this provider cannot be used
    status, text = err.status, _error_text(err.body)
    if status == 402 or (status in (400, 403) and any(w in text for w in BILLING_WORDS)):
        return Action.BENCH
    if status == 429 and any(w in text for w in RATE_LIMIT_BILLING_WORDS):
        return Action.BENCH
    if status in (401, 403):
        return Action.DISABLE
    if status == 404:
        return Action.COOL_MODEL
    if status == 429:
        return Action.FAILOVER
    if status in (408, 409) or status >= 500:
        return Action.RETRY
    if status == 400 and any(w in text for w in CONTEXT_WORDS):
        return Action.FAILOVER
    if status in (400, 413, 422):
        return Action.FAIL_LINE
    return Action.FAILOVER


def retry_after_seconds(err: ProviderError) -> float | None:
    """Retry-After (seconds or HTTP date is not used by these providers) or retry-after-ms."""
    ms = err.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = err.headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            return None
    return None
