"""A first look at an input file: does it hold requests at all, and is it JSONL?

`submit` parses the first `SNIFF_LINES` non-blank lines before it creates the batch and refuses
a file with no requests (as the OpenAI Batch API refuses an empty file) or one whose first lines
are mostly not JSON objects: a JSON array, pretty-printed JSON or a CSV would otherwise become a
batch of nothing but error records. A few bad lines among good ones are left to become error
records as usual. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchrelay.wire.jobs import BadLine, JobLine

SNIFF_LINES = 10
# the reasons parse_line gives for a line that is not a JSON object at all
NOT_JSON = ("invalid JSON", "invalid UTF-8", "expected a JSON object")


def not_json(item: JobLine | BadLine) -> bool:
    return isinstance(item, BadLine) and item.reason.startswith(NOT_JSON)


def input_problem(head: Sequence[JobLine | BadLine], source: str) -> str | None:
    """Why the input whose first non-blank lines parsed as `head` cannot be a batch, or None."""
    if not head:
        return f"no requests in {source} (it is empty or holds only blank lines)"
    bad = [item for item in head if not_json(item)]
    if len(bad) * 2 > len(head):
        first = bad[0]
        assert isinstance(first, BadLine)
        return (f"{source}: {len(bad)} of its first {len(head)} lines are not JSON objects (line {first.line}: "
                f"{first.reason}): is this a JSONL file? Each line must be one request as a JSON object")
    return None
