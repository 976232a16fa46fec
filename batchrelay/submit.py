"""Producer side: stream a JSONL file into a new batch and enqueue its chunk jobs."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .config import Dialect
from .errors import InputError
from .jobs import BadLine, JobLine, iter_jobs
from .output import bad_line_record
from .queue import chunk_job_id, enqueue_chunks
from .store import Store

FLUSH_LINES = 5000


@dataclass(frozen=True, slots=True)
class SubmitResult:
    batch_id: str
    total: int
    valid: int
    invalid: int


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


async def submit_stream(
    store: Store,
    stream: IO[bytes],
    *,
    name: str,
    source: str,
    default_dialect: Dialect = "chat",
    chunk_size: int = 50,
    providers: list[str] | None = None,
    queue: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SubmitResult:
    """`queue`: an arq queue of this batch's own (`run` uses one so its workers touch nothing else)."""
    batch_id = new_batch_id()
    queue = queue or store.keys.queue
    await store.create_batch(batch_id, name=name, source=source, providers=providers, queue=queue)
    jobs: list[JobLine] = []
    bad: list[tuple[int, bytes]] = []
    open_chunk: list[int] = []
    chunks: list[tuple[str, list[int]]] = []
    n_chunks = valid = invalid = max_line = 0
    formats: set[str] = set()

    async def flush() -> None:
        await store.add_lines(batch_id, jobs, bad, chunks)
        await enqueue_chunks(store.redis, queue, batch_id, chunks)
        if on_progress:
            on_progress(valid + invalid)
        jobs.clear()
        bad.clear()
        chunks.clear()

    try:
        for item in iter_jobs(stream, default_dialect=default_dialect):
            max_line = item.line
            if item.fmt:
                formats.add(item.fmt)
            if isinstance(item, BadLine):
                invalid += 1
                bad.append((item.line, bad_line_record(batch_id, item, default_dialect)))
            else:
                valid += 1
                jobs.append(item)
                open_chunk.append(item.line)
                if len(open_chunk) >= chunk_size:
                    chunks.append((chunk_job_id(batch_id, n_chunks), open_chunk))
                    n_chunks += 1
                    open_chunk = []
            if len(jobs) + len(bad) >= FLUSH_LINES:
                await flush()
        if open_chunk:
            chunks.append((chunk_job_id(batch_id, n_chunks), open_chunk))
            n_chunks += 1
        await flush()
        counts: dict[str, int | str] = {
            "total": valid + invalid, "invalid": invalid, "max_line": max_line, "chunks": n_chunks,
            "input_format": "+".join(sorted(formats)) or "none",
        }
        await store.finish_submit(batch_id, counts)
    except BaseException as e:
        # Redis itself may be what failed; the original error matters more
        with contextlib.suppress(Exception):
            await store.mark_failed(batch_id, f"submit interrupted: {type(e).__name__}")
        raise
    return SubmitResult(batch_id, valid + invalid, valid, invalid)


async def submit_file(
    store: Store, path: str | os.PathLike[str], *, name: str | None = None, **kw: object
) -> SubmitResult:
    p = Path(path)
    try:
        stream = p.open("rb")
    except OSError as e:
        raise InputError(f"{p}: cannot read input file: {e.strerror}") from None
    with stream:
        return await submit_stream(store, stream, name=name or p.name, source=str(p), **kw)  # type: ignore[arg-type]
