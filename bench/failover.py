"""Failover acceptance scenarios (the README's failover table), each with 2 `batchrelay worker --burst` processes.

    python bench/failover.py [--lines 2000] [--pace-seconds 120] [--outage-seconds 20]
                             [--concurrency 32] [--only failover|pacing|bad|outage ...]

1. failover: A (402 after 50 answers), B (30 % 429, Retry-After 2), C (20 % 500): completion,
   A's calls after its first 402 against the worker slots, calls to B inside an announced
   Retry-After window (by arrival at the simulator after B sent the 429; also by when batchrelay
   sent them), calls/line.
2. pacing: one provider limited to 600 rpm at the simulator and in the config: the rate measured
   over the steady part of the run, and the 429s the simulator had to send.
3. bad: a 400 line fails after exactly one call (no failover); a provider answering 401 gets
   exactly one call over a 200-line batch.
4. outage: every provider answers 503 for --outage-seconds, then recovers: completion, failed lines,
   time to finish.

Uses REDIS_URL under a fresh key prefix (its keys are removed afterwards, nothing else), else an
embedded redis-server. Every wait is bounded; the simulators and workers are stopped at the end.
Prints a summary table with pass/fail against the targets; exit status 1 when a target fails.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from _common import Figure, bench_redis, print_summary, write_lines  # noqa: E402
from failover_rig import WORKERS, priority_config, run_batch, sim_log, write_config  # noqa: E402

from batchrelay.sim.process import SimulatorProcess  # noqa: E402

LATENCY_MS = 20
SCENARIOS = ("failover", "pacing", "bad", "outage")


# ---------------------------------------------------------------------------------------------- plumbing

FIGURES: list[Figure] = []


def figure(scenario: str, name: str, value: Any, target: str = "", ok: bool | None = None) -> None:
    FIGURES.append(Figure(scenario, name, str(value), target, ok))


def in_windows(times: list[float], starts: list[float], length: float) -> list[float]:
    """For each time inside some window (s, s + length] of sorted `starts`: its delay after that s."""
    out = []
    for t in times:
        i = bisect.bisect_left(starts, t) - 1  # latest start strictly before t
        if i >= 0 and t - starts[i] <= length:
            out.append(t - starts[i])
    return out


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f} %" if b else "n/a"


# ---------------------------------------------------------------------------------------------- scenarios

def scenario_failover(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s, n, slots = "failover", args.lines, WORKERS * args.concurrency
    retry_after = 2.0
    print(f"\n== 1. failover mix: {n} lines, {WORKERS} workers x concurrency {args.concurrency} = {slots} slots")
    sims = {
        "A": SimulatorProcess({"latency_ms": LATENCY_MS, "fail_after": 50, "seed": 1}),
        "B": SimulatorProcess({"latency_ms": LATENCY_MS, "fail_rate": 0.3, "fail_rate_status": 429,
                               "retry_after": retry_after, "seed": 2}),
        "C": SimulatorProcess({"latency_ms": LATENCY_MS, "fail_rate": 0.2, "fail_rate_status": 500, "seed": 3}),
    }
    try:
        for sim in sims.values():
            sim.start()
        cfg = priority_config(tmp / "failover.toml", prefix, sims, args.concurrency)
        src = write_lines(tmp / "failover.jsonl", n)
        run = run_batch(url, prefix, cfg, src, tmp, "failover", timeout=max(300.0, n / 5))
        logs = {name: sim_log(sim.base_url) for name, sim in sims.items()}
    finally:
        for sim in sims.values():
            sim.stop()

    info = run.info
    print(f"  batch {info.status} in {run.elapsed:.1f}s: succeeded {info.succeeded}, failed {info.failed}"
          f"{' (TIMED OUT)' if run.timed_out else ''}")
    figure(s, "completion", f"{pct(info.succeeded, n)} ({info.succeeded}/{n})", "100 %", info.succeeded == n)

    for name, log in logs.items():
        by = Counter(e["status"] for e in log)
        print(f"  {name}: {len(log)} calls, by status {dict(sorted(by.items()))}")
    served = Counter(r["batchrelay"]["provider"] for ok, r in run.records if ok)
    print(f"  lines served by: {dict(sorted(served.items()))}")
    recorded = Counter(a["provider"] for a in run.attempts)
    print(f"  attempts recorded in results: {dict(sorted(recorded.items()))} "
          f"(simulators saw {sum(len(v) for v in logs.values())})")

    # A: calls after its first 402, by arrival time at the simulator
    a_log = sorted(logs["A"], key=lambda e: e["t"])
    first_402 = next((e["t"] for e in a_log if e["status"] == 402), None)
    if first_402 is None:
        print("  A never answered 402")
        figure(s, "A calls after first 402", "no 402 seen", f"<= {slots} (slots)", False)
    else:
        after = [e for e in a_log if e["t"] > first_402]
        spread = (after[-1]["t"] - first_402) * 1000 if after else 0.0
        print(f"  A: {len(a_log)} calls in total, {len(after)} after its first 402 "
              f"(over {spread:.0f} ms; worker slots {slots})")
        figure(s, "A calls total", len(a_log))
        figure(s, "A calls after first 402", f"{len(after)} (slots {slots})", f"<= {slots}", len(after) <= slots)

    # B: calls inside an announced Retry-After window
    # A window is announced when B sends its 429 ("answered"), LATENCY_MS after that call arrived; a
    # call arriving between the two was already on its way before any client could know.
    b_log = logs["B"]
    t429 = sorted(e["t"] for e in b_log if e["status"] == 429)
    announced = sorted(e["answered"] for e in b_log if e["status"] == 429)
    arrivals = sorted(e["t"] for e in b_log)
    inside_a = in_windows(arrivals, announced, retry_after)
    before_announced = [d for d in in_windows(arrivals, t429, retry_after) if d <= LATENCY_MS / 1000]
    b_att = [a for a in run.attempts if a["provider"] == "B" and a.get("started_at")]
    got429 = sorted(a["started_at"] + a["latency_ms"] / 1000 for a in b_att if a["status"] == 429)
    sent = sorted(a["started_at"] for a in b_att)
    inside_b = in_windows(sent, got429, retry_after)
    late = [d for d in inside_b if d > 0.1]
    # When was that 429 certainly in the shared state? A worker writes its report to Redis before the
    # line moves on, so the line's next attempt starts after it: a call to B sent later than that and
    # inside the window is not the race between a 429's receipt and its report reaching Redis.
    landed: list[tuple[float, float]] = []  # (received, report certainly in Redis)
    for _, r in run.records:
        atts = r["batchrelay"]["attempts"]
        for i, a in enumerate(atts):
            if a["provider"] == "B" and a["status"] == 429 and a.get("started_at") and i + 1 < len(atts):
                landed.append((a["started_at"] + a["latency_ms"] / 1000, atts[i + 1].get("started_at", 0.0)))
    lags = sorted(b - a for a, b in landed)
    certain = [t for t in sent if any(b < t <= a + retry_after for a, b in landed)]
    print(f"  B: {len(b_log)} calls, {len(t429)} answered 429 (Retry-After {retry_after:g}s)")
    print(f"  B calls inside an announced Retry-After window (a) by arrival at the simulator, from the 429's "
          f"answer: (answered, answered+{retry_after:g}s]: {len(inside_a)}")
    if inside_a:
        print(f"      delay after the 429 was sent: median {sorted(inside_a)[len(inside_a) // 2] * 1000:.0f} ms, "
              f"max {max(inside_a) * 1000:.0f} ms")
    print(f"  B calls that arrived while a 429 was on its way ({LATENCY_MS} ms between arrival and answer; "
          f"not yet announced): {len(before_announced)}")
    print(f"  B calls inside a Retry-After window (b) sent by batchrelay after a worker had received a 429: "
          f"{len(inside_b)}")
    if inside_b:
        print(f"      delay after that 429 was received: median {sorted(inside_b)[len(inside_b) // 2] * 1000:.0f} ms, "
              f"max {max(inside_b) * 1000:.0f} ms; more than 100 ms after it: {len(late)}")
    if lags:
        print(f"      a 429's line made its next call (so its report was in Redis) "
              f"{lags[len(lags) // 2] * 1000:.0f} ms (median; max {lags[-1] * 1000:.0f} ms) after receiving it; "
              f"B calls sent inside a window after that point: {len(certain)}")
    figure(s, "B calls in announced Retry-After window", len(inside_a), "0", len(inside_a) == 0)
    figure(s, "  B calls sent after a worker got a 429", len(inside_b), "0", len(inside_b) == 0)
    figure(s, "  of which sent after the 429 was in Redis", len(certain))

    total = sum(len(v) for v in logs.values())
    ratio = total / n
    # the calls no client can avoid without knowing the fates in advance: every answer costs 1/(1-rate)
    floor = served.get("A", 0) + served.get("B", 0) / 0.7 + served.get("C", 0) / 0.8
    print(f"  provider calls: {total} for {n} lines = {ratio:.3f} per line (target <= 1.3); "
          f"expected minimum for this split of lines over A/B/C: {floor / n:.3f}")
    figure(s, "provider calls / line", f"{ratio:.3f}", "<= 1.3", ratio <= 1.3)


def scenario_pacing(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s, rpm, edge = "pacing", 600, 5.0
    n = round(rpm * args.pace_seconds / 60 * 1.05)
    print(f"\n== 2. pacing: rpm {rpm} at the simulator and in the config, {n} lines "
          f"(~{n / rpm * 60:.0f}s at the limit)")
    sim = SimulatorProcess({"latency_ms": LATENCY_MS, "rpm": rpm})
    try:
        sim.start()
        cfg = write_config(tmp / "pacing.toml", prefix, [{"name": "paced", "base_url": sim.base_url, "rpm": rpm}],
                           concurrency=args.concurrency)
        src = write_lines(tmp / "pacing.jsonl", n)
        run = run_batch(url, prefix, cfg, src, tmp, "pacing", timeout=args.pace_seconds * 2 + 120)
        log = sim_log(sim.base_url)
    finally:
        sim.stop()
    info = run.info
    times = sorted(e["t"] for e in log)
    n429 = sum(e["status"] == 429 for e in log)
    print(f"  batch {info.status} in {run.elapsed:.1f}s: succeeded {info.succeeded}/{n}, failed {info.failed}"
          f"{' (TIMED OUT)' if run.timed_out else ''}; {len(log)} calls, {n429} answered 429")
    figure(s, "completion", f"{pct(info.succeeded, n)} ({info.succeeded}/{n})", "100 %", info.succeeded == n)
    if len(times) < 2 or times[-1] - times[0] <= 2 * edge + 1:
        figure(s, "rate (steady part)", "too few calls", f"{rpm} +-2 %", False)
    else:
        lo, hi = times[0] + edge, times[-1] - edge
        k = sum(lo <= t <= hi for t in times)
        rate = k / (hi - lo) * 60
        ratio = rate / rpm
        # the worst 60 s sliding window, as the simulator counts it
        worst = max(bisect.bisect_right(times, t + 60) - i for i, t in enumerate(times))
        gap, at = max((b - a, a - times[0]) for a, b in zip(times, times[1:], strict=False))
        print(f"  steady part [{edge:g}s .. end-{edge:g}s] = {hi - lo:.1f}s: {k} calls = {rate:.1f} per minute, "
              f"{ratio:.3f} of {rpm}; busiest 60 s window {worst} calls; longest pause between calls "
              f"{gap:.2f}s (at {at:.1f}s; pace {60 / rpm:.2f}s)")
        figure(s, "rate (calls/min, steady part)", f"{rate:.1f} ({ratio:.3f} of {rpm})",
               "0.98..1.02 and >= 0.95", 0.98 <= ratio <= 1.02 and ratio >= 0.95)
    figure(s, "429s sent by the simulator", n429, "0", n429 == 0)


def scenario_bad(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s = "bad"
    print("\n== 3a. bad request: provider X answers its first call 400, healthy provider Y behind it")
    n = 20
    x = SimulatorProcess({"latency_ms": LATENCY_MS, "script": [400]})
    y = SimulatorProcess({"latency_ms": LATENCY_MS})
    try:
        x.start()
        y.start()
        cfg = write_config(tmp / "bad400.toml", f"{prefix}a:", [
            {"name": "X", "base_url": x.base_url, "priority": 1},
            {"name": "Y", "base_url": y.base_url, "priority": 2}], concurrency=args.concurrency)
        src = write_lines(tmp / "bad400.jsonl", n)
        run = run_batch(url, f"{prefix}a:", cfg, src, tmp, "bad400", timeout=120)
        xl, yl = sim_log(x.base_url), sim_log(y.base_url)
    finally:
        x.stop()
        y.stop()
    failed = [r for ok, r in run.records if not ok]
    x400 = sum(e["status"] == 400 for e in xl)
    print(f"  batch {run.info.status}: succeeded {run.info.succeeded}, failed {run.info.failed}; "
          f"X {len(xl)} calls ({x400} x 400), Y {len(yl)} calls; {len(xl) + len(yl)} calls for {n} lines")
    if len(failed) == 1:
        atts = failed[0]["batchrelay"]["attempts"]
        desc = ", ".join(f"{a['provider']} {a['status']} {a.get('action', '')}".strip() for a in atts)
        print(f"  the failed line ({failed[0]['custom_id']}): {len(atts)} call(s): {desc}; "
              f"error: {failed[0]['error']['message']}")
        ok = len(atts) == 1 and atts[0]["status"] == 400 and len(xl) + len(yl) == n
        figure(s, "calls for the 400 line", f"{len(atts)} (all calls {len(xl) + len(yl)} for {n} lines)",
               f"1 (and {n} in all)", ok)
    else:
        figure(s, "calls for the 400 line", f"{len(failed)} failed lines", "1 failed line, 1 call", False)

    print("\n== 3b. bad key: provider K answers 401 (wrong key in config), healthy provider H behind it; 200 lines")
    n = 200
    k = SimulatorProcess({"latency_ms": LATENCY_MS, "api_key": "the-right-key"})
    h = SimulatorProcess({"latency_ms": LATENCY_MS})
    try:
        k.start()
        h.start()
        cfg = write_config(tmp / "bad401.toml", f"{prefix}k:", [
            {"name": "K", "base_url": k.base_url, "priority": 1, "api_key_env": "BENCH_FAILOVER_K_KEY"},
            {"name": "H", "base_url": h.base_url, "priority": 2}], concurrency=args.concurrency)
        src = write_lines(tmp / "bad401.jsonl", n)
        run = run_batch(url, f"{prefix}k:", cfg, src, tmp, "bad401", timeout=120,
                        env={"BENCH_FAILOVER_K_KEY": "a-wrong-key"})
        kl, hl = sim_log(k.base_url), sim_log(h.base_url)
    finally:
        k.stop()
        h.stop()
    k401 = sum(e["status"] == 401 for e in kl)
    print(f"  batch {run.info.status}: succeeded {run.info.succeeded}/{n}, failed {run.info.failed}; "
          f"K {len(kl)} calls ({k401} x 401), H {len(hl)} calls")
    figure(s, "calls to the 401 provider (200 lines)", len(kl), "1", len(kl) == 1)
    figure(s, "completion with a 401 provider", f"{pct(run.info.succeeded, n)} ({run.info.succeeded}/{n})", "100 %",
           run.info.succeeded == n)


def scenario_outage(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s, n, down = "outage", args.lines, args.outage_seconds
    print(f"\n== 4. outage: 2 providers answer 503 for {down:g}s from submit, then recover; {n} lines")
    sims = {name: SimulatorProcess({"latency_ms": LATENCY_MS, "fail_status": 503}) for name in ("P", "Q")}
    switched: list[float] = []

    async def tick(since_submit: float) -> None:
        if not switched and since_submit >= down:
            async with httpx.AsyncClient() as c:
                for sim in sims.values():
                    (await c.post(sim.base_url + "/_sim/config", json={"fail_status": None}, timeout=5)
                     ).raise_for_status()
            switched.append(time.time())

    try:
        for sim in sims.values():
            sim.start()
        cfg = priority_config(tmp / "outage.toml", prefix, sims, args.concurrency)
        src = write_lines(tmp / "outage.jsonl", n)
        run = run_batch(url, prefix, cfg, src, tmp, "outage", timeout=down + max(180.0, n / 5), tick=tick)
        logs = {name: sim_log(sim.base_url) for name, sim in sims.items()}
    finally:
        for sim in sims.values():
            sim.stop()
    info = run.info
    t_switch = switched[0] if switched else None
    for name, log in logs.items():
        during = sum(t_switch is None or e["t"] < t_switch for e in log)
        print(f"  {name}: {len(log)} calls, {during} during the outage, by status "
              f"{dict(sorted(Counter(e['status'] for e in log).items()))}")
    after = f", {run.submitted_at + run.elapsed - t_switch:.1f}s after recovery" if t_switch else ""
    print(f"  batch {info.status}: succeeded {info.succeeded}/{n}, failed {info.failed}, finished "
          f"{run.elapsed:.1f}s after submit{after}{' (TIMED OUT)' if run.timed_out else ''}")
    figure(s, "completion", f"{pct(info.succeeded, n)} ({info.succeeded}/{n})", "100 %", info.succeeded == n)
    figure(s, "failed lines", info.failed, "0", info.failed == 0)
    figure(s, "time to finish (from submit)", f"{run.elapsed:.1f}s ({down:g}s outage{after})")


# ---------------------------------------------------------------------------------------------- main

def summary() -> bool:
    return print_summary(FIGURES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2000, help="lines of the failover and outage batches")
    ap.add_argument("--pace-seconds", type=float, default=120, help="how long the pacing run lasts")
    ap.add_argument("--outage-seconds", type=float, default=20, help="how long every provider answers 503")
    ap.add_argument("--concurrency", type=int, default=32, help="per worker process")
    ap.add_argument("--only", action="append", choices=SCENARIOS, metavar="SCENARIO",
                    help=f"run only this scenario ({', '.join(SCENARIOS)}); may be repeated")
    args = ap.parse_args()
    chosen = args.only or list(SCENARIOS)
    runs = {"failover": scenario_failover, "pacing": scenario_pacing, "bad": scenario_bad, "outage": scenario_outage}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="brfailover-") as d, bench_redis() as (url, prefix):
        for name in SCENARIOS:
            if name in chosen:
                runs[name](url, f"{prefix}{name}:", Path(d), args)
    print(f"\n(all scenarios: {time.monotonic() - t0:.0f}s)")
    sys.exit(0 if summary() else 1)


if __name__ == "__main__":
    main()
