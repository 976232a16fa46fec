"""What happened to one line: the attempts made on providers, and how its relay ended (`Result`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from batchrelay.config.settings import ProviderConfig
from batchrelay.errors import ProviderError
from batchrelay.money.ledger import Billed
from batchrelay.money.pricing import CallCost
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.reply import ProviderReply, Usage


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    status: int | None
    latency_ms: float
    action: str | None = None
    error: str | None = None
    wait_s: float = 0.0  # slept before this attempt: pacing, backoff or Retry-After
    started_at: float = 0.0
    model: str | None = None  # the provider's model name, for billed calls
    usage: Usage | None = None  # billed calls only: the answer, or a failure the provider billed
    cost: CallCost | None = None
    upstream_batch: str | None = None  # a lane's call: the upstream batch that answered (or failed) it

    @property
    def billed(self) -> Billed | None:
        if self.usage is None or self.cost is None:
            return None
        return Billed(self.provider, self.model or "?", self.usage, self.cost, failed=self.status != 200 or
                      self.action is not None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        usage = Usage.from_dict(d["usage"]) if d.get("usage") else None
        cost = CallCost.from_dict(d["cost"]) if d.get("cost") else None
        return cls(d["provider"], d.get("status"), d.get("latency_ms", 0.0), d.get("action"), d.get("error"),
                   d.get("wait_s", 0.0), d.get("started_at", 0.0), d.get("model"), usage, cost, d.get("upstream_batch"))

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"provider": self.provider, "status": self.status, "latency_ms": round(self.latency_ms, 1)}
        if self.action:
            d["action"] = self.action
        if self.error:
            d["error"] = self.error
        if self.wait_s:
            d["wait_s"] = round(self.wait_s, 3)
        if self.started_at:
            d["started_at"] = round(self.started_at, 3)
        if self.usage is not None and self.cost is not None:
            d["model"] = self.model
            d["usage"] = self.usage.as_dict()
            d["cost"] = self.cost.as_dict()
        if self.upstream_batch:
            d["upstream_batch"] = self.upstream_batch
        return d


def billed_calls(attempts: Iterable[Attempt]) -> list[Billed]:
    """The attempts a provider billed (answers, and failures it charged for anyway)."""
    return [b for a in attempts if (b := a.billed) is not None]


def trimmed(attempts: list[Attempt], head: int = 5, tail: int = 20) -> list[Attempt]:
    """A line retried for an hour keeps its first and last attempts, every billed one, and a count
    of the rest."""
    if len(attempts) <= head + tail + 1:
        return attempts
    middle = attempts[head:-tail]
    kept = [a for a in middle if a.billed is not None]
    gap = Attempt("…", None, 0.0, error=f"{len(middle) - len(kept)} more attempts not kept")
    return [*attempts[:head], gap, *kept, *attempts[-tail:]]


class Result(Enum):
    """How a line's relay ended: the one thing the worker acts on. The first three are final (the
    line gets its result record); the last two leave it pending."""

    ANSWERED = "answered"  # a provider answered: a success record
    REJECTED = "rejected"  # a provider called the request itself bad: an error record, no failover
    FAILED = "failed"  # no provider could serve it before its deadline (or none serves it at all)
    DEFERRED = "deferred"  # no provider can take it now: back to the queue, due in `defer_s`
    OVER_BUDGET = "over_budget"  # the batch's spending limit cannot cover the next call: it waits


@dataclass(slots=True)
class Outcome:
    kind: Result
    attempts: list[Attempt] = field(default_factory=list)
    reply: ProviderReply | None = None  # ANSWERED: the answer, in the job's own dialect
    provider: ProviderConfig | None = None  # ANSWERED: who answered; REJECTED: who refused
    error: ProviderError | None = None  # REJECTED, FAILED: the last provider error, if any
    message: str = ""  # REJECTED, FAILED: why, for the error record
    wire_dialect: Dialect | None = None  # what the serving provider spoke, when it differs from the job's
    notes: list[str] = field(default_factory=list)  # what could not be mapped exactly
    defer_s: float = 0.0  # DEFERRED: look again in this many seconds
    budget_wait: bool = False  # DEFERRED: for the budget's reservations in flight to settle, not for a provider

    def __post_init__(self) -> None:
        if (self.kind is Result.ANSWERED) != (self.reply is not None):
            raise ValueError(f"an outcome is ANSWERED exactly when it has a reply (got {self.kind.name})")

    @property
    def ok(self) -> bool:
        return self.kind is Result.ANSWERED

    @property
    def billed(self) -> list[Billed]:
        return billed_calls(self.attempts)

    def trimmed_attempts(self) -> list[Attempt]:
        return trimmed(self.attempts)
