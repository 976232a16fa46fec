"""What happened to one line: the attempts made on providers, and the answer or the failure."""

from __future__ import annotations

from dataclasses import dataclass, field
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
                   d.get("wait_s", 0.0), d.get("started_at", 0.0), d.get("model"), usage, cost)

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
        return d


@dataclass(slots=True)
class Outcome:
    attempts: list[Attempt] = field(default_factory=list)
    reply: ProviderReply | None = None
    provider: ProviderConfig | None = None
    error: ProviderError | None = None
    message: str = ""
    rejected: bool = False  # the provider called the request itself bad: no failover
    wire_dialect: Dialect | None = None  # what the serving provider spoke, when it differs from the job's
    notes: list[str] = field(default_factory=list)  # what could not be mapped exactly
    defer_s: float | None = None  # nobody could take it now: look again in this many seconds
    last_answer: dict[str, str] = field(default_factory=dict)  # provider -> its last failed call
    over_budget: bool = False  # the batch's spending limit cannot cover the next call: the line waits

    @property
    def ok(self) -> bool:
        return self.reply is not None

    @property
    def billed(self) -> list[Billed]:
        return [b for a in self.attempts if (b := a.billed) is not None]

    def trimmed_attempts(self, head: int = 5, tail: int = 20) -> list[Attempt]:
        """A line retried for an hour keeps its first and last attempts, every billed one, and a
        count of the rest."""
        if len(self.attempts) <= head + tail + 1:
            return self.attempts
        middle = self.attempts[head:-tail]
        kept = [a for a in middle if a.billed is not None]
        gap = Attempt("…", None, 0.0, error=f"{len(middle) - len(kept)} more attempts not kept")
        return [*self.attempts[:head], gap, *kept, *self.attempts[-tail:]]
