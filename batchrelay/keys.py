"""Every Redis key batchrelay uses, under one configurable prefix.

Batch state is ours; arq only moves chunk jobs, on a queue named under the same prefix so several
batchrelay installations (or other arq users) can share one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "batchrelay:"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def batches(self) -> str:
        """Sorted set of batch ids scored by creation time."""
        return f"{self.prefix}batches"

    @property
    def queue(self) -> str:
        """The arq queue (a sorted set owned by arq)."""
        return f"{self.prefix}queue"

    def meta(self, batch_id: str) -> str:
        """Hash: id, name, status, times, counts."""
        return f"{self.prefix}batch:{batch_id}"

    def lines(self, batch_id: str) -> str:
        """Hash: line number -> normalised request JSON."""
        return f"{self.prefix}batch:{batch_id}:lines"

    def pending(self, batch_id: str) -> str:
        """Set of line numbers that have no result yet."""
        return f"{self.prefix}batch:{batch_id}:pending"

    def results(self, batch_id: str) -> str:
        """Hash: line number -> final result record JSON (success or error)."""
        return f"{self.prefix}batch:{batch_id}:results"

    def chunks(self, batch_id: str) -> str:
        """Hash: chunk job id -> JSON list of its line numbers (for re-enqueueing)."""
        return f"{self.prefix}batch:{batch_id}:chunks"

    def batch_keys(self, batch_id: str) -> list[str]:
        return [
            self.meta(batch_id),
            self.lines(batch_id),
            self.pending(batch_id),
            self.results(batch_id),
            self.chunks(batch_id),
        ]
