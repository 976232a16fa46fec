"""`[cache]`: the response cache (store/cache.py), off unless enabled."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchrelay import parse

DEFAULT_TTL_S = 7 * 86400


class CacheConfig(BaseModel):
    """`enabled`: the default of `run`/`submit --cache` and of `serve`'s batches. `ttl`: seconds or
    "7d"-style. `max_mb`: the stored answers' cap, oldest evicted first. `lease_s`: a single-flight
    lease lapses this long after its worker stops renewing it (it died); another then takes over."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    ttl: float = DEFAULT_TTL_S
    max_mb: float = Field(default=512, gt=0)
    lease_s: float = Field(default=10, gt=0)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: float | str) -> float:
        return parse.duration_s(v)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)
