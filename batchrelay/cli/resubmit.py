"""`submit` of a file whose batch (same input bytes, same options: store/resume.py) is unfinished: a new
batch, saying so, or with `--resume` that batch, back at work and saying which one and how far it got.

A paused batch (its `run` was interrupted) and one whose `run` died are handed to the workers of the
shared queue, as `batchrelay resume` does; one a live `run` works is returned as it is. The options the
fingerprint ignores (`--cache`, `--webhook`, `--deadline`, `--at`, `--name`) stay the existing batch's
own: `submit` says which of those given now it does not take.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchrelay.cli.kit import open_client, open_store
from batchrelay.cli.lifecycle import hand_to_workers
from batchrelay.cli.text import command_with, echo
from batchrelay.config.settings import Settings
from batchrelay.errors import ResumeRefused
from batchrelay.spec import BatchSpec
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store

SAME_INSTANT_S = 60.0  # a relative --deadline or --in given again names a slightly later instant: the same one


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def ignored_options(spec: BatchSpec, fields: dict[str, str], start_at: float | None) -> list[str]:
    """The options given now that the existing batch (its meta `fields`, its `start_at`) does not have,
    and that the fingerprint does not cover (so `--resume` found it anyway). Pure."""
    kept: list[str] = []
    if spec.cache != ("cache" in fields):
        kept.append("--cache (it was submitted without the cache)" if spec.cache
                    else "no --cache (it uses the response cache)")
    if spec.webhook and spec.webhook != fields.get("webhook"):
        kept.append("--webhook (" + (f"it keeps {fields['webhook']}" if "webhook" in fields else "it has none") + ")")
    deadline = float(fields["deadline"]) if "deadline" in fields else None
    if spec.deadline is not None and (deadline is None or abs(spec.deadline - deadline) > SAME_INSTANT_S):
        kept.append("--deadline (" + (f"it keeps {_when(deadline)}" if deadline else "it has none") + ")")
    if spec.start_at is not None and (start_at is None or abs(spec.start_at - start_at) > SAME_INSTANT_S):
        kept.append("--at/--in (" + (f"it starts at {_when(start_at)}" if start_at else "it was not deferred") + ")")
    if spec.name and spec.name != fields.get("name"):
        kept.append(f"--name (it keeps {fields.get('name', '?')!r})")
    return kept


async def _reuse(store: Store, prior: BatchInfo, spec: BatchSpec,
                 config: str | None) -> tuple[list[str], dict[str, str]]:
    """Put `prior` back to work if nothing works it; what `submit` says of it (stderr lines), and the
    options it keeps (its meta fields)."""
    cmd = command_with(config)
    head = f"resuming batch {prior.id} ({prior.status}, {prior.done:,} of {prior.total:,} lines answered)"
    if prior.status == Status.PAUSED or (prior.status == Status.IN_PROGRESS and ":run:" in prior.queue):
        try:
            await hand_to_workers(store, prior.id)
            lines = [f"{head}: its pending lines are back on the shared queue (as `{cmd} resume {prior.id}` "
                     f"does); `{cmd} worker` finishes it"]
        except ResumeRefused:
            if prior.status == Status.PAUSED:
                raise  # someone resumes it this very moment: the refusal says who
            lines = [f"{head}: a live `run` works it; `{cmd} results {prior.id} -o OUT --wait` waits for it"]
    elif prior.status == Status.BUDGET_EXHAUSTED:
        lines = [f"{head}: its budget is spent; `{cmd} budget {prior.id} --max-cost USD` lets it go on"]
    else:
        lines = [head]
    fields = await store.get_fields(prior.id, ("cache", "webhook", "deadline", "name"))
    if kept := ignored_options(spec, fields, prior.start_at):
        lines.append(f"note: batch {prior.id} keeps its own options; not applied: {'; '.join(kept)} "
                     "(without --resume a new batch is made with them)")
    return lines, fields


async def submit_or_resume(settings: Settings, file: Path, spec: BatchSpec,
                           resume: bool) -> tuple[dict[str, Any], bool]:
    """`submit`: a new batch (saying so when one of the same input and options is unfinished), or with
    `resume` that unfinished batch, put back to work; the batch's status (with `notes`: what was said
    on stderr), and whether it existed."""
    from batchrelay.cli.lane_report import lane_names
    from batchrelay.store.resume import fingerprint, unfinished_of

    said: list[str] = []
    async with open_store(settings) as store:
        prior = await unfinished_of(store, await asyncio.to_thread(fingerprint, file, spec, lane_names(settings)))
        if prior is not None and resume:
            said, _fields = await _reuse(store, prior, spec, settings.source)
    if prior is not None and not resume:
        again = "puts that one back on the queue instead" if prior.status == Status.PAUSED else "returns that one"
        said.append(f"note: batch {prior.id} of the same input and options is {prior.status}; a new batch is made "
                    f"(--resume {again})")
    for line in said:
        echo(line, err=True)
    existing = prior is not None and resume
    async with open_client(settings) as client:
        batch_id = prior.id if prior is not None and existing else await client.submit(file, spec)
        return {**await client.status(batch_id), "notes": said}, existing
