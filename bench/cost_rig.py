"""The cost benchmark's plumbing (bench/cost.py): configs, CLI calls, burst workers, and reading
batches, simulator logs and result files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from batchrelay.store.keys import Keys
from batchrelay.store.store import BatchInfo, Store


def q(s: str) -> str:
    return json.dumps(s)  # a TOML basic string


def prices_toml(prices: dict[str, dict[str, str]]) -> str:
    """A provider's `prices."model" = { input = "0.15", ... }` lines."""
    return "\n".join(f"prices.{q(model)} = {{ {', '.join(f'{k} = {q(v)}' for k, v in p.items())} }}"
                     for model, p in prices.items())


def write_config(path: Path, prefix: str, providers: list[tuple[str, str, dict[str, dict[str, str]]]],
                 **worker: Any) -> Path:
    """A batchrelay.toml: own prefix, fast worker settings, providers (name, base_url, prices) by priority."""
    settings = {"concurrency": 16, "chunk_size": 25, "call_timeout": 10, "job_timeout": 60, "backoff": 0.01,
                **worker}
    lines = ["[redis]", f"prefix = {q(prefix)}", "", "[worker]"]
    lines += [f"{k} = {v!r}" for k, v in settings.items()]
    for priority, (name, base, prices) in enumerate(providers, start=1):
        lines += ["", "[[providers]]", f"name = {q(name)}", f"base_url = {q(base)}", f"priority = {priority}"]
        lines.append(prices_toml(prices))
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(cfg: Path, url: str, *args: str, timeout: float = 120, ok: Iterable[int] = (0,),
        env: dict[str, str] | None = None) -> str:
    """Run `batchrelay -c CFG ARGS` (bounded); its stdout, or RuntimeError with its stderr."""
    try:
        proc = subprocess.run([sys.executable, "-m", "batchrelay", "-c", str(cfg), *args], capture_output=True,
                              text=True, env={**os.environ, "REDIS_URL": url, **(env or {})}, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"batchrelay {' '.join(args[:2])} did not finish within {timeout:g}s") from None
    if proc.returncode not in tuple(ok):
        raise RuntimeError(f"batchrelay {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return proc.stdout


def cli_json(cfg: Path, url: str, *args: str, timeout: float = 120, ok: Iterable[int] = (0,),
             env: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cli(cfg, url, *args, "--json", timeout=timeout, ok=ok, env=env))
    return out


def start_worker(cfg: Path, url: str, err: Path) -> subprocess.Popen[bytes]:
    with err.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "worker", "--burst", "--quiet"],
                                env={**os.environ, "REDIS_URL": url}, stdout=subprocess.DEVNULL, stderr=f)


def wait_workers(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int | None]:
    """Wait (bounded) for burst workers to leave; the return codes, None for one still running."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p.poll() for p in procs]


def batch_info(url: str, prefix: str, batch: str) -> BatchInfo:
    async def go() -> BatchInfo:
        client = Redis.from_url(url)
        try:
            return await Store(client, Keys(prefix)).info(batch)
        finally:
            await client.aclose()
    return asyncio.run(go())


def sim_log(base: str) -> list[dict[str, Any]]:
    return list(httpx.get(base + "/_sim/log?full=1", timeout=60).json())


def results(out: Path) -> list[dict[str, Any]]:
    """Result rows of a `run -o OUT` / `results -o OUT`: OUT and its .errors.jsonl."""
    rows = []
    for p in (out, out.with_suffix(".errors.jsonl")):
        if p.exists():
            rows += [orjson.loads(x) for x in p.read_bytes().splitlines() if x.strip()]
    return rows


def line_cost(row: dict[str, Any]) -> D:
    usd = row["batchrelay"]["cost"]["usd"]
    return D(0) if usd is None else D(usd)


def usd(x: D) -> str:
    """An amount without trailing zeros, for display (comparisons use the Decimal itself)."""
    return format(x.normalize(), "f")


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-800:] if path.exists() else ""


def report_workers(tag: str, procs: list[subprocess.Popen[bytes]], rcs: list[int | None], tmp: Path,
                   killed: Iterable[int] = ()) -> None:
    for i, rc in enumerate(rcs):
        if i not in killed and rc not in (0,):
            print(f"  !! {tag} worker {i} exited {rc}: {tail(tmp / f'{tag}.w{i}.err')}")
