"""TEMPORARY (D1): the frozen #18 signatures of packages A/B/C until they are merged; deleted then."""
# mypy: ignore-errors
# ruff: noqa

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
