"""How long a new provider's slow start takes: a fresh Redis, one slow provider, one big batch.

    python bench/slowstart.py [--lines 1000] [--latency-ms 2000] [--concurrency 32] [--timeout 150]

`batchrelay run` (one worker process, `--concurrency` consumers, default health settings) sends
`--lines` lines to a simulator answering after `--latency-ms`. The simulator's log is read every
0.1 s; the figure is the time from the provider's first call until it has `--concurrency` calls in
flight at once (full concurrency), with the time each power of two was first reached. The run is
stopped then: the rest of the batch measures nothing about the slow start.

Uses REDIS_URL under a fresh key prefix (its keys are removed afterwards, nothing else), else an
embedded redis-server. Exit status 1 when full concurrency was not reached within --timeout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from _common import Figure, bench_redis, print_summary, write_lines  # noqa: E402

from batchrelay.procs import stop_all  # noqa: E402
from batchrelay.sim.process import SimulatorProcess  # noqa: E402


def in_flight(base: str) -> tuple[float | None, int]:
    """(when the first call arrived, calls arrived and not yet answered), from the simulator's log."""
    log = httpx.get(base + "/_sim/log", timeout=30).json()
    return (log[0]["t"] if log else None), sum(e["answered"] is None for e in log)


def ramp(lines: int, latency_ms: float, concurrency: int, timeout: float) -> tuple[float | None, dict[int, float]]:
    """(seconds from the first call to full concurrency, or None; {calls in flight: first reached at s})."""
    with tempfile.TemporaryDirectory(prefix="brslowstart-") as d, bench_redis() as (url, prefix), \
            SimulatorProcess({"latency_ms": latency_ms}) as base:
        tmp = Path(d)
        cfg = tmp / "batchrelay.toml"
        cfg.write_text(f'[redis]\nprefix = "{prefix}"\n\n[worker]\nconcurrency = {concurrency}\n\n'
                       f'[[providers]]\nname = "slow"\nbase_url = "{base}"\n')
        src = write_lines(tmp / "in.jsonl", lines)
        run = subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), "run", str(src),
                                "-o", str(tmp / "out.jsonl")], env={**os.environ, "REDIS_URL": url},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and run.poll() is None:
                first, flying = in_flight(base)
                if first is not None:
                    at = time.time() - first
                    for power in (2 ** i for i in range(concurrency.bit_length() + 1)):
                        if flying >= min(power, concurrency):
                            reached.setdefault(min(power, concurrency), round(at, 1))
                    if flying >= concurrency:
                        return at, reached
                time.sleep(0.1)
            return None, reached
        finally:
            stop_all([run], grace=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=2000)
    ap.add_argument("--concurrency", type=int, default=32, help="consumers of the worker process")
    ap.add_argument("--timeout", type=float, default=150, help="give up waiting for full concurrency after this")
    args = ap.parse_args()
    took, reached = ramp(args.lines, args.latency_ms, args.concurrency, args.timeout)
    print(f"== slow start: {args.lines} lines at {args.latency_ms:g} ms latency, {args.concurrency} consumers")
    for n, at in sorted(reached.items()):
        print(f"  {n:>5} calls in flight first at {at:6.1f} s after the first call")
    shown = "not reached" if took is None else f"{took:.1f} s"
    ok = print_summary([Figure("slowstart", f"first call -> {args.concurrency} calls in flight", shown,
                               f"<= {args.timeout:g} s", took is not None)])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
