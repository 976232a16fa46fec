"""`run` and `demo`: submit, work in-process (or in N worker processes), watch, export."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrelay.cli.progress import watch
from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import BatchrelayError, ExitCode
from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.embedded import EmbeddedRedis
from batchrelay.store.export import Exported, check_paths, check_writable, export
from batchrelay.store.keys import Keys
from batchrelay.store.spending import cost_summary, ledger_of
from batchrelay.store.status import Status
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.submit import submit_file
from batchrelay.store.sweeper import requeue_pending
from batchrelay.worker.worker import build_worker, run_worker

MAX_REQUEUE_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class RunReport:
    batch: BatchInfo
    exported: Exported
    seconds: float
    cost: dict[str, Any]

    @property
    def exit_code(self) -> ExitCode:
        if self.batch.status == Status.BUDGET_EXHAUSTED:
            return ExitCode.BUDGET
        return ExitCode.FAILED_LINES if self.batch.unsuccessful else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {**self.batch.as_dict(), "seconds": round(self.seconds, 3), "cost": self.cost,
                "results_file": str(self.exported.results_path), "errors_file": str(self.exported.errors_path)}


@contextlib.contextmanager
def environment(
    settings: Settings, sim_providers: dict[str, dict[str, Any]] | None = None
) -> Iterator[tuple[Settings, str]]:
    """Redis (REDIS_URL or an embedded one) and providers (configured, or built-in simulators)."""
    with contextlib.ExitStack() as stack:
        url = settings.redis_url or stack.enter_context(EmbeddedRedis())
        if not settings.providers:
            sims = sim_providers or {"simulator": {}}
            providers = []
            for priority, (name, faults) in enumerate(sims.items(), start=1):
                base = stack.enter_context(SimulatorProcess(faults))
                providers.append(ProviderConfig(name=name, base_url=base, priority=priority))
            settings = settings.with_providers(providers)
        yield settings, url


@contextlib.contextmanager
def _worker_processes(settings: Settings, url: str, n: int, queue: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    with tempfile.TemporaryDirectory(prefix="batchrelay-") as tmp:
        cfg = Path(tmp) / "config.json"  # env var names only: no secret is written here
        cfg.write_text(json.dumps(settings.model_dump(mode="json", exclude={"source"})))
        env = {**os.environ, "BATCHRELAY_CONFIG": str(cfg), "REDIS_URL": url}
        procs = [subprocess.Popen([sys.executable, "-m", "batchrelay", "worker", "--burst", "--quiet",
                                   "--queue", queue], env=env)
                 for _ in range(n)]
        try:
            yield procs
        finally:
            stop_all(procs, grace=30)


async def _work(settings: Settings, url: str, store: Store, batch_id: str, workers: int, show: bool,
                queue: str) -> BatchInfo:
    for _round in range(MAX_REQUEUE_ROUNDS + 1):
        if workers <= 1:
            task = asyncio.create_task(run_worker(build_worker(settings, url, burst=True, handle_signals=False,
                                                               queue=queue)))
            info = await watch(store, batch_id, show=show, until_done=task.done)
            await task  # burst: returns once the queue is empty; raises what the worker raised
        else:
            with _worker_processes(settings, url, workers, queue) as procs:
                def exited(procs: list[subprocess.Popen[bytes]] = procs) -> bool:
                    return all(p.poll() is not None for p in procs)
                info = await watch(store, batch_id, show=show, until_done=exited)
                while not exited():
                    await asyncio.sleep(0.05)
        if info.finished or info.status == Status.BUDGET_EXHAUSTED:
            return info  # over budget: its lines wait for `batchrelay budget` to raise the limit
        # workers left with lines pending: arq dropped a chunk; put it back and go again
        await requeue_pending(store, batch_id)
    raise BatchrelayError(
        f"batch {batch_id} still has {info.pending} pending lines after {MAX_REQUEUE_ROUNDS} requeues")


async def run_file(
    settings: Settings, url: str, path: Path, out: Path, errors: Path | None, spec: BatchSpec, *,
    workers: int = 1, show: bool = True,
) -> RunReport:
    """Submit `path` as a batch with the options `spec` gives, work it, and export its records."""
    started = time.perf_counter()
    check_paths(out, errors, inputs=[path])  # before any money is spent, not after
    check_writable(out, errors)
    async with await Store.connect(url, Keys(settings.redis.prefix)) as store:
        # a queue of its own: this run's workers touch no other batch left in the same Redis
        queue = f"{store.keys.queue}:run:{uuid.uuid4().hex[:12]}"
        sub = await submit_file(store, path, spec, queue=queue)
        info = await _work(settings, url, store, sub.batch_id, workers, show, queue)
        exported = await export(store, sub.batch_id, out, errors)
        _rows, spent, budget = await ledger_of(store, sub.batch_id)
    return RunReport(info, exported, time.perf_counter() - started, cost_summary(spent, budget))
