"""The arq worker: its settings (the chunk function, the crons, start-up and shutdown) and its run
(`run_worker`: a burst worker sweeps before it ends, SIGTERM stops it gracefully, a Redis outage is
waited out). The chunk job itself and the process's shared state are in runtime.py. `python -m arq
batchrelay.worker.worker.WorkerSettings` works too; it reads the config from the environment
(`BATCHRELAY_CONFIG`, `REDIS_URL`).
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
from typing import Any

from arq.cron import cron
from arq.worker import Retry, Worker, func
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from batchrelay.config.settings import Settings, load_settings
from batchrelay.store.connection import redis_settings, worker_pool
from batchrelay.store.keys import Keys
from batchrelay.store.queue import CHUNK_FUNCTION, cron_name
from batchrelay.store.replicas import ReplicaAcks
from batchrelay.store.schedules import sweep_seconds
from batchrelay.store.store import Store
from batchrelay.store.sweeper import queued_jobs
from batchrelay.worker.eager import EagerWorker
from batchrelay.worker.metrics import redis_reconnected, serve_metrics
from batchrelay.worker.runtime import SHUTDOWN_MARGIN_S, Runtime

log = logging.getLogger("batchrelay.worker.worker")
REDIS_RETRY_DEFER = 2.0
MAX_REDIS_WAIT_S = 30.0
LANE_WAIT_S = 0.5  # a burst worker waiting for a lane looks at its parcels and queue this often
SWEEP_WHILE_WAITING_S = 15.0  # and sweeps this often (as the long-running workers' cron does)
BURST_REDIS_PATIENCE_S = 300.0  # a burst worker gives up on a Redis gone this long; others never do


async def run_chunk(ctx: dict[str, Any], batch_id: str, lines: list[int]) -> int:
    rt: Runtime = ctx["runtime"]
    try:
        async with asyncio.timeout(rt.chunk_deadline):
            return await rt.run_chunk(batch_id, lines, ctx["job_id"])
    except TimeoutError:
        # arq fails a job at job_timeout for good; stopping first lets a retry finish the rest
        log.warning("chunk of %s passed its deadline; requeueing its unfinished lines", batch_id,
                    extra={"batch": batch_id, "job": ctx["job_id"], "lines": len(lines)})
        raise Retry(defer=0) from None
    except (RedisError, OSError) as e:
        # finished lines are recorded; a retry of this chunk redoes only the rest
        log.warning("chunk of %s: Redis error (%s), retrying in %ss", batch_id, type(e).__name__, REDIS_RETRY_DEFER,
                    extra={"batch": batch_id, "job": ctx["job_id"], "error": type(e).__name__,
                           "wait_s": REDIS_RETRY_DEFER})
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


async def poll_lanes(ctx: dict[str, Any]) -> int:
    """A tick of an older worker's lanes cron (each process now moves its lanes' parcels on itself:
    Lanes.keep_moving); run so it leaves the queue."""
    rt: Runtime = ctx["runtime"]
    return await rt.lanes.poll_due() if rt.lanes else 0


def build_worker(
    settings: Settings, redis_url: str, *, burst: bool = False, handle_signals: bool = True, queue: str | None = None,
) -> Worker:
    w = settings.worker
    keys = Keys(settings.redis.prefix)
    queue = queue or keys.queue
    chunks_in_flight = max(2, math.ceil(2 * w.concurrency / w.chunk_size) + 1)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["queue_name"] = queue
        if "runtime" in ctx:  # a burst worker's second round after a sweep
            return
        acks = ReplicaAcks(settings.redis.min_replicas_ack, settings.redis.replica_ack_timeout)
        store = Store(ctx["redis"], keys, acks=acks)  # arq's own client: one pool per worker
        ctx["runtime"] = rt = Runtime.opened(settings, store)
        if rt.lanes is not None and rt.lanes.configured:
            # a burst worker (`run`'s) moves on the parcels of its queue's batches only
            rt.lanes.queue = queue if burst else None
            rt.spawn(rt.lanes.keep_moving(lambda: rt.draining))
        ctx["metrics"] = serve_metrics(w, ctx)  # `--metrics-port`: this process's own (worker/metrics.py)

    async def shutdown(ctx: dict[str, Any]) -> None:
        rt: Runtime | None = ctx.get("runtime")
        if rt:
            await rt.close()
        if ctx.get("metrics"):
            ctx.pop("metrics").close()

    sweep_job = cron_name(queue, "batchrelay-sweep"), sweep_orphans, min(30, w.job_timeout)
    hooks_job = cron_name(queue, "batchrelay-webhooks"), send_webhooks, min(settings.webhooks.timeout_s + 10,
                                                                            w.job_timeout)
    lanes_job = cron_name(queue, "batchrelay-lanes"), poll_lanes, min(300, w.job_timeout)
    functions = [func(run_chunk, name=CHUNK_FUNCTION, timeout=w.job_timeout, max_tries=w.max_tries)]
    if burst:  # the long-running workers' cron ticks are jobs on this queue too: one taken here is run here
        functions += [func(f, name=name, timeout=t) for name, f, t in (sweep_job, hooks_job, lanes_job)]
    return EagerWorker(
        functions=functions,
        # a burst worker sweeps once the queue is empty instead (see run_worker): a cron job held by a
        # killed worker would keep the queue non-empty, and burst workers waiting, until it expires
        # (arq keeps a job's in-progress key for the longest timeout of all its functions + 10 s, so
        # the sweep's own timeout must not outgrow job_timeout: it would delay the rerun of a dead
        # worker's chunk)
        cron_jobs=[] if burst else [
            # named after the queue: another setup's workers on this Redis must not take their ticks
            cron(sweep_orphans, name=sweep_job[0], second=sweep_seconds(), unique=True, timeout=sweep_job[2]),
            # every 2 s; each POST is bounded by [webhooks] timeout_s and they run together (a POST cut
            # off by this timeout is sent again once its lease lapses)
            cron(send_webhooks, name=hooks_job[0], second=set(range(0, 60, 2)), unique=True, timeout=hooks_job[2]),
        ],
        redis_settings=redis_settings(redis_url),
        redis_pool=worker_pool(redis_url),  # a Sentinel URL's (arq's own lacks our retries and options)
        queue_name=queue,
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
            redis_reconnected()
            log.warning("Redis is back after %.0fs", time.monotonic() - since,
                        extra={"wait_s": round(time.monotonic() - since, 1)})
            return
        except (AuthenticationError, AuthorizationError):
            raise
        except (RedisError, OSError) as e:
            if worker.burst and time.monotonic() - since > BURST_REDIS_PATIENCE_S:
                raise
            delay = min(delay * 2, MAX_REDIS_WAIT_S)
            log.warning("Redis still unreachable (%s); next try in %.0fs", type(e).__name__, delay,
                        extra={"error": type(e).__name__, "wait_s": delay})


def _forget_dead_jobs(worker: Worker) -> None:
    """Job tasks that died with the connection would make arq's next poll raise their old error:
    their chunks are rerun by arq (or the sweeper) and their finished lines stay finished."""
    for job_id, task in list(worker.tasks.items()):
        if task.done():
            del worker.tasks[job_id]
            if not task.cancelled() and task.exception() is not None:
                log.info("chunk job %s ended with the connection: %s", job_id, task.exception(),
                         extra={"job": job_id, "error": type(task.exception()).__name__})


def stop_worker(worker: Worker, signum: signal.Signals, *, now: bool) -> None:
    """What a signal does to a worker (`run` passes its own on): no new jobs and no new lines; the
    lines in flight finish (within call_timeout + a margin) and lines not started go back to the
    queue, or with `now` the calls in flight are cut off too."""
    rt: Runtime | None = worker.ctx.get("runtime")
    if rt is not None:
        rt.draining = True
    if now:
        worker.handle_sig(signum)
    else:
        worker.handle_sig_wait_for_completion(signum)


def _graceful(worker: Worker) -> list[int]:
    """SIGTERM/SIGINT: no new jobs and no new lines; lines in flight finish (within call_timeout + a
    margin), lines not started go back to the queue as a chunk job of their own (no arq try used),
    then the worker exits. A second signal stops it at once; arq reruns what was cut off."""
    signals = [0]

    def on_signal(signum: signal.Signals) -> None:
        signals[0] += 1
        if signals[0] == 1:
            log.warning("%s: finishing the calls in flight, then stopping (again to stop now)", signum.name)
        stop_worker(worker, signum, now=signals[0] > 1)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, functools.partial(on_signal, signum))
    return signals  # how many signals came: none means keep going


async def _wait_for_lanes(rt: Runtime, queue: str, signals: list[int]) -> bool:
    """A burst worker's queue is empty but a lane's parcel of its batches is open: its lines are not
    done. Wait here, quietly, while the process's own lane loop (Lanes.keep_moving) moves the parcels
    on, until they are all collected (False: the worker may end) or work is back on the queue (True:
    a parcel gave lines back, a sweep found some; arq runs again). A signal, or `run` stopping, ends
    the wait at once (False): the parcels stay in Redis for the workers, or the run's resume.
    Each look is a couple of Redis reads; the sweep runs every SWEEP_WHILE_WAITING_S."""
    if rt.lanes is None:
        return False
    swept = time.monotonic()
    while not (signals[0] or rt.draining):
        if not await rt.lanes.open():
            # a parcel gives its unanswered lines back to the queue before it is marked collected:
            # read after that, the queue holds them; a last sweep ends the lines it gave back to a
            # stopping batch (and finds any other work) before the worker ends
            return bool(await queued_jobs(rt.store, queue)) or bool(await rt.sweep(queue))
        if await queued_jobs(rt.store, queue):
            return True
        if time.monotonic() - swept >= SWEEP_WHILE_WAITING_S:
            swept = time.monotonic()
            if await rt.sweep(queue):
                return True
        await asyncio.sleep(LANE_WAIT_S)  # a signal is seen within this
    return False


async def run_worker(worker: Worker) -> None:
    """Run until burst end or a signal (arq's handler cancels `main_task`, set by async_run).

    In burst mode the queue being empty is not the end if arq dropped a chunk with lines still
    pending, or while a lane's parcel is open: sweep, wait for the parcels (_wait_for_lanes: one
    arq run, one "Starting worker" log, however long the upstream batch takes), and go round again
    only while that finds work. Redis going away for longer than the client's own retries does not end the
    worker either: it waits and goes on.
    """
    signals = _graceful(worker) if worker._handle_signals else [0]
    try:
        while not signals[0]:
            try:
                await worker.async_run()
                if not worker.burst:
                    break
                rt: Runtime = worker.ctx["runtime"]
                if not await rt.sweep(worker.queue_name) and not await _wait_for_lanes(rt, worker.queue_name, signals):
                    await rt.deliver_webhooks()  # once: a retry waits for a worker that stays
                    break
            except (AuthenticationError, AuthorizationError, ssl.SSLError):
                raise  # a wrong password or certificate will not get better by waiting
            except (RedisError, OSError) as e:
                log.warning("Redis unreachable (%s: %s); waiting for it", type(e).__name__, e,
                            extra={"error": type(e).__name__})
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



