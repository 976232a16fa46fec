"""Producer side: stream a JSONL file into a new batch and enqueue its chunk jobs.

Memory stays bounded whatever the file's size: lines are parsed one at a time and written to Redis
a block at a time (`FLUSH_LINES` lines or about `FLUSH_BYTES` of input, whichever comes first), and
duplicate custom_ids are found in Redis (a per-batch custom_id -> line hash, lua/submit_claim_ids.lua),
not in a set here.
At most two blocks are held: one being parsed while the one before it is written, so that Redis
works while this process parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batchrelay.errors import InputError
from batchrelay.results.records import bad_line_record
from batchrelay.spec import BatchSpec
from batchrelay.store.ids import new_batch_id as new_batch_id  # where its callers have always found it
from batchrelay.store.queue import chunk_job_id
from batchrelay.store.status import Status
from batchrelay.store.store import Store
from batchrelay.store.sweeper import enqueue_all
from batchrelay.wire.jobs import BadLine, IdRule, JobLine, LineReader, duplicate, iter_jobs
from batchrelay.wire.sniff import SNIFF_LINES, input_problem

FLUSH_LINES = 5000
# A block of long lines is written early: one block's parsed lines stay small in memory, and packing
# its commands (a stretch the event loop cannot break) stays short, as `serve` answers others meanwhile.
FLUSH_BYTES = 1024 * 1024
# Lines (or bytes of them) parsed between turns of the event loop: the block being written meanwhile
# goes on as Redis answers, and a `serve` submitting a large batch keeps answering other requests.
YIELD_EVERY = 500
YIELD_BYTES = 128 * 1024

@dataclass(frozen=True, slots=True)
class SubmitResult:
    batch_id: str
    total: int
    valid: int
    invalid: int


class _Counted:
    """A line reader that counts the bytes read through it (`count`: all of them so far)."""

    __slots__ = ("count", "stream")

    def __init__(self, stream: LineReader) -> None:
        self.stream, self.count = stream, 0

    def readline(self, size: int = -1, /) -> bytes:
        raw = self.stream.readline(size)
        self.count += len(raw)
        return raw


def _first(items: Iterator[JobLine | BadLine], reader: _Counted) -> tuple[list[JobLine | BadLine], list[int]]:
    """The first `SNIFF_LINES` items (fewer once a block's worth of input is read), and how far
    into the input each one ends."""
    head, read_at = [], []
    for item in items:
        head.append(item)
        read_at.append(reader.count)
        if len(head) >= SNIFF_LINES or reader.count >= FLUSH_BYTES:
            break
    return head, read_at


async def submit_stream(
    store: Store,
    stream: LineReader,
    spec: BatchSpec,
    *,
    source: str,
    queue: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    id_rule: IdRule | None = None,
    batch_id: str | None = None,
    fingerprint: str | None = None,
) -> SubmitResult:
    """A new batch of the stream's lines, with the options `spec` gives (spec.py; named after
    `source` unless the spec has a name). `queue`: an arq queue of this batch's own (`run` uses one
    so its workers touch nothing else). A line longer than `spec.max_line_bytes` is an error line.
    A stream with no requests, or one that is not JSONL, is refused (InputError) before a batch exists.
    `id_rule`: a line whose custom_id it refuses is an error line (jobs.iter_jobs). `batch_id`: the
    new batch's id when the caller chose it (an idempotency key, a `run`'s lease: resume.py);
    `fingerprint`: the run fingerprint the batch is found by (resume.py).

    Chunk jobs are enqueued only once every line is written and the batch is `in_progress` (or
    `scheduled` until `spec.start_at`: the workers' sweep starts it, lifecycle.tick): a submit cut
    short (Redis gone, Ctrl-C) leaves a batch nothing works on, marked failed when Redis can still
    be told, and found by the workers' sweep otherwise."""
    batch_id = batch_id or new_batch_id()
    queue = queue or store.keys.queue
    default_dialect, chunk_size = spec.endpoint, spec.chunk_size
    reader = _Counted(stream)
    items = iter_jobs(reader, default_dialect=default_dialect, max_line_bytes=spec.max_line_bytes, dedupe=False,
                      id_rule=id_rule)
    head, read_at = _first(items, reader)  # a file that cannot be a batch is refused before it is one
    if problem := input_problem(head, source):
        raise InputError(problem)
    await store.create_batch(batch_id, spec, source=source, queue=queue, fingerprint=fingerprint)
    block: list[JobLine] = []  # parsed, not yet checked for duplicates
    bad: list[tuple[int, bytes]] = []
    open_chunk: list[int] = []
    n_chunks = valid = invalid = max_line = 0
    formats: set[str] = set()
    writing: asyncio.Task[None] | None = None  # the previous block, written while this one is parsed

    async def write(block: list[JobLine], bad: list[tuple[int, bytes]], last: bool) -> None:
        """Drop the block's duplicate custom_ids, then write its lines, errors and full chunks."""
        nonlocal n_chunks, open_chunk, valid, invalid
        taken: dict[int, int] = {}
        if block:
            taken = await store.scripts.claim_custom_ids(store.keys, batch_id, [job.custom_id for job in block],
                                                         [job.line for job in block])
            # a line that finds itself there is not a duplicate (only a rerun of this block could)
            taken = {i: first for i, first in taken.items() if first != block[i].line}
        jobs: list[JobLine] = []
        chunks: list[tuple[str, list[int]]] = []
        for i, job in enumerate(block):
            if i in taken:
                bad.append((job.line, bad_line_record(batch_id, duplicate(job, taken[i]), default_dialect)))
                continue
            jobs.append(job)
            open_chunk.append(job.line)
            if len(open_chunk) >= chunk_size:
                chunks.append((chunk_job_id(store.keys.prefix, batch_id, n_chunks), open_chunk))
                n_chunks += 1
                open_chunk = []
        if last and open_chunk:
            chunks.append((chunk_job_id(store.keys.prefix, batch_id, n_chunks), open_chunk))
            n_chunks += 1
        await store.add_lines(batch_id, jobs, bad, chunks)
        valid += len(jobs)
        invalid += len(bad)
        if on_progress:
            on_progress(valid + invalid)

    try:
        block_from = yielded_at = 0  # where in the input the block being parsed starts; the last turn
        for n, item in enumerate(itertools.chain(head, items)):
            read = read_at[n] if n < len(read_at) else reader.count
            max_line = item.line
            if item.fmt:
                formats.add(item.fmt)
            if isinstance(item, BadLine):
                bad.append((item.line, bad_line_record(batch_id, item, default_dialect)))
            else:
                block.append(item)
            if len(block) + len(bad) >= FLUSH_LINES or read - block_from >= FLUSH_BYTES:
                if writing:
                    await writing  # blocks claim their custom_ids in file order
                writing = asyncio.create_task(write(block, bad, False))
                block, bad, block_from = [], [], read
                await asyncio.sleep(0)  # let it send its first command before parsing goes on
                yielded_at = read
            elif n % YIELD_EVERY == 0 or read - yielded_at >= YIELD_BYTES:
                await asyncio.sleep(0)  # and let it (and the rest of the process) go on from time to time
                yielded_at = read
        if writing:
            await writing
        await write(block, bad, True)
        counts: dict[str, int | str] = {
            "total": valid + invalid, "invalid": invalid, "max_line": max_line, "chunks": n_chunks,
            "input_format": "+".join(sorted(formats)) or "none",
        }
        if await store.finish_submit(batch_id, counts, spec.start_at) == Status.IN_PROGRESS:
            await enqueue_all(store, batch_id, queue)
    except BaseException as e:
        if writing and not writing.done():
            writing.cancel()
        if writing:
            with contextlib.suppress(BaseException):
                await writing
        # Redis itself may be what failed; the original error matters more
        with contextlib.suppress(Exception):
            await store.mark_failed(batch_id, f"submit interrupted: {type(e).__name__}")
        raise
    return SubmitResult(batch_id, valid + invalid, valid, invalid)


async def submit_file(store: Store, path: str | os.PathLike[str], spec: BatchSpec, *,
                      queue: str | None = None, batch_id: str | None = None,
                      fingerprint: str | None = None) -> SubmitResult:
    """`submit_stream` of a file; the batch is named after the file unless the spec names it."""
    p = Path(path)
    try:
        stream = p.open("rb")
    except OSError as e:
        raise InputError(f"{p}: cannot read input file: {e.strerror}") from None
    with stream:
        return await submit_stream(store, stream, spec.named(p.name), source=str(p), queue=queue,
                                   batch_id=batch_id, fingerprint=fingerprint)
