"""The arq worker: chunk jobs whose lines go to a fixed pool of consumers.

A chunk job claims its lines that still have no result (a rerun skips finished ones), feeds them
to the pool, and each consumer relays its line to the providers and writes the result in one
atomic step. A line whose attempts all fail gets a terminal error record written here, never
only arq's 'max retries exceeded'. A line no provider can take now is deferred: the chunk ends
and its deferred lines go back to the queue as a new chunk job due when the earliest provider
may take them again, so waiting costs neither a consumer slot nor an arq try.

`python -m arq batchrelay.worker.WorkerSettings` works too; it reads the config from the
environment (`BATCHRELAY_CONFIG`, `REDIS_URL`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Retry, Worker, func
from redis.exceptions import RedisError

from .config import ProviderConfig, Settings, load_settings
from .health import Health
from .jobs import JobLine
from .keys import Keys
from .linepool import LinePool
from .output import outcome_record
from .queue import CHUNK_FUNCTION
from .relay import Attempt, Outcome, relay
from .routing import candidates
from .store import Store
from .sweeper import requeue_deferred, sweep

log = logging.getLogger("batchrelay.worker")
REDIS_RETRY_DEFER = 2.0


@dataclass(slots=True)
class LineWork:
    batch_id: str
    job: JobLine
    first_tried: float
    allow: list[str] | None
    earlier: list[Attempt]
    done: bool = True  # False while a consumer is on it (it outlives a cancelled chunk)


@dataclass(slots=True)
class Runtime:
    """What a worker process shares across jobs: store, HTTP clients, the consumer pool."""

    settings: Settings
    store: Store
    providers: list[ProviderConfig]
    health: Health
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    pool: LinePool[LineWork, float | None] | None = None
    in_flight: set[tuple[str, int]] = field(default_factory=set)

    def open(self) -> None:
        w = self.settings.worker
        # httpcore's pool scans its connections per request: several small clients beat one big one
        n_clients = max(1, math.ceil(w.concurrency / w.connections_per_client))
        per_client = min(w.concurrency, w.connections_per_client)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        # our own asyncio deadline (relay) is the authority; httpx's is only a backstop
        timeout = httpx.Timeout(w.call_timeout + 5, connect=min(10.0, w.call_timeout))
        self.clients = [httpx.AsyncClient(limits=limits, timeout=timeout) for _ in range(n_clients)]
        self.pool = LinePool(w.concurrency, self.handle_line)
        self.pool.start()

    async def close(self) -> None:
        if self.pool:
            await self.pool.close()
        for c in self.clients:
            await c.aclose()

    async def handle_line(self, consumer: int, work: LineWork) -> float | None:
        """Relay one line and record its result; or return when (unix time) it may be tried again."""
        work.done = False
        try:
            return await self._handle(consumer, work)
        finally:
            work.done = True
            self.in_flight.discard((work.batch_id, work.job.line))

    async def _handle(self, consumer: int, work: LineWork) -> float | None:
        client = self.clients[consumer * len(self.clients) // self.settings.worker.concurrency]
        job, r = work.job, self.settings.routing
        cands = candidates(job.dialect, str(job.body["model"]), self.providers, strategy=r.strategy,
                           routes=r.routes, allow=work.allow)
        try:
            out = await relay(job, cands, client, self.settings.worker, self.health, first_tried=work.first_tried,
                              earlier=work.earlier)
        except (RedisError, OSError):
            raise  # the store is unreachable: the chunk retries, finished lines stay finished
        except Exception as e:  # a bug or an input nothing caught earlier: never retry it forever
            log.exception("line %s of %s failed inside batchrelay", job.line, work.batch_id)
            out = Outcome(attempts=list(work.earlier), message=f"internal error: {type(e).__name__}: {e}"[:500])
        if out.defer_s is not None:
            await self.store.save_attempts(work.batch_id, job.line, [a.as_dict() for a in out.trimmed_attempts()])
            return time.time() + out.defer_s  # due then, however long the rest of its chunk takes
        await self.store.write_result(work.batch_id, job.line, outcome_record(work.batch_id, job, out), out.ok)
        return None

    async def run_chunk(self, batch_id: str, lines: list[int], job_id: str) -> int:
        # lines still running here (a chunk that passed its deadline and came back) are not taken twice
        claim = await self.store.claim(batch_id, [n for n in lines if (batch_id, n) not in self.in_flight])
        if not claim.jobs:
            return 0
        assert self.pool is not None
        work = [LineWork(batch_id, job, claim.first_tried[job.line], claim.allow,
                         [Attempt.from_dict(a) for a in claim.earlier.get(job.line, [])]) for job in claim.jobs]
        self.in_flight.update((batch_id, w.job.line) for w in work)
        try:
            defers = await self.pool.run(work)
        finally:
            self.in_flight.difference_update((batch_id, w.job.line) for w in work if w.done)
        later = [(w.job.line, due) for w, due in zip(work, defers, strict=True) if due is not None]
        if later:
            # the chunk ends when its last line does: its deferred lines' wait has been running since
            soonest = max(0.0, min(due for _, due in later) - time.time())
            await requeue_deferred(self.store, batch_id, job_id, [n for n, _ in later], soonest)
        return len(claim.jobs) - len(later)

    @property
    def chunk_deadline(self) -> float:
        return self.settings.worker.chunk_deadline


async def run_chunk(ctx: dict[str, Any], batch_id: str, lines: list[int]) -> int:
    rt: Runtime = ctx["runtime"]
    try:
        async with asyncio.timeout(rt.chunk_deadline):
            return await rt.run_chunk(batch_id, lines, ctx["job_id"])
    except TimeoutError:
        # arq fails a job at job_timeout for good; stopping first lets a retry finish the rest
        log.warning("chunk of %s passed its deadline; requeueing its unfinished lines", batch_id)
        raise Retry(defer=0) from None
    except (RedisError, OSError) as e:
        # finished lines are recorded; a retry of this chunk redoes only the rest
        log.warning("chunk of %s: Redis error (%s), retrying in %ss", batch_id, type(e).__name__, REDIS_RETRY_DEFER)
        raise Retry(defer=REDIS_RETRY_DEFER) from None


async def sweep_orphans(ctx: dict[str, Any]) -> int:
    """Cron: put back chunks arq dropped (tries exhausted, job_timeout) while lines are pending."""
    rt: Runtime = ctx["runtime"]
    n = await sweep(rt.store, ctx["queue_name"])
    if n:
        log.warning("requeued %d chunk jobs that arq had dropped", n)
    return n


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


def build_worker(
    settings: Settings, redis_url: str, *, burst: bool = False, handle_signals: bool = True, queue: str | None = None,
) -> Worker:
    w = settings.worker
    keys = Keys(settings.redis.prefix)
    chunks_in_flight = max(2, math.ceil(2 * w.concurrency / w.chunk_size) + 1)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["queue_name"] = queue or keys.queue
        if "runtime" in ctx:  # a burst worker's second round after a sweep
            return
        rt = Runtime(settings, Store(ctx["redis"], keys), settings.ordered_providers(),
                     Health(ctx["redis"], keys, settings.health))
        rt.open()
        ctx["runtime"] = rt

    async def shutdown(ctx: dict[str, Any]) -> None:
        rt: Runtime | None = ctx.get("runtime")
        if rt:
            await rt.close()

    return Worker(
        functions=[func(run_chunk, name=CHUNK_FUNCTION, timeout=w.job_timeout, max_tries=w.max_tries)],
        # a burst worker sweeps once the queue is empty instead (see run_worker): a cron job held by a
        # killed worker would keep the queue non-empty, and burst workers waiting, until it expires
        cron_jobs=[] if burst else [cron(sweep_orphans, name="batchrelay-sweep", second=30, unique=True, timeout=30)],
        redis_settings=redis_settings(redis_url),
        queue_name=queue or keys.queue,
        max_jobs=chunks_in_flight,
        # running jobs stay at the queue head: a small read limit would cap the whole fleet
        queue_read_limit=max(1000, 5 * chunks_in_flight),
        poll_delay=0.1,
        keep_result=0,
        burst=burst,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=handle_signals,
    )


def settings_class(settings: Settings) -> type:
    """An arq `WorkerSettings` class for `arq batchrelay.worker.WorkerSettings`."""
    url = settings.redis_url or "redis://127.0.0.1:6379"
    worker = build_worker(settings, url)

    class WorkerSettings:
        functions = worker.functions.values()
        redis_settings = worker.redis_settings
        queue_name = worker.queue_name
        max_jobs = worker.max_jobs
        queue_read_limit = worker.queue_read_limit
        poll_delay = worker.poll_delay_s
        keep_result = worker.keep_result_s
        on_startup = worker.on_startup
        on_shutdown = worker.on_shutdown
        cron_jobs = list(worker.cron_jobs)

    return WorkerSettings


def __getattr__(name: str) -> Any:
    # built on first access so importing this module never reads config as a side effect
    if name == "WorkerSettings":
        return settings_class(load_settings())
    raise AttributeError(name)


async def run_worker(worker: Worker) -> None:
    """Run until burst end or a signal (arq's handler cancels `main_task`, set by async_run).

    In burst mode the queue being empty is not the end if arq dropped a chunk with lines still
    pending: sweep, and go round again while that finds work.
    """
    try:
        await worker.async_run()
        while worker.burst and await sweep(worker.ctx["runtime"].store, worker.queue_name):
            await worker.async_run()
    except asyncio.CancelledError:
        if not worker.main_task or not worker.main_task.cancelled():
            raise  # we were cancelled from outside, not stopped by a signal
    finally:
        with warnings.catch_warnings():
            # arq 0.28 closes its pool with redis-py's deprecated close(); harmless, and not ours to fix
            warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
            await worker.close()
    if worker.jobs_failed:
        log.warning("%d chunk jobs failed", worker.jobs_failed)



