"""`[[schedules]]`: run input files as batches on a cron (matched by cronsim, in UTC), from the workers' sweep.

arq's cron uniqueness rests on every worker's clock agreeing, so a tick is claimed in Redis
instead: `SET schedule:{name}:{minute} NX`, and only the winner runs it, however many workers
sweep that minute. A worker's sweep starts the tick's submits as tasks of their own, so a large
input is not cut off by the sweep's timeout; a worker stopped mid-submit fails that batch and the
file is tried again at the next tick. The sweep runs every 15 s, so each matching minute is seen at least once.
`BATCHRELAY_SCHEDULE_TICK_S` (for tests; default 60, at least 4) shortens a tick: a tick is then
due when its cron matches the minute the tick starts in, and the workers sweep at least four times a tick.
An input file is submitted once: its identity (absolute path, size, mtime) is added to a Redis set
before its batch is written, and taken out again if the submit fails, so a file changed in place
counts as new. Each run is an ordinary batch (named `{schedule}:{file name}`); once it finishes,
one sweep writes its results and errors to `output_dir` (an NX lease, then the batch is crossed
off), as `{file stem}.results.jsonl` and `{file stem}.errors.jsonl`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cronsim import CronSim

from batchrelay.config.settings import ScheduleConfig, Settings
from batchrelay.errors import BatchNotFound, BatchrelayError
from batchrelay.spec import BatchSpec
from batchrelay.store.export import export
from batchrelay.store.store import Store
from batchrelay.store.submit import submit_file

log = logging.getLogger("batchrelay.store.schedules")
TICK_TTL_S = 86_400
EXPORT_LEASE_S = 600  # an export cut short (its worker died) is redone after this
TICK_S = int(os.environ.get("BATCHRELAY_SCHEDULE_TICK_S") or 60)  # a minute; shorter only in tests


def sweep_seconds() -> set[int]:
    """The seconds of each minute at which the workers sweep: four times a tick (0, 15, 30, 45)."""
    return set(range(0, 60, max(1, TICK_S // 4)))


def tick_of(now: float) -> int:
    """The wall-clock minute `now` falls in, as whole minutes since the epoch (ticks of TICK_S in tests)."""
    return int(now // TICK_S)


def due(cron: str, tick: int) -> bool:
    """Whether `cron` (five fields, as ScheduleConfig keeps them) matches the UTC minute `tick` (starts in)."""
    at = datetime.fromtimestamp(tick * TICK_S // 60 * 60, UTC)
    # cronsim answers "the next match after": one second before the minute, that is the minute itself if it matches
    return next(CronSim(cron, at - timedelta(seconds=1)), None) == at


def input_files(pattern: str) -> list[Path]:
    """The regular files `pattern` (a path or a glob, `~` allowed) names, sorted."""
    return sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def output_paths(sch: ScheduleConfig, source: str) -> tuple[Path, Path]:
    name = Path(source).name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return sch.output_dir / f"{stem}.results.jsonl", sch.output_dir / f"{stem}.errors.jsonl"


def spec_of(settings: Settings, sch: ScheduleConfig, path: Path) -> BatchSpec:
    """The options of the schedule's batch of `path` (its providers were checked with the config)."""
    return BatchSpec.of(settings, name=f"{sch.name}:{path.name}", endpoint=sch.endpoint, providers=sch.providers,
                        max_cost=sch.max_cost, webhook=sch.webhook, completion_window=sch.completion_window)


async def claim_tick(store: Store, sch: ScheduleConfig, tick: int, now: float) -> bool:
    """True for the one caller that gets to run `sch` at this tick."""
    return bool(await store.redis.set(store.keys.schedule_tick(sch.name, tick), repr(now), nx=True, ex=TICK_TTL_S))


async def submit_new_files(store: Store, settings: Settings, sch: ScheduleConfig) -> list[str]:
    """One batch per input file not submitted before; their ids."""
    k, ids = store.keys, []
    for path in input_files(sch.input):
        try:
            ident = identity(path)
        except OSError:
            continue  # gone since the glob
        if not await store.redis.sadd(k.schedule_done(sch.name), ident):  # type: ignore[misc]
            continue
        try:
            res = await submit_file(store, path, spec_of(settings, sch, path))
        except BaseException as e:
            with contextlib.suppress(Exception):  # a later tick tries the file again
                await store.redis.srem(k.schedule_done(sch.name), ident)  # type: ignore[misc]
            if not isinstance(e, BatchrelayError | OSError):
                raise
            log.warning("schedule %s: %s not submitted: %s", sch.name, path, e)
            continue
        await store.redis.hset(k.schedule_batches(sch.name), res.batch_id, str(path))  # type: ignore[misc]
        log.info("schedule %s: %s -> %s (%d lines)", sch.name, path, res.batch_id, res.total)
        ids.append(res.batch_id)
    return ids


async def export_finished(store: Store, sch: ScheduleConfig) -> int:
    """Write the results of the schedule's finished batches to its output_dir, once each."""
    k, n = store.keys, 0
    waiting: dict[bytes, bytes] = await store.redis.hgetall(k.schedule_batches(sch.name))  # type: ignore[misc]
    for raw_id, raw_source in waiting.items():
        batch_id = raw_id.decode()
        try:
            info = await store.info(batch_id)
        except BatchNotFound:
            await store.redis.hdel(k.schedule_batches(sch.name), batch_id)  # type: ignore[misc]
            continue
        if not info.finished:
            continue
        if not await store.redis.set(k.schedule_export(sch.name, batch_id), "1", nx=True, ex=EXPORT_LEASE_S):
            continue
        out, errors = output_paths(sch, raw_source.decode())
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            await export(store, batch_id, out, errors)
        except (OSError, BatchrelayError) as e:
            log.warning("schedule %s: results of %s not written: %s", sch.name, batch_id, e)
            continue  # tried again when the lease lapses
        await store.redis.hdel(k.schedule_batches(sch.name), batch_id)  # type: ignore[misc]
        log.info("schedule %s: %s -> %s", sch.name, batch_id, out)
        n += 1
    return n


async def run_due_schedules(store: Store, settings: Settings, now: float | None = None, *,
                            background: Callable[[Coroutine[Any, Any, list[str]]], None] | None = None,
                            ) -> dict[str, int]:
    """Run every schedule whose cron matches this minute (once per tick across all workers), and
    export its finished batches. Called by every worker's sweep. With `background`, a tick's submits
    are handed to it instead of awaited (a big input file must not be cut off by the sweep's timeout;
    `submitted` then counts only what was awaited)."""
    now = time.time() if now is None else now
    tick = tick_of(now)
    done = {"ticks": 0, "submitted": 0, "exported": 0}
    for sch in settings.schedules:
        if due(sch.cron, tick) and await claim_tick(store, sch, tick, now):
            done["ticks"] += 1
            if background is not None:
                background(submit_new_files(store, settings, sch))
            else:
                done["submitted"] += len(await submit_new_files(store, settings, sch))
        done["exported"] += await export_finished(store, sch)
    return done
