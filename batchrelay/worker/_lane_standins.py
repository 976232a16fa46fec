"""TEMPORARY (D1): the frozen #18 signatures of packages A/B/C until they are merged; deleted then."""
# mypy: ignore-errors
# ruff: noqa

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ParcelView:
    pid: str; lane: str; batch: str; state: str; n: int; bytes: int; deadline: float; must_end_by: float
    first_at: float; sealed_at: float | None; file_id: str | None; creating_at: float | None
    upstream_id: str | None; upstream_status: str | None; polls: int; next_poll_s: float
    ended_at: float | None; collected: int


class LaneStore:
    def __init__(self, store): self.store = store
    async def take(self, lane, batch_id, job_id, lines, *, deadline, must_end_by, max_lines, max_bytes, gather_s,
                   now): raise NotImplementedError
    async def due(self, now, limit=50): return []
    async def lease(self, pid, holder, ttl_s): raise NotImplementedError
    async def unlease(self, pid, holder): raise NotImplementedError
    async def parcel(self, pid): raise NotImplementedError
    async def parcel_lines(self, pid): raise NotImplementedError
    async def advance(self, pid, expect, state, **fields): raise NotImplementedError
    async def save(self, pid, **fields): raise NotImplementedError
    async def schedule(self, pid, due_at): raise NotImplementedError
    async def record(self, pid, upstream_id, *, due_at): raise NotImplementedError
    async def recorded(self, lane): raise NotImplementedError
    async def create_lease(self, lane, holder, ttl_s): raise NotImplementedError
    async def write_results(self, batch_id, pid, items, tallies): raise NotImplementedError
    async def release(self, batch_id, pid, lines, attempts, *, now, requeue): raise NotImplementedError
    async def finish(self, pid): raise NotImplementedError
    async def held(self, batch_id, lines=None): raise NotImplementedError
    async def claim_lines(self, batch_id, lines): raise NotImplementedError
    async def open_parcels(self, batch_id=None): return 0


def custom_id(batch_id, line): return f"{batch_id}-{line}"
def request_line(kind, custom_id, path, body): raise NotImplementedError


@dataclass(frozen=True)
class UpstreamState:
    id: str; status: str; ended: bool; total: int; succeeded: int; failed: int
    output_file_id: str | None = None; error_file_id: str | None = None; results_url: str | None = None
    created_at: float | None = None; metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Answered:
    custom_id: str; body: dict


@dataclass(frozen=True)
class Errored:
    custom_id: str; status: int | None; body: Any; message: str


@dataclass(frozen=True)
class Unanswered:
    custom_id: str; why: str


def read(kind, raw): raise NotImplementedError


class LaneClient:
    def __init__(self, provider, http): self.provider, self.http = provider, http

Read = Answered | Errored | Unanswered
