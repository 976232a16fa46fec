"""The arq worker: chunk jobs whose lines go to a fixed pool of consumers.

A chunk job claims its lines that still have no result (a rerun skips finished ones), feeds them
to the pool, and each consumer relays its line to the providers and writes the result in one
atomic step. A line whose attempts all fail gets a terminal error record written here, never
only arq's 'max retries exceeded'. A line no provider can take now is deferred: the chunk ends
and its deferred lines go back to the queue as a new chunk job due when the earliest provider
may take them again, so waiting costs neither a consumer slot nor an arq try.

`python -m arq batchrelay.worker.worker.WorkerSettings` works too; it reads the config from the
environment (`BATCHRELAY_CONFIG`, `REDIS_URL`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import ssl
import time
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from arq.cron import cron
from arq.worker import Retry, Worker, func
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from batchrelay.config.settings import ProviderConfig, Settings, load_settings
from batchrelay.money.budget import Spend
from batchrelay.money.ledger import increments
from batchrelay.providers.routing import candidates
from batchrelay.results.outcome import Attempt, Outcome
from batchrelay.results.records import outcome_record
from batchrelay.store.budget import Budget
from batchrelay.store.connection import redis_settings
from batchrelay.store.health import Health
from batchrelay.store.keys import Keys
from batchrelay.store.lifecycle import is_stopped, tick
from batchrelay.store.queue import CHUNK_FUNCTION
from batchrelay.store.schedules import run_due_schedules
from batchrelay.store.store import Store
from batchrelay.store.sweeper import requeue_deferred, sweep
from batchrelay.store.webhooks import Outbox, delivery_of
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.linepool import LinePool
from batchrelay.worker.relay import relay

log = logging.getLogger("batchrelay.worker.worker")
REDIS_RETRY_DEFER = 2.0
MAX_REDIS_WAIT_S = 30.0
BURST_REDIS_PATIENCE_S = 300.0  # a burst worker gives up on a Redis gone this long; others never do
SHUTDOWN_MARGIN_S = 5
STOP_CHECK_S = 1.0
PARKED = math.inf  # a line's "due" when it waits for its batch's budget to be raised


@dataclass(slots=True)
class LineWork:
    batch_id: str
    job: JobLine
    first_tried: float
    allow: list[str] | None
    earlier: list[Attempt]
    budgeted: bool = False
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
    _checking: dict[str, asyncio.Future[bool]] = field(default_factory=dict)  # batch -> its stop check under way
    in_flight: set[tuple[str, int]] = field(default_factory=set)
    budget: Budget | None = None
    draining: bool = False  # SIGTERM: start no new line; the ones running finish
    outbox: Outbox | None = None  # completion webhooks (webhooks.py)
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # schedule submits started by a sweep
    _stopped: dict[str, tuple[float, bool]] = field(default_factory=dict)  # batch -> (checked at, stopped)

    async def batch_stopped(self, batch_id: str) -> bool:
        """Whether the batch was stopped (cancel, expiry, budget) since its chunk was claimed; asked
        of Redis at most once a second per batch."""
        now = time.monotonic()
        checked = self._stopped.get(batch_id)
        if checked is not None and now - checked[0] <= STOP_CHECK_S:
            return checked[1]
        # every consumer finds the answer stale at once: one of them asks, the others wait for its answer
        check = self._checking.get(batch_id)
        if check is None:
            check = self._checking[batch_id] = asyncio.ensure_future(self._check_stopped(batch_id, now))
            check.add_done_callback(lambda _: self._checking.pop(batch_id, None))
        return await asyncio.shield(check)

    async def _check_stopped(self, batch_id: str, now: float) -> bool:
        stopped = await is_stopped(self.store, batch_id)
        self._stopped[batch_id] = (now, stopped)
        return stopped

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
        # its own client: a slow receiver must never hold a connection the providers' calls need
        self.outbox = Outbox(self.store, delivery_of(self.settings), httpx.AsyncClient(follow_redirects=False))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` beside the jobs (cancelled by `close`); its failure is logged."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %r", task.exception())

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()  # a schedule's submit cut off: its batch is failed, its file tried again next tick
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.pool:
            await self.pool.close()
        for c in self.clients:
            await c.aclose()
        if self.outbox:
            await self.outbox.http.aclose()

    async def handle_line(self, consumer: int, work: LineWork) -> float | None:
        """Relay one line and record its result; or return when (unix time) it may be tried again."""
        if self.draining:
            return time.time()  # not started: back to the queue at once, for another worker
        if await self.batch_stopped(work.batch_id):
            return PARKED  # stays pending: a cancel or expiry marks it, a raised budget requeues it
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
        spend = None
        if work.budgeted and self.budget is not None:
            spend = Spend(self.budget, work.batch_id, self.settings.worker.default_max_tokens)
        try:
            out = await relay(job, cands, client, self.settings.worker, self.health, first_tried=work.first_tried,
                              earlier=work.earlier, spend=spend)
        except (RedisError, OSError):
            raise  # the store is unreachable: the chunk retries, finished lines stay finished
        except Exception as e:  # a bug or an input nothing caught earlier: never retry it forever
            log.exception("line %s of %s failed inside batchrelay", job.line, work.batch_id)
            out = Outcome(attempts=list(work.earlier), message=f"internal error: {type(e).__name__}: {e}"[:500])
        if out.defer_s is not None or out.over_budget:
            await self.store.save_attempts(work.batch_id, job.line, [a.as_dict() for a in out.trimmed_attempts()])
            if out.defer_s is None:
                return PARKED  # over budget: it waits until the limit is raised
            return time.time() + out.defer_s  # due then, however long the rest of its chunk takes
        billed = out.billed
        await self.store.write_result(work.batch_id, job.line, outcome_record(work.batch_id, job, out, billed), out.ok,
                                      increments(billed))
        return None

    async def run_chunk(self, batch_id: str, lines: list[int], job_id: str) -> int:
        # lines still running here (a chunk that passed its deadline and came back) are not taken twice
        claim = await self.store.claim(batch_id, [n for n in lines if (batch_id, n) not in self.in_flight])
        if not claim.jobs:
            return 0
        assert self.pool is not None
        work = [LineWork(batch_id, job, claim.first_tried[job.line], claim.allow,
                         [Attempt.from_dict(a) for a in claim.earlier.get(job.line, [])], claim.budgeted)
                for job in claim.jobs]
        self.in_flight.update((batch_id, w.job.line) for w in work)
        try:
            defers = await self.pool.run(work)
        finally:
            self.in_flight.difference_update((batch_id, w.job.line) for w in work if w.done)
        # lines over budget stay pending with no job: `budget --max-cost` puts them back
        later = [(w.job.line, due) for w, due in zip(work, defers, strict=True) if due is not None and due != PARKED]
        if later:
            # the chunk ends when its last line does: its deferred lines' wait has been running since
            soonest = max(0.0, min(due for _, due in later) - time.time())
            await requeue_deferred(self.store, batch_id, job_id, [n for n, _ in later], soonest)
        return len(claim.jobs) - len(later)

    async def sweep(self, queue: str, *, background: bool = False) -> int:
        """Housekeeping (lifecycle.tick), due `[[schedules]]`, then requeue orphaned chunks; returns how
        many chunks were requeued plus how many batches were started or submitted. `background`: a
        schedule's submits run as tasks of this process rather than inside the sweep (the cron's)."""
        w = self.settings.worker
        done = await tick(self.store, grace_s=w.cancel_grace_s, retention_s=w.retention_s)
        if any(done.values()):
            log.info("housekeeping: %s", ", ".join(f"{k} {v}" for k, v in done.items() if v))
        ran = {"submitted": 0}
        if self.settings.schedules:
            ran = await run_due_schedules(self.store, self.settings, background=self.spawn if background else None)
        n = await sweep(self.store, queue)
        if n:
            log.warning("requeued %d chunk jobs that arq had dropped", n)
        return n + done["started"] + ran["submitted"]  # new work: a burst worker goes round again

    async def deliver_webhooks(self) -> int:
        """Completion webhooks that are due; how many were accepted."""
        assert self.outbox is not None
        n = await self.outbox.deliver_due()
        if n:
            log.info("delivered %d completion webhooks", n)
        return n

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
    """Cron: put back chunks arq dropped (tries exhausted, job_timeout) while lines are pending; move
    cancels and expiries on; forget old finished batches."""
    rt: Runtime = ctx["runtime"]
    return await rt.sweep(ctx["queue_name"], background=True)


async def send_webhooks(ctx: dict[str, Any]) -> int:
    """Cron: POST the batch object of batches that ended to their webhook (retried with backoff)."""
    rt: Runtime = ctx["runtime"]
    return await rt.deliver_webhooks()


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
        store = Store(ctx["redis"], keys)  # arq's own client: one connection pool per worker
        rt = Runtime(settings, store, settings.ordered_providers(), Health(store, settings.health),
                     budget=Budget(store, lease_s=2 * w.call_timeout + 60))
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
        # (arq keeps a job's in-progress key for the longest timeout of all its functions + 10 s, so
        # the sweep's own timeout must not outgrow job_timeout: it would delay the rerun of a dead
        # worker's chunk)
        cron_jobs=[] if burst else [
            cron(sweep_orphans, name="batchrelay-sweep", second={0, 15, 30, 45}, unique=True,
                 timeout=min(30, w.job_timeout)),
            # every 2 s; each POST is bounded by [webhooks] timeout_s and they run together (a POST cut
            # off by this timeout is sent again once its lease lapses)
            cron(send_webhooks, name="batchrelay-webhooks", second=set(range(0, 60, 2)), unique=True,
                 timeout=min(settings.webhooks.timeout_s + 10, w.job_timeout)),
        ],
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
        # SIGTERM: stop taking jobs and give the calls in flight time to finish (see run_worker)
        job_completion_wait=int(w.call_timeout) + SHUTDOWN_MARGIN_S,
    )


def settings_class(settings: Settings) -> type:
    """An arq `WorkerSettings` class for `arq batchrelay.worker.worker.WorkerSettings`."""
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


async def _until_redis_answers(worker: Worker, signals: list[int]) -> None:
    """Ping with backoff until Redis is back (a burst worker gives up after BURST_REDIS_PATIENCE_S)."""
    delay, since = REDIS_RETRY_DEFER, time.monotonic()
    while not signals[0]:
        await asyncio.sleep(delay)
        if worker._pool is None:
            return  # arq never got its pool: its own start-up retries are the wait
        try:
            await worker.pool.ping()
            log.warning("Redis is back after %.0fs", time.monotonic() - since)
            return
        except (AuthenticationError, AuthorizationError):
            raise
        except (RedisError, OSError) as e:
            if worker.burst and time.monotonic() - since > BURST_REDIS_PATIENCE_S:
                raise
            delay = min(delay * 2, MAX_REDIS_WAIT_S)
            log.warning("Redis still unreachable (%s); next try in %.0fs", type(e).__name__, delay)


def _forget_dead_jobs(worker: Worker) -> None:
    """Job tasks that died with the connection would make arq's next poll raise their old error:
    their chunks are rerun by arq (or the sweeper) and their finished lines stay finished."""
    for job_id, task in list(worker.tasks.items()):
        if task.done():
            del worker.tasks[job_id]
            if not task.cancelled() and task.exception() is not None:
                log.info("chunk job %s ended with the connection: %s", job_id, task.exception())


def _graceful(worker: Worker) -> list[int]:
    """SIGTERM/SIGINT: no new jobs and no new lines; lines in flight finish (within call_timeout + a
    margin), lines not started go back to the queue as a chunk job of their own (no arq try used),
    then the worker exits. A second signal stops it at once; arq reruns what was cut off."""
    signals = [0]

    def on_signal(signum: signal.Signals) -> None:
        signals[0] += 1
        rt: Runtime | None = worker.ctx.get("runtime")
        if rt is not None:
            rt.draining = True
        if signals[0] == 1:
            log.warning("%s: finishing the calls in flight, then stopping (again to stop now)", signum.name)
            worker.handle_sig_wait_for_completion(signum)
        else:
            worker.handle_sig(signum)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, functools.partial(on_signal, signum))
    return signals  # how many signals came: none means keep going


async def run_worker(worker: Worker) -> None:
    """Run until burst end or a signal (arq's handler cancels `main_task`, set by async_run).

    In burst mode the queue being empty is not the end if arq dropped a chunk with lines still
    pending: sweep, and go round again while that finds work. Redis going away for longer than
    the client's own retries does not end the worker either: it waits and goes on.
    """
    signals = _graceful(worker) if worker._handle_signals else [0]
    try:
        while not signals[0]:
            try:
                await worker.async_run()
                if not worker.burst:
                    break
                rt: Runtime = worker.ctx["runtime"]
                if not await rt.sweep(worker.queue_name):
                    await rt.deliver_webhooks()  # once: a retry waits for a worker that stays
                    break
            except (AuthenticationError, AuthorizationError, ssl.SSLError):
                raise  # a wrong password or certificate will not get better by waiting
            except (RedisError, OSError) as e:
                log.warning("Redis unreachable (%s: %s); waiting for it", type(e).__name__, e)
                await _until_redis_answers(worker, signals)
                _forget_dead_jobs(worker)
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



