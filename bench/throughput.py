"""End-to-end throughput against a zero-latency simulator, beside the floor.

    python bench/throughput.py [--lines 5000] [--rounds 3] [--concurrency 32]

The floor is a plain asyncio + httpx loop sending the same requests to the same simulator: a
fixed set of consumer coroutines over clients of 16 connections. batchrelay is measured from
`submit` to the batch's completion with ONE `batchrelay worker --burst` process. Rounds alternate
so machine noise hits both alike; the ratio of medians is the figure (target <= 1.15).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from _common import bench_redis, write_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from batchrelay.sim.process import SimulatorProcess  # noqa: E402
from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402

PER_CLIENT = 16


async def floor(base: str, path: Path, concurrency: int) -> float:
    bodies = [orjson.loads(line)["body"] for line in path.read_bytes().splitlines()]
    n_clients = max(1, -(-concurrency // PER_CLIENT))
    limits = httpx.Limits(max_connections=PER_CLIENT, max_keepalive_connections=PER_CLIENT)
    clients = [httpx.AsyncClient(limits=limits, timeout=30) for _ in range(n_clients)]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[dict[str, Any]] = []

    async def consumer(i: int) -> None:
        client = clients[i * n_clients // concurrency]
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post(base + "/v1/chat/completions", content=orjson.dumps(body),
                                  headers={"content-type": "application/json"})
            results.append(orjson.loads(r.content))

    t0 = time.perf_counter()
    await asyncio.gather(*(consumer(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    for c in clients:
        await c.aclose()
    assert len(results) == len(bodies)
    return elapsed


def batchrelay_once(url: str, prefix: str, base: str, path: Path, concurrency: int, tmp: Path) -> float:
    cfg = tmp / f"{prefix.replace(':', '_')}.toml"
    cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[worker]\nconcurrency = {concurrency}\n'
                   f'[[providers]]\nname = "sim"\nbase_url = "{base}"\n')
    env = {**os.environ, "REDIS_URL": url, "BATCHRELAY_CONFIG": str(cfg)}
    # the worker process is started (and has imported everything) before the clock starts
    worker = subprocess.Popen([sys.executable, "-m", "batchrelay", "worker", "--quiet"], env=env,
                              stderr=subprocess.DEVNULL)
    time.sleep(2.0)

    async def go() -> float:
        client = Redis.from_url(url)
        store = Store(client, Keys(prefix))
        t0 = time.perf_counter()
        sub = await submit_file(store, path, BatchSpec(chunk_size=50))
        while not (await store.info(sub.batch_id)).finished:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        info = await store.info(sub.batch_id)
        assert info.succeeded == sub.valid, info
        await client.aclose()
        return elapsed

    try:
        return asyncio.run(go())
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    floors, ours = [], []
    with tempfile.TemporaryDirectory() as d, bench_redis() as (url, prefix), SimulatorProcess({}) as base:
        tmp = Path(d)
        path = write_lines(tmp / "in.jsonl", args.lines)
        asyncio.run(floor(base, path, args.concurrency))  # warm the simulator
        for r in range(args.rounds):
            # alternate which goes first, so a warming simulator or a busy moment favours neither
            if r % 2:
                ours.append(batchrelay_once(url, f"{prefix}{r}:", base, path, args.concurrency, tmp))
                floors.append(asyncio.run(floor(base, path, args.concurrency)))
            else:
                floors.append(asyncio.run(floor(base, path, args.concurrency)))
                ours.append(batchrelay_once(url, f"{prefix}{r}:", base, path, args.concurrency, tmp))
            print(f"round {r + 1}: floor {floors[-1]:.2f}s ({args.lines / floors[-1]:,.0f} lines/s), "
                  f"batchrelay {ours[-1]:.2f}s ({args.lines / ours[-1]:,.0f} lines/s), "
                  f"ratio {ours[-1] / floors[-1]:.2f}")
    med = sorted(ours)[len(ours) // 2] / sorted(floors)[len(floors) // 2]
    print(f"throughput: {args.lines} lines x {args.rounds} rounds, concurrency {args.concurrency}, 1 worker process: "
          f"median ratio batchrelay/floor = {med:.2f} (target <= 1.15)")


if __name__ == "__main__":
    main()
