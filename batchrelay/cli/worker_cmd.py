"""`batchrelay worker`: work queued batches, in as many processes on as many machines as you like.

Its own module (the command line's main.py is full); an option for it goes on `worker` below and
into `WorkerOptions`, which the body hands on whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from batchrelay.cli.kit import handles_errors, run_async, settings_of
from batchrelay.cli.logs import LogSetup, log_options, notice, secrets_of, setup_logging
from batchrelay.cli.servers import metrics_options
from batchrelay.config.settings import Settings
from batchrelay.store.connection import check_reachable


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What the command line asked of this worker process."""

    concurrency: int | None
    burst: bool
    queue: str | None
    logs: LogSetup


@click.command()
@click.option("--concurrency", type=click.IntRange(1, 4096), help="Lines in flight in this process.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@log_options()
@click.option("--quiet", is_flag=True, help="Log warnings only (--log-level warning).")
@click.option("--verbose", is_flag=True, help="Log at debug, each provider request too (--log-level debug --log-http).")
@click.option("--queue", hidden=True, help="Work this arq queue instead of the shared one (used by `run`).")
@metrics_options
@click.pass_context
@handles_errors
def worker(ctx: click.Context, concurrency: int | None, burst: bool, logs: LogSetup, quiet: bool, verbose: bool,
           queue: str | None) -> None:
    """Work queued batches: start as many as you like, on any machine sharing the Redis.

    \b
    Examples:
      batchrelay worker --concurrency 64
      batchrelay worker --burst          # for cron or CI: stop when nothing is queued
      batchrelay worker --log-format json --log-level warning
    """
    logs = logs.aliased(quiet=quiet, verbose=verbose)
    work(settings_of(ctx), WorkerOptions(concurrency, burst, queue, logs))


def work(settings: Settings, opts: WorkerOptions) -> None:
    from batchrelay.cli.preflight import with_keys
    from batchrelay.cli.runner import environment
    from batchrelay.store.webhooks import delivery_of
    from batchrelay.worker.worker import build_worker, run_worker

    setup_logging(opts.logs, secrets_of(settings))
    if opts.concurrency:
        tuned = settings.worker.model_copy(update={"concurrency": opts.concurrency})
        settings = settings.model_copy(update={"worker": tuned})
    if not settings.providers and settings.redis_url:
        raise click.UsageError("no [[providers]] configured: a worker needs at least one (see README)")
    settings = with_keys(settings)
    delivery_of(settings)  # a webhook secret variable that is not set: say so now, not at the first webhook
    if not settings.providers:  # nothing set up at all: the embedded Redis, and simulated answers as `run` gives
        notice("no [[providers]] configured: the built-in provider simulator answers (see README)")

    async def go(url: str, settings: Settings) -> None:
        # a clear error now beats arq's retry loop; an unreachable Redis (a restart, or a worker started
        # first) is waited for: for good by a worker, for a minute by a burst worker
        await check_reachable(url, wait_s=60 if opts.burst else float("inf"))
        await run_worker(build_worker(settings, url, burst=opts.burst, queue=opts.queue))

    with environment(settings) as env:
        run_async(go(env.url, env.settings))
