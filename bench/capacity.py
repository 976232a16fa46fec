"""A capacity model, measured: what one worker process and one Redis can do (README "Scaling").

    python bench/capacity.py [--lines 4000] [--rounds 3] [--concurrency 32] [--payload realistic|small]

Against a zero-latency simulator (answers ~1 KB with the realistic payload: bench/_payloads.py),
side by side with the plain asyncio+httpx loop, rounds alternating (bench/throughput.py does the
measuring; CPU time per process, not wall time):
- lines/s of ONE worker process, and its CPU ms per line, beside the loop's;
- Redis CPU ms per line (INFO cpu) and the worker's Redis round trips and commands per line
  (counted in the worker process: bench/_counting.py);
- Redis memory per line held: MEMORY USAGE (SAMPLES 0: every element) over a batch's keys, for a
  submitted batch no worker has touched (the input) and for a finished one (input + results), and
  the INFO used_memory delta of a submit;
- from those: how many CPU-bound worker processes one Redis core serves (worker CPU per line /
  Redis CPU per line), and how many lines 1 GB of Redis holds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, bench_redis, print_summary, write_lines  # noqa: E402
from _payloads import ANSWER_BYTES, write_realistic_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from throughput import Run, batchrelay_once, floor, median  # noqa: E402

from batchrelay.sim.process import SimulatorProcess  # noqa: E402
from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402

REDIS_BUSY = 0.8  # of one core: past this, Redis is the bottleneck (its latency climbs for everyone)


async def batch_bytes(client: Redis, keys: Keys, batch_id: str) -> int:
    total = 0
    for key in keys.batch_keys(batch_id):
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def input_memory(url: str, prefix: str, path: Path) -> tuple[int, int]:
    """(MEMORY USAGE of a submitted batch's keys, used_memory delta of its submit); no worker runs."""
    client = Redis.from_url(url)
    store = Store(client, Keys(prefix))
    before = int((await client.info("memory"))["used_memory"])
    sub = await submit_file(store, path, BatchSpec(chunk_size=50))
    after = int((await client.info("memory"))["used_memory"])
    held = await batch_bytes(client, store.keys, sub.batch_id)
    await client.aclose()
    return held, after - before


async def finished_memory(url: str, prefix: str, batch_id: str) -> int:
    client = Redis.from_url(url)
    held = await batch_bytes(client, Keys(prefix), batch_id)
    await client.aclose()
    return held


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--payload", choices=("small", "realistic"), default="realistic")
    args = ap.parse_args()
    n, realistic = args.lines, args.payload == "realistic"
    floors: list[Run] = []
    ours: list[Run] = []
    sim_cfg = {"answer_bytes": ANSWER_BYTES} if realistic else {}
    with tempfile.TemporaryDirectory() as d, bench_redis() as (url, prefix), SimulatorProcess(sim_cfg) as base:
        tmp = Path(d)
        path = (write_realistic_lines if realistic else write_lines)(tmp / "in.jsonl", n)
        held_in, submit_delta = asyncio.run(input_memory(url, f"{prefix}idle:", path))
        asyncio.run(floor(base, path, args.concurrency))  # warm the simulator
        for r in range(args.rounds):
            # alternate which goes first, so a warming simulator or a busy moment favours neither
            if r % 2:
                ours.append(batchrelay_once(url, f"{prefix}{r}:", base, path, args.concurrency, tmp))
            floors.append(asyncio.run(floor(base, path, args.concurrency)))
            if not r % 2:
                ours.append(batchrelay_once(url, f"{prefix}{r}:", base, path, args.concurrency, tmp))
            f, o = floors[-1], ours[-1]
            print(f"round {r + 1}: loop {n / f.wall_s:,.0f} lines/s, {f.cpu_s / n * 1e3:.3f} ms CPU/line | worker "
                  f"{n / o.wall_s:,.0f} lines/s, {o.worker_cpu_s / n * 1e3:.3f} ms CPU/line, Redis "
                  f"{o.redis_cpu_s / n * 1e3:.3f} ms CPU/line, {o.round_trips / n:.2f} round trips/line")
        held_all = asyncio.run(finished_memory(url, f"{prefix}0:", ours[0].batch_id))

    def per_line(xs: list[float]) -> float:
        return median(xs) / n

    loop_ms = per_line([f.cpu_s for f in floors]) * 1e3
    worker_ms = per_line([o.worker_cpu_s for o in ours]) * 1e3
    redis_ms = per_line([o.redis_cpu_s for o in ours]) * 1e3
    lines_s = n / median([o.wall_s for o in ours])
    redis_lines_s = REDIS_BUSY * 1000 / redis_ms
    per_gb_in, per_gb_all = 2**30 / (held_in / n), 2**30 / (held_all / n)
    scen = f"{args.payload} x{n}"
    figures = [
        Figure(scen, "one worker process: lines/s (zero-latency provider)", f"{lines_s:,.0f}"),
        Figure(scen, "the loop: lines/s", f"{n / median([f.wall_s for f in floors]):,.0f}"),
        Figure(scen, "worker CPU ms/line", f"{worker_ms:.3f}"),
        Figure(scen, "loop CPU ms/line", f"{loop_ms:.3f}"),
        Figure(scen, "Redis CPU ms/line", f"{redis_ms:.3f}"),
        Figure(scen, "worker+Redis CPU / loop CPU", f"{(worker_ms + redis_ms) / loop_ms:.2f}"),
        Figure(scen, "worker Redis round trips/line", f"{per_line([o.round_trips for o in ours]):.2f}"),
        Figure(scen, "worker Redis commands/line", f"{per_line([o.commands for o in ours]):.2f}"),
        Figure(scen, "Redis memory/line, input (MEMORY USAGE)", f"{held_in / n:,.0f} B"),
        Figure(scen, "Redis used_memory delta of the submit, per line", f"{submit_delta / n:,.0f} B"),
        Figure(scen, "Redis memory/line, input + result", f"{held_all / n:,.0f} B"),
        Figure(scen, "lines 1 GB holds: submitted / finished", f"{per_gb_in:,.0f} / {per_gb_all:,.0f}"),
        Figure(scen, f"lines/s one Redis serves at {REDIS_BUSY:.0%} of a core", f"{redis_lines_s:,.0f}"),
        Figure(scen, "CPU-bound worker processes one Redis serves", f"{redis_lines_s * worker_ms / 1000:.1f}"),
    ]
    print(f"capacity: {n} lines x {args.rounds} rounds, concurrency {args.concurrency}, payload {args.payload}")
    print_summary(figures)


if __name__ == "__main__":
    main()
