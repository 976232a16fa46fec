"""Screenshots of the dashboard's three pages for the README (docs/dashboard-*.png), from a real run.

    python bench/screenshots.py            # about 2.5 minutes: the running batch spans 3 minutes of charts

Starts a Redis (REDIS_URL with a fresh prefix, else an embedded one), two provider simulators
(`relay-a`: slow and sometimes failing; `relay-b`: out of credit, answering 402), `batchrelay
serve` and one worker; submits a finished batch with invalid input lines, a cancelled one and a
slow one still running; logs in with Debian's chromium and saves the pages at 1280x800 (and the
batches page at a phone's 390x844).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchrelay.procs import stop_all  # noqa: E402
from batchrelay.sim.process import SimulatorProcess, free_port  # noqa: E402
from bench._common import bench_redis  # noqa: E402

KEY = "screenshot-key-0123456789"


def lines(n: int, bad: tuple[int, ...] = ()) -> bytes:
    out = []
    for i in range(1, n + 1):
        if i in bad:
            out.append(b'{"custom_id": "q-%d", "method": "POST", "url": "/v1/chat/completions", "body": {}}' % i)
        else:
            out.append(orjson.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "gpt-4o-mini",
                                              "messages": [{"role": "user", "content": f"Summarise ticket {i}"}]}}))
    return b"\n".join(out) + b"\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--run-s", type=float, default=140, help="how long the running batch runs before the shots")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with bench_redis() as (url, prefix), SimulatorProcess({"latency_ms": 250, "fail_rate": 0.08}) as a, \
            SimulatorProcess({"fail_status": 402}) as b:
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"br-shots-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        cfg = work / "batchrelay.toml"
        cfg.write_text(f'[redis]\nprefix = "{prefix}"\n\n[worker]\nconcurrency = 2\nchunk_size = 5\ncall_timeout = 5\n'
                       f'backoff = 0.05\n\n[[providers]]\nname = "relay-a"\nbase_url = "{a}"\nrpm = 600\n'
                       f'priority = 2\n\n[[providers]]\nname = "relay-b"\nbase_url = "{b}"\npriority = 1\n\n'
                       f'[serve]\napi_keys_env = ["SHOT_KEY"]\nfiles_dir = "{work / "files"}"\n')
        env = {**os.environ, "REDIS_URL": url, "SHOT_KEY": KEY}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cli = [sys.executable, "-m", "batchrelay", "-c", str(cfg)]
        procs = [subprocess.Popen([*cli, "serve", "--port", str(port)], env=env),
                 subprocess.Popen([*cli, "worker", "--quiet"], env=env, stderr=subprocess.DEVNULL)]
        try:
            def submit(name: str, data: bytes) -> str:
                path = work / f"{name}.jsonl"
                path.write_bytes(data)
                done = subprocess.run([*cli, "submit", str(path), "--name", name], env=env, check=True,
                                      capture_output=True, text=True)
                return done.stdout.strip()

            for _ in range(100):
                try:
                    httpx.get(base + "/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            first = submit("support-tickets-2026-12", lines(24, bad=(5, 17)))
            time.sleep(8)
            stopped = submit("ab-test <prompt v2>", lines(40))
            time.sleep(1)
            subprocess.run([*cli, "cancel", stopped, "--no-wait"], env=env, check=True, capture_output=True)
            running = submit("nightly-eval", lines(1500))
            time.sleep(args.run_s)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(base + "/")
                page.fill("#key", KEY)
                page.click("#login-button")
                page.wait_for_selector("#batch-rows tr")
                time.sleep(2.5)
                page.screenshot(path=str(args.out / "dashboard-batches.png"))
                page.goto(f"{base}/#/batch/{running}")
                page.wait_for_selector("svg.chart")
                time.sleep(2.5)
                page.screenshot(path=str(args.out / "dashboard-batch.png"), full_page=True)
                page.goto(f"{base}/#/batch/{first}")
                page.wait_for_selector(".errclass")
                time.sleep(1)
                page.screenshot(path=str(args.out / "dashboard-batch-errors.png"), full_page=True)
                page.goto(f"{base}/#/providers")
                page.wait_for_selector("[data-provider]")
                time.sleep(4.5)  # two polls: the pace needs two looks at the counters
                page.screenshot(path=str(args.out / "dashboard-providers.png"))
                page.set_viewport_size({"width": 390, "height": 844})
                page.goto(base + "/#/")
                page.wait_for_selector("#batch-rows tr")
                time.sleep(1)
                page.screenshot(path=str(args.out / "dashboard-phone.png"))
                browser.close()
            print("saved:", *sorted(str(p) for p in args.out.glob("dashboard-*.png")))
        finally:
            stop_all(procs, grace=5)


if __name__ == "__main__":
    main()
