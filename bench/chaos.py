"""Chaos run (issue 6): workers killed at random, Redis restarted, faulty providers, bad input lines.

    python bench/chaos.py [--lines 5000] [--workers 3] [--kills 4] [--rounds 1] [--seed S]
                          [--concurrency 8] [--latency-ms 80] [--timeout 600]

One round:
- its own redis-server (AOF everysec, no RDB, noeviction) on a free port in a temp dir; no other
  Redis is touched;
- three simulated providers, each requiring its own API key planted in an environment variable
  (a fresh distinctive secret per round), with about 30 % faults each: 503 with Retry-After
  (without it from the Redis restart on), 429 with Retry-After, 500, malformed 200s, junk 200s
  that bill usage, hangs under the call timeout (alpha) and over it (charlie); `prices` for every
  model, weighted routing so every provider gets traffic, charlie speaks only chat (messages lines
  sent there are translated);
- an input file of N lines, OpenAI chat lines and Anthropic message lines, with 5 % bad lines of
  six kinds (invalid JSON, invalid UTF-8, not an object, no model, repeated custom_id,
  unsupported url) at known line numbers;
- `batchrelay submit`, then W `batchrelay worker` processes (not --burst: the cron sweeper runs;
  job_timeout 8, call_timeout 3; INFO logs to files); at random points of progress a random worker
  is SIGKILLed K times (and replaced at once), and the redis-server is restarted once (SIGTERM,
  2 s down, started again on the same port and dir); wait (bounded) until `status` says
  completed; SIGTERM the workers (each must exit 0 within its grace);
- checks: every valid line exactly once in the results (by line number and custom_id: duplicates
  0, lost 0), every bad line in the errors with its line number, every line priced, the ledger
  (`cost --json`) equal to the sum of the result lines' `batchrelay.cost.usd` (Decimal, exact),
  and no planted key (nor its first 12 characters) in any Redis key or value (every key of the
  server, every type), the AOF files, the results and errors files, any CLI stdout/stderr or any
  worker log. Only the simulators' own request logs may hold the keys.

`--rounds R` repeats the round R times with seeds S, S+1, ...; one line per round and an overall
verdict. Every wait is bounded; workers, simulators and redis-server are stopped at the end.
Exit status 1 when any check of any round fails.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import redis  # noqa: E402
from _common import print_table  # noqa: E402
from chaos_checks import bad_lines_reported, exactly_once, read_jsonl, redis_dump_hits, scan_bytes  # noqa: E402
from chaos_config import PROVIDERS, WORKER, write_config  # noqa: E402
from chaos_input import BAD_SHARE, make_input  # noqa: E402
from chaos_rig import Cli, OwnRedis, Workers  # noqa: E402

from batchrelay.sim.process import SimulatorProcess
from batchrelay.sim.state import redacted

REDIS_DOWN_S = 2.0


# ---------------------------------------------------------------------------------------------- plumbing

@dataclass
class Figure:
    name: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: reported, no target


# ---------------------------------------------------------------------------------------------- one round

@dataclass
class Round:
    seed: int
    figures: list[Figure] = field(default_factory=list)
    lines: int = 0
    bad: int = 0
    kills: int = 0
    restarts: int = 0
    duplicates: int = -1
    lost: int = -1
    elapsed: float = 0.0
    error: str | None = None

    def figure(self, name: str, value: Any, target: str = "", ok: bool | None = None) -> None:
        self.figures.append(Figure(name, str(value), target, ok))

    @property
    def ok(self) -> bool:
        return self.error is None and all(f.ok is not False for f in self.figures)


def progress(url: str, prefix: str, batch: str) -> tuple[str, int] | None:
    """(status, valid lines still pending) read straight from Redis; None while it is unreachable."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        status = client.hget(f"{prefix}batch:{batch}", "status")
        pending = client.scard(f"{prefix}batch:{batch}:pending")
        return (status or b"?").decode(), int(pending)  # type: ignore[union-attr, arg-type]
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def run_round(args: argparse.Namespace, seed: int, tmp: Path) -> Round:
    rnd = Round(seed)
    rng = random.Random(seed)
    t0 = time.monotonic()
    keys = {p.name: f"sk-{secrets.token_hex(5)}-chaos-{p.name}-{secrets.token_hex(16)}" for p in PROVIDERS}
    needles: dict[str, bytes] = {}
    for name, key in keys.items():
        needles[f"{name}'s key"] = key.encode()
        needles[f"{name}'s key[:12]"] = key[:12].encode()
    data = tmp / "redis"
    data.mkdir()
    own = OwnRedis(data)
    sims = {p.name: SimulatorProcess({"latency_ms": args.latency_ms, "seed": seed * 10 + i, "api_key": keys[p.name],
                                      **p.sim}) for i, p in enumerate(PROVIDERS)}
    prefix = f"chaos:{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "REDIS_URL": own.url, **{p.env: keys[p.name] for p in PROVIDERS}}
    env.pop("BATCHRELAY_CONFIG", None)
    workers: Workers | None = None
    sim_logs: dict[str, list[dict[str, Any]]] = {}
    try:
        own.start()
        for s in sims.values():
            s.start()
        cfg = write_config(tmp / "batchrelay.toml", prefix, {k: s.base_url for k, s in sims.items()},
                           args.concurrency)
        cli = Cli(cfg, env)
        src = tmp / "in.jsonl"
        valid, bad = make_input(src, args.lines, rng)
        rnd.lines, rnd.bad = args.lines, len(bad)
        where = ", ".join(f"{k} {v.base_url}" for k, v in sims.items())
        print(f"  redis-server on port {own.port}, simulators {where} ({time.monotonic() - t0:.1f}s)")
        sub = cli.json("submit", str(src))
        batch = sub["id"]
        print(f"  submitted {batch}: {sub['lines']} lines, {sub['valid']} valid, {sub['invalid']} invalid "
              f"({time.monotonic() - t0:.1f}s)")
        rnd.figure("lines (valid / bad)", f"{sub['lines']} ({sub['valid']} / {sub['invalid']})",
                   f"{args.lines} ({len(valid)} / {len(bad)})",
                   sub["lines"] == args.lines and sub["valid"] == len(valid) and sub["invalid"] == len(bad))

        workers = Workers(cfg, env, tmp)
        for _ in range(args.workers):
            workers.start()
        # the faults, at random points of progress (share of the valid lines done)
        events = sorted([(rng.uniform(0.05, 0.85), "kill") for _ in range(args.kills)]
                        + [(rng.uniform(0.3, 0.6), "restart")])
        deadline = time.monotonic() + args.timeout
        status, pending, last_print = "?", len(valid), 0.0
        down_s = 0.0
        while True:
            got = progress(own.url, prefix, batch)
            if got is not None:
                status, pending = got
            share = 1 - pending / max(1, len(valid))
            while events and share >= events[0][0] and status == "in_progress":
                at, what = events.pop(0)
                if what == "kill":
                    i = workers.kill_one(rng)
                    j = workers.start()
                    rnd.kills += 1
                    print(f"  {time.monotonic() - t0:5.1f}s {share:6.1%} done: SIGKILL worker {i}, started worker {j}")
                else:
                    down_s = own.restart(REDIS_DOWN_S)
                    rnd.restarts += 1
                    # from now on alpha's 503s come without Retry-After
                    sims["alpha"].configure(retry_after=None)
                    print(f"  {time.monotonic() - t0:5.1f}s {share:6.1%} done: redis-server restarted "
                          f"(unreachable {down_s:.1f}s); alpha's 503s lose their Retry-After")
            workers.check()
            if status != "in_progress" and status != "?":
                break
            if time.monotonic() > deadline:
                print(f"  !! timed out after {args.timeout:g}s: {status}, {pending} pending")
                break
            if time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                print(f"  {time.monotonic() - t0:5.1f}s {share:6.1%} done, {pending} pending")
            time.sleep(0.1)
        finished_in = time.monotonic() - t0
        st = cli.json("status", batch)
        counts = st["counts"]
        print(f"  batch {st['status']} after {finished_in:.1f}s: {counts}")
        rnd.figure("kills (SIGKILL, replaced)", f"{rnd.kills} (workers {', '.join(map(str, workers.killed))})",
                   str(args.kills), rnd.kills == args.kills)
        rnd.figure("Redis restarts", f"{rnd.restarts} (unreachable {down_s:.1f}s)", "1", rnd.restarts == 1)
        rnd.figure("status", st["status"], "completed", st["status"] == "completed")
        rnd.figure("workers that died by themselves", len(workers.died) if not workers.died else
                   ", ".join(f"worker {i} rc {rc}" for i, rc in workers.died), "0", not workers.died)

        grace = WORKER["call_timeout"] + 5 + 10
        t_term = time.monotonic()
        rcs = workers.terminate(grace)
        took = time.monotonic() - t_term
        zero = sum(1 for rc in rcs.values() if rc == 0)
        rnd.figure("workers exiting 0 on SIGTERM", f"{zero} of {len(rcs)} in {took:.1f}s",
                   f"{len(rcs)} within {grace}s", zero == len(rcs))
        for i, rc in rcs.items():
            if rc != 0:
                tail = workers.log(i).read_text(errors="replace")[-1500:]
                print(f"  !! worker {i} exited {rc} after SIGTERM: {tail}")

        out, err = tmp / "out.jsonl", tmp / "out.errors.jsonl"
        cli("results", batch, "-o", str(out), "--errors", str(err), ok=(0, 3))
        results, errors = read_jsonl(out), read_jsonl(err)
        once, dups, lost, failed = exactly_once(results, errors, valid)
        rnd.duplicates, rnd.lost = dups, lost
        rnd.figure("valid lines answered exactly once", f"{once} of {len(valid)} (duplicates {dups}, lost {lost}, "
                   f"failed {failed})", f"{len(valid)} (0, 0, 0)",
                   once == len(valid) and dups == 0 and lost == 0 and failed == 0
                   and len(results) == len(valid))
        good, wrong = bad_lines_reported(errors, results, bad)
        kinds = Counter(bad.values())
        rnd.figure("bad lines in the errors with their number", f"{good} of {len(bad)} "
                   f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})", str(len(bad)),
                   good == len(bad) and not wrong and len(errors) == len(bad))
        for w in wrong[:10]:
            print(f"  !! {w}")

        ledger = cli.json("cost", batch)
        total = ledger["total"]
        line_sum = D(0)
        unpriced_lines = 0
        for r in results + errors:
            cost = r["batchrelay"].get("cost")
            if cost is None:
                continue  # an invalid line: never sent
            if cost.get("usd") is None:
                unpriced_lines += 1
            else:
                line_sum += D(cost["usd"])
        unpriced = total.get("unpriced", 0)
        ledger_usd = D(total["usd"]) if total.get("usd") is not None else None
        rnd.figure("lines without a price / ledger unpriced", f"{unpriced_lines} / {unpriced}", "0 / 0",
                   unpriced_lines == 0 and not unpriced)
        shown = format(line_sum.normalize(), "f")
        rnd.figure("ledger total vs sum of line costs (status)",
                   f"${ledger_usd} vs ${shown} (${st['cost']['usd']})", "equal",
                   ledger_usd == line_sum == D(st["cost"]["usd"]))
        requests = sum(r["requests"] for r in ledger["rows"])
        failed_calls = sum(r["failed"] for r in ledger["rows"])
        rnd.figure("ledger answered calls (requests - failed)", f"{requests - failed_calls} "
                   f"({requests} billed, {failed_calls} junk)", str(len(valid)), requests - failed_calls == len(valid))

        # the secret scan
        cli.json("batches")
        cli.json("providers")
        cli("providers")
        hits: list[str] = []
        n_keys, under, redis_hits = redis_dump_hits(own.url, needles, prefix)
        hits += redis_hits
        places = 1
        for path in sorted(data.rglob("*")):  # the AOF files (every write ever made) and the server's log
            if path.is_file():
                hits += scan_bytes(f"redis file {path.relative_to(data)}", path.read_bytes(), needles)
                places += 1
        for path in [out, err, *sorted(tmp.glob("worker*.log"))]:
            hits += scan_bytes(path.name, path.read_bytes(), needles)
            places += 1
        for what, text in cli.outputs:
            hits += scan_bytes(what, text.encode(), needles)
            places += 1
        rnd.figure("planted keys found (keys and first 12 chars)",
                   f"{len(hits)} in {places} places ({n_keys} Redis keys, {under} under the prefix; "
                   f"{workers.count} worker logs; {len(cli.outputs)} CLI outputs)", "0", not hits)
        for h in hits[:20]:
            print(f"  !! secret: {h}")

        # what the simulators saw (the request logs are the one place the keys may be)
        sim_logs = {name: list(httpx.get(s.base_url + "/_sim/log", timeout=60).json()) for name, s in sims.items()}
        # a control: the keys did go out (the simulators log the headers of every call, a key redacted
        # to its last characters and fingerprint), so the scan above looked for the bytes really sent
        seen = 0
        for name, s in sims.items():
            last = httpx.get(f"{s.base_url}/_sim/log?full=1&since={max(0, len(sim_logs[name]) - 3)}", timeout=60)
            seen += scan_bytes(name, last.content, {"key": redacted(keys[name]).encode()}) != []
        rnd.figure("control: simulators' request logs hold their key's fingerprint", f"{seen} of {len(sims)}",
                   str(len(sims)), seen == len(sims))
        for name, log in sim_logs.items():
            by = Counter(e["kind"] if e["kind"] != "error" else str(e["status"]) for e in log)
            print(f"  {name}: {len(log)} calls: {dict(sorted(by.items()))}")
        calls = sum(len(v) for v in sim_logs.values())
        faults = sum(1 for v in sim_logs.values() for e in v if e["kind"] != "answer")
        billed = sum(1 for v in sim_logs.values() for e in v if e["kind"] in ("answer", "junk", "hang"))
        rnd.figure("provider calls (faults)", f"{calls} ({faults} = {faults / max(1, calls):.0%})")
        timed_out = sum(1 for e in sim_logs["charlie"] if e["kind"] == "hang")  # its hangs outlast call_timeout
        rnd.figure("calls billed by a simulator, in no line", f"{billed - requests} ({timed_out} hangs past "
                   "call_timeout; the rest in flight at a kill or unrecorded while Redis was down)")
        tracebacks = sum(workers.log(i).read_text(errors="replace").count("Traceback") for i in range(workers.count))
        rnd.figure("tracebacks in worker logs", tracebacks)
    except (RuntimeError, subprocess.SubprocessError, httpx.HTTPError, OSError, KeyError, ValueError,
            redis.RedisError) as e:
        rnd.error = f"{type(e).__name__}: {e}"
        print(f"  !! round broke off: {rnd.error}")
        rnd.figure("round ran to the end", rnd.error[:160], "yes", False)
    finally:
        if workers is not None:
            workers.stop()
        for s in sims.values():
            s.stop()
        own.stop()
    rnd.elapsed = time.monotonic() - t0
    rnd.figure("total time", f"{rnd.elapsed:.1f}s")
    return rnd


# ---------------------------------------------------------------------------------------------- main

def summary(rnd: Round) -> None:
    rows = [("figure", "value", "target", "result")]
    for f in rnd.figures:
        rows.append((f.name, f.value, f.target or "-", "-" if f.ok is None else ("PASS" if f.ok else "FAIL")))
    print_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, help="seed of the first round (default: random)")
    ap.add_argument("--concurrency", type=int, default=8, help="lines in flight per worker")
    ap.add_argument("--latency-ms", type=float, default=80, help="every simulated provider's answer delay")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a round may take to complete")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep each round's files (logs, config, input, results, AOF) in DIR/round-N")
    args = ap.parse_args()
    if args.lines < 20 or args.workers < 1 or args.kills < 0 or args.rounds < 1:
        ap.error("needs --lines >= 20, --workers >= 1, --kills >= 0, --rounds >= 1")
    seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    t0 = time.monotonic()
    done: list[Round] = []
    for r in range(args.rounds):
        s = seed + r
        print(f"\n== round {r + 1} of {args.rounds} (seed {s}): {args.lines} lines, {args.workers} workers x "
              f"{args.concurrency}, {args.kills} kills, 1 Redis restart, ~30 % provider faults, "
              f"{BAD_SHARE:.0%} bad lines")
        if args.keep:
            where = args.keep / f"round-{r + 1}"
            where.mkdir(parents=True, exist_ok=False)
            rnd = run_round(args, s, where)
        else:
            with tempfile.TemporaryDirectory(prefix="brchaos-") as d:
                rnd = run_round(args, s, Path(d))
        print(f"\n== round {r + 1} summary")
        summary(rnd)
        done.append(rnd)
    print("\n== rounds")
    print_table([("round", "seed", "lines", "bad", "kills", "restarts", "duplicates", "lost", "time", "result")]
          + [(str(i + 1), str(x.seed), str(x.lines), str(x.bad), str(x.kills), str(x.restarts), str(x.duplicates),
              str(x.lost), f"{x.elapsed:.0f}s", "PASS" if x.ok else "FAIL") for i, x in enumerate(done)])
    ok = all(x.ok for x in done)
    print(f"  overall: {'PASS' if ok else 'FAIL'} ({sum(x.ok for x in done)} of {len(done)} rounds passed, "
          f"{time.monotonic() - t0:.0f}s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
