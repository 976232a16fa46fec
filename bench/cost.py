"""Cost accounting acceptance figures (issue 5), against simulators over real HTTP.

    python bench/cost.py [--lines 2000] [--only recompute|presets|estimate|budget|kill ...]

1. recompute: N mixed chat/messages lines of varied prompt length, `batchrelay run --workers 2`
   against two priced simulators (cheap: half its input from the cache, 25 % 503s; backup: cache
   writes on messages, 10 % junk 200s that bill usage but carry no answer). Every line's cost is
   recomputed here, from the usage in the simulators' logged responses and the configured prices
   (none of batchrelay's pricing code), and compared with the line and the ledger.
   presets (single lines): a PiAPI gizmo line of 10 tokens costs exactly $0.005 (its minimum
   charge); an ai-now line shows its computed and its reported cost; a line with 75 % cached input
   is priced at the cached rate for the cached part only.
2. estimate: `batchrelay estimate FILE --json`, then `batchrelay run` of the same file, for the
   example file, a file of short questions and a file of medium prompts with max_tokens set, on a
   simulator priced at the official (genai-prices) rates: expected vs real cost.
3. budget: N lines of a $1000 / 1M-token model, `submit --max-cost 0.50`, 2 burst workers: the
   status, the spending and its overshoot; then `budget B --max-cost 1000`, 2 burst workers again:
   completion, every line answered once, the ledger against the lines.
4. kill: N lines on a 60 ms simulator, 3 burst workers; two are SIGKILLed at 25 % and 50 % done, a
   replacement finishes: lost and duplicate lines, the ledger against the lines.

Uses REDIS_URL under a fresh key prefix (its keys are removed afterwards, nothing else), else an
embedded redis-server. Every wait is bounded; simulators and workers are stopped at the end.
Prints a summary table with pass/fail against the targets; exit status 1 when a target fails.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal as D
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from _common import bench_redis, print_summary  # noqa: E402
from cost_figures import FIGURES, PRICES, PRICEY, figure  # noqa: E402
from cost_lines import line_of, medium_prompts, numbered_lines, short_questions  # noqa: E402
from cost_presets import scenario_presets  # noqa: E402
from cost_recompute import MILLION, billed_calls  # noqa: E402
from cost_rig import (  # noqa: E402
    batch_info,
    cli,
    cli_json,
    line_cost,
    report_workers,
    results,
    sim_log,
    start_worker,
    usd,
    wait_workers,
    write_config,
)

from batchrelay.money.tokens import input_tokens  # noqa: E402
from batchrelay.procs import stop_all  # noqa: E402
from batchrelay.sim.process import SimulatorProcess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "requests.jsonl"
SCENARIOS = ("recompute", "presets", "estimate", "budget", "kill")

# ---------------------------------------------------------------------------------------------- scenarios

def scenario_recompute(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s, n = "recompute", args.lines
    print(f"\n== 1. recompute: {n} mixed chat/messages lines, `run --workers 2`, two priced simulators")
    src = tmp / "recompute.jsonl"
    src.write_bytes(numbered_lines(n))
    cheap = SimulatorProcess({"cached_fraction": 0.5, "fail_rate": 0.25, "fail_rate_status": 503, "seed": 7})
    backup = SimulatorProcess({"cache_write_fraction": 0.25, "junk_rate": 0.1, "seed": 11})
    try:
        cheap.start()
        backup.start()
        cfg = write_config(tmp / "recompute.toml", prefix, [("cheap", cheap.base_url, PRICES["cheap"]),
                                                           ("backup", backup.base_url, PRICES["backup"])],
                           attempts_per_provider=1)
        out = tmp / "recompute.out.jsonl"
        t0 = time.monotonic()
        report = cli_json(cfg, url, "run", str(src), "-o", str(out), "--workers", "2",
                          timeout=max(180.0, n / 10), ok=(0, 3))
        elapsed = time.monotonic() - t0
        logs = {"cheap": sim_log(cheap.base_url), "backup": sim_log(backup.base_url)}
    finally:
        cheap.stop()
        backup.stop()
    ledger = cli_json(cfg, url, "cost", report["id"])
    rows = results(out)
    counts = report["counts"]
    print(f"  batch {report['status']} in {elapsed:.1f}s: succeeded {counts['succeeded']}, failed {counts['failed']}"
          f" of {counts['total']}; result rows {len(rows)}")
    kinds = {name: dict(sorted(Counter(c["kind"] for c in log).items())) for name, log in logs.items()}
    print(f"  simulator calls by kind: {kinds}")

    expected, _per_line_calls, calls = billed_calls(logs, PRICES)
    junk = sum(1 for c in calls if c[2] == "junk")
    diff = []
    min_lines = 0
    for r in rows:
        meta = r["batchrelay"]
        if line_cost(r) != expected.get(meta["line"], D(0)) or meta["cost"]["usd"] is None:
            diff.append((meta["line"], meta["cost"]["usd"], expected.get(meta["line"], D(0))))
        min_lines += bool(meta["cost"].get("min_charge_applied"))
    for line, got, want in diff[:5]:
        print(f"  !! line {line}: batchrelay says {got}, recomputed {want}")
    recomputed_total = sum(expected.values(), D(0))
    ledger_total = D(ledger["total"]["usd"])
    run_total = D(report["cost"]["usd"])
    row_mismatch = []
    for lr in ledger["rows"]:
        mine = [c for c in calls if c[0] == lr["provider"] and c[1] == lr["model"]]
        want_cost, want_req = sum((c[3] for c in mine), D(0)), len(mine)
        want_failed = sum(1 for c in mine if c[2] == "junk")
        if (D(lr["cost_usd"]) != want_cost or lr["requests"] != want_req or lr["failed"] != want_failed):
            row_mismatch.append(f"{lr['provider']}/{lr['model']}: ledger ${lr['cost_usd']} {lr['requests']} req "
                                f"{lr['failed']} failed; recomputed ${want_cost} {want_req} req {want_failed} failed")
        print(f"  ledger {lr['provider']:>6} {lr['model']:<26} requests {lr['requests']:>5} failed {lr['failed']:>4} "
              f"in {lr['input']:>6} cached {lr['cached']:>5} written {lr['cache_write']:>5} out {lr['output']:>6} "
              f"${lr['cost_usd']} "
              f"(recomputed ${usd(want_cost)})")
    for m in row_mismatch:
        print(f"  !! {m}")
    print(f"  ledger total ${ledger_total}, run's cost ${run_total}, sum of recomputed calls ${usd(recomputed_total)}")

    figure(s, "lines (result rows)", f"{len(rows)} of {n}", f"{n}", len(rows) == n)
    figure(s, "billed calls (200 with usage)", len(calls), "> 0", len(calls) > 0)
    figure(s, "junk calls (billed, failed)", f"{junk} (ledger failed {sum(r['failed'] for r in ledger['rows'])})",
           "> 0 and = ledger failed", junk > 0 and junk == sum(r["failed"] for r in ledger["rows"]))
    def cache_kind(u: dict[str, Any]) -> str:
        if (u.get("prompt_tokens_details") or {}).get("cached_tokens") or u.get("cache_read_input_tokens"):
            return "read"
        return "write" if u.get("cache_creation_input_tokens") else "none"
    by_cache = Counter(cache_kind(c["response"]["usage"]) for log in logs.values() for c in log
                       if c["status"] == 200 and isinstance(c.get("response"), dict))
    figure(s, "billed calls with cache reads / writes", f"{by_cache['read']} / {by_cache['write']}")
    figure(s, "503 failovers at cheap", sum(1 for c in logs["cheap"] if c["status"] == 503))
    figure(s, "lines whose cost differs", len(diff), "0", not diff)
    figure(s, "ledger total vs sum recomputed", f"${ledger_total} vs ${usd(recomputed_total)}", "equal exactly",
           ledger_total == recomputed_total == run_total)
    figure(s, "ledger rows vs recomputed (provider x model)", f"{len(row_mismatch)} differ of {len(ledger['rows'])}",
           "0", not row_mismatch)
    figure(s, "min-charge lines", f"{min_lines} of {len(rows)}", "0 < x < lines", 0 < min_lines < len(rows))


def _estimate_vs_run(s: str, label: str, cfg: Path, url: str, path: Path, tmp: Path, n: int, history: bool,
                     target: bool) -> None:
    est = cli_json(cfg, url, "estimate", str(path), *([] if history else ["--no-history"]), timeout=120)
    first = est["first_choice"]
    basis = sorted({r["output_basis"] for r in est["rows"] if r["first_choice"]})
    out = tmp / f"estimate.{path.stem}.out.jsonl"
    run = cli_json(cfg, url, "run", str(path), "-o", str(out), "--workers", "2", timeout=max(180.0, n / 10),
                   ok=(0, 3))
    ledger = cli_json(cfg, url, "cost", run["id"])
    real = D(run["cost"]["usd"])
    exp, low, high = D(first["expected_usd"]), D(first["low_usd"]), D(first["high_usd"])
    err = (exp - real) / real if real else D(0)
    tin = sum(r["input_tokens"] for r in est["rows"] if r["first_choice"])
    tout = sum(r["expected_output_tokens"] for r in est["rows"] if r["first_choice"])
    rin = sum(r["input"] for r in ledger["rows"])
    rout = sum(r["output"] for r in ledger["rows"])
    print(f"  {label}: {est['lines']} lines, output basis {basis}; batch {run['status']} "
          f"({run['counts']['succeeded']} ok, {run['counts']['failed']} failed)")
    print(f"      expected ${exp} (range ${low} .. ${high}), real ${real}: error {float(err) * 100:+.1f} %")
    print(f"      tokens estimated in/out {tin}/{tout}, real in/out {rin}/{rout} "
          f"({(tin - rin) / max(1, rin) * 100:+.0f} % / {(tout - rout) / max(1, rout) * 100:+.0f} %)")
    figure(s, f"{label}: expected vs real", f"${exp} vs ${real} ({float(err) * 100:+.1f} %)",
           "|error| <= 30 %" if target else "-", abs(err) <= D("0.30") if target else None)
    figure(s, f"{label}: real within [low, high]", f"{low <= real <= high} (${low} .. ${high})", "True",
           low <= real <= high)


def scenario_estimate(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    """Cold: no history, output guessed as 1 token per input token. Warm: after one batch of the same
    kind (another file: other questions, other seed) went through, its output per call is the guess."""
    s, n = "estimate", args.lines
    print("\n== 2. estimate vs real on a simulator priced at official (genai-prices) rates")
    kinds = {"short questions": short_questions, "medium prompts + max_tokens": medium_prompts}
    sim = SimulatorProcess({"latency_ms": 5, "seed": 3})
    try:
        sim.start()
        cfg = write_config(tmp / "estimate0.toml", f"{prefix}est0:", [("official", sim.base_url, {})])
        _estimate_vs_run(s, "examples/requests.jsonl, cold", cfg, url, EXAMPLE, tmp, n, False, False)
        for i, (kind, make) in enumerate(kinds.items(), start=1):
            # each kind on a key prefix of its own: its history is its own
            cfg = write_config(tmp / f"estimate{i}.toml", f"{prefix}est{i}:", [("official", sim.base_url, {})])
            first, second = tmp / f"{make.__name__}.a.jsonl", tmp / f"{make.__name__}.b.jsonl"
            first.write_bytes(make(n, seed=100 + i))
            second.write_bytes(make(n, seed=200 + i))
            _estimate_vs_run(s, f"{kind} ({n}), cold", cfg, url, first, tmp, n, False, False)
            _estimate_vs_run(s, f"{kind} ({n}), after one such batch", cfg, url, second, tmp, n, True, True)
    finally:
        sim.stop()


def scenario_budget(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s, n, conc, workers = "budget", args.lines, 6, 2
    limit, max_tokens = D("0.50"), 40
    print(f"\n== 3. budget: {n} lines at $1000 per 1M tokens, --max-cost {limit}, {workers} burst workers "
          f"x concurrency {conc}")
    rows = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "pricey", "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": f"question {i}: how much?"}]}} for i in range(1, n + 1)]
    src = tmp / "budget.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    # what one call reserves: batchrelay's input estimate plus max_tokens, at $0.001 a token
    per_call = max((input_tokens(r["body"]) + max_tokens) * D(1000) / MILLION for r in rows)  # type: ignore[arg-type]
    inflight = workers * conc * per_call
    sim = SimulatorProcess({"latency_ms": 20})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sim.start()
        cfg = write_config(tmp / "budget.toml", prefix, [("sim", sim.base_url, PRICEY)], concurrency=conc,
                           chunk_size=10)
        batch = cli_json(cfg, url, "submit", str(src), "--max-cost", str(limit))["id"]
        t0 = time.monotonic()
        procs = [start_worker(cfg, url, tmp / f"budget1.w{i}.err") for i in range(workers)]
        rcs = wait_workers(procs, 120)
        report_workers("budget1", procs, rcs, tmp)
        st = cli_json(cfg, url, "status", batch)
        spent = D(st["cost"]["usd"])
        b = st["cost"].get("budget") or {}
        calls_before = SimulatorProcess.stats_of(sim.base_url)["calls"]
        done = st["counts"]["done"]
        overshoot = max(D(0), spent - limit)
        print(f"  after {time.monotonic() - t0:.1f}s: {st['status']}; done {done}, pending {st['counts']['pending']}; "
              f"ledger ${spent}; budget spent ${b.get('spent_usd')} reserved ${b.get('reserved_usd')} "
              f"max ${b.get('max_usd')}; simulator calls {calls_before}")
        print(f"  reservation per call ${per_call}; in flight at most {workers} x {conc} = ${inflight}; "
              f"overshoot over ${limit}: ${overshoot}")
        figure(s, "status at the limit", st["status"], "budget_exhausted", st["status"] == "budget_exhausted")
        figure(s, "spent (ledger) / budget spent / reserved",
               f"${spent} / ${b.get('spent_usd')} / ${b.get('reserved_usd')}", "ledger = budget spent, reserved 0",
               b.get("spent_usd") is not None and D(b["spent_usd"]) == spent and D(b["reserved_usd"]) == 0)
        figure(s, "overshoot over $0.50", f"${overshoot} (bound ${inflight} = {workers * conc} x ${per_call})",
               f"<= ${inflight}", overshoot <= inflight)
        figure(s, "lines done before the raise", f"{done} of {n} (simulator calls {calls_before})",
               "0 < done < N, calls = done", 0 < done < n and calls_before == done)

        raised = cli_json(cfg, url, "budget", batch, "--max-cost", "1000")
        print(f"  budget raised: {raised['status']}, {raised.get('requeued_chunks')} chunks requeued")
        t1 = time.monotonic()
        procs = [start_worker(cfg, url, tmp / f"budget2.w{i}.err") for i in range(workers)]
        rcs = wait_workers(procs, max(120.0, n / 10))
        report_workers("budget2", procs, rcs, tmp)
        st = cli_json(cfg, url, "status", batch)
        log = sim_log(sim.base_url)
    finally:
        stop_all(procs, grace=10)
        sim.stop()
    out = tmp / "budget.out.jsonl"
    cli(cfg, url, "results", batch, "-o", str(out), ok=(0, 3))
    got = results(out)
    ids = Counter(r["custom_id"] for r in got)
    answers = Counter(line_of(c["body"]) for c in log if c["status"] == 200)
    once = sum(1 for i in range(1, n + 1) if answers.get(i) == 1 and ids.get(f"req-{i}") == 1)
    dups = sum(1 for v in answers.values() if v > 1) + sum(1 for v in ids.values() if v > 1)
    ledger = D(st["cost"]["usd"])
    line_sum = sum((line_cost(r) for r in got), D(0))
    print(f"  after the raise ({time.monotonic() - t1:.1f}s): {st['status']}; succeeded {st['counts']['succeeded']}, "
          f"failed {st['counts']['failed']}; simulator answered {sum(answers.values())} calls for {len(answers)} "
          f"lines; ledger ${ledger}, sum of lines ${line_sum}")
    figure(s, "final status", st["status"], "completed", st["status"] == "completed")
    figure(s, "lines answered exactly once", f"{once} of {n} (duplicates {dups})", f"{n}, duplicates 0",
           once == n and dups == 0)
    figure(s, "ledger vs sum of line costs", f"${ledger} vs ${usd(line_sum)}", "equal", ledger == line_sum)


def scenario_kill(url: str, prefix: str, tmp: Path, args: argparse.Namespace) -> None:
    s, n, conc = "kill", args.lines, 4
    print(f"\n== 4. kill: {n} lines on a 60 ms simulator, 3 burst workers x concurrency {conc}; SIGKILL two at "
          "25 % and 50 % done, then a replacement")
    src = tmp / "kill.jsonl"
    src.write_bytes(numbered_lines(n))
    sim = SimulatorProcess({"latency_ms": 60, "cached_fraction": 0.3})
    procs: list[subprocess.Popen[bytes]] = []
    kills: list[int] = []
    try:
        sim.start()
        cfg = write_config(tmp / "kill.toml", prefix, [("cheap", sim.base_url, PRICES["cheap"])], concurrency=conc,
                           chunk_size=10, call_timeout=2, job_timeout=4)
        batch = cli_json(cfg, url, "submit", str(src))["id"]
        t0 = time.monotonic()
        procs = [start_worker(cfg, url, tmp / f"kill.w{i}.err") for i in range(3)]
        deadline = time.monotonic() + max(120.0, n / 10)
        for victim, share in ((0, 4), (1, 2)):
            while batch_info(url, prefix, batch).done < n // share and time.monotonic() < deadline:
                time.sleep(0.05)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(timeout=10)
            kills.append(batch_info(url, prefix, batch).done)
        mid = batch_info(url, prefix, batch).done
        print(f"  killed worker 0 at {kills[0]} done, worker 1 at {kills[1]} done ({time.monotonic() - t0:.1f}s); "
              f"replacement started at {mid} done")
        procs.append(start_worker(cfg, url, tmp / "kill.w3.err"))
        rcs = wait_workers(procs, max(150.0, n / 10))
        report_workers("kill", procs, rcs, tmp, killed=(0, 1))
        info = batch_info(url, prefix, batch)
        elapsed = time.monotonic() - t0
        calls = sim_log(sim.base_url)
    finally:
        stop_all(procs, grace=10)
        sim.stop()
    st = cli_json(cfg, url, "status", batch)
    out = tmp / "kill.out.jsonl"
    cli(cfg, url, "results", batch, "-o", str(out), ok=(0, 3))
    got = results(out)
    ids = Counter(r["custom_id"] for r in got)
    dups = sum(v - 1 for v in ids.values() if v > 1)
    lost = sum(1 for i in range(1, n + 1) if f"req-{i}" not in ids)
    ledger = cli_json(cfg, url, "cost", batch)
    ledger_total = D(ledger["total"]["usd"])
    line_sum = sum((line_cost(r) for r in got), D(0))
    requests = sum(r["requests"] for r in ledger["rows"])
    billed = sum(1 for c in calls if c["status"] == 200)
    print(f"  batch {info.status} after {elapsed:.1f}s: succeeded {info.succeeded}, failed {info.failed}; "
          f"simulator answered {billed} calls for {n} lines ({billed - requests} answered but recorded by no line: "
          f"in flight in a killed worker)")
    print(f"  ledger ${ledger_total} ({requests} requests), sum of line costs ${line_sum}, status ${st['cost']['usd']}")
    figure(s, "killed mid-batch", f"at {kills[0]} and {kills[1]} of {n} done", f"< {n}",
           len(kills) == 2 and kills[1] < n)
    figure(s, "final status", info.status, "completed", info.status == "completed")
    figure(s, "lines / duplicates / lost", f"{len(ids)} / {dups} / {lost}", f"{n} / 0 / 0",
           len(ids) == n and dups == 0 and lost == 0)
    figure(s, "ledger total vs sum of line costs", f"${ledger_total} vs ${usd(line_sum)}", "equal",
           ledger_total == line_sum == D(st["cost"]["usd"]))
    figure(s, "ledger requests vs lines", f"{requests} vs {n}", "equal", requests == n)
    figure(s, "calls billed by the simulator, in no line", billed - requests)


def summary() -> bool:
    return print_summary(FIGURES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2000, help="lines per batch (and per generated estimate file)")
    ap.add_argument("--only", action="append", choices=SCENARIOS, metavar="SCENARIO",
                    help=f"run only this scenario ({', '.join(SCENARIOS)}); may be repeated")
    args = ap.parse_args()
    if args.lines < 8:
        ap.error("--lines must be at least 8")
    chosen = args.only or list(SCENARIOS)
    runs = {"recompute": scenario_recompute, "presets": scenario_presets, "estimate": scenario_estimate,
            "budget": scenario_budget, "kill": scenario_kill}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="brcost-") as d, bench_redis() as (url, prefix):
        for name in SCENARIOS:
            if name in chosen:
                t = time.monotonic()
                try:
                    runs[name](url, f"{prefix}{name}:", Path(d), args)
                except (RuntimeError, subprocess.SubprocessError, httpx.HTTPError, OSError, KeyError,
                        ValueError) as e:
                    print(f"  !! {name} broke off: {type(e).__name__}: {e}")
                    figure(name, "scenario ran to the end", f"{type(e).__name__}: {str(e)[:120]}", "yes", False)
                print(f"  ({name}: {time.monotonic() - t:.0f}s)")
    print(f"\n(all scenarios: {time.monotonic() - t0:.0f}s)")
    sys.exit(0 if summary() else 1)


if __name__ == "__main__":
    main()
