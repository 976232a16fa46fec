"""Submit throughput: lines/s for a 100,000-line file of small OpenAI batch lines.

    python bench/submit.py [--lines 100000] [--rounds 3]

Uses REDIS_URL (under a fresh key prefix, removed afterwards) or an embedded redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_redis, write_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402


async def one(url: str, prefix: str, path: Path) -> float:
    client = Redis.from_url(url)
    store = Store(client, Keys(prefix))
    t0 = time.perf_counter()
    await submit_file(store, path, BatchSpec(chunk_size=50))
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, bench_redis() as (url, prefix):
        path = write_lines(Path(d) / "in.jsonl", args.lines)
        times = [asyncio.run(one(url, f"{prefix}{r}:", path)) for r in range(args.rounds)]
    best, median = min(times), sorted(times)[len(times) // 2]
    print(f"submit: {args.lines} lines, {args.rounds} rounds: best {args.lines / best:,.0f} lines/s, "
          f"median {args.lines / median:,.0f} lines/s (target >= 30,000)")


if __name__ == "__main__":
    main()
