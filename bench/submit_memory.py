"""Submit memory: peak RSS of `batchrelay submit` for files of growing size (issue 6: bounded).

    python bench/submit_memory.py [--lines 100000,1000000] [--dups 0.001]

Each file is streamed to a temporary directory (never built in memory), then submitted by a child
`python -m batchrelay submit FILE --json` against a throwaway embedded redis-server started here in
that directory, flushed between runs. The child's peak RSS comes from os.wait4 (the
kernel's own ru_maxrss for that one process). `--dups` repeats that share of custom_ids, so the
duplicate check in Redis is exercised too. Bounded means: peak RSS barely grows with the line count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
import redis  # noqa: E402
from _common import write_lines  # noqa: E402

from batchrelay.store.embedded import EmbeddedRedis  # noqa: E402


@dataclass
class Run:
    lines: int
    file_mb: float
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    valid: int
    invalid: int
    redis_mb: float


def submit(path: Path, url: str, cwd: Path) -> tuple[float, float, float, dict[str, int]]:
    """(seconds, CPU seconds, peak RSS in MB, the CLI's --json answer) of one child `batchrelay submit`."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHRELAY_CONFIG"}
    env["REDIS_URL"] = url
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "batchrelay", "submit", str(path), "--json"], cwd=cwd,
                                 env=env, stdout=subprocess.PIPE, stderr=err)
        assert child.stdout is not None
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage; Popen.wait could not give it
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        child.stdout.close()
        if child.returncode:
            err.seek(0)
            raise SystemExit(f"submit failed ({child.returncode}): {err.read().decode(errors='replace')[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, orjson.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", default="100000,1000000", help="comma-separated line counts")
    ap.add_argument("--dups", type=float, default=0.001, help="share of lines repeating an earlier custom_id")
    args = ap.parse_args()
    sizes = [int(x) for x in args.lines.split(",")]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="brbench-mem-") as d:
        tmp = Path(d)
        with EmbeddedRedis(tmp / "redis") as url:
            client = redis.Redis.from_url(url)
            try:
                for n in sizes:
                    path = write_lines(tmp / f"in-{n}.jsonl", n, args.dups)
                    file_mb = path.stat().st_size / 2**20
                    seconds, cpu, rss, answer = submit(path, url, tmp)
                    redis_mb = int(cast(dict[str, Any], client.info("memory"))["used_memory"]) / 2**20
                    runs.append(Run(n, file_mb, seconds, cpu, rss, answer["valid"], answer["invalid"], redis_mb))
                    assert answer["lines"] == n, answer
                    path.unlink()
                    client.flushall()  # our own server, started above
            finally:
                client.close()

    print(f"{'lines':>10} {'file MB':>8} {'valid':>10} {'invalid':>8} {'seconds':>8} {'CPU s':>6} {'lines/s':>9} "
          f"{'peak RSS MB':>12} {'Redis MB':>9}")
    for r in runs:
        print(f"{r.lines:>10,} {r.file_mb:>8.1f} {r.valid:>10,} {r.invalid:>8,} {r.seconds:>8.1f} "
              f"{r.cpu_seconds:>6.1f} {r.lines / r.seconds:>9,.0f} {r.peak_rss_mb:>12.1f} {r.redis_mb:>9.1f}")
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        print(f"peak RSS of the submitting process: {first.peak_rss_mb:.1f} MB for {first.lines:,} lines, "
              f"{last.peak_rss_mb:.1f} MB for {last.lines:,} lines "
              f"({last.peak_rss_mb - first.peak_rss_mb:+.1f} MB for {last.lines / first.lines:.0f}x the lines)")
    print("(seconds, CPU s and lines/s are the child's, Python start-up included; Redis MB is the throwaway "
          "server's used_memory after the submit)")


if __name__ == "__main__":
    main()
