"""A worker process's Runtime, and the chunk job it runs on it.

The Runtime holds what the process shares across arq jobs: the store, the HTTP clients, the shared
provider health, the budget, the webhook outbox and a fixed pool of consumers (linepool.py).

A chunk job claims its lines that still have no result (a rerun skips finished ones), feeds them
to the pool, and each consumer relays its line to the providers (relay.py) and writes the result
in one atomic step. A line whose attempts all fail gets a terminal error record written here,
never only arq's 'max retries exceeded'. A line no provider can take now is deferred: the chunk
ends and its deferred lines go back to the queue as a new chunk job due when the earliest provider
may take them again, so waiting costs neither a consumer slot nor an arq try. Once the process is
draining (SIGTERM), lines not started go back to the queue the same way, due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.exceptions import RedisError

from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.money.budget import Spend
from batchrelay.money.ledger import increments
from batchrelay.providers.routing import candidates
from batchrelay.results.outcome import Attempt, Outcome, Result
from batchrelay.results.records import outcome_record
from batchrelay.results.tally import call_tally
from batchrelay.store.budget import Budget
from batchrelay.store.cache import ResponseCache
from batchrelay.store.health import Health
from batchrelay.store.heartbeat import Heartbeat
from batchrelay.store.lifecycle import is_stopped, not_started, tick
from batchrelay.store.schedules import run_due_schedules
from batchrelay.store.store import Store
from batchrelay.store.sweeper import requeue_deferred, sweep
from batchrelay.store.webhooks import Outbox, delivery_of
from batchrelay.wire.jobs import JobLine
from batchrelay.worker.cached import CachedLines
from batchrelay.worker.housekeeping import housekeeping_text
from batchrelay.worker.lanes import Lanes
from batchrelay.worker.linepool import LinePool
from batchrelay.worker.metrics import chunk_job, line_done
from batchrelay.worker.relay import LineRelay
from batchrelay.worker.writebehind import ResultWriter

log = logging.getLogger("batchrelay.worker.runtime")
SHUTDOWN_MARGIN_S = 5  # past call_timeout: how long a stopping worker's calls in flight may take
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
    cached: bool = False  # its batch uses the response cache (cached.py)
    done: bool = True  # False while a consumer is on it (it outlives a cancelled chunk)
    claimed: float = -math.inf  # monotonic: when its chunk claimed it


@dataclass(slots=True)
class Runtime:
    """What a worker process shares across jobs: store, HTTP clients, the consumer pool."""

    settings: Settings
    store: Store
    providers: list[ProviderConfig]
    health: Health
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    pool: LinePool[LineWork, float | None] | None = None
    writer: ResultWriter | None = None  # final results, gathered across lines (writebehind.py)
    _checking: dict[str, asyncio.Future[bool]] = field(default_factory=dict)  # batch -> its stop check under way
    in_flight: set[tuple[str, int]] = field(default_factory=set)
    budget: Budget | None = None
    draining: bool = False  # SIGTERM: start no new line; the ones running finish
    outbox: Outbox | None = None  # completion webhooks (webhooks.py)
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # schedule submits started by a sweep
    _stopped: dict[str, tuple[float, bool]] = field(default_factory=dict)  # batch -> (checked at, stopped)
    heartbeat: Heartbeat | None = None  # this process's, and the chunks it holds (store/heartbeat.py)
    cached: CachedLines | None = None  # the response cache, for batches that use it
    lanes: Lanes | None = None  # official Batch APIs (worker/lanes.py)

    @classmethod
    def opened(cls, settings: Settings, store: Store) -> Runtime:
        """A worker process's runtime on `store`, its pool running."""
        # a live call settles its reservation well within 2 * call_timeout: only a dead worker's lapse
        lease_s = 2 * settings.worker.call_timeout + 60
        rt = cls(settings, store, settings.ordered_providers(), Health(store, settings.health),
                 budget=Budget(store, lease_s=lease_s),
                 cached=CachedLines(ResponseCache(store, settings.cache),
                                    settings.worker.call_timeout + settings.cache.lease_s))
        rt.open()
        # its own client: a file streamed up or down must never hold a connection the providers' calls need
        http = httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10), follow_redirects=False)
        rt.lanes = Lanes(store, settings, rt.budget, rt.health, http)
        return rt

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
        self.writer = ResultWriter(self.store)
        self.pool = LinePool(w.concurrency, self.handle_line)
        self.pool.start()
        # its own client: a slow receiver must never hold a connection the providers' calls need
        self.outbox = Outbox(self.store, delivery_of(self.settings), httpx.AsyncClient(follow_redirects=False))
        self.heartbeat = Heartbeat(self.store)
        self.spawn(self.heartbeat.run())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` beside the jobs (cancelled by `close`); its failure is logged."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed: %r", task.exception(), exc_info=task.exception(),
                      extra={"error": type(task.exception()).__name__})

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()  # a schedule's submit cut off: its batch is failed, its file tried again next tick
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.pool:
            await self.pool.close()
        if self.writer:
            await self.writer.close()
        for c in self.clients:
            await c.aclose()
        if self.outbox:
            await self.outbox.http.aclose()
        if self.heartbeat:
            await self.heartbeat.stop()
        if self.lanes:
            await self.lanes.close()

    async def handle_line(self, consumer: int, work: LineWork) -> float | asyncio.Future[Any] | None:
        """Relay one line and record its result; or return when (unix time) it may be tried again.
        A Future: its result is being written (writebehind.py); the line is done once it is."""
        if self.draining:
            return time.time()  # not started: back to the queue at once, for another worker
        if await self.batch_stopped(work.batch_id):
            await not_started(self.store, work.batch_id, work.job.line)  # a stop need not wait for it
            return PARKED  # stays pending: a cancel or expiry marks it, a raised budget requeues it
        if (self.heartbeat is not None and self.heartbeat.may_have_lost(work.claimed)
                and not await self.store.is_pending(work.batch_id, work.job.line)):
            return None  # another worker took it over while this one was cut off, and answered it
        work.done = False
        got: float | asyncio.Future[Any] | None = None
        try:
            got = await self._handle(consumer, work)
            return got
        finally:
            if isinstance(got, asyncio.Future) and not got.done():
                got.add_done_callback(lambda _: self._line_over(work))  # still ours until it is written
            else:
                self._line_over(work)

    def _line_over(self, work: LineWork) -> None:
        work.done = True
        self.in_flight.discard((work.batch_id, work.job.line))

    async def _handle(self, consumer: int, work: LineWork) -> float | asyncio.Future[Any] | None:
        if work.cached and self.cached is not None:
            return await self.cached.handle(work.batch_id, work.job, lambda: self._relay(consumer, work),
                                            lambda out, cache: self._finish_now(work, out, cache))
        return await self._finish(work, await self._relay(consumer, work))

    async def _relay(self, consumer: int, work: LineWork) -> Outcome:
        client = self.clients[consumer * len(self.clients) // self.settings.worker.concurrency]
        job, r = work.job, self.settings.routing
        cands = candidates(job.dialect, str(job.body["model"]), self.providers, strategy=r.strategy,
                           routes=r.routes, allow=work.allow)
        spend = None
        if work.budgeted and self.budget is not None:
            spend = Spend(self.budget, work.batch_id, self.settings.worker.default_max_tokens)
        try:
            out = await LineRelay(job, cands, client, self.settings.worker, self.health, first_tried=work.first_tried,
                                  earlier=work.earlier, spend=spend, batch=work.batch_id).run()
        except (RedisError, OSError):
            raise  # the store is unreachable: the chunk retries, finished lines stay finished
        except Exception as e:  # a bug or an input nothing caught earlier: never retry it forever
            log.exception("line %s of %s failed inside batchrelay", job.line, work.batch_id,
                          extra={"batch": work.batch_id, "line": job.line, "error": type(e).__name__})
            out = Outcome(Result.FAILED, list(work.earlier), message=f"internal error: {type(e).__name__}: {e}"[:500])
        return out

    async def _finish_now(self, work: LineWork, out: Outcome, cache: dict[str, Any]) -> float | None:
        """`_finish`, its record written before it returns (the response cache's lease waits for it)."""
        got = await self._finish(work, out, cache, behind=False)
        assert not isinstance(got, asyncio.Future)
        return got

    async def _finish(self, work: LineWork, out: Outcome, cache: dict[str, Any] | None = None, *,
                      behind: bool = True) -> float | asyncio.Future[Any] | None:
        """Write a final outcome's record, or keep a pending line's attempts; when it may be tried again.
        `behind`: a final record may still be on its way (the Future of its write), unless too many are."""
        job = work.job
        line_done(out.kind)
        _log_outcome(work, out)
        match out.kind:
            case Result.ANSWERED | Result.REJECTED | Result.FAILED:
                billed = out.billed
                assert self.writer is not None
                record = outcome_record(work.batch_id, job, out, billed, cache)
                written = self.writer.write(work.batch_id, job.line, record, out.ok, increments(billed),
                                            call_tally(out.attempts, str(job.body["model"])))
                # a consumer moves on only while few answers are unwritten: cut off from Redis, a
                # worker loses those (another reruns their lines), beside the calls in flight
                if behind and self.writer.unwritten <= max(1, self.settings.worker.concurrency // 4):
                    return written
                await written  # the writes fall behind (or the caller needs it written): wait for this one
                return None
            case Result.DEFERRED:
                await self._keep_attempts(work, out)
                if out.budget_wait and not out.attempts and self.budget is not None:
                    await self.budget.unsent(work.batch_id, job.line)
                return time.time() + out.defer_s  # due then, however long the rest of its chunk takes
            case Result.OVER_BUDGET:
                await self._keep_attempts(work, out)
                return PARKED  # it waits until the limit is raised

    async def _keep_attempts(self, work: LineWork, out: Outcome) -> None:
        """A line that stays pending keeps its attempts (and their cost) for its next run."""
        await self.store.save_attempts(work.batch_id, work.job.line, [a.as_dict() for a in out.trimmed_attempts()])

    async def run_chunk(self, batch_id: str, lines: list[int], job_id: str) -> int:
        # held while it runs: if this process dies, its heartbeat lapses and another worker puts the
        # chunk's lines back long before arq would (store/heartbeat.py)
        assert self.heartbeat is not None
        try:
            # the claim only reads: it may go alongside the hold
            return await chunk_job(self._run_chunk(batch_id, lines, job_id, self.heartbeat.hold(job_id, batch_id)))
        finally:
            # left behind, the entry only makes a look after this process's end put back finished lines
            with contextlib.suppress(RedisError, OSError):
                await self.heartbeat.release(job_id, batch_id)

    async def _run_chunk(self, batch_id: str, lines: list[int], job_id: str, holding: Awaitable[None]) -> int:
        # lines still running here (a chunk that passed its deadline and came back) are not taken twice
        _, claim = await asyncio.gather(
            holding, self.store.claim(batch_id, [n for n in lines if (batch_id, n) not in self.in_flight]))
        claimed = time.monotonic()
        jobs, hits = claim.jobs, 0
        if claim.cached and self.cached is not None and jobs and not self.draining:
            answered = await self.cached.answer_hits(batch_id, jobs)  # the whole chunk looked up at once
            jobs, hits = [job for job in jobs if job.line not in answered], len(answered)
        if self.lanes is not None and jobs and not self.draining:
            jobs = await self.lanes.take(batch_id, job_id, claim, jobs)  # those a lane takes leave the chunk
        if not jobs:
            return hits
        sending = {job.line for job in jobs}
        await self.store.note_first_try(batch_id, {n: claim.first_tried[n] for n in claim.fresh if n in sending})
        assert self.pool is not None
        work = [LineWork(batch_id, job, claim.first_tried[job.line], claim.allow,
                         [Attempt.from_dict(a) for a in claim.earlier.get(job.line, [])], claim.budgeted, claim.cached,
                         claimed=claimed)
                for job in jobs]
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
            parked = [w.job.line for w, due in zip(work, defers, strict=True) if due == PARKED]
            await requeue_deferred(self.store, batch_id, job_id, [n for n, _ in later], soonest, parked)
        return hits + len(jobs) - len(later)

    async def sweep(self, queue: str, *, background: bool = False) -> int:
        """Housekeeping (lifecycle.tick), due `[[schedules]]`, then requeue orphaned chunks; returns how
        many chunks were requeued plus how many batches were started or submitted. `background`: a
        schedule's submits run as tasks of this process rather than inside the sweep (the cron's)."""
        w = self.settings.worker
        done = await tick(self.store, grace_s=w.call_timeout + SHUTDOWN_MARGIN_S, retention_s=w.retention_s)
        if any(done.values()):
            log.info("housekeeping: %s", housekeeping_text(done), extra={k: v for k, v in done.items() if v})
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


# a line that failed (no provider could serve it) is a warning; one whose request was refused as bad is
# the input's fault (info); the rest is routine (debug)
_OUTCOME_LEVEL = {Result.FAILED: logging.WARNING, Result.REJECTED: logging.INFO, Result.OVER_BUDGET: logging.INFO}
_OUTCOME_EVENT = {Result.ANSWERED: "line answered", Result.REJECTED: "line rejected", Result.FAILED: "line failed",
                  Result.DEFERRED: "line deferred", Result.OVER_BUDGET: "line waits for its budget"}


def _log_outcome(work: LineWork, out: Outcome) -> None:
    level = _OUTCOME_LEVEL.get(out.kind, logging.DEBUG)
    if not log.isEnabledFor(level):
        return
    last = out.attempts[-1] if out.attempts else None
    event = f"{_OUTCOME_EVENT[out.kind]}: {out.message}" if out.message else _OUTCOME_EVENT[out.kind]
    log.log(level, event[:1000], extra={
        "batch": work.batch_id, "line": work.job.line, "provider": out.provider.name if out.provider else None,
        "model": str(work.job.body["model"]), "status": last.status if last else None,
        "latency_ms": round(last.latency_ms, 1) if last else None,
        "attempt": len(out.attempts), "error": type(out.error).__name__ if out.error else None,
        "wait_s": round(out.defer_s, 2) if out.kind is Result.DEFERRED else None})
