"""What one provider call returned, in the same terms for both dialects: its tokens and its answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call used, the same way for both dialects: `input_tokens` counts every input token,
    those read from the prompt cache (`cached_input_tokens`) and written to it (`cache_write_tokens`)
    included; `reasoning_tokens` are part of `output_tokens`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cached_input_tokens - self.cache_write_tokens)

    @property
    def billable(self) -> bool:
        return self.input_tokens > 0 or self.output_tokens > 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Usage:
        return cls(**{f: int(d.get(f, 0)) for f in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ProviderReply:
    body: dict[str, Any]
    usage: Usage
    latency_ms: float
    request_id: str | None
    reported_cost: Decimal | None = None
    notes: list[str] = field(default_factory=list)
