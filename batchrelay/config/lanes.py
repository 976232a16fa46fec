"""Lanes: an official Batch API as a provider (`kind = "openai-batch"` or `"anthropic-batch"`).

A lane is never called line by line: lines whose batch's deadline leaves the upstream window plus a
margin are gathered into an upstream batch (OpenAI Files + Batches, Anthropic Message Batches),
polled, and their answers written like any call's, at the lane's price (the official price times
`price_multiplier`, 0.5 by default for these kinds). The lane settings sit flat in the provider's
table, as the other provider settings do:

    [[providers]]
    name = "openai-batch"
    kind = "openai-batch"
    base_url = "https://api.openai.com"
    api_key_env = "OPENAI_API_KEY"
    window_s = 86400      # the upstream completion window
    margin_s = 3600       # a parcel not ended this long before its batch's deadline is cancelled
    gather_s = 60         # an upstream batch is sent this long after its first line was taken

This module is pure: the defaults per kind and the checks a lane provider must pass.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ProviderKind = Literal["chat", "openai-batch", "anthropic-batch"]
BATCH_KINDS: tuple[ProviderKind, ...] = ("openai-batch", "anthropic-batch")
MiB = 1024 * 1024
# the upstream caps (OpenAI: 50,000 requests and 200 MB per input file; Anthropic: 100,000 requests
# and 256 MB per Message Batch): a lane's own limits may only be lower
MAX_LINES: dict[str, int] = {"openai-batch": 50_000, "anthropic-batch": 100_000}
MAX_BYTES: dict[str, int] = {"openai-batch": 200 * MiB, "anthropic-batch": 256 * MiB}
# what a synchronous provider has that a lane has no use for (it is never called line by line)
WAITING = "waiting upstream"  # a lane holding lines, whose health says nothing more
IDLE = "idle"  # a lane holding no lines (and neither benched nor disabled)
# health states a lane holding lines shows as WAITING: none of them says more (benched, disabled,
# cooling and an open breaker do, and are kept)
QUIET_STATES = ("untried", "ok", "half-open")


def lane_state(health_state: str, holding: bool) -> str:
    """The state a lane shows (`status`, `providers`, the provider-state metric): a lane is never called
    line by line, so its health never sees a call succeed and `untried` would say nothing; one holding
    lines is `waiting upstream`, one holding none `idle`; benched, disabled, cooling still show."""
    if holding:
        return WAITING if health_state in QUIET_STATES else health_state
    return IDLE if health_state == "untried" else health_state


NOT_FOR_LANES = ("rpm", "tpm", "plan", "plans", "max_concurrency", "endpoints", "models_path", "credits_path")


class LaneConfig(BaseModel):
    """How a lane gathers, sends and watches its upstream batches (durations in seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: float = Field(default=86400, gt=0)  # upstream completion window (both APIs: 24 h)
    margin_s: float = Field(default=3600, ge=0)  # the time left at the deadline for synchronous failover
    max_lines: int = Field(ge=1)  # per upstream batch
    max_bytes: int = Field(ge=1)  # per upstream input (the JSONL file, or the Message Batch body)
    gather_s: float = Field(default=60, ge=0)  # an open parcel is sealed this long after its first line
    poll_min_s: float = Field(default=15, gt=0)  # polling an upstream batch backs off from here ...
    poll_max_s: float = Field(default=600, gt=0)  # ... to here,
    poll_factor: float = Field(default=1.5, ge=1)  # by this factor per poll that saw no progress
    cancel_wait_s: float = Field(default=900, ge=0)  # an upstream cancel not done by then: lines are released
    create_wait_s: float = Field(default=120, ge=0)  # a create cut off by a crash: looked for this long
    delete_files: bool = True  # delete the uploaded input file once the parcel is collected


LANE_FIELDS = tuple(LaneConfig.model_fields)


def lane_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A provider table with its lane settings lifted into `lane`, and the defaults of its kind
    (price multiplier 0.5, the kind's dialect and auth); ValueError for lane settings on a
    provider that is not a lane."""
    kind = data.get("kind", "chat")
    flat = {k: data[k] for k in LANE_FIELDS if k in data}
    if kind not in BATCH_KINDS:
        if flat or data.get("lane") is not None:  # a config written back out has `lane = None`
            names = ", ".join(flat) or "lane"
            raise ValueError(f"{names}: lane settings, for kind = \"openai-batch\" or \"anthropic-batch\" only")
        return data
    out = {k: v for k, v in data.items() if k not in flat}
    out["lane"] = {"max_lines": MAX_LINES[kind], "max_bytes": MAX_BYTES[kind], **(data.get("lane") or {}), **flat}
    out.setdefault("price_multiplier", "0.5")
    out.setdefault("dialects", ("chat",) if kind == "openai-batch" else ("messages",))
    if kind == "anthropic-batch":
        out.setdefault("auth", "x-api-key")
    return out


def lane_problems(kind: str, lane: LaneConfig | None, settings: dict[str, Any], *, variant: str,
                  cost_source: str) -> list[str]:
    """Why a provider of `kind` with these settings cannot be (or have) a lane; empty when it can.
    `settings`: the provider's fields; those of NOT_FOR_LANES count when given (not None, not empty)."""
    if kind not in BATCH_KINDS:
        return ["`lane` is for kind = \"openai-batch\" or \"anthropic-batch\" only"] if lane is not None else []
    assert lane is not None  # lane_defaults always sets it for these kinds
    out = [f"`{f}` is not for a lane (it is never called line by line)" for f in NOT_FOR_LANES
           if settings.get(f) not in (None, {}, ())]
    if variant != "standard":
        out.append(f"variant = {variant!r} is not for a lane")
    if cost_source != "computed":
        out.append("a lane's cost is computed from its usage at its price: cost_source must be \"computed\"")
    if lane.max_lines > MAX_LINES[kind]:
        out.append(f"max_lines {lane.max_lines} is over {kind}'s cap of {MAX_LINES[kind]:,} lines per batch")
    if lane.max_bytes > MAX_BYTES[kind]:
        out.append(f"max_bytes {lane.max_bytes} is over {kind}'s cap of {MAX_BYTES[kind]:,} bytes per batch")
    if lane.poll_min_s > lane.poll_max_s:
        out.append("poll_min_s must not be over poll_max_s")
    if lane.margin_s < lane.poll_max_s:
        out.append("margin_s must be at least poll_max_s: a late upstream batch must be seen before its margin is "
                   "used up")
    return out
