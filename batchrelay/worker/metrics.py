"""A worker process's own Prometheus metrics, served by `batchrelay worker --metrics-port N`.

The fleet's figures (lines, calls, spend: README "Metrics") come from Redis at `serve`'s /metrics
and hold across every worker; these say what one process is doing: its lines in flight, the lines
it ended by status, how long each provider call took, its chunk jobs, the Redis outages it waited
out, and the process collectors (CPU, memory, open files, Python). They live in a registry of
this module's own, never prometheus_client's global one, and are updated by one call at each place
they describe (relay.py, runtime.py, cached.py, worker.py), so those modules stay about their work.
Counters are per process: they start at 0 with it, as Prometheus expects of a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from batchrelay.config.settings import WorkerConfig
from batchrelay.errors import ProviderError
from batchrelay.results.outcome import Result

log = logging.getLogger("batchrelay.worker.metrics")
T = TypeVar("T")

# LLM calls take from a tenth of a second (a cached or tiny answer) to minutes (long outputs);
# the buckets are spread over that range, with the usual SLO marks (1, 5, 30, 60 s) among them.
CALL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

# What a line's outcome counts as, in `batchrelay_worker_lines_total{status}`: the final ones as in
# the batch's counts; `deferred` (no provider could take it now: back to the queue) and `parked`
# (over the batch's budget) are not final, the line is counted again when it ends.
STATUS_OF: Mapping[Result, str] = {
    Result.ANSWERED: "succeeded", Result.REJECTED: "failed", Result.FAILED: "failed",
    Result.DEFERRED: "deferred", Result.OVER_BUDGET: "parked",
}
LINE_STATUSES = ("succeeded", "failed", "cached", "deferred", "parked")
CHUNK_OUTCOMES = ("done", "cancelled", "error")

REGISTRY = CollectorRegistry()
LINES = Counter("batchrelay_worker_lines", "Lines this worker process ended, by status (cached: answered from "
                "the response cache; deferred and parked lines go on later).", ["status"], registry=REGISTRY)
CALL_SECONDS = Histogram("batchrelay_provider_call_duration_seconds", "Provider calls of this worker process "
                         "(each HTTP call, failed ones too), by provider: seconds until the answer or error.",
                         ["provider"], buckets=CALL_BUCKETS, registry=REGISTRY)
CHUNKS = Counter("batchrelay_worker_chunk_jobs", "Chunk jobs this worker process ran, by how they ended (cancelled: "
                 "their deadline or a shutdown; error: Redis failed them, they are retried).", ["outcome"],
                 registry=REGISTRY)
CHUNKS_RUNNING = Gauge("batchrelay_worker_chunk_jobs_running", "Chunk jobs this worker process is running now.",
                       registry=REGISTRY)
REDIS_RECONNECTS = Counter("batchrelay_worker_redis_reconnects", "Redis outages this worker process waited out "
                           "(Redis answered again after it had been unreachable).", registry=REGISTRY)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
for _status in LINE_STATUSES:  # every series from the start: a rate over a counter that appears later misses its first
    LINES.labels(_status)
for _outcome in CHUNK_OUTCOMES:
    CHUNKS.labels(_outcome)


def line_done(kind: Result) -> None:
    """A line's relay ended (runtime.py)."""
    LINES.labels(STATUS_OF[kind]).inc()


def lines_cached(n: int) -> int:
    """`n` lines were answered from the response cache (cached.py); returns `n`."""
    LINES.labels("cached").inc(n)
    return n


async def timed_call(provider: str, call: Awaitable[T]) -> T:
    """Await one provider call (relay.py), observed in the latency histogram when it answered or
    failed as a provider error: each such call is an attempt in the line's record. One cut off
    (cancelled, a bug) is not."""
    started = time.perf_counter()
    try:
        result = await call
    except ProviderError:
        CALL_SECONDS.labels(provider).observe(time.perf_counter() - started)
        raise
    CALL_SECONDS.labels(provider).observe(time.perf_counter() - started)
    return result


async def chunk_job(run: Awaitable[T]) -> T:
    """Await one chunk job (runtime.py): counted by how it ended, and running meanwhile."""
    CHUNKS_RUNNING.inc()
    outcome = "error"
    try:
        result = await run
        outcome = "done"
        return result
    except BaseException as e:
        outcome = "error" if isinstance(e, Exception) else "cancelled"
        raise
    finally:
        CHUNKS_RUNNING.dec()
        CHUNKS.labels(outcome).inc()


def redis_reconnected() -> None:
    """Redis answers again after an outage this process waited out (worker.py)."""
    REDIS_RECONNECTS.inc()


class InFlight(Collector):
    """Read at each scrape from the worker's arq context: the lines its running chunk jobs hold (being
    relayed, or queued for one of its consumers), and how many it relays at most at once."""

    def __init__(self, ctx: Mapping[str, Any]) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[GaugeMetricFamily]:
        rt = self.ctx.get("runtime")
        yield GaugeMetricFamily("batchrelay_worker_lines_in_flight", "Lines held by this worker process's running "
                                "chunk jobs: being relayed, or waiting for a free consumer.",
                                value=len(rt.in_flight) if rt is not None else 0)
        yield GaugeMetricFamily("batchrelay_worker_concurrency", "Lines this worker process relays at most at once "
                                "([worker] concurrency).",
                                value=rt.settings.worker.concurrency if rt is not None else 0)


class MetricsServer:
    """prometheus_client's HTTP server for REGISTRY, on its own thread, while the worker runs."""

    def __init__(self, host: str, port: int, ctx: Mapping[str, Any]) -> None:
        self.host, self.port = host, port
        self._collector = InFlight(ctx)
        REGISTRY.register(self._collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        except BaseException:
            REGISTRY.unregister(self._collector)
            raise
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        REGISTRY.unregister(self._collector)


def serve_metrics(cfg: WorkerConfig, ctx: Mapping[str, Any]) -> MetricsServer | None:
    """The metrics server when `[worker] metrics_port` (or `--metrics-port`) asks for one. A port
    already taken (say, by another worker of a `run --workers N` given the same config) is a warning,
    not the end of the worker: its work matters more than its metrics."""
    if cfg.metrics_port is None:
        return None
    try:
        return MetricsServer(cfg.metrics_host, cfg.metrics_port, ctx)
    except OSError as e:
        log.warning("no metrics from this worker: cannot listen on %s:%d (%s)", cfg.metrics_host, cfg.metrics_port,
                    e.strerror or e)
        return None
