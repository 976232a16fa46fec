"""`run` interrupted and run again: what the rerun costs (issue #15, "never pay twice").

    python bench/resume.py [--lines 2000] [--latency-ms 200] [--concurrency 32] [--at 0.4] [--signal INT|KILL]

A simulator answering after --latency-ms; `batchrelay run` of --lines lines on it (embedded Redis in
a temp state dir, the run's cwd a temp dir) gets SIGINT once --at of the lines were sent; then the
same command again. From the simulator's full log (every request body: each line's prompt is
unique): provider calls in all against the target (lines + the calls in flight at the interrupt,
at most the concurrency), duplicates (a prompt sent more than once: the in-flight calls are
recorded before the pause, so the target is 0) and lines missing from the output (target 0);
the rerun's message and time. `--signal KILL` kills `run` outright instead (a crash): the rerun then
waits for the dead run's lease (BATCHRELAY_RUN_LEASE_S=3 here) and takes the batch over; the calls
it had in flight are sent again (duplicates up to the concurrency, no target).
Exit status 1 when a target fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from _common import Figure, print_summary, write_lines  # noqa: E402

from batchrelay.sim.process import SimulatorProcess  # noqa: E402


def _prompts(base_url: str) -> list[str]:
    log = httpx.get(base_url + "/_sim/log", params={"full": 1}, timeout=30).json()
    return [orjson.loads(e["body"])["messages"][0]["content"] if isinstance(e["body"], str)
            else e["body"]["messages"][0]["content"] for e in log]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--at", type=float, default=0.4)
    ap.add_argument("--signal", choices=("INT", "KILL"), default="INT")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="brbench-resume-") as d, SimulatorProcess(
            {"latency_ms": a.latency_ms}) as base:
        tmp = Path(d)
        src = write_lines(tmp / "in.jsonl", a.lines)
        cfg = tmp / "c.toml"
        cfg.write_text(f'[worker]\nconcurrency = {a.concurrency}\nchunk_size = 50\n\n'
                       f'[[providers]]\nname = "sim"\nbase_url = "{base}"\n')
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHRELAY_CONFIG")}
        env.update(HOME=str(tmp), BATCHRELAY_STATE_DIR=str(tmp / "state"), BATCHRELAY_RUN_LEASE_S="3")
        cmd = [sys.executable, "-m", "batchrelay", "-c", str(cfg), "run", str(src), "-o", str(tmp / "out.jsonl")]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        target_calls = int(a.lines * a.at)
        while SimulatorProcess.stats_of(base)["calls"] < target_calls and proc.poll() is None:
            time.sleep(0.02)
        sent_at_interrupt = SimulatorProcess.stats_of(base)["calls"]
        if a.signal == "INT":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        else:
            os.kill(proc.pid, signal.SIGKILL)
        _out, err1 = proc.communicate(timeout=120)
        if a.signal == "KILL":
            time.sleep(3.5)  # the dead run's lease lapses
        first_s = time.perf_counter() - started
        calls_first = SimulatorProcess.stats_of(base)["calls"]
        started = time.perf_counter()
        rerun = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        rerun_s = time.perf_counter() - started
        prompts = _prompts(base)
        rows = [orjson.loads(x) for x in (tmp / "out.jsonl").read_bytes().splitlines()] \
            if (tmp / "out.jsonl").exists() else []
    resumed = next((line for line in rerun.stderr.splitlines() if line.startswith("resuming batch")), "(none)")
    print(f"first run: exit {proc.returncode} after {first_s:.1f}s, SIG{a.signal} at {sent_at_interrupt} calls, "
          f"{calls_first} calls when it had stopped")
    print(f"rerun:     exit {rerun.returncode} in {rerun_s:.1f}s; {resumed}")
    if rerun.returncode != 0:
        print(rerun.stderr[-2000:], err1[-2000:])
    dups = sum(n - 1 for n in Counter(prompts).values() if n > 1)
    expected = [f"r{i}" for i in range(1, a.lines + 1)]
    got = [str(r["custom_id"]) for r in rows]
    missing = len(set(expected) - set(got))
    figures = [
        Figure("resume", "provider calls in all", f"{len(prompts):,}", f"<= {a.lines + a.concurrency:,}",
               len(prompts) <= a.lines + a.concurrency),
        Figure("resume", "calls by the first run / the rerun", f"{calls_first:,} / {len(prompts) - calls_first:,}"),
        Figure("resume", "duplicate calls", str(dups), "0" if a.signal == "INT" else f"<= {a.concurrency}",
               dups == 0 if a.signal == "INT" else dups <= a.concurrency),
        Figure("resume", "lines missing from the output", str(missing), "0", missing == 0),
        Figure("resume", "output in input order", str(got == expected), "True", got == expected),
        Figure("resume", "rerun exit status", str(rerun.returncode), "0", rerun.returncode == 0),
    ]
    return 0 if print_summary(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
