"""The failover bench's rig (bench/failover.py): its configs, worker processes and one batch run to the end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess
from batchrelay.spec import BatchSpec
from batchrelay.store.keys import Keys
from batchrelay.store.store import BatchInfo, Store
from batchrelay.store.submit import submit_file

WORKERS = 2
CHUNK = 50


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return orjson.dumps(v).decode()
    return repr(v)


def write_config(path: Path, prefix: str, providers: list[dict[str, Any]], *,
                 health: dict[str, Any] | None = None, **worker: Any) -> Path:
    """A batchrelay.toml: own prefix, defaults except what the scenario needs."""
    lines = ["[redis]", f"prefix = {toml_value(prefix)}", "", "[worker]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in {"chunk_size": CHUNK, **worker}.items()]
    lines += ["", "[health]"] + [f"{k} = {toml_value(v)}" for k, v in (health or {}).items()]
    for p in providers:
        lines += ["", "[[providers]]"] + [f"{k} = {toml_value(v)}" for k, v in p.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def priority_config(path: Path, prefix: str, sims: dict[str, SimulatorProcess], concurrency: int) -> Path:
    """One provider per simulator, tried in the order given."""
    return write_config(path, prefix, [{"name": name, "base_url": sim.base_url, "priority": i + 1}
                                       for i, (name, sim) in enumerate(sims.items())], concurrency=concurrency)


def sim_log(base: str) -> list[dict[str, Any]]:
    return list(httpx.get(base + "/_sim/log", timeout=30).json())


@dataclass
class Run:
    info: BatchInfo
    submitted_at: float  # unix time just before submit
    elapsed: float  # submit -> batch finished (s)
    records: list[tuple[bool, dict[str, Any]]]
    worker_rcs: list[int | None]
    timed_out: bool

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return [a for _, r in self.records for a in r.get("batchrelay", {}).get("attempts", [])]


def start_workers(cfg: Path, url: str, tmp: Path, tag: str, env: dict[str, str] | None = None,
                  concurrency: int | None = None) -> list[subprocess.Popen[bytes]]:
    full = {**os.environ, "REDIS_URL": url, "BATCHRELAY_CONFIG": str(cfg), **(env or {})}
    cmd = [sys.executable, "-m", "batchrelay", "worker", "--burst", "--quiet"]
    procs = []
    for i in range(WORKERS):
        err = (tmp / f"{tag}.worker{i}.err").open("wb")
        procs.append(subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=err))
        err.close()
    return procs


def run_batch(url: str, prefix: str, cfg: Path, src: Path, tmp: Path, tag: str, *, timeout: float,
              env: dict[str, str] | None = None,
              tick: Callable[[float], Awaitable[None]] | None = None) -> Run:
    """Submit `src`, start the burst workers, wait (bounded) for the batch and the workers to end."""

    async def go() -> Run:
        client = Redis.from_url(url)
        store = Store(client, Keys(prefix))
        t_submit = time.time()
        sub = await submit_file(store, src, BatchSpec(chunk_size=CHUNK))
        workers = start_workers(cfg, url, tmp, tag, env)
        deadline = time.monotonic() + timeout
        timed_out = False
        try:
            while True:
                info = await store.info(sub.batch_id)
                if tick is not None:
                    await tick(time.time() - t_submit)
                if info.finished:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if all(w.poll() is not None for w in workers) and not info.finished:
                    # burst workers gone with lines pending: give the store a moment, then stop
                    await asyncio.sleep(1.0)
                    info = await store.info(sub.batch_id)
                    if not info.finished:
                        timed_out = True
                    break
                await asyncio.sleep(0.1)
            elapsed = (info.finished_at or time.time()) - t_submit
            # burst workers leave once the queue is empty; bounded all the same
            wait_until = time.monotonic() + 30
            while any(w.poll() is None for w in workers) and time.monotonic() < wait_until:
                await asyncio.sleep(0.1)
        finally:
            rcs = [w.poll() for w in workers]
            stop_all(workers, grace=10)
        records = [(ok, orjson.loads(rec)) async for ok, rec in store.iter_results(sub.batch_id)]
        await client.aclose()
        for i, rc in enumerate(rcs):
            if rc not in (0, None):
                tail = (tmp / f"{tag}.worker{i}.err").read_text(errors="replace")[-1500:]
                print(f"  !! worker {i} exited {rc}: {tail}")
        return Run(info, t_submit, elapsed, records, rcs, timed_out)

    return asyncio.run(go())
