"""Never paying twice: a run's fingerprint and the batch it finds, pausing and resuming a `run`'s
batch, the lease of the `run` working a batch, and idempotency keys for producers.

A run's fingerprint is a sha256 of the input file's bytes and of the options that shape what is
sent and how it is priced (`FINGERPRINT_FIELDS`): not the batch's name, the output path, the chunk
size, a start time, a deadline (both absolute times: `--deadline +26h` is another time at each run)
or a webhook. It does cover whether the batch may use a lane (`may_use_lanes`: a lane is configured
and the batch has a deadline), so a run with `--deadline` after one without it is a new batch that
can use the lane, while a rerun of an interrupted `run --deadline +26h` continues its batch, with the
deadline it was given (the caller says so when the deadline given now is another).
`{prefix}fingerprint:FP` holds the latest batch of that fingerprint (store.create_batch); it goes
when that batch is forgotten.

A `run` stopped by a signal pauses its batch (`pause`): its private queue is dropped and nothing
works the batch until `resume` puts it on a queue again (the same command's next run: a private
queue of its own; `batchrelay resume`: the shared one). A `run` that died without a word (SIGKILL, a
machine crash) leaves its batch `in_progress` on a queue no worker reads; its lease (`Lease`,
renewed every `ttl/5`, lapsing after `ttl`) tells a dead run from a live one, so the next run takes
the batch over, or refuses while the other run lives. Lines already answered are never claimed
again; lines in flight at the interrupt are sent once more at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from batchrelay.errors import InputError, ResumeRefused
from batchrelay.spec import BatchSpec
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.sweeper import requeue_pending

# what is sent (dialect of bare bodies, who may serve it, which lines are too long to send) and how
# it is priced and limited (budget, prices required, completion window)
FINGERPRINT_FIELDS = ("endpoint", "providers", "max_cost", "require_prices", "completion_window", "max_line_bytes")
UNFINISHED = frozenset({Status.SCHEDULED, Status.IN_PROGRESS, Status.BUDGET_EXHAUSTED, Status.PAUSED})
LEASE_S = 15.0
READ_BLOCK = 1 << 20
SUBMIT_HOLD_S = 3600
RELEASE_S = 1.0


def lease_s() -> float:
    """The run lease's lifetime: BATCHRELAY_RUN_LEASE_S, else LEASE_S."""
    raw = os.environ.get("BATCHRELAY_RUN_LEASE_S")
    return float(raw) if raw else LEASE_S


def may_use_lanes(spec: BatchSpec, lanes: Iterable[str]) -> bool:
    """Whether a batch of `spec` may send lines to a lane: it has a deadline (or a completion window)
    and one of `lanes` (the configured lanes' names) is allowed by its `providers`. Pure."""
    if spec.deadline is None and spec.completion_window is None:
        return False
    return any(spec.providers is None or name in spec.providers for name in lanes)


def options_part(spec: BatchSpec, lanes: Iterable[str] = ()) -> bytes:
    """The options of `spec` a fingerprint covers, canonical (sorted keys, Decimals as strings).
    `lanes`: the configured lanes' names; `"lanes": true` is added only when the batch may use one,
    so the fingerprints of batches that cannot stay what they were."""
    data = spec.model_dump(mode="json", include=set(FINGERPRINT_FIELDS))
    if may_use_lanes(spec, lanes):
        data["lanes"] = True
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def fingerprint(path: Path, spec: BatchSpec, lanes: Iterable[str] = ()) -> str:
    """The run fingerprint of `path`'s bytes with `spec`'s options (blocking: reads the whole file);
    `lanes`: the names of the configured lanes (see `options_part`)."""
    content = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(READ_BLOCK):
                content.update(block)
    except OSError as e:
        raise InputError(f"{path}: cannot read input file: {e.strerror}") from None
    return hashlib.sha256(b"batchrelay-run-1\0" + options_part(spec, lanes) + b"\0" + content.digest()).hexdigest()


async def batch_of(store: Store, fp: str) -> BatchInfo | None:
    """The latest batch of fingerprint `fp`, if it is still in Redis."""
    raw = await store.redis.get(store.keys.fingerprint(fp))
    if not raw:
        return None
    with contextlib.suppress(Exception):
        return await store.info(raw.decode())
    return None


async def unfinished_of(store: Store, fp: str) -> BatchInfo | None:
    """The batch of fingerprint `fp` if it is not done (scheduled, running, paused, over budget)."""
    info = await batch_of(store, fp)
    return info if info is not None and info.status in UNFINISHED else None


async def drop_queue(store: Store, queue: str) -> None:
    """Drop a `run`'s private queue and its jobs (nobody works it any more)."""
    job_ids = [raw.decode() for raw in await store.redis.zrange(queue, 0, -1)]
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.delete(queue)
        for job_id in job_ids:
            pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
        await pipe.execute()


async def pause(store: Store, batch_id: str, private_queue: str) -> str | None:
    """A `run` stopped (its workers have): drop its queue, and pause the batch if it is in progress."""
    await drop_queue(store, private_queue)
    return await store.scripts.pause(store.keys, batch_id, time.time())


async def resume(store: Store, batch_id: str, queue: str) -> BatchInfo:
    """Put a paused batch (or one whose `run` died: call it with that run's lease taken) back to work
    on `queue`; the batch as it was. ResumeRefused for a batch in any other status."""
    info = await store.info(batch_id)  # BatchNotFound
    if info.status not in (Status.PAUSED, Status.IN_PROGRESS):
        raise ResumeRefused(f"batch {batch_id} is {info.status}: only a paused batch (or one whose `run` died) "
                            "can be resumed")
    if info.status == Status.IN_PROGRESS and ":run:" not in info.queue:
        raise ResumeRefused(f"batch {batch_id} is in progress on the shared queue: `batchrelay worker` finishes it "
                            f"(`batchrelay results {batch_id} -o OUT --wait`)")
    if ":run:" in info.queue and info.queue != queue:
        await drop_queue(store, info.queue)  # the dead run's: its jobs would block the same chunk ids
    if await store.scripts.resume(store.keys, batch_id, queue) not in (Status.PAUSED, Status.IN_PROGRESS):
        raise ResumeRefused(f"batch {batch_id} changed while it was being resumed: see `batchrelay status {batch_id}`")
    # nothing is in flight now: a line's deadline (to find a provider) runs from its resume, not its first try
    await store.redis.delete(store.keys.first_try(batch_id))
    await requeue_pending(store, batch_id)
    return info


@dataclass(slots=True)
class Lease:
    """The `run` working `batch_id` holds this while it lives (a key with a TTL, renewed)."""

    store: Store
    batch_id: str
    holder: str
    ttl_s: float

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    async def renew(self) -> bool:
        return await self.store.scripts.run_lease(self.store.keys, self.batch_id, holder=self.holder, op="renew",
                                                  ttl_ms=self.ttl_ms)

    async def release(self) -> None:
        await self.store.scripts.run_lease(self.store.keys, self.batch_id, holder=self.holder, op="release",
                                           ttl_ms=self.ttl_ms)

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[Lease]:
        """Renew the lease every ttl/5 for the block; release it after (if Redis still answers)."""
        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(self.ttl_s / 5)
                with contextlib.suppress(Exception):
                    await self.renew()

        task = asyncio.create_task(renew_forever())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(Exception):  # a Redis gone must not hold the run up: the lease lapses
                await asyncio.wait_for(self.release(), RELEASE_S)


async def take_lease(store: Store, batch_id: str, ttl_s: float | None = None) -> Lease:
    """The run lease of `batch_id`, or ResumeRefused naming the live run that holds it."""
    ttl = lease_s() if ttl_s is None else ttl_s
    holder = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
    lease = Lease(store, batch_id, holder, ttl)
    if await store.redis.set(store.keys.run_lease(batch_id), holder, nx=True, px=lease.ttl_ms):
        return lease
    other = (await store.redis.get(store.keys.run_lease(batch_id)) or b"?").decode()
    left = await store.redis.pttl(store.keys.run_lease(batch_id))
    raise ResumeRefused(
        f"batch {batch_id} is being worked by another `run` ({other.rsplit(' ', 1)[0]}); stop that one first "
        f"(it pauses the batch), or, if it is dead, run again in {max(left, 0) / 1000:.0f}s when its lease lapses; "
        "--new starts a new batch")


def key_hash(key: str) -> str:
    """An idempotency key as it is stored (a hash: the key itself may be anything the caller likes)."""
    return hashlib.sha256(key.encode()).hexdigest()


async def claim_key(store: Store, key: str, batch_id: str) -> str | None:
    """Take idempotency key `key` for `batch_id` (about to be submitted): None when it is now
    `batch_id`'s, else the batch that has it (perhaps still being submitted). Until `keep_key`,
    the key lapses after SUBMIT_HOLD_S, so a submit that died cannot hold it for ever."""
    name = store.keys.idempotency(key_hash(key))
    while True:
        if await store.redis.set(name, batch_id, nx=True, ex=SUBMIT_HOLD_S):
            return None
        raw = await store.redis.get(name)
        if raw is not None:  # else it lapsed or was released meanwhile: try again
            return str(raw.decode())


async def keep_key(store: Store, key: str, batch_id: str) -> None:
    """The batch exists: the key lives as long as it does (deleted when the batch is forgotten)."""
    await store.set_fields(batch_id, {"idempotency": key_hash(key)})
    await store.redis.persist(store.keys.idempotency(key_hash(key)))


async def release_key(store: Store, key: str, batch_id: str) -> None:
    """Give the key back (its submit failed), if it is still `batch_id`'s."""
    name = store.keys.idempotency(key_hash(key))
    if await store.redis.get(name) == batch_id.encode():
        await store.redis.delete(name)
