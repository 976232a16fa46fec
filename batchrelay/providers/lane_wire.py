"""What a lane (an official Batch API: config/lanes.py) sends and gets back about its batches, as data.

Pure: the custom_id each line carries upstream, one request line of an upstream batch (OpenAI's input
file line, or one request of an Anthropic Message Batch), and an upstream batch object (OpenAI's
`batch`, Anthropic's `message_batch`) read into one `UpstreamState` both kinds share. The HTTP is in
lane_client.py, the result lines are read by lane_results.py.

The custom_id is `{batch_id}-{line}`: batchrelay's batch id (`batch_<hex>`) and the line's number,
legal for both APIs (`[A-Za-z0-9_-]{1,64}`), so every result line names its line without a lookup,
and a line from someone else's batch is told apart by its shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from batchrelay.config.lanes import ProviderKind

CUSTOM_ID = re.compile(r"(batch_[0-9a-f]+)-(0|[1-9][0-9]*)")
# an upstream batch in one of these will not change any more (its files / results are final)
OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
ANTHROPIC_ENDED = frozenset({"ended"})


def custom_id(batch_id: str, line: int) -> str:
    return f"{batch_id}-{line}"


def parse_custom_id(custom_id: str) -> tuple[str, int] | None:
    """(batch id, line) of a custom_id `custom_id()` made; None for any other (not ours)."""
    m = CUSTOM_ID.fullmatch(custom_id) if isinstance(custom_id, str) else None
    return (m.group(1), int(m.group(2))) if m else None


def request_line(kind: ProviderKind, custom_id: str, path: str, body: dict[str, Any]) -> bytes:
    """One request of an upstream batch as a JSONL line, ending in a newline. openai-batch: a line of the
    input file, for `path` (the endpoint, e.g. /v1/chat/completions); anthropic-batch: one element of the
    Message Batch's `requests` (its path is always /v1/messages, so `path` is not written)."""
    if kind == "openai-batch":
        item: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": path, "body": body}
    elif kind == "anthropic-batch":
        item = {"custom_id": custom_id, "params": body}
    else:
        raise ValueError(f"{kind!r} is not a batch kind")
    return orjson.dumps(item) + b"\n"


@dataclass(frozen=True)
class UpstreamState:
    """An upstream batch as both kinds show it. `ended`: no further change will come (its output is
    final). `total` lines, of which `succeeded` answered and `failed` ended without an answer (errors,
    and for Anthropic lines canceled or expired too). `output_file_id`/`error_file_id`: OpenAI's, once
    ended; `results_url`: Anthropic's, once ended. `created_at`: unix time. `metadata`: OpenAI's (the
    parcel's tags); Anthropic's message batches have none ({})."""

    id: str
    status: str
    ended: bool
    total: int
    succeeded: int
    failed: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_url: str | None = None
    created_at: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _time(v: Any) -> float | None:
    """Unix seconds (OpenAI) or an ISO 8601 time (Anthropic); None for anything else."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def upstream_state(kind: ProviderKind, obj: dict[str, Any]) -> UpstreamState:
    """The state in an upstream batch object (create, retrieve, list, cancel all answer one);
    ValueError when it has no id (not a batch object)."""
    upstream_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(upstream_id, str) or not upstream_id:
        raise ValueError("not a batch object: no id")
    counts = obj.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    if kind == "openai-batch":
        status = str(obj.get("status") or "")
        meta = obj.get("metadata")
        metadata = {str(k): v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}
        return UpstreamState(upstream_id, status, status in OPENAI_ENDED, _int(counts.get("total")),
                             _int(counts.get("completed")), _int(counts.get("failed")),
                             output_file_id=_str(obj.get("output_file_id")),
                             error_file_id=_str(obj.get("error_file_id")),
                             created_at=_time(obj.get("created_at")), metadata=metadata)
    if kind == "anthropic-batch":
        status = str(obj.get("processing_status") or "")
        failed = sum(_int(counts.get(k)) for k in ("errored", "canceled", "expired"))
        succeeded = _int(counts.get("succeeded"))
        return UpstreamState(upstream_id, status, status in ANTHROPIC_ENDED,
                             _int(counts.get("processing")) + succeeded + failed, succeeded, failed,
                             results_url=_str(obj.get("results_url")), created_at=_time(obj.get("created_at")))
    raise ValueError(f"{kind!r} is not a batch kind")
