"""What a batch-API lane saves (issue 18): a mixed batch run twice, without the lane and with it.

    python bench/lane.py [--lines 400] [--tolerant 0.6] [--delay 5] [--upstream-fail 0.1] [--json]

The mix: `--lines` lines, `--tolerant` of them in a batch whose deadline leaves the lane's window
plus its margin (`submit --completion-window` = 3 x window_s), the rest in an urgent batch (no
deadline), both submitted together. The providers: a flaky reseller (the simulator at 0.75x the
official price, 15 % of its calls a 500) and, in the second run, the lane (`kind = "openai-batch"`
at 0.5x) on a real upstream Batch API: `batchrelay serve` + a worker + a simulator on a key prefix of
its own, whose worker starts `--delay` seconds after the submit (the lane answers after a delay)
and fails `--upstream-fail` of the lines (a 500, no retry upstream), which then fail over to the
reseller. Each run is worked by 2 `batchrelay worker --burst` processes.

Reported per run: cost per 1,000 lines (from the ledgers), the share of lines by route, the lines
that failed over from the lane, wall time (submit to both batches done), upstream batches created
against parcels (no duplicates), and every line answered exactly once. `--json` prints the figures
as JSON. Uses REDIS_URL under a fresh key prefix (its keys are removed afterwards), else an embedded
redis-server; every wait is bounded and every process is stopped at the end. Exit status 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from _common import Figure, bench_redis, print_summary, write_lines  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from batchrelay.config.settings import ProviderConfig  # noqa: E402
from batchrelay.money.ledger import rows, total  # noqa: E402
from batchrelay.money.pricing import call_cost, price_of  # noqa: E402
from batchrelay.procs import stop_all  # noqa: E402
from batchrelay.sim.process import SimulatorProcess, free_port  # noqa: E402
from batchrelay.spec import BatchSpec  # noqa: E402
from batchrelay.store.keys import Keys  # noqa: E402
from batchrelay.store.store import Store  # noqa: E402
from batchrelay.store.submit import submit_file  # noqa: E402
from batchrelay.wire.reply import Usage  # noqa: E402

WORKERS = 2
CHUNK = 50
KEY_ENV, KEY = "BENCH_LANE_KEY", "bench-lane-key-0123"
LANE = {"window_s": 30, "margin_s": 10, "gather_s": 1, "poll_min_s": 0.5, "poll_max_s": 2, "create_wait_s": 5}
OFFICIAL = ProviderConfig(name="official", base_url="http://official.invalid")  # genai-prices at 1x
FIGURES: list[Figure] = []


def toml(path: Path, prefix: str, providers: list[dict[str, Any]], extra: str = "", **worker: Any) -> Path:
    lines = ["[redis]", f"prefix = {json.dumps(prefix)}", "", "[worker]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in {"chunk_size": CHUNK, "concurrency": 16, **worker}.items()]
    lines.append('\n[routing]\nstrategy = "cheapest"')
    for p in providers:
        lines += ["", "[[providers]]"] + [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def batchrelay(cfg: Path, env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "batchrelay", "-c", str(cfg), *args], env=env,
                                stdout=out, stderr=out)


class Upstream:
    """The official Batch API: serve + worker + simulator on `prefix`; the worker starts on `start_worker`."""

    def __init__(self, tmp: Path, url: str, prefix: str, fail: float) -> None:
        self.sim = SimulatorProcess({"latency_ms": 50, "fail_rate": fail, "fail_rate_status": 500, "seed": 18})
        self.tmp, self.url, self.prefix = tmp, url, prefix
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "REDIS_URL": url, KEY_ENV: KEY}
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Upstream:
        self.sim.start()
        serve = f'\n[serve]\napi_keys_env = ["{KEY_ENV}"]\nfiles_dir = {json.dumps(str(self.tmp / "files"))}\n'
        # attempts_per_provider 1, line_deadline_s 1 and max_wait_s 0: a 500 upstream fails its line there (into
        # the error file), where its only provider would otherwise be tried again for an hour
        serve += "\n[health]\nline_deadline_s = 1\nmax_wait_s = 0\n"
        self.cfg = toml(self.tmp / "upstream.toml", self.prefix, [{"name": "sim", "base_url": self.sim.base_url}],
                        serve, attempts_per_provider=1)
        self.procs.append(batchrelay(self.cfg, self.env, "serve", "--port", str(self.port), log=self.tmp / "serve.log"))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.base + "/v1/batches", timeout=1).status_code == 401:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise SystemExit(f"upstream serve did not start: {(self.tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def start_worker(self) -> None:
        self.procs.append(batchrelay(self.cfg, self.env, "worker", "--quiet", log=self.tmp / "upstream-worker.log"))

    def batches(self, batch_id: str) -> list[dict[str, Any]]:
        """The upstream batches the lane created for `batch_id` (their metadata names it)."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            r = httpx.get(self.base + "/v1/batches", params={"limit": 100, **({"after": after} if after else {})},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            r.raise_for_status()
            page = r.json()
            out += [b for b in page["data"] if (b.get("metadata") or {}).get("batchrelay_batch") == batch_id]
            if not page["has_more"] or not page["data"]:
                return out
            after = page["data"][-1]["id"]

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs, grace=10)
        self.sim.stop()


async def run_once(tag: str, url: str, prefix: str, cfg: Path, tmp: Path, tolerant: Path, urgent: Path,
                   env: dict[str, str], up: Upstream | None, delay: float, timeout: float) -> dict[str, Any]:
    sizes = {k: sum(1 for _ in f.open("rb")) for k, f in (("tolerant", tolerant), ("urgent", urgent))}
    client = Redis.from_url(url)
    store = Store(client, Keys(prefix))
    t0 = time.time()
    window = 3 * LANE["window_s"]  # the deadline leaves the lane's window + margin, with room to fail over
    specs = {"tolerant": (tolerant, BatchSpec(chunk_size=CHUNK, completion_window=window)),
             "urgent": (urgent, BatchSpec(chunk_size=CHUNK))}
    batches = {k: (await submit_file(store, src, spec)).batch_id for k, (src, spec) in specs.items()}
    workers = [batchrelay(cfg, env, "worker", "--burst", "--quiet", log=tmp / f"{tag}.worker{i}.log")
               for i in range(WORKERS)]
    started = False
    try:
        while True:
            if up is not None and not started and time.time() - t0 >= delay:
                up.start_worker()
                started = True
            infos = {k: await store.info(b) for k, b in batches.items()}
            if all(i.finished for i in infos.values()) and all(w.poll() is not None for w in workers):
                break
            if time.time() - t0 > timeout:
                raise SystemExit(f"{tag}: timed out: {[(i.status, i.succeeded, i.failed) for i in infos.values()]}")
            if all(w.poll() is not None for w in workers):
                raise SystemExit(f"{tag}: the workers ended with {[i.status for i in infos.values()]}: "
                                 f"{(tmp / f'{tag}.worker0.log').read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.2)
        wall = max((i.finished_at or time.time()) for i in infos.values()) - t0
    finally:
        stop_all(workers, grace=10)
    records: dict[str, list[tuple[bool, dict[str, Any]]]] = {}
    cost = Decimal(0)
    for k, b in batches.items():
        records[k] = [(ok, orjson.loads(rec)) async for ok, rec in store.iter_results(b)]
        cost += total(rows(await store.ledger(b))).cost
    parcels = int((await store.get_fields(batches["tolerant"], ["lane_parcels"])).get("lane_parcels") or 0)
    await client.aclose()
    all_records = [r for recs in records.values() for _, r in recs]
    lines = len(all_records)
    by_route = Counter(r["batchrelay"].get("provider") if ok else "failed" for recs in records.values()
                       for ok, r in recs)
    failed_over = sum(1 for ok, r in records["tolerant"] if any(a.get("upstream_batch") for a in
                      r["batchrelay"]["attempts"]) and r["batchrelay"].get("provider") != "lane")
    upstream = up.batches(batches["tolerant"]) if up is not None else []
    ids = [(b.get("metadata") or {}).get("batchrelay_parcel") for b in upstream]
    official = sum((official_cost(r) for ok, r in (x for recs in records.values() for x in recs) if ok), Decimal(0))
    line_costs = sum((Decimal((r["batchrelay"].get("cost") or {}).get("usd") or "0") for r in all_records), Decimal(0))
    return {"run": tag, "lines": lines, "cost_usd": str(cost), "cost_per_1000_lines_usd": str(cost / lines * 1000),
            "cost_vs_official": f"{cost / official:.3f}" if official else None,
            "ledger_equals_lines": cost == line_costs, "by_route": dict(sorted(by_route.items())),
            "failed_over_from_lane": failed_over, "wall_s": round(wall, 1), "upstream_batches": len(upstream),
            "parcels": parcels, "duplicate_upstream_batches": len(ids) - len(set(ids)),
            "every_line_once": all(sorted(Counter(r["custom_id"] for _, r in recs).values()) == [1] * sizes[k]
                                   for k, recs in records.items())}


def official_cost(record: dict[str, Any]) -> Decimal:
    """What the line's answer would cost at the official price (its usage at 1x)."""
    usage = Usage.from_dict(record["batchrelay"]["usage"])
    return call_cost(price_of(OFFICIAL, record["batchrelay"]["provider_model"]), usage, None, "computed").billed \
        or Decimal(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=400, help="lines in all (both batches)")
    ap.add_argument("--tolerant", type=float, default=0.6, help="share of the lines whose deadline allows the lane")
    ap.add_argument("--delay", type=float, default=5.0, help="seconds before the upstream starts working")
    ap.add_argument("--upstream-fail", type=float, default=0.1, help="share of lines the upstream fails (500)")
    ap.add_argument("--timeout", type=float, default=150.0, help="per run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    n_tolerant = round(args.lines * args.tolerant)
    reseller = SimulatorProcess({"latency_ms": 30, "fail_rate": 0.15, "fail_rate_status": 500, "seed": 7})
    results: list[dict[str, Any]] = []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="brlane-") as d, bench_redis() as (url, prefix):
        tmp = Path(d)
        tolerant = write_lines(tmp / "tolerant.jsonl", n_tolerant)
        urgent = write_lines(tmp / "urgent.jsonl", args.lines - n_tolerant)
        env = {**os.environ, "REDIS_URL": url, KEY_ENV: KEY}
        try:
            reseller.start()
            sync = {"name": "reseller", "base_url": reseller.base_url, "price_multiplier": "0.75"}
            off = toml(tmp / "off.toml", prefix + "off:", [sync], attempts_per_provider=5)
            results.append(asyncio.run(run_once("without lane", url, prefix + "off:", off, tmp, tolerant, urgent, env,
                                                None, args.delay, args.timeout)))
            with Upstream(tmp, url, prefix + "up:", args.upstream_fail) as up:
                lane = {"name": "lane", "kind": "openai-batch", "base_url": up.base, "api_key_env": KEY_ENV, **LANE}
                on = toml(tmp / "on.toml", prefix + "on:", [sync, lane], attempts_per_provider=5)
                results.append(asyncio.run(run_once("with lane", url, prefix + "on:", on, tmp, tolerant, urgent, env,
                                                    up, args.delay, args.timeout)))
        finally:
            reseller.stop()
    report(results, args, time.monotonic() - t_all)


def report(results: list[dict[str, Any]], args: argparse.Namespace, took: float) -> None:
    without, with_ = results
    saving = 1 - Decimal(with_["cost_usd"]) / Decimal(without["cost_usd"])
    if args.json:
        print(json.dumps({"lines": args.lines, "tolerant_share": args.tolerant, "delay_s": args.delay,
                          "upstream_fail": args.upstream_fail, "runs": results, "saving": f"{saving:.4f}",
                          "took_s": round(took, 1)}, indent=2))
    else:
        print(f"\n== {args.lines} lines: {args.tolerant:.0%} deadline-tolerant, the rest urgent; flaky reseller at "
              f"0.75x; lane at 0.5x answering after {args.delay:g}s, failing {args.upstream_fail:.0%} upstream")
    for r in results:
        s = r["run"]
        lines = r["lines"]
        share = ", ".join(f"{k} {v / lines:.1%}" for k, v in r["by_route"].items())
        for name, value in [("cost per 1,000 lines", f"${Decimal(r['cost_per_1000_lines_usd']):.6f}"),
                            ("cost / official price of the answers", r["cost_vs_official"]),
                            ("lines by route", share), ("failed over from the lane", r["failed_over_from_lane"]),
                            ("wall time", f"{r['wall_s']}s"),
                            ("upstream batches / parcels", f"{r['upstream_batches']} / {r['parcels']}")]:
            FIGURES.append(Figure(s, name, str(value)))
        FIGURES.append(Figure(s, "every line answered once", str(r["every_line_once"]), "True", r["every_line_once"]))
        FIGURES.append(Figure(s, "ledger == sum of line costs", str(r["ledger_equals_lines"]), "True",
                              r["ledger_equals_lines"]))
        FIGURES.append(Figure(s, "duplicate upstream batches", str(r["duplicate_upstream_batches"]), "0",
                              r["duplicate_upstream_batches"] == 0 and r["upstream_batches"] == r["parcels"]))
    FIGURES.append(Figure("both", "saving with the lane", f"{saving:.1%}", "> 0", saving > 0))
    if args.json:
        sys.exit(0 if all(f.ok is not False for f in FIGURES) else 1)
    ok = print_summary(FIGURES)
    print(f"\n(both runs: {took:.0f}s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
