"""What `[redis] min_replicas_ack = 1` costs: lines/s with result writes that wait for a replica
(Redis WAIT) against the same run without, on one master and one replica of this machine.

    python bench/replica_ack.py [--lines 3000] [--rounds 3] [--concurrency 32]

One `batchrelay worker` process against a zero-latency simulator, from submit to the batch's end;
the worker's CPU time (user + sys) per line beside it. Rounds alternate N=0 and N=1 (and which goes
first), so machine noise hits both alike; the figure is the ratio of the medians. The replica is on
the same machine, so WAIT's wait is a loopback round trip: a replica across a network adds its RTT
to every result write (chunk writes of cache hits share one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from _common import write_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from batchrelay.procs import stop_all  # noqa: E402
from batchrelay.sim.process import SimulatorProcess  # noqa: E402
from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402
from tests.sentinelkit import Servers  # noqa: E402


def once(url: str, prefix: str, base: str, path: Path, acks: int, concurrency: int, tmp: Path) -> tuple[float, float]:
    """(seconds from submit to the batch's end, worker CPU seconds) for one run."""
    cfg = tmp / f"{prefix.replace(':', '_')}.toml"
    cfg.write_text(f'[redis]\nprefix = "{prefix}"\nmin_replicas_ack = {acks}\n[worker]\nconcurrency = {concurrency}\n'
                   f'[[providers]]\nname = "sim"\nbase_url = "{base}"\n')
    env = {**os.environ, "REDIS_URL": url, "BATCHRELAY_CONFIG": str(cfg)}
    log = tmp / f"{prefix.replace(':', '_')}.log"
    with log.open("wb") as out:  # started (and imported) before the clock starts
        worker = subprocess.Popen([sys.executable, "-m", "batchrelay", "worker", "--quiet"], env=env, stderr=out)
    time.sleep(2.0)
    ps = psutil.Process(worker.pid)

    async def waits(client: Redis) -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_wait", {}).get("calls", 0))

    async def go() -> tuple[float, float]:
        client = Redis.from_url(url)
        store = Store(client, Keys(prefix))
        before = await waits(client)
        cpu0, t0 = sum(ps.cpu_times()[:2]), time.perf_counter()
        sub = await submit_file(store, path, BatchSpec(chunk_size=50))
        while not (info := await store.info(sub.batch_id)).finished:
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - t0, sum(ps.cpu_times()[:2]) - cpu0
        assert info.succeeded == sub.valid, info
        waited = await waits(client) - before
        assert (waited >= info.succeeded) if acks else waited == 0, f"{waited} WAITs with min_replicas_ack={acks}"
        await client.aclose()
        return elapsed, cpu

    try:
        return asyncio.run(go())
    finally:
        stop_all([worker], grace=30)
        said = log.read_text(errors="replace")
        assert "min_replicas_ack" not in said, said[-2000:]  # no write went on short of its replica


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    runs: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    with tempfile.TemporaryDirectory() as d, SimulatorProcess({}) as base:
        tmp = Path(d)
        servers = Servers(tmp / "redis")
        servers.dir.mkdir()
        try:
            master = servers.start_master()
            servers.start_replica()
            url = f"redis://127.0.0.1:{master}/0"
            path = write_lines(tmp / "in.jsonl", args.lines)
            for r in range(args.rounds):
                for n in ((0, 1) if r % 2 == 0 else (1, 0)):
                    runs[n].append(once(url, f"brack:{r}:{n}:", base, path, n, args.concurrency, tmp))
                    s, cpu = runs[n][-1]
                    print(f"round {r + 1} min_replicas_ack={n}: {s:.2f}s, {args.lines / s:,.0f} lines/s, "
                          f"worker CPU {cpu * 1000 / args.lines:.3f} ms/line", flush=True)
        finally:
            servers.stop()
    rate = {n: args.lines / statistics.median(s for s, _ in v) for n, v in runs.items()}
    cpu = {n: statistics.median(c for _, c in v) * 1000 / args.lines for n, v in runs.items()}
    # each round's pair ran back to back: its ratio is steadier than a ratio of medians on a busy machine
    paired = statistics.median(b[0] / a[0] for a, b in zip(runs[0], runs[1], strict=True))
    paired_cpu = statistics.median(b[1] / a[1] for a, b in zip(runs[0], runs[1], strict=True))
    print(f"replica_ack: {args.lines} lines x {args.rounds} rounds, concurrency {args.concurrency}, 1 worker, "
          f"1 replica on this machine: median {rate[0]:,.0f} lines/s with min_replicas_ack=0, {rate[1]:,.0f} with 1; "
          f"worker CPU {cpu[0]:.3f} vs {cpu[1]:.3f} ms/line. Median of the rounds' ratios (N=1 / N=0): "
          f"throughput {1 / paired:.2f}, time {paired:.2f}, worker CPU {paired_cpu:.2f}")


if __name__ == "__main__":
    main()
