"""Helpers for the lane tests (issue 18): one batchrelay upstream of another.

`upstream()` is a real `batchrelay serve` + worker + simulator (servekit.serving) on a key prefix of
its own: the official Batch API as the lane sees it. In front of it sits a `FaultProxy`, a reverse
proxy in this process (uvicorn in a thread), so a test can make the upstream misbehave without a fault
hook in product code: scripted answers to matching requests (`on`: 503, 429 with Retry-After, ...),
and a request held before it is forwarded or after (`hold`), which is where a test SIGKILLs the
downstream worker: between upload and create (held before: no upstream batch exists), and between
create and recording (held after: the upstream batch exists, its id never reached the worker).

`downstream()` is the batchrelay under test: a flaky reseller (the simulator with faults, at 0.75x)
and the lane (0.5x) behind the proxy, routed `cheapest`, worked by `batchrelay worker --burst`
processes (a burst worker keeps going while a parcel of its queue's batches is open, and moves its
parcels on every 0.5 s beside its jobs: the lane answers within seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis as sync_redis
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from batchrelay.procs import stop_all
from batchrelay.sim.process import SimulatorProcess, free_port
from batchrelay.store.keys import Keys
from batchrelay.store.status import FINISHED

from .conftest import batchrelay, openai_line, write_config
from .servekit import KEY, KEY_ENV, Api, serving

CHAT_MODEL = "gpt-4o-mini"
MESSAGES_MODEL = "claude-3-5-haiku-latest"
# hop-by-hop headers, and what the proxy recomputes (it forwards whole bodies)
_DROP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
HOLD_LIMIT_S = 60.0  # a held request nobody releases goes on after this (a failed test must not hang)


# ---------------------------------------------------------------------------------------------- the proxy

Scripted = int | tuple[int, dict[str, str]]  # a status (0: pass the request on), or a status with headers


@dataclass
class Hold:
    """A request held by the proxy. `reached` is set once one arrived (and, held `after`, once the
    upstream has answered it); `release()` lets it go on: held `before`, it is then dropped unforwarded
    (answered 502: its client was killed meanwhile); held `after`, the upstream's answer is sent."""

    method: str
    pattern: str
    after: bool
    reached: threading.Event = field(default_factory=threading.Event)
    upstream_answer: tuple[int, bytes] | None = None  # held after: what the upstream said
    _go: threading.Event = field(default_factory=threading.Event)
    _taken: bool = False

    def release(self) -> None:
        self._go.set()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._go.wait, HOLD_LIMIT_S)


@dataclass
class Seen:
    """One request the proxy answered."""

    t: float
    method: str
    path: str
    status: int
    faked: bool  # answered by a script or a hold, not by the upstream


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of `target` (set before the first request), with faults."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = ""
        self.log: list[Seen] = []
        self.errors: list[str] = []  # exceptions in the proxy itself
        self._rules: list[tuple[str, str, list[Scripted]]] = []
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- what a test sets up

    def on(self, method: str, pattern: str, answers: list[Scripted]) -> None:
        """The next len(answers) requests matching METHOD and the path glob get these answers in order
        (0: passed on); later ones pass."""
        with self._lock:
            self._rules.append((method, pattern, list(answers)))

    def hold(self, method: str, pattern: str, *, after: bool) -> Hold:
        """Hold the next request matching METHOD and the path glob (see Hold); one request only."""
        h = Hold(method, pattern, after)
        with self._lock:
            self._holds.append(h)
        return h

    def seen(self, method: str, pattern: str = "*") -> list[Seen]:
        with self._lock:
            return [s for s in self.log if s.method == method and fnmatch.fnmatchcase(s.path, pattern)]

    # -- the app

    def _scripted(self, method: str, path: str) -> Scripted:
        with self._lock:
            for m, pattern, answers in self._rules:
                if m == method and answers and fnmatch.fnmatchcase(path, pattern):
                    return answers.pop(0)
        return 0

    def _hold_for(self, method: str, path: str) -> Hold | None:
        with self._lock:
            for h in self._holds:
                if not h._taken and h.method == method and fnmatch.fnmatchcase(path, h.pattern):
                    h._taken = True
                    return h
        return None

    def _note(self, method: str, path: str, status: int, faked: bool) -> None:
        with self._lock:
            self.log.append(Seen(time.time(), method, path, status, faked))

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._proxy(scope, receive, send)
        except Exception as e:  # a test then fails on it (upstream() checks), not on a puzzling 500
            self.errors.append(f"{scope['method']} {scope['path']}: {e!r}")
            raise

    async def _proxy(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        method, path = request.method, request.url.path
        answer = self._scripted(method, path)
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        body = await request.body()
        if status:
            self._note(method, path, status, True)
            content = orjson.dumps({"error": {"message": f"proxy fault {status}", "type": "server_error",
                                              "code": None, "param": None}, "type": "error"})
            await Response(content, status, headers, media_type="application/json")(scope, receive, send)
            return
        held = self._hold_for(method, path)
        if held is not None and not held.after:
            held.reached.set()
            await held.wait()
            self._note(method, path, 502, True)
            await Response(b"held and dropped", 502)(scope, receive, send)
            return
        out = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.request(method, self.target + request.url.path, params=request.query_params,
                                     headers=out, content=body)
        if held is not None:
            held.upstream_answer = (r.status_code, r.content)
            held.reached.set()
            await held.wait()
        self._note(method, path, r.status_code, False)
        back = {k: v for k, v in r.headers.items() if k.lower() not in _DROP}
        await Response(r.content, r.status_code, back)(scope, receive, send)

    # -- its life

    def start(self, target: str) -> None:
        self.target = target.rstrip("/")
        config = uvicorn.Config(self._app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                ws="none", access_log=False, interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fault-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the fault proxy did not start"
            assert self._thread.is_alive(), "the fault proxy stopped at start"
            time.sleep(0.02)

    def stop(self) -> None:
        for h in self._holds:
            h.release()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None


# ---------------------------------------------------------------------------------------------- upstream

@dataclass
class Upstream:
    """The official Batch API as the lane sees it: `url` (the proxy) is the lane's base_url."""

    api: Api
    proxy: FaultProxy
    worker_config: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def sim(self) -> SimulatorProcess:
        """The simulator the upstream's worker calls (configure its latency and faults)."""
        return self.api.sim

    def start_worker(self) -> None:
        log = self.worker_config.parent / f"worker{len(self.workers)}.log"
        with log.open("wb") as out:
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "batchrelay", "-c", str(self.worker_config), "worker", "--quiet"],
                env=self.api.env, stdout=out, stderr=out))

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {KEY}", "x-api-key": KEY, "anthropic-version": "2023-06-01"}
        r = httpx.get(self.api.base + path, params=params, headers=headers, timeout=10)  # straight, not proxied
        assert r.status_code == 200, r.text
        return dict(r.json())

    def batches(self, kind: str) -> list[dict[str, Any]]:
        """Every upstream batch of that API, newest first, as {id, status, total, metadata, raw}."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            if kind == "openai-batch":
                page = self._get("/v1/batches", limit=100, **({"after": cursor} if cursor else {}))
            else:
                page = self._get("/v1/messages/batches", limit=100, **({"after_id": cursor} if cursor else {}))
            for b in page["data"]:
                counts = b["request_counts"]
                total = counts["total"] if kind == "openai-batch" else sum(counts.values())
                status = b["status"] if kind == "openai-batch" else b["processing_status"]
                out.append({"id": b["id"], "status": status, "total": total, "metadata": b.get("metadata") or {},
                            "raw": b})
            if not page["has_more"] or not page["data"]:
                return out
            cursor = page["data"][-1]["id"]

    def input_files(self) -> list[dict[str, Any]]:
        """The batch input files the lane uploaded and has not deleted."""
        return [f for f in self._get("/v1/files", purpose="batch", limit=10000)["data"]
                if str(f.get("filename", "")).startswith("batchrelay-")]


def serve_has(name: str) -> bool:
    """Whether `[serve]` knows this setting (batch_window_s came with issue 18)."""
    from batchrelay.config.serve import ServeConfig

    return name in ServeConfig.model_fields


@contextlib.contextmanager
def upstream(tmp_path: Path, redis_url: str, prefix: str, *, window_s: float | None = None,
             sim: dict[str, Any] | None = None, health: dict[str, Any] | None = None) -> Iterator[Upstream]:
    """serve + worker + simulator on `prefix` + "up:", behind a FaultProxy. `window_s`: the upstream
    batches' own completion window (`[serve] batch_window_s`); `sim`: the simulator's faults/latency;
    `health`: the upstream worker's `[health]` (a small `line_deadline_s` makes a line the simulator
    keeps failing fail upstream, into the error file, instead of waiting an hour for the provider).
    Anthropic's `results_url` is built on the proxy's address (`public_url`), so downloads pass it too."""
    proxy = FaultProxy()
    extra = f'public_url = "{proxy.url}"\n'
    if window_s is not None:
        extra += f"batch_window_s = {window_s}\n"
    home = tmp_path / "upstream"
    home.mkdir()
    with serving(home, redis_url, prefix + "up:", serve_extra=extra, worker=False) as api:
        if sim:
            api.sim.configure(**sim)
        worker_config = home / "worker.toml"
        own = "".join(f"{k} = {v!r}\n" for k, v in (health or {}).items())
        worker_config.write_text(api.config.read_text().replace("[health]\n", "[health]\n" + own, 1))
        up = Upstream(api, proxy, worker_config)
        try:
            up.start_worker()
            proxy.start(api.base)
            yield up
        finally:
            proxy.stop()
            stop_all(up.workers, grace=10)
        assert not proxy.errors, f"the fault proxy failed: {proxy.errors}"


# ---------------------------------------------------------------------------------------------- downstream

def chat_lines(n: int, **body: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(1, n + 1):
        line = openai_line(i, CHAT_MODEL)
        line["body"].update(body)
        out.append(line)
    return out


def messages_lines(n: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"req-{i}", "params": {"model": MESSAGES_MODEL, "max_tokens": 64,
                                                  "messages": [{"role": "user", "content": f"question {i}"}]}}
            for i in range(1, n + 1)]


@dataclass
class Downstream:
    """The batchrelay under test: its config, its Redis prefix, the reseller, its worker processes."""

    tmp: Path
    cfg: Path
    redis_url: str
    prefix: str
    env: dict[str, str]
    reseller: SimulatorProcess
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    submitted: int = 0

    def cli(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        proc = batchrelay("-c", str(self.cfg), *args, env=self.env)
        assert proc.returncode in ok, f"batchrelay {' '.join(args)}: exit {proc.returncode}: {proc.stderr[-2000:]}"
        return proc.stdout

    def submit(self, lines: list[dict[str, Any]], *options: str) -> str:
        self.submitted += 1
        src = self.tmp / f"in{self.submitted}.jsonl"
        src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
        return self.cli("submit", str(src), *options).strip()

    def worker(self, *, burst: bool = True) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker{len(self.workers)}.log"
        cmd = [sys.executable, "-m", "batchrelay", "-c", str(self.cfg), "worker", "--verbose"]
        with log.open("wb") as out:
            proc = subprocess.Popen([*cmd, *(["--burst"] if burst else [])], env=self.env, stdout=out, stderr=out)
        self.workers.append(proc)
        return proc

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- worker{i}:\n" + (self.tmp / f"worker{i}.log").read_text(errors="replace")[-tail:]
                         for i in range(len(self.workers)))

    def kill_when(self, event: threading.Event, proc: subprocess.Popen[bytes], what: str) -> None:
        """SIGKILL the worker once `event` is set (a request held at the proxy)."""
        assert event.wait(30), f"{what} never reached the upstream\n{self.logs()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def meta(self, batch: str) -> dict[str, str]:
        client = sync_redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            return dict(client.hgetall(Keys(self.prefix).meta(batch)))  # type: ignore[arg-type]
        finally:
            client.close()

    def wait(self, batch: str, timeout: float = 60) -> str:
        """Until the batch has finished and every burst worker has ended (a burst worker waits for the
        lane's open parcels, then ends); the batch's final status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.meta(batch).get("status", "")
            alive = [w for w in self.workers if w.poll() is None]
            if status in FINISHED and not alive:
                return status
            assert alive or status in FINISHED, \
                f"the workers ended with batch {batch} {status}: {self.meta(batch)}\n{self.logs()}"
            assert time.monotonic() < deadline, f"batch {batch} still {status} after {timeout:g}s\n{self.logs()}"
            time.sleep(0.2)

    def results(self, batch: str) -> list[dict[str, Any]]:
        """Every line's record: the results file and the errors file together, in input order per file."""
        out, err = self.tmp / f"{batch}.jsonl", self.tmp / f"{batch}.errors.jsonl"
        self.cli("results", batch, "-o", str(out), "--errors", str(err), ok=(0, 3))
        return [orjson.loads(x) for f in (out, err) if f.exists() for x in f.read_bytes().splitlines()]

    def ledger(self, batch: str) -> dict[str, Any]:
        return dict(orjson.loads(self.cli("cost", batch, "--json")))

    def budget(self, batch: str) -> dict[str, Any]:
        return dict(orjson.loads(self.cli("budget", batch, "--json")))


def lane_provider(kind: str, base_url: str, **lane: Any) -> dict[str, Any]:
    """The lane's [[providers]] table: windows of seconds, so a test's deadline can allow it."""
    return {"name": "lane", "kind": kind, "base_url": base_url, "api_key_env": KEY_ENV, "window_s": 20,
            "margin_s": 5, "gather_s": 0.5, "poll_min_s": 0.2, "poll_max_s": 1, "poll_factor": 1.5,
            "create_wait_s": 2, "cancel_wait_s": 15, **lane}


@contextlib.contextmanager
def downstream(tmp_path: Path, redis_url: str, prefix: str, up: Upstream, *, kind: str = "openai-batch",
               lane: dict[str, Any] | None = None, reseller: dict[str, Any] | None = None) -> Iterator[Downstream]:
    """A config with the reseller (the simulator, 10 % of its calls a 500 unless `reseller` says
    otherwise, at 0.75x) and the lane of `kind` at `up` (0.5x), routed `cheapest`; its workers and the
    reseller are stopped when the block ends. With the lane's window_s 20 and margin_s 5, a batch may use
    it when its deadline is at least 25 s away (`--completion-window 60s`)."""
    sim = SimulatorProcess({"fail_rate": 0.1, "fail_rate_status": 500, "seed": 18, **(reseller or {})})
    sim.start()
    home = tmp_path / "downstream"
    home.mkdir()
    providers = [{"name": "reseller", "base_url": sim.base_url, "price_multiplier": "0.75", "priority": 1},
                 lane_provider(kind, up.url, **(lane or {}))]
    cfg = write_config(home / "c.toml", prefix, providers, routing='[routing]\nstrategy = "cheapest"',
                       concurrency=4, chunk_size=10, call_timeout=5, attempts_per_provider=5)
    env = {**os.environ, "REDIS_URL": redis_url, KEY_ENV: KEY}
    down = Downstream(home, cfg, redis_url, prefix, env, sim)
    try:
        yield down
    finally:
        stop_all(down.workers, grace=5)
        sim.stop()


# ---------------------------------------------------------------------------------------------- the checks

def usd(record: dict[str, Any]) -> D:
    cost = record.get("batchrelay", {}).get("cost") or {}
    return D(cost.get("usd") or "0")


def lane_attempts(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in record.get("batchrelay", {}).get("attempts", []) if a.get("upstream_batch")]


def answered_by(record: dict[str, Any]) -> str | None:
    """The provider whose answer the record is (None: the line has no answer)."""
    if "result" in record:  # an Anthropic-format line
        succeeded = (record["result"] or {}).get("type") == "succeeded"
    else:
        succeeded = (record.get("response") or {}).get("status_code") == 200
    return record.get("batchrelay", {}).get("provider") if succeeded else None


def check_batch(down: Downstream, up: Upstream, batch: str, n: int, kind: str = "openai-batch", *,
                others: int = 0) -> list[dict[str, Any]]:
    """What every lane test asserts of a finished batch, and its records:
    - every line has exactly one record (results and errors files together);
    - the ledger equals the sum of the lines' costs, and bills one answer per answered line;
    - a line the lane answered names the upstream batch in its last attempt;
    - every upstream batch a line names exists upstream, holds as many requests as lines name it, and
      the lane created one upstream batch per parcel: none twice, none orphaned (`others`: the
      Anthropic upstream batches of other batchrelay batches, which carry no metadata to tell them by)."""
    rows = down.results(batch)
    assert Counter(r["custom_id"] for r in rows) == Counter(f"req-{i}" for i in range(1, n + 1))
    ledger = down.ledger(batch)
    assert D(ledger["total"]["usd"]) == sum((usd(r) for r in rows), D(0))
    answered = [r for r in rows if answered_by(r)]
    assert sum(row["requests"] - row["failed"] for row in ledger["rows"]) == len(answered)

    named: Counter[str] = Counter()
    for r in rows:
        ids = {a["upstream_batch"] for a in lane_attempts(r)}
        assert len(ids) <= 1, f"{r['custom_id']} went to two upstream batches: {ids}"
        named.update(ids)
        if answered_by(r) == "lane":
            last = r["batchrelay"]["attempts"][-1]
            assert last["provider"] == "lane" and last.get("upstream_batch"), r["batchrelay"]
    listed = {b["id"]: b for b in up.batches(kind)}
    if kind == "openai-batch":  # OpenAI's carry the parcel in their metadata; Anthropic's have none
        listed = {i: b for i, b in listed.items() if b["metadata"].get("batchrelay_batch") == batch}
        pids = [b["metadata"].get("batchrelay_parcel") for b in listed.values()]
        assert len(pids) == len(set(pids)), f"a parcel was created twice upstream: {pids}"
    assert set(named) <= set(listed), f"lines name upstream batches the upstream does not have: {named}, {listed}"
    for upstream_id, lines in named.items():
        assert listed[upstream_id]["total"] == lines, (upstream_id, listed[upstream_id]["raw"], lines)
    parcels = int(down.meta(batch).get("lane_parcels") or 0)
    assert len(listed) == parcels + (others if kind != "openai-batch" else 0), \
        f"{parcels} parcels, upstream batches {sorted(listed)}"
    return rows


def run_until(down: Downstream, command: list[str], said: Path, ready: Any, *, timeout: float = 40
              ) -> tuple[int, float]:
    """Start `command` (a `batchrelay run`, stderr to `said`), wait until `ready()` is true, then Ctrl-C
    it (SIGINT) and wait for it to end: its exit status, and how long it took to stop after the signal
    (killed if it hangs)."""
    with said.open("wb") as err:
        run = subprocess.Popen(command, env=down.env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline and run.poll() is None, said.read_text()
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        run.wait(timeout=30)
        return run.returncode, time.monotonic() - stopped
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def run_command(down: Downstream, tmp_path: Path, lines: list[dict[str, Any]], *args: str) -> list[str]:
    """`batchrelay run` of `lines` (written to tmp_path/run.jsonl) with the downstream's config and `args`."""
    src = tmp_path / "run.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return [sys.executable, "-m", "batchrelay", "-c", str(down.cfg), "run", str(src), "-o",
            str(tmp_path / "run.out.jsonl"), *args]

