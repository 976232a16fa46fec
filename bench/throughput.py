"""End-to-end throughput and CPU per line against a zero-latency simulator, beside the floor.

    python bench/throughput.py [--lines 5000] [--rounds 3] [--concurrency 32] [--payload small|realistic]

The floor is a plain asyncio + httpx loop sending the same requests to the same simulator: a
fixed set of consumer coroutines over clients of 16 connections. batchrelay is measured from
`submit` to the batch's completion with ONE `batchrelay worker` process, started (and idle) before
the window opens. Rounds alternate so machine noise hits both alike; ratios of medians are the figures.

`--payload small` (the default) sends one short user message and gets a short answer: the wall
time ratio is the figure (target <= 1.15). `--payload realistic` sends a system prompt, a 4-turn
history and non-ASCII text (~0.9 KB of JSON) and the simulator answers ~1 KB (`answer_bytes`):
CPU time per line is the figure (target <= 1.2x the loop's), as the issue (#17) measured it.

How the figures are taken (CPU time, not wall time: other work shares this machine):
- batchrelay's CPU per line = (the worker process's user+sys, psutil, over the window) + (Redis's
  used_cpu_user+used_cpu_sys from INFO cpu, over the window) + (this process's CPU inside
  `submit_file`), divided by the lines. The floor's = this process's CPU over the loop.
- Redis round trips and commands per line are counted in the worker process itself: it is started
  through bench/_counting.py, which wraps redis-py's asyncio connection (one `send_packed_command`
  = one round trip: a command, or a whole pipeline; one `pack_command` = one command) and reports
  its counts on SIGUSR1 at both ends of the window. The server's INFO commandstats delta (everybody's
  commands: the worker's, the submit's and this process's polling) is printed beside it.

Profile (py-spy on the worker, realistic payload; see README "Scaling" for the figures before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
from _common import Figure, bench_redis, print_summary, write_lines  # noqa: E402
from _counting import read as read_counts  # noqa: E402
from _payloads import ANSWER_BYTES, write_realistic_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from batchrelay.sim.process import SimulatorProcess  # noqa: E402
from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402

PER_CLIENT = 16
BENCH_DIR = str(Path(__file__).resolve().parent)
WORKER = "import _counting; _counting.install(); import runpy; runpy.run_module('batchrelay', run_name='__main__')"


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # everything on our side: worker + Redis + submit (the floor: the loop)
    worker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    submit_cpu_s: float = 0.0
    round_trips: int = 0  # the worker's
    commands: int = 0  # the worker's
    server_commands: int = 0  # everybody's, from INFO commandstats
    batch_id: str = ""  # ours: the batch, its keys still in Redis until the bench ends


async def floor(base: str, path: Path, concurrency: int) -> Run:
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

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(consumer(i) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    for c in clients:
        await c.aclose()
    assert len(results) == len(bodies)
    return Run(elapsed, cpu)


def redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def total_calls(stats: dict[str, Any]) -> int:
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


def start_worker(url: str, prefix: str, base: str, concurrency: int, tmp: Path,
                 extra: str = "", tree: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A `batchrelay worker` whose Redis use is counted (_counting.py), idle and ready; `tree`: the
    source tree it runs (first on its path), for a side-by-side comparison of two versions."""
    cfg = tmp / f"{prefix.replace(':', '_')}.toml"
    cfg.write_text(f'[redis]\nprefix = "{prefix}"\n[worker]\nconcurrency = {concurrency}\n{extra}'
                   f'[[providers]]\nname = "sim"\nbase_url = "{base}"\n')
    counts = str(tmp / f"{prefix.replace(':', '_')}.counts")
    env = {**os.environ, "REDIS_URL": url, "BATCHRELAY_CONFIG": str(cfg), "BRBENCH_COUNTS": counts,
           "PYTHONPATH": os.pathsep.join(p for p in (BENCH_DIR, tree, os.environ.get("PYTHONPATH")) if p)}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, "worker", "--quiet"], env=env,
                              stderr=subprocess.DEVNULL)
    time.sleep(2.5)  # imported and idle before the window opens
    return worker, counts


def batchrelay_once(url: str, prefix: str, base: str, path: Path, concurrency: int, tmp: Path,
                    tree: str | None = None) -> Run:
    worker, counts_path = start_worker(url, prefix, base, concurrency, tmp, tree=tree)
    proc = psutil.Process(worker.pid)

    async def go() -> Run:
        client = Redis.from_url(url)
        store = Store(client, Keys(prefix))
        r0, s0 = await client.info("cpu"), await client.info("commandstats")
        w0, n0 = proc.cpu_times(), read_counts(worker.pid, counts_path)
        t0, c0 = time.perf_counter(), time.process_time()
        sub = await submit_file(store, path, BatchSpec(chunk_size=50))
        submit_cpu = time.process_time() - c0
        while not (await store.info(sub.batch_id)).finished:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        w1, n1 = proc.cpu_times(), read_counts(worker.pid, counts_path)
        r1, s1 = await client.info("cpu"), await client.info("commandstats")
        if os.environ.get("BRBENCH_VERBOSE"):
            zero = {"calls": 0, "usec": 0}
            print("  server commands by name (delta calls, usec):", {
                k[8:]: (int(v["calls"]) - int(s0.get(k, zero)["calls"]), int(v["usec"]) - int(s0.get(k, zero)["usec"]))
                for k, v in s1.items() if int(v["calls"]) != int(s0.get(k, zero)["calls"])})
        info = await store.info(sub.batch_id)
        assert info.succeeded == sub.valid, info
        await client.aclose()
        wcpu = (w1.user + w1.system) - (w0.user + w0.system)
        rcpu = redis_cpu(r1) - redis_cpu(r0)
        return Run(elapsed, wcpu + rcpu + submit_cpu, wcpu, rcpu, submit_cpu,
                   n1["round_trips"] - n0["round_trips"], n1["commands"] - n0["commands"],
                   total_calls(s1) - total_calls(s0), sub.batch_id)

    try:
        return asyncio.run(go())
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def least(runs: list[Run]) -> float:
    return min(r.cpu_s for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--payload", choices=("small", "realistic"), default="small")
    ap.add_argument("--compare", metavar="TREE", help="also run a worker from this source tree (e.g. an older "
                    "checkout) in every round, and print its figures beside")
    args = ap.parse_args()
    realistic = args.payload == "realistic"
    floors: list[Run] = []
    ours: list[Run] = []
    others: list[Run] = []
    n = args.lines
    sim_cfg = {"answer_bytes": ANSWER_BYTES} if realistic else {}
    with tempfile.TemporaryDirectory() as d, bench_redis() as (url, prefix), SimulatorProcess(sim_cfg) as base:
        tmp = Path(d)
        path = (write_realistic_lines if realistic else write_lines)(tmp / "in.jsonl", n)
        asyncio.run(floor(base, path, args.concurrency))  # warm the simulator
        for r in range(args.rounds):
            # alternate which goes first, so a warming simulator or a busy moment favours neither
            if r % 2:
                ours.append(batchrelay_once(url, f"{prefix}{r}:", base, path, args.concurrency, tmp))
                floors.append(asyncio.run(floor(base, path, args.concurrency)))
            else:
                floors.append(asyncio.run(floor(base, path, args.concurrency)))
                ours.append(batchrelay_once(url, f"{prefix}{r}:", base, path, args.concurrency, tmp))
            if args.compare:
                others.append(batchrelay_once(url, f"{prefix}{r}c:", base, path, args.concurrency, tmp, args.compare))
                c = others[-1]
                print(f"  {args.compare}: {c.wall_s:.2f}s, {c.cpu_s / n * 1e3:.3f} ms CPU/line (worker "
                      f"{c.worker_cpu_s / n * 1e3:.3f}, redis {c.redis_cpu_s / n * 1e3:.3f}), {c.round_trips / n:.2f} "
                      f"round trips/line")
            f, o = floors[-1], ours[-1]
            print(f"round {r + 1}: floor {f.wall_s:.2f}s, {f.cpu_s / n * 1e3:.3f} ms CPU/line | batchrelay "
                  f"{o.wall_s:.2f}s, {o.cpu_s / n * 1e3:.3f} ms CPU/line (worker {o.worker_cpu_s / n * 1e3:.3f}, "
                  f"redis {o.redis_cpu_s / n * 1e3:.3f}, submit {o.submit_cpu_s / n * 1e3:.3f}), "
                  f"{o.round_trips / n:.2f} round trips/line, {o.commands / n:.2f} worker commands/line, "
                  f"{o.server_commands / n:.2f} server commands/line | wall ratio {o.wall_s / f.wall_s:.2f}, "
                  f"CPU ratio {o.cpu_s / f.cpu_s:.2f}")
    wall = median([o.wall_s for o in ours]) / median([f.wall_s for f in floors])
    cpu = median([o.cpu_s for o in ours]) / median([f.cpu_s for f in floors])
    worker_only = median([o.worker_cpu_s for o in ours]) / median([f.cpu_s for f in floors])
    trips = median([o.round_trips / n for o in ours])
    scen = f"{args.payload} x{n}"

    def ms(xs: list[float]) -> str:
        return f"{median(xs) / n * 1e3:.3f}"

    figures = [
        Figure(scen, "wall time ratio batchrelay/loop (median)", f"{wall:.2f}",
               "<= 1.15" if not realistic else "", wall <= 1.15 if not realistic else None),
        Figure(scen, "loop CPU ms/line", ms([f.cpu_s for f in floors])),
        Figure(scen, "batchrelay CPU ms/line (worker+redis+submit)", ms([o.cpu_s for o in ours])),
        Figure(scen, "  worker CPU ms/line", ms([o.worker_cpu_s for o in ours])),
        Figure(scen, "  redis CPU ms/line", ms([o.redis_cpu_s for o in ours])),
        Figure(scen, "  submit CPU ms/line", ms([o.submit_cpu_s for o in ours])),
        Figure(scen, "CPU ratio batchrelay/loop (all of ours)", f"{cpu:.2f}",
               "<= 1.2" if realistic else "", cpu <= 1.2 if realistic else None),
        Figure(scen, "CPU ratio worker process/loop", f"{worker_only:.2f}"),
        # contention only ever adds CPU time: the least of each side is the least disturbed figure
        Figure(scen, "CPU ratio, least of each side's rounds", f"{least(ours) / least(floors):.2f}"),
        Figure(scen, "worker Redis round trips/line", f"{trips:.2f}", "<= 2", trips <= 2),
        Figure(scen, "worker Redis commands/line", f"{median([o.commands / n for o in ours]):.2f}"),
        Figure(scen, "server commands/line (all clients)", f"{median([o.server_commands / n for o in ours]):.2f}"),
    ]
    if others:
        other_cpu = median([o.cpu_s for o in others]) / median([f.cpu_s for f in floors])
        other_worker = median([o.worker_cpu_s for o in others]) / median([f.cpu_s for f in floors])
        figures += [
            Figure(scen, f"{args.compare}: CPU ratio to the loop (all)", f"{other_cpu:.2f}"),
            Figure(scen, f"{args.compare}: CPU ratio worker process/loop", f"{other_worker:.2f}"),
            Figure(scen, f"{args.compare}: CPU ratio, least of each side's rounds",
                   f"{least(others) / least(floors):.2f}"),
            Figure(scen, f"{args.compare}: worker Redis round trips/line",
                   f"{median([o.round_trips / n for o in others]):.2f}"),
        ]
    print(f"throughput: {n} lines x {args.rounds} rounds, concurrency {args.concurrency}, 1 worker process, "
          f"payload {args.payload}")
    print_summary(figures)


if __name__ == "__main__":
    main()
