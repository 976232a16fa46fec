"""OpenAI's expiry policies (pure): a file's `expires_after` on upload and a batch's
`output_expires_after` for its output and error files, `{"anchor": "created_at", "seconds": N}`
with N from an hour to 30 days. `serve` honours them (the file is gone once past its time) or
refuses them with a 400 naming the parameter; it never ignores one."""

from __future__ import annotations

from typing import Any

from batchrelay.serve.params import BadParam, clip

MIN_S = 3600
MAX_S = 30 * 86400
ANCHOR = "created_at"


def policy_seconds(value: Any, param: str) -> int:
    """The policy's seconds; BadParam naming `param` for anything else."""
    if not isinstance(value, dict) or set(value) != {"anchor", "seconds"}:
        raise BadParam(param, f"{param} must be an object with exactly `anchor` and `seconds`")
    if value["anchor"] != ANCHOR:
        raise BadParam(param, f"{param}.anchor must be {ANCHOR!r}, not {clip(value['anchor'])!r}")
    seconds = value["seconds"]
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not MIN_S <= seconds <= MAX_S:
        raise BadParam(param, f"{param}.seconds must be an integer from {MIN_S} (an hour) to {MAX_S} (30 days), "
                              f"not {clip(seconds)}")
    return seconds


def form_policy(fields: dict[str, str], param: str) -> Any:
    """A policy sent as form fields (`expires_after[anchor]`, `expires_after[seconds]`, as the SDKs
    send it in a multipart upload) as the value `policy_seconds` takes; None when none was sent."""
    if param in fields:
        return fields[param]  # a plain field: not an object, refused as such
    sent = {k[len(param) + 1:-1]: v for k, v in fields.items() if k.startswith(param + "[") and k.endswith("]")}
    if not sent:
        return None
    policy: dict[str, Any] = dict(sent)
    if policy.get("seconds", "").isdigit():
        policy["seconds"] = int(policy["seconds"])
    return policy


def expires_at(created_at: float, seconds: str | int | None) -> float | None:
    """When a file with this policy (seconds, as stored) expires; None when it has none."""
    return None if seconds in (None, "") else created_at + int(seconds)


def expired(at: float | None, now: float) -> bool:
    return at is not None and now >= at
