"""The response cache: a batch, then the same file again with the cache on.

    python bench/cache.py [--lines 5000] [--concurrency 32] [--latency-ms 0]

One `batchrelay worker` process (started, and its imports done, before the clock starts; its cwd a
temp dir) and the simulator over HTTP. Run 1 submits FILE with the cache on (every line a miss:
sent and stored); run 2 submits the same FILE again. Printed: the provider calls of run 2 (target
0), run 2's time against run 1's (submit to the batch's completion), cache hits/s in the one worker
process (target >= 5,000 lines/s), and the Redis bytes per cached answer (the compressed entry, and
the entries hash + index as Redis counts them) against the answer's JSON size.

Hits/s is given twice: end to end through `batchrelay worker` (arq's poll, the chunk jobs' own
Redis round trips and the results' writes included: what a user's worker delivers, and what the
target is judged on), and run 3: the same file once more, its chunks run by a worker Runtime in this
process (3 at a time, as the worker holds them) without arq: the hit path's own rate. Times end at
the batch's `finished_at`, written by the worker with the last result.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from _common import Figure, bench_redis, print_summary, write_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from batchrelay.config.cache import CacheConfig  # noqa: E402
from batchrelay.config.settings import load_settings  # noqa: E402
from batchrelay.sim.process import SimulatorProcess  # noqa: E402
from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.cache import ResponseCache  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402
from batchrelay.worker.runtime import Runtime  # noqa: E402


async def one_run(store: Store, path: Path) -> tuple[str, float, float]:
    """(batch id, seconds from submit to completion, seconds from the end of the submit to completion);
    the completion is the batch's `finished_at`, so how often this process looks does not matter."""
    t0 = time.time()
    sub = await submit_file(store, path, BatchSpec(chunk_size=50, cache=True))
    t1 = time.time()
    # the end is the worker's own clock: `finished_at`, written with the last result; polled gently
    # (this process shares two cores with the worker and Redis)
    while not (info := await store.info(sub.batch_id)).finished:
        await asyncio.sleep(0.05)
    assert info.succeeded == sub.valid and info.finished_at is not None, info
    return sub.batch_id, info.finished_at - t0, info.finished_at - t1


async def in_process(store: Store, cfg: Path, path: Path) -> tuple[float, int]:
    """Run 3: the chunks of a new submit of `path`, run by a worker Runtime here; (seconds, lines done)."""
    sub = await submit_file(store, path, BatchSpec(chunk_size=50, cache=True), queue=f"{store.keys.prefix}idle")
    chunks = await store.chunk_map(sub.batch_id)
    rt = Runtime.opened(load_settings(cfg), store)
    gate = asyncio.Semaphore(3)

    async def one(cid: str, ns: list[int]) -> int:
        async with gate:
            return await rt.run_chunk(sub.batch_id, ns, cid)

    try:
        t0 = time.perf_counter()
        done = sum(await asyncio.gather(*(one(c, ns) for c, ns in chunks.items())))
        return time.perf_counter() - t0, done
    finally:
        await rt.close()


async def measure(url: str, prefix: str, base: str, path: Path, lines: int, cfg: Path) -> list[Figure]:
    client = Redis.from_url(url)
    store = Store(client, Keys(prefix))
    calls0 = SimulatorProcess.stats_of(base)["calls"]
    first, t_first, _ = await one_run(store, path)
    calls1 = SimulatorProcess.stats_of(base)["calls"]
    second, t_second, t_worker = await one_run(store, path)
    calls2 = SimulatorProcess.stats_of(base)["calls"]
    stats = await ResponseCache(store, CacheConfig()).stats()
    entries_mem = (await client.memory_usage(store.keys.cache_entries) or 0) + \
        (await client.memory_usage(store.keys.cache_index) or 0)
    answers = [orjson.loads(rec) async for ok, rec in store.iter_results(first) if ok]
    json_size = sum(len(orjson.dumps(r["response"]["body"])) for r in answers) / len(answers)
    hits = [orjson.loads(rec)["batchrelay"]["cache"]["status"] async for _, rec in store.iter_results(second)]
    t_rt, done_rt = await in_process(store, cfg, path)
    calls3 = SimulatorProcess.stats_of(base)["calls"]
    await client.aclose()
    print(f"run 1: {lines} lines in {t_first:.2f}s ({lines / t_first:,.0f} lines/s), {calls1 - calls0} provider calls")
    print(f"run 2: {lines} lines in {t_second:.2f}s ({lines / t_second:,.0f} lines/s), "
          f"{calls2 - calls1} provider calls, {hits.count('hit')} hits; the worker's part {t_worker:.2f}s")
    print(f"cache: {stats.entries} entries, {stats.bytes:,} bytes of entries; answer JSON {json_size:.0f} B")
    per_entry, per_mem = stats.bytes / stats.entries, entries_mem / stats.entries
    return [
        Figure("rerun", "provider calls", str(calls2 - calls1), "0", calls2 - calls1 == 0),
        Figure("rerun", "hits", f"{hits.count('hit')}/{lines}", f"{lines}", hits.count("hit") == lines),
        Figure("rerun", "time vs first run", f"{t_second:.2f}s vs {t_first:.2f}s ({t_second / t_first:.2f}x)"),
        # the target is for a worker process: judged there
        Figure("rerun", "hits/s, 1 worker process (arq)", f"{lines / t_worker:,.0f}", ">= 5,000",
               lines / t_worker >= 5000),
        Figure("run 3", "hits/s, 1 worker Runtime (no arq poll)",
               f"{done_rt / t_rt:,.0f} ({done_rt} lines, {calls3 - calls2} calls)"),
        Figure("size", "entry bytes / answer JSON", f"{per_entry:.0f} B / {json_size:.0f} B "
               f"({per_entry / json_size:.2f}x)"),
        Figure("size", "Redis memory / answer (hash + index)", f"{per_mem:.0f} B ({per_mem / json_size:.2f}x)"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, bench_redis() as (url, prefix), \
            SimulatorProcess({"latency_ms": args.latency_ms}) as base:
        tmp = Path(d)
        path = write_lines(tmp / "in.jsonl", args.lines)
        cfg = tmp / "c.toml"
        cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[worker]\nconcurrency = {args.concurrency}\n'
                       f'[[providers]]\nname = "sim"\nbase_url = "{base}"\n')
        env = {**os.environ, "REDIS_URL": url, "BATCHRELAY_CONFIG": str(cfg)}
        worker = subprocess.Popen([sys.executable, "-m", "batchrelay", "worker", "--quiet"], env=env, cwd=tmp,
                                  stderr=subprocess.DEVNULL)
        time.sleep(2.0)
        try:
            figures = asyncio.run(measure(url, prefix, base, path, args.lines, cfg))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    sys.exit(0 if print_summary(figures) else 1)


if __name__ == "__main__":
    main()
